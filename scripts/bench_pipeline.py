"""Benchmark kit train's whole input pipeline on a GPU: augmentation in CPU workers against aug.on_device.

    python scripts/bench_pipeline.py [--n 20000] [--work /tmp/kit-bench-pipeline] [--workers 8] [--model resnet18]

N synthetic 96x96 .tif patches in the real PCam layout (made once under --work, packed by the first arm), then one
fold of ``kit train`` (the histopathology preset, batch 256, bf16, channels_last) per arm, 2 epochs each:
  (a) the ``histo`` preset in --workers CPU workers (the default path);
  (b) aug.on_device=true: the workers only read the pack, the dihedral and colour transforms run per batch on the
      GPU, with --workers and with a quarter of them;
  (c) the floor: no augmentation at all (aug.preset=none), --workers workers.
Each arm's figure is the training images/s of its second epoch (the first warms cuDNN up), from the fold's
history.csv; ratios are against (a) measured in this same run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

import pandas as pd

from kit.config import load_config
from kit.console import show_messages
from kit.data.synthetic import make_demo_data
from kit.train import train_folds

HCD = "histopathologic-cancer-detection"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=20000)
    p.add_argument("--work", default="/tmp/kit-bench-pipeline")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    p.add_argument("--model", default="resnet18")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--device", default="cuda")
    return p.parse_args(argv)


def data_folder(work: Path, n: int) -> Path:
    folder = work / f"hcd-{n}"
    if not (folder / "train_labels.csv").is_file():
        t = time.perf_counter()
        make_demo_data(HCD, folder, n=n, n_test=16)
        print(f"made {n} patches in {time.perf_counter() - t:.0f} s", flush=True)
    return folder


def train_rate(data: Path, out: Path, args: argparse.Namespace, workers: int, overrides: list[str]) -> float:
    """Training images/s of the second epoch of fold 0."""
    cfg = load_config(HCD, overrides=[
        f"model.name={args.model}", "model.pretrained=false", "n_folds=5", "train.epochs=2", "train.warmup_epochs=0",
        f"train.batch_size={args.batch}", f"train.num_workers={workers}", f"train.device={args.device}",
        "train.amp=auto", "train.channels_last=auto", *overrides])
    shutil.rmtree(out, ignore_errors=True)
    train_folds(cfg, data, out, folds=[0])
    return float(pd.read_csv(out / "fold0" / "history.csv")["images_per_s"].iloc[-1])


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    work = Path(args.work)
    data = data_folder(work, args.n)
    quarter = max(1, args.workers // 4)
    arms = {
        f"(a) histo preset, {args.workers} CPU workers": (args.workers, []),
        f"(b) aug.on_device, {args.workers} workers": (args.workers, ["aug.on_device=true"]),
    }
    if quarter < args.workers:  # fewer workers: does the GPU path still keep up where the CPU path does not?
        arms[f"(b) aug.on_device, {quarter} workers"] = (quarter, ["aug.on_device=true"])
        arms[f"(a) histo preset, {quarter} CPU workers"] = (quarter, [])
    arms[f"(c) no augmentation, {args.workers} workers"] = (args.workers, ["aug.preset=none"])
    rates = {}
    for i, (name, (workers, overrides)) in enumerate(arms.items()):
        rates[name] = train_rate(data, work / f"run{i}", args, workers, overrides)
        print(f"{name}: {rates[name]:.0f} img/s", flush=True)
    base = next(iter(rates.values()))
    print(f"\n| arm | train img/s | vs (a) with {args.workers} workers |\n|---|---|---|")
    for name, rate in rates.items():
        print(f"| {name} | {rate:.0f} | {rate / base:.2f} |")


if __name__ == "__main__":
    show_messages()  # kit's messages, shown as the kit command shows them
    main()
