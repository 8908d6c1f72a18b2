"""Benchmark kit's 8-view TTA against one plain forward and ttach's d4 wrapper, same model and batch, one run.

    .venv/bin/pip install ttach            # benchmark only; not a kit dependency
    .venv/bin/python scripts/bench_tta.py [--reps 7] [--threads 2] [--channels-last] [--sweep]

(a) one plain forward, (b) kit's TTA(views="8") with its default views per forward, (c) ttach's
ClassificationTTAWrapper with d4 transforms. Candidates are timed round-robin (one call of each per round) so that
load from other processes falls on all of them alike; each figure is the median over the rounds. ``--sweep`` adds
kit with 1, 2, 4 and 8 views per forward.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Callable

import timm
import torch

from kit.console import show_messages
from kit.tta import TTA


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet18")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--reps", type=int, default=7, help="timed rounds after one warm-up round")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads; default: torch's own")
    p.add_argument("--channels-last", action="store_true", help="model and batch in channels_last")
    p.add_argument("--sweep", action="store_true", help="also time kit with 1, 2, 4, 8 views per forward")
    return p.parse_args(argv)


def load_ttach():
    """ttach is a benchmark-only comparison; without it, say how to get it and stop."""
    try:
        import ttach
    except ImportError:
        sys.exit("ttach is not installed: run `.venv/bin/pip install ttach` (benchmark only, not a kit dependency)")
    return ttach


def time_round_robin(candidates: dict[str, Callable[[], object]], reps: int) -> dict[str, float]:
    """Median seconds per call of each candidate, over ``reps`` rounds after one warm-up round."""
    times: dict[str, list[float]] = {name: [] for name in candidates}
    with torch.inference_mode():
        for fn in candidates.values():  # warm-up: allocator, oneDNN primitives, thread pool
            fn()
        for _ in range(reps):
            for name, fn in candidates.items():
                t = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t)
    return {name: statistics.median(ts) for name, ts in times.items()}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    ttach = load_ttach()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    model = timm.create_model(args.model, pretrained=False, num_classes=1).eval().to(memory_format=fmt)
    x = torch.randn(args.batch, 3, args.size, args.size).contiguous(memory_format=fmt)

    kit_tta = TTA(views="8", merge="mean", task="binary")
    wrapped = ttach.ClassificationTTAWrapper(model, ttach.aliases.d4_transform(), merge_mode="mean")
    candidates: dict[str, Callable[[], object]] = {
        "a plain": lambda: model(x),
        "b kit 8 views": lambda: kit_tta(model, x),
        "c ttach d4": lambda: wrapped(x),
    }
    if args.sweep:
        for k in (1, 2, 4, 8):
            sweep = TTA(views="8", merge="mean", task="binary", views_per_forward=k)
            candidates[f"kit {k} views/forward"] = lambda t=sweep: t(model, x)

    # Same views, same merge of logits: kit's "logits" merge must equal sigmoid of ttach's mean of logits.
    with torch.inference_mode():
        diff = (TTA(views="8", merge="logits")(model, x) - torch.sigmoid(wrapped(x)).squeeze(-1)).abs().max().item()

    med = time_round_robin(candidates, args.reps)
    a, b, c = med["a plain"], med["b kit 8 views"], med["c ttach d4"]
    print(f"{args.model}, batch {args.batch} x 3 x {args.size} x {args.size}, CPU, {torch.get_num_threads()} threads, "
          f"{'channels_last' if args.channels_last else 'NCHW'}, median of {args.reps} rounds")
    for name, s in med.items():
        print(f"  {name:<22} {s * 1e3:8.1f} ms  {s / a:5.2f}x plain")
    print(f"b/a = {b / a:.2f} (target <= 8.3); c/b = {c / b:.2f} (target >= 1.3); "
          f"kit vs ttach max |diff| = {diff:.1e}")


if __name__ == "__main__":
    show_messages()  # kit's messages, shown as the kit command shows them
    main()
