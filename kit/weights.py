"""Where a backbone's initial weights come from: none (from scratch), a local file, or timm's pretrained machinery.

``model.pretrained`` (``true``, ``false`` or a timm pretrained tag such as ``in1k``) goes through timm's own route:
the model's ``pretrained_cfg`` names a Hugging Face Hub repository (``timm/tf_efficientnet_lite0.in1k``) and timm
fetches ``model.safetensors`` through the Hugging Face cache. With no internet (a Kaggle kernel, this machine) it
works from a populated cache (``HF_HUB_OFFLINE=1``); :func:`populate_hf_cache` builds one from a local file, in the
layout ``huggingface_hub`` reads (``models--ORG--NAME/{blobs,snapshots/COMMIT,refs/main}``). ``model.weights=FILE``
stays for local files (a Kaggle dataset).

Whatever the source, :func:`resolve_weights` says what it is as a :class:`WeightsSource`: the Hub repository or the
file's name, and the sha256 of the bytes that were loaded, which the run records in ``config.yaml`` (never an
absolute path).

>>> src = resolve_weights("tf_efficientnet_lite0", True, None)
>>> src.record()   # {'source': 'hf-hub:timm/tf_efficientnet_lite0.in1k', 'sha256': '2b4a5f...'}
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import timm

from kit.errors import ConfigError
from kit.io import sha256_file

__all__ = ["WeightsSource", "populate_hf_cache", "pretrained_name", "read_state_dict",
           "resolve_weights"]

HF_FILES = ("model.safetensors", "pytorch_model.bin")
"""The files timm asks the Hub for, in its order (safetensors first)."""
HUB_TIMEOUT_S = 5.0
"""How long kit waits for the Hub to answer before it says it cannot be reached."""
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WeightsSource:
    """The initial weights of a run: ``kind`` is scratch, file or hf-hub; ``name`` the file name or Hub repository;
    ``path`` the local file that holds them (not recorded: it differs between machines)."""

    kind: str
    name: str = ""
    sha256: str | None = None
    path: Path | None = None
    model: str = ""
    """The timm model name to build: ``name.tag`` for a pretrained tag."""

    def record(self) -> dict:
        """What ``config.yaml`` keeps: the source and the sha256 of its bytes."""
        if self.kind == "scratch":
            return {"source": "scratch (random initial weights)", "sha256": None}
        return {"source": f"{self.kind}:{self.name}", "sha256": self.sha256}

    def short(self) -> str:
        """For the start line: ``from scratch``, ``weights FILE`` or ``ImageNet weights hf-hub:REPO``."""
        if self.kind == "scratch":
            return "from scratch"
        return f"weights {self.name}" if self.kind == "file" else f"pretrained weights {self.kind}:{self.name}"

    def describe(self) -> str:
        if self.kind == "scratch":
            return "random initial weights (training from scratch)"
        return f"weights {self.kind}:{self.name} (sha256 {self.sha256[:12]})"


def read_state_dict(path: str | os.PathLike) -> dict:
    """A state dict from a .safetensors or torch file (``weights_only``: tensors and plain values only); a file that
    is not one raises one line naming it."""
    from timm.models import load_state_dict

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"weights file not found: {path}")
    try:
        state = load_state_dict(str(path), use_ema=False, weights_only=True)
    except Exception as e:  # pickle, zip, safetensors and torch raise many types for a file that is not a state dict
        detail = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ConfigError(f"weights file {path} cannot be read as a state dict ({type(e).__name__}: {detail})") from e
    if not isinstance(state, dict) or not all(hasattr(v, "shape") for v in state.values()):
        raise ConfigError(f"weights file {path} holds no state dict of tensors")
    return state


def pretrained_name(name: str, pretrained: bool | str) -> str | None:
    """The timm model name with the pretrained tag to load (``tf_efficientnet_lite0.in1k``), None for no weights;
    raises for models without pretrained weights and unknown tags, listing the known ones (kit's own models are
    refused by :func:`kit.models.check_pretrained`: this module, below kit.models, knows timm's names alone)."""
    if pretrained is False or pretrained is None:
        return None
    tags = timm.list_pretrained(f"{name}.*")
    if not tags:
        raise ConfigError(f"model.pretrained: timm has no pretrained weights for {name}; give a file with "
                          "model.weights=FILE or set model.pretrained=false")
    if pretrained is True:
        return tags[0]  # timm's default tag comes first
    tag = str(pretrained).removeprefix(f"{name}.")
    if f"{name}.{tag}" not in tags:
        raise ConfigError(f"model.pretrained={pretrained}: unknown tag for {name}; timm knows "
                          f"{', '.join(t.split('.', 1)[1] for t in tags)} (or true for the default, {tags[0]})")
    return f"{name}.{tag}"


def _hub_id(full_name: str) -> str:
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(full_name)
    hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not hub_id:
        raise ConfigError(f"model.pretrained: timm has no Hugging Face Hub weights for {full_name}; download them "
                          "yourself and give the file with model.weights=FILE")
    return hub_id


def _cached_hub_file(hub_id: str) -> Path:
    """The weights file of ``hub_id``, the way timm fetches it: from the Hugging Face cache, downloading it when
    the cache lacks it and the Hub answers; one line saying how to give a file otherwise, within seconds."""
    from huggingface_hub import constants, try_to_load_from_cache

    repo, _, revision = hub_id.partition("@")
    for filename in HF_FILES:
        found = try_to_load_from_cache(repo, filename, revision=revision or None)
        if isinstance(found, str):
            return Path(found)
    if constants.HF_HUB_OFFLINE:
        raise _not_available(hub_id, "HF_HUB_OFFLINE is set")
    log.warning("fetching %s from the Hugging Face Hub (%s) into %s", hub_id, constants.ENDPOINT,
                constants.HF_HUB_CACHE)
    _check_hub_reachable(hub_id)
    return _download(repo, revision or None, hub_id)


def _check_hub_reachable(hub_id: str) -> None:
    """One request with a short timeout: huggingface_hub itself retries an unreachable Hub for ~25 s per file."""
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    try:
        get_session().head(constants.ENDPOINT, timeout=HUB_TIMEOUT_S)
    except Exception as e:  # httpx raises connect, timeout, proxy and TLS errors of many types
        raise _not_available(hub_id, f"the Hub {constants.ENDPOINT} cannot be reached: {_reason(e)}") from e


def _download(repo: str, revision: str | None, hub_id: str) -> Path:
    """The first of HF_FILES the repository has, with huggingface_hub's retry warnings kept quiet (kit says what
    failed, in one line)."""
    import logging

    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    hub_log = logging.getLogger("huggingface_hub")
    level, hub_log.level = hub_log.level, logging.ERROR
    last: Exception | None = None
    try:
        for filename in HF_FILES:
            try:
                return Path(hf_hub_download(repo, filename, revision=revision))
            except EntryNotFoundError as e:  # the next file may exist
                last = e
            except Exception as e:  # HTTP errors, a dropped connection: timm would fail the same way
                last = e
                break
    finally:
        hub_log.setLevel(level)
    raise _not_available(hub_id, f"the download failed: {_reason(last)}")


def _reason(e: BaseException | None) -> str:
    """An exception as one whole line: its type and its first line."""
    if e is None:
        return "no file"
    return f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}".rstrip(": ")


def _not_available(hub_id: str, why: str) -> ConfigError:
    from huggingface_hub import constants

    return ConfigError(
        f"model.pretrained: the weights {hub_id} are not in the Hugging Face cache {constants.HF_HUB_CACHE} and "
        f"cannot be downloaded here ({why}); run once with internet to fill the cache, or give a local file: "
        "--set model.pretrained=false --set model.weights=FILE")


def resolve_weights(name: str, pretrained: bool | str, weights: str | None) -> WeightsSource:
    """What a model's initial weights are and where their bytes lie; raises one line when they cannot be had."""
    if weights and pretrained not in (False, None):
        raise ConfigError(f"model.weights={weights} and model.pretrained={pretrained} both give weights; set "
                          "one of them (model.pretrained=false with a local file)")
    if weights:
        path = Path(weights)
        if not path.is_file():
            raise ConfigError(f"config key model.weights={weights}: file not found")
        return WeightsSource("file", path.name, sha256_file(path), path, name)
    full = pretrained_name(name, pretrained)
    if full is None:
        return WeightsSource("scratch", model=name)
    hub_id = _hub_id(full)
    path = _cached_hub_file(hub_id)
    return WeightsSource("hf-hub", hub_id, sha256_file(path), path, full)


def populate_hf_cache(file: str | os.PathLike, model: str, cache_dir: str | os.PathLike | None = None,
                      link: bool = True) -> Path:
    """Put a local weights file into the Hugging Face cache as timm's Hub weights of ``model`` (a timm name, with or
    without tag), so that ``model.pretrained=true`` works offline; the snapshot's path.

    The layout is huggingface_hub's: ``models--ORG--NAME/blobs/SHA256`` (the file, or a link to it with
    ``link``), ``snapshots/COMMIT/model.safetensors`` pointing at the blob, ``refs/main`` holding COMMIT.
    """
    from huggingface_hub import constants

    file = Path(file).resolve()
    if not file.is_file():
        raise ConfigError(f"weights file not found: {file}")
    if file.suffix != ".safetensors":
        raise ConfigError(f"{file}: the Hub cache holds timm weights as model.safetensors; convert the file first")
    full = pretrained_name(model.split(".")[0], model.split(".", 1)[1] if "." in model else True)
    repo = _hub_id(full).partition("@")[0]
    root = Path(cache_dir or constants.HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}"
    sha = sha256_file(file)
    commit = hashlib.sha1(f"kit-local:{sha}".encode()).hexdigest()  # any 40-hex name; refs/main points at it
    blob = root / "blobs" / sha
    blob.parent.mkdir(parents=True, exist_ok=True)
    if not blob.exists():
        blob.symlink_to(file) if link else blob.write_bytes(file.read_bytes())
    snapshot = root / "snapshots" / commit / HF_FILES[0]
    snapshot.parent.mkdir(parents=True, exist_ok=True)
    if not snapshot.exists():
        snapshot.symlink_to(os.path.relpath(blob, snapshot.parent))
    (root / "refs").mkdir(exist_ok=True)
    (root / "refs" / "main").write_text(commit)
    return snapshot
