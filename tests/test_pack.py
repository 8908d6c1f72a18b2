"""The packed image cache (kit.data.pack, kit pack): rows equal a direct decode; reuse, staleness, truncation, disk
full, resume after a real SIGKILL, and where the cache lives. Small synthetic sets in the competitions' layouts plus
the real files in ../shared/data."""

from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import tifffile

from kit.cli import main
from kit.competitions import get_competition
from kit.data import pack as packmod
from kit.data import readers
from kit.data.labels import load_test_table, load_train_table
from kit.data.pack import (
    IMAGES,
    MANIFEST,
    IncompletePackError,
    PackError,
    StalePackError,
    build_pack,
    ensure_pack,
    open_pack,
    pack_path,
)
from kit.data.readers import fit_square as _fit
from kit.data.synthetic import make_demo_data
from kit.errors import DataError

HCD = "histopathologic-cancer-detection"
I24 = "isic-2024-challenge"
KIT = Path(sys.executable).with_name("kit")


def load_image_cache(store, ids, size):
    """Every image fully decoded and resized as the training transform would: the reference a pack is held to."""
    return np.stack([_fit(store.read(k), size) for k in ids])


@pytest.fixture(scope="module")
def hcd_master(tmp_path_factory) -> Path:
    return make_demo_data(HCD, tmp_path_factory.mktemp("hcd") / "data", n=200, n_test=8)


@pytest.fixture(scope="module")
def i24_master(tmp_path_factory) -> Path:
    return make_demo_data(I24, tmp_path_factory.mktemp("i24") / "data", n=200, n_test=8, size=96)


@pytest.fixture
def hcd(hcd_master, tmp_path) -> Path:
    """A private copy: tests below change files."""
    return Path(shutil.copytree(hcd_master, tmp_path / "hcd"))


def open_store(competition: str, data: Path, split: str = "train"):
    return readers.open_store(get_competition(competition), data, split)


def train_ids(data: Path, competition: str = HCD) -> list[str]:
    return load_train_table(competition, data)["id"].tolist()


def lines(log: list[str]) -> str:
    return "\n".join(log)


# ---------------------------------------------------------------------------------------------------------------
# Contents


@pytest.mark.parametrize("size", [96, 64, 112])
def test_hcd_rows_equal_the_in_ram_cache(hcd_master, tmp_path, size):
    ids = train_ids(hcd_master)
    pack = build_pack(HCD, hcd_master, "train", size, ids, cache_dir=tmp_path, progress=False, log=lambda _: None)
    assert pack.status == "built" and pack.images.shape == (200, size, size, 3)
    assert isinstance(pack.images, np.memmap) and not pack.images.flags.writeable
    expected = load_image_cache(open_store(HCD, hcd_master), ids, size)
    np.testing.assert_array_equal(np.asarray(pack.images), expected)
    assert pack.path.stat().st_size and (pack.path / IMAGES).stat().st_size == 200 * size * size * 3
    manifest = json.loads((pack.path / MANIFEST).read_text())
    assert manifest["complete"] is True and manifest["n"] == 200 and manifest["source"]["kind"] == "dir"
    assert not (pack.path / "done.u8").exists()


def test_hdf5_rows_equal_a_reduced_decode_and_are_close_to_a_full_one(i24_master, tmp_path):
    ids = train_ids(i24_master, I24)
    store = open_store(I24, i24_master)
    full = build_pack(I24, i24_master, "train", 96, ids, cache_dir=tmp_path, progress=False, log=lambda _: None)
    np.testing.assert_array_equal(np.asarray(full.images), load_image_cache(store, ids, 96))  # no scaling at 96
    small = build_pack(I24, i24_master, "train", 48, ids, cache_dir=tmp_path, progress=False, log=lambda _: None)
    reduced = np.stack([_fit(store.read(k, min_side=48), 48) for k in ids])
    np.testing.assert_array_equal(np.asarray(small.images), reduced)
    # the DCT-scaled decode is not bit-identical to full decode + INTER_AREA, but the same picture
    diff = np.abs(np.asarray(small.images, np.int16) - load_image_cache(store, ids, 48).astype(np.int16))
    assert diff.mean() < 2.0
    assert json.loads((small.path / MANIFEST).read_text())["source"]["kind"] == "hdf5"


def test_real_files(shared_data, tmp_path):
    quiet = dict(cache_dir=tmp_path, progress=False, log=lambda _: None)
    hcd = shared_data / HCD
    ids = train_ids(hcd)
    pack = build_pack(HCD, hcd, "train", 96, ids, **quiet)
    np.testing.assert_array_equal(np.asarray(pack.images), load_image_cache(open_store(HCD, hcd), ids, 96))
    siim = shared_data / "siim-isic-melanoma-classification"
    store = open_store("siim-isic-melanoma-classification", siim)
    ids = store.keys()
    pack = build_pack("siim-isic-melanoma-classification", siim, "train", 128, ids, **quiet)
    np.testing.assert_array_equal(np.asarray(pack.images), np.stack([_fit(store.read(k, min_side=128), 128)
                                                                     for k in ids]))
    full = load_image_cache(store, ids, 128)  # 512 px decoded whole, then INTER_AREA
    assert np.abs(np.asarray(pack.images, np.int16) - full.astype(np.int16)).mean() < 2.0
    i24 = shared_data / I24
    ids = load_test_table(I24, i24)["id"].tolist()
    pack = build_pack(I24, i24, "test", 64, ids, **quiet)
    store = open_store(I24, i24, "test")
    np.testing.assert_array_equal(pack.images[pack.index(ids[:2])],
                                  np.stack([_fit(store.read(k, min_side=64), 64) for k in ids[:2]]))


def test_index_pickle_and_bad_ids(hcd_master, tmp_path):
    ids = train_ids(hcd_master)
    pack = build_pack(HCD, hcd_master, "train", 32, ids, cache_dir=tmp_path, progress=False, log=lambda _: None)
    rows = pack.index([ids[5], ids[0]])
    assert rows.tolist() == [5, 0]
    with pytest.raises(DataError, match=r"2 of 3 ids are not in the pack, first: nope, gone"):
        pack.index(["nope", ids[1], "gone"])
    again = pickle.loads(pickle.dumps(pack))
    assert isinstance(again.images, np.memmap) and len(pickle.dumps(pack)) < 100_000  # the path, not the pixels
    np.testing.assert_array_equal(np.asarray(again.images), np.asarray(pack.images))


# ---------------------------------------------------------------------------------------------------------------
# Reuse and staleness


def test_valid_pack_is_reused_without_rebuilding(hcd, tmp_path):
    ids = train_ids(hcd)
    log: list[str] = []
    first = ensure_pack(HCD, hcd, "train", 48, ids, cache_dir=tmp_path / "c", progress=False, log=log.append)
    before = (first.path / IMAGES).stat()
    time.sleep(0.01)
    second = ensure_pack(HCD, hcd, "train", 48, ids[::-1], cache_dir=tmp_path / "c", progress=False, log=log.append)
    after = (second.path / IMAGES).stat()
    assert (first.status, second.status) == ("built", "reused")
    assert (before.st_mtime_ns, before.st_ino) == (after.st_mtime_ns, after.st_ino)
    assert sum("packing" in line for line in log) == 1
    assert open_pack(HCD, hcd, "train", 48, cache_dir=tmp_path / "c").ids == ids


def test_touched_or_rewritten_file_makes_the_pack_stale(hcd, tmp_path):
    ids = train_ids(hcd)
    cache = tmp_path / "c"
    ensure_pack(HCD, hcd, "train", 48, ids, cache_dir=cache, progress=False, log=lambda _: None)
    touched = hcd / "train" / f"{ids[3]}.tif"
    st = touched.stat()
    os.utime(touched, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.raises(StalePackError, match=rf"1 image file changed, first: .*{ids[3]}\.tif \(modified"):
        open_pack(HCD, hcd, "train", 48, ids, cache_dir=cache)
    log: list[str] = []
    pack = ensure_pack(HCD, hcd, "train", 48, ids, cache_dir=cache, progress=False, log=log.append)
    assert pack.status == "built" and f"is stale (1 image file changed, first: {touched}" in lines(log)
    assert ensure_pack(HCD, hcd, "train", 48, ids, cache_dir=cache, progress=False).status == "reused"

    new = np.zeros((96, 96, 3), np.uint8)
    new[::2] = 255
    tifffile.imwrite(touched, new, photometric="rgb", compression="zlib")  # another size on disk
    with pytest.raises(StalePackError, match=r"size \d+ -> \d+ bytes"):
        open_pack(HCD, hcd, "train", 48, ids, cache_dir=cache)
    pack = ensure_pack(HCD, hcd, "train", 48, ids, cache_dir=cache, progress=False, log=lambda _: None)
    np.testing.assert_array_equal(pack.images[3], _fit(new, 48))


def test_added_or_removed_id_makes_the_pack_stale(hcd, tmp_path):
    ids = train_ids(hcd)
    cache = tmp_path / "c"
    ensure_pack(HCD, hcd, "train", 32, ids, cache_dir=cache, progress=False, log=lambda _: None)
    with pytest.raises(StalePackError, match=rf"ids changed: 0 added, 1 removed \(first: {ids[7]}\)"):
        open_pack(HCD, hcd, "train", 32, ids[:7] + ids[8:], cache_dir=cache)
    shutil.copy(hcd / "train" / f"{ids[0]}.tif", hcd / "train" / "extra.tif")
    log: list[str] = []
    pack = ensure_pack(HCD, hcd, "train", 32, ids + ["extra"], cache_dir=cache, progress=False, log=log.append)
    assert pack.status == "built" and "ids changed: 1 added (first: extra), 0 removed" in lines(log)
    np.testing.assert_array_equal(pack.images[pack.index(["extra"])[0]], pack.images[0])
    (hcd / "train" / "extra.tif").unlink()
    with pytest.raises(DataError, match=r"extra\.tif: image file not found"):
        ensure_pack(HCD, hcd, "train", 32, ids + ["extra"], cache_dir=cache, progress=False, log=lambda _: None)


def test_changed_hdf5_makes_the_pack_stale(i24_master, tmp_path):
    data = Path(shutil.copytree(i24_master, tmp_path / "i24"))
    ids = train_ids(data, I24)
    cache = tmp_path / "c"
    ensure_pack(I24, data, "train", 48, ids, cache_dir=cache, progress=False, log=lambda _: None)
    with h5py.File(data / "train-image.hdf5", "a") as h5:
        h5.create_dataset("ISIC_extra", data=np.bytes_(h5[ids[0]][()]))
    with pytest.raises(StalePackError, match=r"train-image\.hdf5 changed"):
        open_pack(I24, data, "train", 48, ids, cache_dir=cache)
    log: list[str] = []
    assert ensure_pack(I24, data, "train", 48, ids, cache_dir=cache, progress=False, log=log.append).status == "built"
    assert "train-image.hdf5 changed" in lines(log)


def test_truncated_or_incomplete_pack_is_refused_then_repaired(hcd, tmp_path):
    ids = train_ids(hcd)
    cache = tmp_path / "c"
    pack = ensure_pack(HCD, hcd, "train", 32, ids, cache_dir=cache, progress=False, log=lambda _: None)
    expected = np.array(pack.images)
    del pack
    path = pack_path(HCD, hcd, "train", 32, cache)
    os.truncate(path / IMAGES, 1000)
    with pytest.raises(PackError, match=r"images\.u8 is truncated or damaged \(1000 bytes, expected 200 x 32 x 32 x 3"):
        open_pack(HCD, hcd, "train", 32, ids, cache_dir=cache)
    log: list[str] = []
    pack = ensure_pack(HCD, hcd, "train", 32, ids, cache_dir=cache, progress=False, log=log.append)
    assert "is truncated" in lines(log) and pack.status == "built"
    np.testing.assert_array_equal(np.asarray(pack.images), expected)

    manifest = json.loads((path / MANIFEST).read_text())
    (path / MANIFEST).write_text(json.dumps({**manifest, "complete": False}))
    with pytest.raises(IncompletePackError, match="incomplete"):
        open_pack(HCD, hcd, "train", 32, ids, cache_dir=cache)
    pack = ensure_pack(HCD, hcd, "train", 32, ids, cache_dir=cache, progress=False, log=lambda _: None)
    np.testing.assert_array_equal(np.asarray(pack.images), expected)
    with pytest.raises(PackError, match=r"no pack at .*: run `kit pack --competition"):
        open_pack(HCD, hcd, "train", 40, ids, cache_dir=cache)


def test_bad_image_names_the_file_and_leaves_no_complete_pack(hcd, tmp_path):
    ids = train_ids(hcd)
    bad = hcd / "train" / f"{ids[150]}.tif"
    bad.write_bytes(b"II*\x00garbage")
    with pytest.raises(DataError, match=rf"^{bad}: "):
        build_pack(HCD, hcd, "train", 32, ids, cache_dir=tmp_path, progress=False, log=lambda _: None)
    with pytest.raises(IncompletePackError):
        open_pack(HCD, hcd, "train", 32, ids, cache_dir=tmp_path)


# ---------------------------------------------------------------------------------------------------------------
# Disk full, resume


def test_disk_full_up_front_leaves_nothing_that_looks_valid(hcd, tmp_path, monkeypatch):
    ids = train_ids(hcd)

    def full(fd, nbytes):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(packmod, "_preallocate", full)
    with pytest.raises(PackError, match=r"no space left for the pack in .*: it needs 614400 bytes "
                                        r"\(200 x 32 x 32 x 3 = 614.4 KB\)") as e:
        build_pack(HCD, hcd, "train", 32, ids, cache_dir=tmp_path, progress=False, log=lambda _: None)
    assert "\n" not in str(e.value)
    path = pack_path(HCD, hcd, "train", 32, tmp_path)
    assert not (path / IMAGES).exists()
    assert json.loads((path / MANIFEST).read_text())["complete"] is False
    with pytest.raises(IncompletePackError):
        open_pack(HCD, hcd, "train", 32, ids, cache_dir=tmp_path)


def test_write_error_midway_leaves_no_complete_and_resumes(hcd, tmp_path, monkeypatch):
    ids = train_ids(hcd)
    monkeypatch.setattr(packmod, "MAX_CHUNK_ROWS", 50)
    real_write = packmod._write_rows
    calls = []

    def write_then_fail(fd, buf, offset):
        calls.append(offset)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(fd, buf, offset)

    monkeypatch.setattr(packmod, "_write_rows", write_then_fail)
    with pytest.raises(PackError, match="no space left for the pack"):
        build_pack(HCD, hcd, "train", 32, ids, cache_dir=tmp_path, progress=False, log=lambda _: None)
    with pytest.raises(IncompletePackError):
        open_pack(HCD, hcd, "train", 32, ids, cache_dir=tmp_path)
    monkeypatch.setattr(packmod, "_write_rows", real_write)
    log: list[str] = []
    pack = ensure_pack(HCD, hcd, "train", 32, ids, cache_dir=tmp_path, progress=False, log=log.append)
    assert pack.status == "resumed" and "1 of 4 chunks (50 of 200 images) were already packed" in lines(log)
    assert "decoded 150 images" in lines(log)
    np.testing.assert_array_equal(np.asarray(pack.images), load_image_cache(open_store(HCD, hcd), ids, 32))


def test_source_change_between_kill_and_resume_starts_over(hcd, tmp_path, monkeypatch):
    ids = train_ids(hcd)
    monkeypatch.setattr(packmod, "MAX_CHUNK_ROWS", 50)
    monkeypatch.setattr(packmod, "_verify", lambda job, done: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        build_pack(HCD, hcd, "train", 32, ids, cache_dir=tmp_path, progress=False, log=lambda _: None)
    monkeypatch.undo()
    monkeypatch.setattr(packmod, "MAX_CHUNK_ROWS", 50)
    f = hcd / "train" / f"{ids[9]}.tif"
    os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 10**9))
    log: list[str] = []
    pack = ensure_pack(HCD, hcd, "train", 32, ids, cache_dir=tmp_path, progress=False, log=log.append)
    assert pack.status == "built"
    assert f"1 image file changed, first: {f} (modified since the pack was built) since the interrupted build; " \
           "starting over" in lines(log)


def _big_hcd(hcd_master: Path, root: Path, n: int) -> Path:
    """n HCD patches: the 200 synthetic ones hard-linked under new ids (no copying), with their labels."""
    data = root / "big"
    (data / "train").mkdir(parents=True)
    src = sorted((hcd_master / "train").glob("*.tif"))
    ids = [f"{i:06d}" for i in range(n)]
    for i, id_ in enumerate(ids):
        os.link(src[i % len(src)], data / "train" / f"{id_}.tif")
    pd.DataFrame({"id": ids, "label": [i % 2 for i in range(n)]}).to_csv(data / "train_labels.csv", index=False)
    return data


def test_killed_kit_pack_resumes_where_it_stopped(hcd_master, tmp_path):
    data = _big_hcd(hcd_master, tmp_path, 2000)  # 96 px: 256 rows a chunk, 8 chunks
    cache = tmp_path / "cache"
    cmd = [str(KIT), "pack", "--competition", HCD, "--data", str(data), "--size", "96", "--cache-dir", str(cache),
           "--workers", "2"]
    path = pack_path(HCD, data, "train", 96, cache)
    env = {**os.environ, "KIT_PACK_TEST_DELAY": "0.4"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    done = 0
    while time.monotonic() < deadline and proc.poll() is None:
        if (path / "done.u8").exists():
            done = int(np.fromfile(path / "done.u8", np.uint8).sum())
            if done >= 2:
                break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert 2 <= done < 8, f"the build was not caught mid-way (done chunks: {done}, rc {proc.returncode})"
    with pytest.raises(IncompletePackError):
        open_pack(HCD, data, "train", 96, cache_dir=cache)

    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert rerun.stdout.startswith(f"resumed {path}: 2000 images at 96x96 px")
    decoded = int(rerun.stderr.split("decoded ")[1].split()[0])
    assert decoded <= 2000 - 2 * 256
    resumed = open_pack(HCD, data, "train", 96, cache_dir=cache)
    fresh = build_pack(HCD, data, "train", 96, resumed.ids, cache_dir=tmp_path / "fresh", progress=False,
                       log=lambda _: None)
    assert resumed.ids == fresh.ids
    np.testing.assert_array_equal(np.asarray(resumed.images), np.asarray(fresh.images))


# ---------------------------------------------------------------------------------------------------------------
# Where packs live, the command


def test_cache_location_order(hcd_master, tmp_path, monkeypatch):
    monkeypatch.delenv("KIT_CACHE_DIR", raising=False)
    monkeypatch.setattr(packmod, "KAGGLE_WORKING", tmp_path / "no-kaggle")
    path = pack_path(HCD, hcd_master, "train", 96)
    assert path.parent == hcd_master.resolve() / ".kit-cache"
    assert path.name.startswith(f"{HCD}-train-96px-")
    other = Path(shutil.copytree(hcd_master / "train", tmp_path / "x" / "train")).parent
    assert pack_path(HCD, other, "train", 96).name != path.name  # the data folder's hash tells them apart
    (tmp_path / "kaggle").mkdir()
    monkeypatch.setattr(packmod, "KAGGLE_WORKING", tmp_path / "kaggle")
    assert pack_path(HCD, hcd_master, "train", 96).parent == tmp_path / "kaggle" / "kit-cache"
    monkeypatch.setenv("KIT_CACHE_DIR", str(tmp_path / "env"))
    assert pack_path(HCD, hcd_master, "train", 96).parent == tmp_path / "env"
    assert pack_path(HCD, hcd_master, "train", 96, tmp_path / "arg").parent == tmp_path / "arg"


def test_read_only_data_folder_falls_back_to_the_home_cache(hcd_master, tmp_path, monkeypatch):
    ro = Path(shutil.copytree(hcd_master, tmp_path / "ro"))
    monkeypatch.delenv("KIT_CACHE_DIR", raising=False)
    monkeypatch.setattr(packmod, "KAGGLE_WORKING", tmp_path / "no-kaggle")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for p in [ro, *ro.rglob("*")]:
        p.chmod(p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    if os.geteuid() == 0:
        # root writes through permission bits; a read-only mount (Kaggle's /kaggle/input) refuses it with EROFS
        real_mkstemp = packmod.tempfile.mkstemp

        def mkstemp(*args, dir=None, **kwargs):
            if dir is not None and Path(dir).resolve().is_relative_to(ro.resolve()):
                raise OSError(errno.EROFS, "Read-only file system")
            return real_mkstemp(*args, dir=dir, **kwargs)

        monkeypatch.setattr(packmod.tempfile, "mkstemp", mkstemp)
    try:
        pack = ensure_pack(HCD, ro, "train", 32, train_ids(ro), progress=False, log=lambda _: None)
        assert pack.path.parent == tmp_path / "home" / ".cache" / "kit"
        assert not (ro / ".kit-cache").exists()
    finally:
        for p in [ro, *ro.rglob("*")]:
            p.chmod(p.stat().st_mode | stat.S_IWUSR)


def test_kit_pack_command_builds_then_reuses(hcd_master, tmp_path, capsys):
    args = ["pack", "--competition", "hcd", "--data", str(hcd_master), "--size", "48", "--cache-dir", str(tmp_path)]
    assert main(args) == 0
    out, err = capsys.readouterr()
    path = pack_path(HCD, hcd_master, "train", 48, tmp_path)
    assert out.startswith(f"built {path}: 200 images at 48x48 px, 1.4 MB on disk")
    assert "packing 200 images at 48x48 px" in err and "decoded 200 images" in err
    assert main(args + ["--split", "test"]) == 0
    assert capsys.readouterr().out.startswith("built ") and (tmp_path / path.name.replace("-train-", "-test-")).is_dir()
    assert main(args) == 0
    assert capsys.readouterr().out.startswith(f"reused {path}")
    assert main(args + ["--rebuild"]) == 0
    assert capsys.readouterr().out.startswith(f"built {path}")
    assert main(["pack", "--competition", "hcd", "--data", str(tmp_path / "nothing"), "--size", "48"]) == 1
    assert "labels file not found" in capsys.readouterr().err


def test_progress_line_when_stderr_is_not_a_terminal(capsys):
    from kit.progress import Progress, fmt_duration

    bar = Progress(220025, "packed", unit="img", every=0.0)
    bar.eta.start -= 10
    bar.update(12000)
    err = capsys.readouterr().err
    assert err.startswith("packed: 12000/220025 imgs (5%), ") and " imgs/s, ETA " in err
    assert fmt_duration(245) == "4m05s" and fmt_duration(3720) == "1h02m"
