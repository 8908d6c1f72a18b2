"""Several processes training one fold together (``torchrun ... -m kit train``): ranks, collectives, the sampler.

``kit train`` under ``torchrun`` (the environment holds ``WORLD_SIZE`` > 1) starts a process group (NCCL on GPUs,
gloo on CPUs) and trains each fold with DistributedDataParallel. The rules every rank follows:

- ``train.batch_size`` is the global batch: each of N ranks takes batch_size / N of it, so the same config trains the
  same batches on one process or on N (:class:`EpochSampler` cuts each global batch into N consecutive parts).
- Rank 0 alone writes (it holds the run's lock); what it decides (skip a finished fold, stop early, an error before
  training) is broadcast, so that no rank waits in a collective the others never enter.
- Validation rows are split between ranks without padding and gathered back into the original order: every
  validation id is predicted exactly once.
- Collectives time out (``KIT_DIST_TIMEOUT`` seconds, default 1800), and a rank that lost a peer stops with one line
  naming the cure, ``kit train --resume RUN``.

Without ``torchrun`` everything here is the identity: :func:`current_group` is rank 0 of a world of one.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn
from torch.utils.data import Sampler

from kit.errors import ConfigError, KitError
from kit.rundir import RunDir

__all__ = ["DistributedError", "EpochSampler", "Group", "current_group", "session"]

log = logging.getLogger(__name__)


class DistributedError(KitError):
    """A process of a distributed run failed or vanished; the others stop instead of waiting for it."""


def _timeout() -> timedelta:
    return timedelta(seconds=float(os.environ.get("KIT_DIST_TIMEOUT", "1800")))


@dataclass(frozen=True)
class Group:
    """This process's place in the run: rank ``rank`` of ``world`` (``local_rank`` on its machine)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # ------------------------------------------------------------------------------------------- placement
    def device(self, device: torch.device) -> torch.device:
        """One GPU per process: ``cuda`` becomes this rank's ``cuda:LOCAL_RANK``."""
        if self.enabled and device.type == "cuda":
            return torch.device("cuda", self.local_rank)
        return device

    def local_batch(self, batch_size: int) -> int:
        if batch_size % self.world:
            raise ConfigError(f"train.batch_size={batch_size} is the global batch and must divide by the "
                              f"{self.world} processes of this run")
        return batch_size // self.world

    def shard(self, rows: np.ndarray) -> np.ndarray:
        """This rank's share of ``rows`` (every world-th one, no padding): the shares together are ``rows``."""
        return rows[self.rank::self.world]

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """The model to train with: DDP over ``model`` (which keeps its own state_dict keys) when distributed."""
        if not self.enabled:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    def sync_batchnorm(self, model: nn.Module, device: torch.device) -> nn.Module:
        """``train.sync_bn``: BatchNorm over the global batch (the state_dict keys stay those of BatchNorm)."""
        if not self.enabled:
            return model  # one process sees the whole batch already
        if device.type != "cuda":
            raise ConfigError("train.sync_bn=true needs GPUs: torch's SyncBatchNorm has no CPU implementation")
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)

    # ------------------------------------------------------------------------------------------- collectives
    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.enabled:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def on_main(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` on rank 0 alone, its result broadcast; a KitError there is raised on every rank."""
        if not self.enabled:
            return fn(*args)
        outcome: tuple[str, Any] = ("ok", None)
        if self.is_main:
            try:
                outcome = ("ok", fn(*args))
            except KitError as e:
                outcome = ("error", (type(e), str(e)))
        status, value = self.broadcast(outcome)
        if status == "error":
            raise value[0](value[1]) if self.is_main else DistributedError(f"rank 0 stopped: {value[1]}")
        return value

    def decided_by_main(self, callback: Callable[..., None] | None) -> Callable[..., None] | None:
        """A per-epoch callback that may raise to stop the run (a time budget, a pruner) called on rank 0 alone, its
        exception raised on every rank: ranks that decided apart would wait for each other in a collective."""
        if callback is None or not self.enabled:
            return callback

        def decide(*args: Any) -> None:
            raised = None
            if self.is_main:
                try:
                    callback(*args)
                except Exception as e:  # handed to every rank, raised there
                    raised = e
            raised = self.broadcast(raised)
            if raised is not None:
                raise raised
        return decide

    def gather_rows(self, part: np.ndarray, n: int) -> np.ndarray:
        """The inverse of :meth:`shard`: every rank's ``part`` of ``n`` rows back in their original order."""
        if not self.enabled:
            return part
        parts: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(parts, part)
        out = np.empty((n, *part.shape[1:]), dtype=part.dtype)
        for r, p in enumerate(parts):
            out[r::self.world] = p
        return out

    def mean(self, value: float) -> float:
        """The mean of ``value`` over the ranks (every rank trains as many samples per epoch)."""
        if not self.enabled:
            return value
        values: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(values, float(value))
        return float(np.mean(values))

    def sync_buffers(self, module: nn.Module) -> None:
        """Rank 0's buffers (BatchNorm statistics) on every rank, so that every rank validates the same model."""
        if self.enabled:
            for buf in module.buffers():
                torch.distributed.broadcast(buf, src=0)

    def writing(self, run: RunDir, fold: int | None = None) -> contextlib.AbstractContextManager:
        """The run's (or a fold's) write lock on rank 0; the other ranks write nothing and take no lock."""
        return run.writing(fold) if self.is_main else contextlib.nullcontext(run)


_SINGLE = Group()


def current_group() -> Group:
    """This process's group: rank 0 of 1 unless a process group is running."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return _SINGLE
    return Group(torch.distributed.get_rank(), torch.distributed.get_world_size(),
                 int(os.environ.get("LOCAL_RANK", "0")))


def launched() -> bool:
    """Started by torchrun (or another launcher that sets WORLD_SIZE) with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def _backend(device: str) -> str:
    if device == "cpu" or not torch.cuda.is_available():
        if device.startswith("cuda"):
            raise ConfigError(f"train.device={device} but CUDA is not available here")
        return "gloo"
    return "nccl"


@contextlib.contextmanager
def session(device: str) -> Iterator[Group]:
    """The process group of a ``torchrun`` launch for the run's ``train.device`` (none without torchrun).

    Ranks other than 0 print nothing on stdout (the epochs would appear N times); their errors still reach stderr.
    """
    if not launched():
        yield _SINGLE
        return
    if device.startswith("cuda:"):
        raise ConfigError(f"train.device={device} picks one GPU, but torchrun gives each process its own: set "
                          "train.device=auto or cuda")
    backend = _backend(device)
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    torch.distributed.init_process_group(backend, timeout=_timeout())
    group = current_group()
    log.info(f"kit: rank {group.rank}/{group.world} pid {os.getpid()} ({backend})")  # before rank > 0 is quieted
    quiet = None if group.is_main else open(os.devnull, "w")  # noqa: SIM115 - closed below
    try:
        with contextlib.redirect_stdout(quiet) if quiet else contextlib.nullcontext():
            yield group
    except torch.distributed.DistBackendError as e:
        raise DistributedError(_lost(group, e)) from None
    except RuntimeError as e:
        if not _is_peer_failure(e):
            raise
        raise DistributedError(_lost(group, e)) from None
    finally:
        if quiet:
            quiet.close()
        torch.distributed.destroy_process_group()


def _is_peer_failure(e: RuntimeError) -> bool:
    text = str(e).lower()
    return any(w in text for w in ("connection closed", "connection reset", "timed out", "timeout", "broken pipe",
                                   "gloo", "nccl"))


def _lost(group: Group, e: Exception) -> str:
    first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
    return (f"rank {group.rank} of {group.world} lost contact with the other processes of the run ({first}); "
            "every process stops; continue with kit train --resume RUN (under the same torchrun)")


class EpochSampler(Sampler[int]):
    """One epoch's training order, the same on every rank, and this rank's part of each global batch.

    The epoch's order is a permutation (or, with ``weights``, a weighted draw with replacement) from a generator
    seeded with ``seed``; it is cut into ``len // batch_size`` global batches (the last, incomplete one is dropped,
    as a single process does; a dataset smaller than one batch is repeated to fill it), and rank ``r`` of ``world``
    takes part ``r`` of ``world`` equal consecutive parts of each. One process (world 1) trains every batch whole.
    """

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world: int = 1,
                 weights: np.ndarray | None = None):
        if batch_size % world:
            raise ConfigError(f"train.batch_size={batch_size} must divide by the {world} processes")
        self.n, self.batch_size, self.seed, self.rank, self.world = n, batch_size, seed, rank, world
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.double)
        self.n_batches = max(n // batch_size, 1)

    def order(self) -> torch.Tensor:
        """The epoch's global order, n_batches * batch_size indices."""
        g = torch.Generator().manual_seed(self.seed)
        if self.weights is not None:
            idx = torch.multinomial(self.weights, self.n, replacement=True, generator=g)
        else:
            idx = torch.randperm(self.n, generator=g)
        total = self.n_batches * self.batch_size
        return idx.repeat(-(-total // self.n))[:total]

    def __iter__(self) -> Iterator[int]:
        part = self.batch_size // self.world
        batches = self.order().view(self.n_batches, self.world, part)
        return iter(batches[:, self.rank].reshape(-1).tolist())

    def __len__(self) -> int:
        return self.n_batches * (self.batch_size // self.world)
