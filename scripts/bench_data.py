"""Benchmark reading training images: a Keras-style per-file loop against kit from files and from its pack.

    .venv/bin/python scripts/bench_data.py [--n 20000] [--work /tmp/kit-bench-data] [--epochs 2]

Two datasets: N generated 96x96 RGB .tif patches in the real PCam layout (made once under --work and reused), and the
real ISIC 2018 128 px JPEGs in ../shared/data. For each, one run measures images/s of:
  (a) the Keras-style baseline of the typical notebook for these competitions: PIL open per file, to float32, a
      random horizontal flip and a 1/255 rescale per image, in numpy;
  (b) kit from the image files: its Dataset (tifffile / libjpeg-turbo readers) through its DataLoader, batch 256,
      with a random horizontal flip (the same per-image work as (a); kit scales to float on the device, per batch);
  (c) kit from the pack with the competition preset's augmentation (histo / isic), 0 workers and 2 workers;
  (d) the limit: kit from the pack, no augmentation;
then kit's training step (resnet18, the preset's augmentation) fed by 0 and by 2 DataLoader workers, and the peak
memory (PSS summed over the process and its workers: shared pages counted once) of (c) with 4 workers
against 0. Ratios are against (a) measured in this same run; each arm takes the best of --epochs passes.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
import warnings
from pathlib import Path

import albumentations as A
import numpy as np
import torch
from PIL import Image

from kit.competitions import get_competition
from kit.console import show_messages
from kit.data.dataset import ImageDataset
from kit.data.labels import load_train_table
from kit.data.pack import split_pack
from kit.data.readers import open_store
from kit.data.synthetic import make_demo_data
from kit.runtime import make_loader
from kit.transforms import Pipeline, build_eval_transform, build_train_transform

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
BATCH = 256


def keras_style(files: list[Path], rng: np.random.Generator) -> None:
    for f in files:
        a = np.asarray(Image.open(f).convert("RGB"), dtype=np.float32)
        if rng.random() < 0.5:
            a = a[:, ::-1]
        a *= 1 / 255.0


def drain(dataset: ImageDataset, workers: int) -> None:
    for _ in make_loader(dataset, BATCH, workers, torch.device("cpu"), train=True, seed=0):
        pass


def best_rate(n: int, fn, passes: int) -> float:
    best = float("inf")
    for _ in range(passes):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return n / best


def _pss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _tree(pid: int) -> list[int]:
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return [pid]
    return [pid] + [p for k in kids for p in _tree(int(k))]


def peak_pss_mb(fn) -> float:
    """Run ``fn`` while sampling the PSS of this process and its children every 20 ms; the peak in MB."""
    peak, done = 0, threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, sum(_pss_kb(p) for p in _tree(os.getpid())))
            time.sleep(0.02)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        fn()
    finally:
        done.set()
        thread.join()
    return peak / 1024


def bench(competition: str, data: Path, size: int, preset: str, passes: int) -> None:
    spec = get_competition(competition)
    table = load_train_table(spec, data)
    ids, targets = table["id"].to_numpy(str), table["target"].to_numpy()
    store = open_store(spec, data, "train")
    files = [Path(store.ref(k)) for k in ids]
    n = len(ids)
    pack = split_pack(spec, data, "train", size, ids.tolist())
    flip = Pipeline(A.Compose([A.HorizontalFlip(p=0.5)]))
    from_files = ImageDataset(ids, flip, store=store, targets=targets)
    packed = ImageDataset(ids, build_train_transform(preset, size, 1.0, size), images=pack.rows,
                          image_rows=pack.index(ids), targets=targets)
    plain = packed.with_transform(build_eval_transform(size, size))
    rng = np.random.default_rng(0)
    arms = {
        "(a) keras-style PIL per file": lambda: keras_style(files, rng),
        "(b) kit from files (flip)": lambda: drain(from_files, 0),
        f"(c) kit pack + {preset} aug, 0 workers": lambda: drain(packed, 0),
        f"(c) kit pack + {preset} aug, 2 workers": lambda: drain(packed, 2),
        "(d) kit pack, no aug (limit)": lambda: drain(plain, 0),
    }
    print(f"\n{competition}: {n} images at {size}x{size} px, batch {BATCH}, best of {passes}")
    rates = {name: best_rate(n, fn, passes) for name, fn in arms.items()}
    base = rates["(a) keras-style PIL per file"]
    for name, rate in rates.items():
        print(f"  {name:40s} {rate:9.0f} img/s  {rate / base:6.2f}x (a)")
    train = train_rates(packed.with_transform(build_train_transform(preset, size, 1.0, size)), size)
    print(f"  training resnet18 + {preset} aug: 0 workers {train[0]:.0f} img/s, 2 workers {train[2]:.0f} img/s "
          f"({train[2] / train[0]:.2f}x)")
    mem0 = peak_pss_mb(lambda: drain(packed, 0))
    mem4 = peak_pss_mb(lambda: drain(packed, 4))
    print(f"  peak PSS of (c): 0 workers {mem0:.0f} MB, 4 workers {mem4:.0f} MB ({mem4 / mem0:.2f}x)")


def train_rates(dataset: ImageDataset, size: int, steps: int = 12, batch: int = 32) -> dict[int, float]:
    """Images/s of kit's training step (resnet18, the preset's augmentation) fed by 0 and by 2 DataLoader workers:
    whether workers pay on this CPU, where the model's own threads want the same cores."""
    from torch import nn

    from kit.models import build_model
    from kit.runtime import Runtime
    from kit.train import train_one_epoch

    sub = dataset.subset(np.random.default_rng(0).choice(len(dataset), steps * batch, replace=False))
    rates = {}
    for workers in (0, 2, 0, 2):  # alternating, the second pass of each counts: warm caches, less noise
        model = build_model("resnet18", 1, img_size=size)
        rt = Runtime(torch.device("cpu"), None, None, False, torch.zeros(1, 3, 1, 1), torch.ones(1, 3, 1, 1),
                     binary=True, use_meta=False)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        loader = make_loader(sub, batch, workers, torch.device("cpu"), True, seed=0)
        t = time.perf_counter()
        train_one_epoch(model, loader, optimizer, nn.BCEWithLogitsLoss(), rt)
        rates[workers] = len(sub) / (time.perf_counter() - t)
    return rates


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=20_000, help="generated .tif patches (default 20000)")
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "kit-bench-data",
                   help="where the patches and packs go (reused by the next run)")
    p.add_argument("--epochs", type=int, default=2, help="passes per arm; the best counts (default 2)")
    args = p.parse_args()
    warnings.filterwarnings("ignore", message=".*worker processes in total.*")  # 4 workers on 2 cores: on purpose
    os.environ.setdefault("KIT_CACHE_DIR", str(args.work / "packs"))  # never into ../shared/data
    hcd = args.work / f"hcd-{args.n}"
    if not (hcd / "train_labels.csv").is_file():
        print(f"writing {args.n} PCam-format patches to {hcd} (once)")
        make_demo_data("histopathologic-cancer-detection", hcd, n=args.n, seed=0, n_test=10)
    bench("histopathologic-cancer-detection", hcd, 96, "histo", args.epochs)
    isic = SHARED / "isic-2018-task3"
    if isic.is_dir():
        bench("isic-2018-task3", isic, 128, "isic", args.epochs)
    else:
        print(f"\n{isic} not found: the real ISIC 2018 arm is skipped")


if __name__ == "__main__":
    show_messages()  # kit's messages, shown as the kit command shows them
    main()
