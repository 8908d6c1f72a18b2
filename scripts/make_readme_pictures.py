"""Draw the README's pictures of kit show and kit lr-find from kit's demo data, into docs/.

    .venv/bin/python scripts/make_readme_pictures.py [--out docs] [--work /tmp/kit-pictures]

Synthetic ISIC 2018 lesions for the batch preview; synthetic HCD patches (PCam's layout and rule: tumour in the
centre 32x32 makes a patch positive) for a tiny 2-fold run whose worst errors and class-activation maps are drawn,
and for the learning-rate range test. A few minutes on a CPU; every PNG stays well under 200 KB.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

HCD, ISIC = "histopathologic-cancer-detection", "isic-2018-task3"
TINY = ["model.name=test_resnet", "model.pretrained=false", "n_folds=2", "train.batch_size=16",
        "train.warmup_epochs=0", "train.device=cpu"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="docs", help="where the PNG files go (default docs)")
    p.add_argument("--work", default=None, help="folder for the demo data and the run (default: a temporary one)")
    return p.parse_args(argv)


def batch_pictures(work: Path, out: Path) -> list[Path]:
    from kit.config import load_config
    from kit.data.synthetic import make_demo_data
    from kit.diagnostics.batch import preview_batch, write_batch_grids

    data = make_demo_data(ISIC, work / "demo-isic", n=48, seed=0, size=96)
    cfg = load_config(ISIC, overrides=TINY + ["model.img_size=64", "aug.preset=isic"])
    return [g.path for g in write_batch_grids(preview_batch(cfg, data, n=8, seed=1), out)]


def run_pictures(work: Path, out: Path) -> list[Path]:
    from kit.config import load_config
    from kit.data.synthetic import make_demo_data
    from kit.diagnostics.cam import explain, write_cam_grid
    from kit.diagnostics.errors import write_error_grids
    from kit.train import train_folds

    data = make_demo_data(HCD, work / "demo-hcd", n=128, seed=1)
    cfg = load_config(HCD, overrides=TINY + ["model.img_size=96", "train.epochs=4", "train.lr=0.01",
                                             "aug.preset=none"])
    run = work / "runs" / "demo-hcd"
    train_folds(cfg, data, run, overwrite=True)
    paths = [g.path for g in write_error_grids(run, out, n=4)]
    result = explain(run, methods=["gradcam", "gradcam++", "eigencam"], n_errors=2, n_correct=1, device="cpu")
    return paths + [write_cam_grid(result, out).path]


def lr_find_picture(work: Path, out: Path) -> Path:
    from kit.config import load_config
    from kit.diagnostics.lr_find import lr_find, plot_lr_find

    cfg = load_config(HCD, overrides=TINY + ["model.img_size=32"])
    return plot_lr_find(lr_find(cfg, work / "demo-hcd", start=1e-6, end=10, steps=80), out / "lr_find.png")


def shrink(path: Path) -> Path:
    """The README's copy in 256 colours: a third of the bytes, and the pictures stay readable."""
    from PIL import Image

    with Image.open(path) as image:
        small = image.convert("RGB").quantize(colors=256)
    small.save(path, format="PNG", optimize=True)
    return path


def main(argv: list[str] | None = None) -> int:
    import torch

    args = parse_args(argv)
    torch.set_num_threads(1)  # on shared cores two intra-op threads spin against each other
    out = Path(args.out)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="kit-pictures-"))
    try:
        paths = batch_pictures(work, out) + run_pictures(work, out) + [lr_find_picture(work, out)]
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    for path in map(shrink, paths):
        print(f"{path} ({path.stat().st_size / 1e3:.0f} KB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
