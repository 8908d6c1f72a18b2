"""Benchmark kit at ISIC 2024's real size: pack time and size, peak memory and time to the first step of `kit train`.

    .venv/bin/python scripts/bench_scale.py [--rows 50000,100000,200000,401059] [--work /tmp/kit-bench-scale]
                                            [--size 128] [--steps 50] [--keep]

For each row count, an ISIC 2024-shaped training set is written under --work: train-metadata.csv in the real column
layout (55 columns; 1,042 patients as in the real data; 393 positives per 401,059 rows) and train-image.hdf5, one JPEG
byte string per isic_id, drawn from a pool of 512 synthetic lesion images of 120-160 px (decoding cost is real; the
pixels repeat). Then, in fresh processes:
  1. `kit pack --competition isic-2024-challenge --size S`: wall time, pack size on disk;
  2. `kit train` with the competition preset (fold 0), the pack already built, stopped after --steps training
     steps: the time from the process start to its first step, and its peak RSS (ru_maxrss) with, at the last step,
     its private memory (RssAnon) and its mapped files (RssFile: the libraries; the pack is read with pread, not
     mapped, so its pages stay in the page cache and out of the process).
Each data set and pack is deleted after its row unless --keep (401,059 rows at 128 px is a 19.7 GB pack).
The last column is each figure divided by the first row's, against rows / first rows: growth at most linear.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from kit.console import show_messages
from kit.data.pack import human_bytes, pack_path
from kit.data.synthetic import (
    ISIC_2024_TEST_COLUMNS,
    ISIC_2024_TRAIN_COLUMNS,
    LOOKS,
    SITES,
    _encode_jpeg,
    isic_2024_table,
    lesion_image,
)
from kit.io import write_csv_atomic

COMPETITION = "isic-2024-challenge"
PATIENTS, POSITIVE_RATE = 1042, 393 / 401_059
POOL = 512

# `kit train` as the CLI runs it, with its optimiser step counted: after the first step the time is noted, after
# --steps steps the memory figures are written and the process ends.
DRIVER = r"""
import json, resource, sys, time
import kit.train as T
out, steps = sys.argv[1], int(sys.argv[2])
seen = {"n": 0}
step = T._step
def counted(*args, **kwargs):
    result = step(*args, **kwargs)
    seen["n"] += 1
    if seen["n"] == 1:
        seen["first"] = time.time()
    if seen["n"] == steps:
        status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
        kb = lambda key: int(status[key].split()[0])
        json.dump({"first_step": seen["first"], "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                   "rss_anon_kb": kb("RssAnon"), "rss_file_kb": kb("RssFile")}, open(out, "w"))
        raise SystemExit(0)
    return result
T._step = counted
from kit.cli import main
sys.exit(main(sys.argv[3:]))
"""


def _rows(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    patient = np.repeat(np.arange(PATIENTS), rng.multinomial(n, np.full(PATIENTS, 1 / PATIENTS)))
    target = (rng.random(n) < POSITIVE_RATE).astype(int)
    target[rng.choice(n, 5 * 4, replace=False)] = 1  # every fold's validation part holds positives at 50k rows too
    return pd.DataFrame({"id": [f"ISIC_{i:07d}" for i in range(n)], "patient": [f"IP_{p:07d}" for p in patient],
                         "sex": np.where(patient % 2 == 0, "male", "female"),
                         "age": (30.0 + patient % 12 * 5), "site": np.array(SITES[:4])[rng.integers(0, 4, n)],
                         "target": target})


def _pool(seed: int) -> tuple[list[bytes], list[bytes]]:
    """Benign and malignant JPEGs of 120-160 px, the real tiles' range."""
    rng = np.random.default_rng(seed)
    pools = ([], [])
    for i in range(POOL):
        malignant = i % 8 == 0
        img = lesion_image(np.random.default_rng([seed, i]), LOOKS["malignant" if malignant else "benign"],
                           int(rng.integers(120, 161)))
        pools[malignant].append(_encode_jpeg(img))
    return pools


def write_dataset(out: Path, n: int, seed: int = 0) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rows = _rows(n + 100, seed)
    table = isic_2024_table(rows, seed)
    benign, malignant = _pool(seed)
    rng = np.random.default_rng(seed + 1)
    for name, part in (("train-image.hdf5", table.iloc[:n]), ("test-image.hdf5", table.iloc[n:])):
        with h5py.File(out / name, "w") as h5:
            for key, y in zip(part["isic_id"], part["target"], strict=True):
                pool = malignant if y else benign
                h5.create_dataset(key, data=np.bytes_(pool[int(rng.integers(len(pool)))]))
    write_csv_atomic(table.iloc[:n][ISIC_2024_TRAIN_COLUMNS], out / "train-metadata.csv")
    write_csv_atomic(table.iloc[n:][ISIC_2024_TEST_COLUMNS], out / "test-metadata.csv")
    write_csv_atomic(pd.DataFrame({"isic_id": table.iloc[n:]["isic_id"], "target": 0.0}), out / "sample_submission.csv")


def run_pack(data: Path, size: int, env: dict) -> float:
    start = time.time()
    subprocess.run([sys.executable, "-m", "kit.cli", "pack", "--competition", COMPETITION, "--data", str(data),
                    "--size", str(size)], env=env, check=True, stdout=subprocess.DEVNULL)
    return time.time() - start


def run_train(data: Path, size: int, steps: int, work: Path, env: dict) -> dict:
    report, run = work / "train-report.json", work / "run"
    shutil.rmtree(run, ignore_errors=True)
    args = ["train", "--competition", COMPETITION, "--data", str(data), "--out", str(run), "--folds", "0",
            "--set", f"model.img_size={size}", "--set", "train.device=cpu", "--no-progress"]
    start = time.time()
    proc = subprocess.run([sys.executable, "-c", DRIVER, str(report), str(steps), *args], env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0 or not report.is_file():
        sys.exit(f"kit train failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    result = json.loads(report.read_text())
    result["to_first_step_s"] = result.pop("first_step") - start
    shutil.rmtree(run, ignore_errors=True)
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", default="50000,100000,200000,401059")
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "kit-bench-scale")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--keep", action="store_true", help="keep each data set and pack")
    args = p.parse_args()
    env = {**os.environ, "KIT_CACHE_DIR": str(args.work / "packs"), "PYTHONUNBUFFERED": "1"}
    print(f"{'rows':>8} {'write s':>8} {'pack s':>8} {'pack size':>10} {'first step s':>13} {'peak RSS':>9} "
          f"{'private':>8} {'mapped files':>12}  growth (rows / RSS / first step)")
    first = None
    for n in (int(r) for r in args.rows.split(",")):
        data = args.work / f"isic2024-{n}"
        t = time.time()
        write_dataset(data, n)
        written = time.time() - t
        pack_s = run_pack(data, args.size, env)
        pack = pack_path(COMPETITION, data, "train", args.size, args.work / "packs")
        disk = sum(f.stat().st_blocks * 512 for f in pack.iterdir())
        r = run_train(data, args.size, args.steps, args.work, env)
        first = first or (n, r["maxrss_kb"], r["to_first_step_s"])
        print(f"{n:>8} {written:>8.0f} {pack_s:>8.0f} {human_bytes(disk):>10} {r['to_first_step_s']:>13.1f} "
              f"{human_bytes(r['maxrss_kb'] * 1024):>9} {human_bytes(r['rss_anon_kb'] * 1024):>8} "
              f"{human_bytes(r['rss_file_kb'] * 1024):>12}  {n / first[0]:.1f}x / {r['maxrss_kb'] / first[1]:.2f}x / "
              f"{r['to_first_step_s'] / first[2]:.2f}x", flush=True)
        if not args.keep:
            shutil.rmtree(pack, ignore_errors=True)
            shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    show_messages()  # kit's messages, shown as the kit command shows them
    main()
