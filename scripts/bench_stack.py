"""Does stacking pay? OOF pAUC (ISIC 2024's metric) of an image run alone, a GBDT stack on the metadata alone, and
the stack on the metadata plus the image run's OOF scores, on synthetic ISIC 2024 data, all on the same folds; and
the image run with its metadata branch (every feature column of the layout) for comparison.

    .venv/bin/python scripts/bench_stack.py [--n 3000] [--epochs 1] [--size 32] [--img-size 32] [--device cpu]

The image run is a real one: kit train (a tiny CNN, test_resnet, images only: no metadata branch) and kit predict
with TTA. The metadata-only stack makes its folds as kit train does (same n_folds and fold_seed), so the three
figures are scored on the same rows in the same folds.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd

from kit.console import show_messages

ISIC = "isic-2024-challenge"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=3000, help="training images (default 3000)")
    p.add_argument("--size", type=int, default=32, help="synthetic image side (default 32)")
    p.add_argument("--img-size", type=int, default=32, help="model input side (default 32)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--folds", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--models", default="lgbm,xgb,cat")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--trees", type=int, default=200)
    p.add_argument("--seed", type=int, default=0, help="synthetic data seed")
    p.add_argument("--out", default="/tmp/bench-stack", help="working folder (replaced)")
    return p.parse_args(argv)


def image_run(args, data: Path, out: Path, metadata: bool = False) -> Path:
    """kit train + kit predict (TTA x4); with ``metadata`` the model's metadata branch takes every feature column."""
    from kit.config import load_config
    from kit.pipeline import predict_and_submit
    from kit.train import train_folds

    cfg = load_config(ISIC, overrides=[
        "model.name=test_resnet", f"model.img_size={args.img_size}", f"model.use_metadata={str(metadata).lower()}",
        f"n_folds={args.folds}", f"train.epochs={args.epochs}", "train.warmup_epochs=0", "train.batch_size=64",
        f"train.device={args.device}", "train.early_stopping=0", "train.lr=0.003"])
    run = out / "runs" / ("img-meta" if metadata else "img")
    train_folds(cfg, data, run)
    predict_and_submit(run, tta="4", out_dir=out / "submissions", device=args.device, report=False)
    return run


def main(argv: list[str] | None = None) -> None:
    from kit.config import load_saved_config
    from kit.data.synthetic import make_demo_data
    from kit.metrics import get_metric
    from kit.stack import StackSettings, run_stack

    args = parse_args(argv)
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    data = make_demo_data(ISIC, out / "data", n=args.n, seed=args.seed, size=args.size)
    run = image_run(args, data, out)
    with_meta = image_run(args, data, out, metadata=True)
    t1 = time.perf_counter()
    cfg = load_saved_config(run / "config.yaml")
    models = [m for m in args.models.split(",") if m]
    common = dict(models=models, seeds=args.seeds, trees=args.trees, n_folds=cfg.n_folds, fold_seed=cfg.fold_seed)
    meta = run_stack(ISIC, data, [], out / "stack-meta", StackSettings(**common))
    full = run_stack(ISIC, data, [run], out / "stack-full", StackSettings(**common))
    t2 = time.perf_counter()
    same = pd.read_csv(out / "stack-meta" / "folds.csv").equals(pd.read_csv(out / "stack-full" / "folds.csv"))
    metric = get_metric("pauc80")

    def scored(r: Path) -> tuple[float, float]:
        oof = pd.read_csv(r / "oof_tta.csv")
        pooled = metric(oof["target"].to_numpy(), oof["pred"].to_numpy())
        return pooled, np.mean([metric(g["target"].to_numpy(), g["pred"].to_numpy()) for _, g in oof.groupby("fold")])

    rows = [("image run alone (test_resnet, TTA x4)", *scored(run)),
            ("image run + metadata branch", *scored(with_meta)),
            ("stack: metadata only", meta.cv, np.mean(list(meta.folds.values()))),
            ("stack: metadata + image OOF", full.cv, np.mean(list(full.folds.values())))]
    print(f"\nsynthetic ISIC 2024: {args.n} training rows, {cfg.n_folds} folds grouped by patient "
          f"(same folds for all: {same}); stack {'+'.join(models)} x {args.seeds} seeds, {args.trees} trees")
    print(f"{'':<40}{'pAUC80 CV':>10}{'mean of folds':>15}")
    for name, cv, mean in rows:
        print(f"{name:<40}{cv:>10.4f}{mean:>15.4f}")
    print(f"(max 0.2; image run {t1 - t0:.0f}s incl. data, stacks {t2 - t1:.0f}s)")


if __name__ == "__main__":
    show_messages()  # kit's messages, shown as the kit command shows them
    main()
