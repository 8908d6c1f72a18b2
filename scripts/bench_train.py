"""One epoch of kit's training loop against a bare PyTorch loop: same model, data, batch size and optimizer.

Both loops read the same in-memory uint8 dataset through the same DataLoader settings, so the ratio measures what
kit's loop adds (runtime wrapper, on-device normalisation, scheduler steps, loss bookkeeping), not data loading.
Runs alternate (bare, kit, bare, kit, ...) so that machine noise hits both; the median of each is compared.

    .venv/bin/python scripts/bench_train.py [--model resnet18] [--size 96] [--n 1024] [--batch 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import numpy as np
import torch
from torch import nn

from kit.competitions import get_competition
from kit.console import show_messages
from kit.data.dataset import ImageDataset
from kit.data.labels import load_train_table
from kit.data.readers import fit_square, open_store
from kit.data.synthetic import make_demo_data
from kit.models import build_model, data_config
from kit.runtime import Runtime, make_loader
from kit.train import train_one_epoch
from kit.transforms import build_eval_transform


def bare_epoch(model, loader, optimizer, loss_fn, mean, std) -> None:
    model.train()
    for batch in loader:
        x = (batch["image"].float() / 255.0 - mean) / std
        y = batch["target"].float()
        loss = loss_fn(model(x).squeeze(1), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet18")
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--n", type=int, default=1024)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    torch.manual_seed(0)
    spec = get_competition("histopathologic-cancer-detection")
    with tempfile.TemporaryDirectory() as tmp:
        data = make_demo_data(spec.name, tmp, n=args.n, seed=0)
        table = load_train_table(spec, data)
        store = open_store(spec, data)
        images = np.stack([fit_square(store.read(k), args.size) for k in table["id"]])
    dataset = ImageDataset(table["id"].to_numpy(str), build_eval_transform(args.size, args.size), images=images,
                           targets=table["target"].to_numpy())
    device = torch.device("cpu")
    model = build_model(args.model, 1, img_size=args.size)
    dcfg = data_config(model, args.size)
    mean = torch.tensor(dcfg["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(dcfg["std"]).view(1, -1, 1, 1)
    loss_fn = nn.BCEWithLogitsLoss()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    rt = Runtime(device, None, None, False, mean, std, binary=True, use_meta=False)

    from timm.scheduler import create_scheduler_v2

    loader_len = len(make_loader(dataset, args.batch, 0, device, True, seed=0))
    scheduler, _ = create_scheduler_v2(optimizer, sched="cosine", num_epochs=100, updates_per_epoch=loader_len,
                                       step_on_epochs=False)

    def run_bare(seed: int) -> float:
        loader = make_loader(dataset, args.batch, 0, device, True, seed=seed)
        start = time.perf_counter()
        bare_epoch(model, loader, optimizer, loss_fn, mean, std)
        return time.perf_counter() - start

    def run_kit(seed: int) -> float:
        loader = make_loader(dataset, args.batch, 0, device, True, seed=seed)
        start = time.perf_counter()
        train_one_epoch(model, loader, optimizer, loss_fn, rt, scheduler=scheduler, epoch=seed)
        return time.perf_counter() - start

    run_bare(0), run_kit(0)  # warm-up: allocator, oneDNN kernels
    bare, kit = [], []
    for r in range(args.repeats):
        bare.append(run_bare(r + 1))
        kit.append(run_kit(r + 1))
    b, k = statistics.median(bare), statistics.median(kit)
    print(f"model {args.model} {args.size}px, {args.n} images, batch {args.batch}, torch threads "
          f"{torch.get_num_threads()}, {args.repeats} alternating repeats")
    print(f"bare loop: median {b:.2f} s/epoch  ({args.n / b:.0f} img/s)  runs {np.round(bare, 2).tolist()}")
    print(f"kit loop:  median {k:.2f} s/epoch  ({args.n / k:.0f} img/s)  runs {np.round(kit, 2).tolist()}")
    print(f"ratio kit/bare: {k / b:.3f}  (target <= 1.05)")


if __name__ == "__main__":
    show_messages()  # kit's messages, shown as the kit command shows them
    main()
