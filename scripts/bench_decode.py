"""Benchmark reduced-size JPEG decoding (libjpeg DCT scaling) against a full decode, both resized to the same side.

    .venv/bin/python scripts/bench_decode.py [--size 128] [--repeat 50] [--rounds 7] [--dir FOLDER]

Decodes every .jpg of FOLDER (default: the real 512x512 SIIM-ISIC images in ../shared/data) ``--repeat`` times per
round: (a) full decode + resize (the full-size read), (b) ``decode_jpeg(min_side=S)`` + the same resize
(what a pack does). The two are timed round-robin, one round of each in turn, so that load from other processes falls
on both alike; each figure is the median over the rounds, and the ratio is (a) / (b) from this one run.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from kit.console import show_messages
from kit.data.readers import decode_jpeg, fit_square

SIIM = Path(__file__).resolve().parents[2] / "shared" / "data" / "siim-isic-melanoma-classification" / "jpeg" / "train"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dir", type=Path, default=SIIM, help="folder of .jpg files (default: the SIIM samples)")
    p.add_argument("--size", type=int, default=128, help="target side in pixels (default 128)")
    p.add_argument("--repeat", type=int, default=50, help="passes over the files per round (default 50)")
    p.add_argument("--rounds", type=int, default=7, help="timed rounds after one warm-up round (default 7)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    files = sorted(args.dir.glob("*.jpg"))
    if not files:
        raise SystemExit(f"no .jpg files in {args.dir}")
    blobs = [f.read_bytes() for f in files]  # read once: the benchmark is about decoding, not the disk
    size = args.size
    candidates = {
        "full decode + resize": lambda b: fit_square(decode_jpeg(b, "bench"), size),
        f"decode at >= {size} px + resize": lambda b: fit_square(decode_jpeg(b, "bench", min_side=size), size),
    }
    outputs = {name: [fn(b) for b in blobs] for name, fn in candidates.items()}  # warm-up, and the pixels
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(args.rounds):
        for name, fn in candidates.items():
            start = time.perf_counter()
            for _ in range(args.repeat):
                for b in blobs:
                    fn(b)
            times[name].append(time.perf_counter() - start)
    n = args.repeat * len(blobs)
    shapes = sorted({decode_jpeg(b, "bench").shape[:2] for b in blobs})
    print(f"{len(files)} JPEGs {shapes} from {args.dir}, x{args.repeat} = {n} decodes per round, "
          f"{args.rounds} rounds, target {size}x{size}")
    medians = {name: statistics.median(t) for name, t in times.items()}
    for name, t in medians.items():
        print(f"  {name:32s} {1e3 * t / n:7.3f} ms/image  {n / t:8.0f} img/s")
    (full, full_t), (_, reduced_t) = medians.items()
    diff = np.mean([np.abs(a.astype(np.int16) - b).mean() for a, b in zip(*outputs.values(), strict=True)])
    print(f"ratio (full / reduced): {full_t / reduced_t:.2f}x faster; mean |pixel difference| {diff:.2f} of 255")


if __name__ == "__main__":
    show_messages()  # kit's messages, shown as the kit command shows them
    main()
