"""Quality on real images: kit's presets against a hand-written baseline on the real ISIC 2018 Task 3 images.

Every arm trains on the same lesion-grouped folds (kit's make_folds over HAM10000 lesion ids), at the same image
size and for the same epochs, and is scored by balanced accuracy on its out-of-fold predictions (mean of folds, and
pooled over all OOF rows):

    (0) the anchor baseline (../shared/anchors/anchor_isic2018_baseline.py) re-implemented on these folds: resnet18
        from scratch, flips, class-weighted CE, AdamW, OneCycle, normalisation by the training images' mean and std;
    (a) kit train, preset isic-2018-task3-cpu, resnet18 from scratch;
    (b) the same with tf_efficientnet_lite0 from scratch;
    (c) the same with the shared ImageNet weights through timm's pretrained route (a Hugging Face cache built in a
        temporary folder from ../shared/weights, HF_HUB_OFFLINE=1): head first, then the whole backbone;
    (d) (c) with the balanced-accuracy decision weights (kit.decision, nested over the folds);
    (e) (d) with 8-view TTA (kit predict --tta 8; OOF and test images alike).

Defaults, sized for the 2-core machine shared with other jobs (measured there: about 3 GFLOPS left to one
process, 20x below the 68 GFLOPS the anchor's 125 s/epoch implies when alone): 2 folds, 2,000 training images
(whole lesions drawn at random), 48 px (the shipped 128 px images area-resized), 5 epochs, one torch thread. That is
about 10 minutes alone and about an hour on the shared machine. Closer to the anchor's own setting (all 5,984
images, 128 px, 8 epochs, 2 threads) it takes about 2 hours alone: pass --limit 0 --size 128 --epochs 8 --threads 2.
The best arm's test predictions (1,512 official test images) are written as a submission by kit predict.

    PYTHONPATH=. .venv/bin/python scripts/bench_quality.py [--data ../shared/data/isic-2018-task3]
        [--weights ../shared/weights/tf_efficientnet_lite0.imagenet.safetensors] [--folds 2]
        [--size 48] [--epochs 5] [--limit 2000] [--threads 1] [--out /tmp/bench_quality] [--skip-anchor]
        [--ablation]    # instead: kit 0.1's ISIC preset taken apart, one change at a time (compare with arm (a))
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from kit.competitions import get_competition
from kit.config import load_config
from kit.console import show_messages
from kit.data.folds import make_folds, write_folds
from kit.data.labels import load_train_table
from kit.data.readers import fit_square, open_store
from kit.decision import fit_nested
from kit.metrics import balanced_accuracy
from kit.weights import populate_hf_cache

COMPETITION = "isic-2018-task3"
PRESET = "isic-2018-task3-cpu"
ROOT = Path(__file__).resolve().parents[1].parent / "shared"


def load_images(spec, data: Path, ids: list[str], size: int) -> np.ndarray:
    """The anchor's images: each decoded whole and area-resized to ``size`` x ``size`` (as kit's pack does)."""
    store = open_store(spec, data, "train")
    return np.stack([fit_square(store.read(k), size) for k in ids])


def anchor_fold(images: np.ndarray, y: np.ndarray, tr: np.ndarray, va: np.ndarray, epochs: int,
                seed: int) -> np.ndarray:
    """The anchor script's recipe on one fold: validation probabilities of its last epoch (as the script reports)."""
    import timm
    from torch import nn

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    mean = torch.tensor(images[tr].reshape(-1, 3).mean(0) / 255, dtype=torch.float32)
    std = torch.tensor(images[tr].reshape(-1, 3).std(0) / 255, dtype=torch.float32)

    def tens(a: np.ndarray) -> torch.Tensor:
        return ((torch.from_numpy(a).float() / 255 - mean) / std).permute(0, 3, 1, 2).contiguous()

    model = timm.create_model("resnet18", pretrained=False, num_classes=7)
    w = torch.tensor(len(tr) / (7 * np.bincount(y[tr], minlength=7)), dtype=torch.float32)
    opt = torch.optim.AdamW(model.parameters(), 1e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 2e-3, total_steps=epochs * (len(tr) // 64))
    crit = nn.CrossEntropyLoss(weight=w)
    for _ in range(epochs):
        model.train()
        perm = rng.permutation(tr)
        for s in range(0, len(perm) - 63, 64):
            b = perm[s:s + 64]
            xb = images[b].copy()
            flip = rng.random(len(b)) < 0.5
            xb[flip] = xb[flip, :, ::-1]
            vflip = rng.random(len(b)) < 0.5
            xb[vflip] = xb[vflip, ::-1]
            loss = crit(model(tens(xb)), torch.from_numpy(y[b]))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.no_grad():
        return torch.cat([model(tens(images[va][s:s + 256])).softmax(1) for s in range(0, len(va), 256)]).numpy()


def scores(target: np.ndarray, probs: np.ndarray, fold: np.ndarray) -> tuple[float, float]:
    """(mean of folds, pooled) balanced accuracy."""
    per = [balanced_accuracy(target[fold == k], probs[fold == k]) for k in np.unique(fold)]
    return float(np.mean(per)), balanced_accuracy(target, probs)


def kit_arm(args, name: str, folds_file: Path, overrides: list[str]) -> tuple[Path, float]:
    from kit.train import train_folds

    cfg = load_config(COMPETITION, PRESET, [f"n_folds={args.folds}", f"model.img_size={args.size}",
                                            f"train.epochs={args.epochs}", "train.device=cpu", *overrides])
    run = args.out / name
    start = time.perf_counter()
    train_folds(cfg, args.data, run, folds_file=folds_file, overwrite=True, exclude=args.excluded)
    return run, time.perf_counter() - start


def subset(table: pd.DataFrame, limit: int | None, seed: int = 0) -> pd.DataFrame:
    """Whole lesions drawn at random until ``limit`` images (all of them without a limit)."""
    if not limit or limit >= len(table):
        return table
    groups = table["group"].drop_duplicates().sample(frac=1.0, random_state=seed)
    sizes = table.groupby("group").size().reindex(groups)
    keep = set(sizes.index[sizes.cumsum() <= limit])
    return table[table["group"].isin(keep)].reset_index(drop=True)


def oof_of(run: Path, name: str = "oof.csv") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    spec = get_competition(COMPETITION)
    df = pd.read_csv(run / name, dtype={spec.id_col: str})
    return df[list(spec.classes)].to_numpy(), df["target"].to_numpy(dtype=int), df["fold"].to_numpy(dtype=int)


SCRATCH_R18 = ["model.name=resnet18", "model.pretrained=false", "model.freeze_epochs=0"]
OLD_PRESET = ["aug.preset=isic", "aug.strength=0.7", "train.label_smoothing=0.05", "train.warmup_epochs=1",
              "model.drop_rate=0.0"]
"""What the isic-2018-task3 preset of kit 0.1 set differently from isic-2018-task3-cpu (for resnet18 from scratch)."""
ABLATIONS = {
    "(a-old)": ("resnet18 scratch, the previous preset (isic aug 0.7, label smoothing 0.05, warm-up 1)", OLD_PRESET),
    "(a-old-flips)": ("the previous preset with flips + mild colour instead of the isic list",
                      [*OLD_PRESET, "aug.preset=histo", "aug.strength=1.0"]),
    "(a-old-flips-nols)": ("the previous preset with flips, no label smoothing",
                           [*OLD_PRESET, "aug.preset=histo", "aug.strength=1.0", "train.label_smoothing=0.0"]),
}
"""--ablation: why kit 0.1's preset lost to the anchor, one change at a time (compare with arm (a))."""


def _adder(rows: list[dict]):
    def add(arm: str, what: str, probs, target, f, seconds: float, note: str = "") -> None:
        mean, pooled = scores(target, probs, f)
        rows.append({"arm": arm, "what": what, "mean_of_folds": mean, "pooled": pooled, "wall_s": seconds,
                     "note": note})
        print(f"== {arm} {what}: mean of folds {mean:.4f} pooled {pooled:.4f} ({seconds:.0f} s) {note}", flush=True)

    return add


def run_ablation(args, folds_file: Path) -> list[dict]:
    rows: list[dict] = []
    add = _adder(rows)
    for arm, (what, overrides) in ABLATIONS.items():
        run, seconds = kit_arm(args, arm.strip("()"), folds_file, [*SCRATCH_R18, *overrides])
        add(arm, what, *oof_of(run), seconds)
    return rows


def run_arms(args, folds_file: Path, images: np.ndarray, table: pd.DataFrame, fold: np.ndarray) -> list[dict]:
    rows: list[dict] = []
    add = _adder(rows)
    if not args.skip_anchor:
        y, start, probs = table["target"].to_numpy(), time.perf_counter(), np.zeros((len(table), 7))
        for k in range(args.folds):
            probs[fold == k] = anchor_fold(images, y, np.flatnonzero(fold != k), np.flatnonzero(fold == k),
                                           args.epochs, 42 + k)
        add("(0)", "anchor script recipe, resnet18 scratch", probs, y, fold, time.perf_counter() - start)
    run_a, t_a = kit_arm(args, "a_resnet18_scratch", folds_file, SCRATCH_R18)
    add("(a)", "kit preset, resnet18 scratch", *oof_of(run_a), t_a)
    run_b, t_b = kit_arm(args, "b_lite0_scratch", folds_file, ["model.pretrained=false", "model.freeze_epochs=0"])
    add("(b)", "kit preset, tf_efficientnet_lite0 scratch", *oof_of(run_b), t_b)
    run_c, t_c = kit_arm(args, "c_lite0_imagenet", folds_file, ["model.pretrained=true"])
    add("(c)", "kit preset, lite0 ImageNet, head then fine-tune", *oof_of(run_c), t_c)
    start = time.perf_counter()
    fit = fit_nested(*oof_of(run_c))
    rows.append(_decision_row("(d)", "(c) + decision weights (nested CV)", fit, t_c + time.perf_counter() - start))
    print(f"== (d): mean of folds {fit.mean_after:.4f} pooled {fit.cv_after:.4f}", flush=True)
    from kit.pipeline import predict_and_submit

    start = time.perf_counter()
    _, submission = predict_and_submit(run_c, tta="8", out_dir=args.out / "submissions", device="cpu", report=False,
                                       decision="auto")
    t_e = time.perf_counter() - start
    add("(c)+tta", "(c) + 8-view TTA, no decision weights", *oof_of(run_c, "oof_tta.csv"), t_c + t_e)
    fit_e = json.loads((run_c / "decision.json").read_text())
    rows.append({"arm": "(e)", "what": "(d) + 8-view TTA (nested CV)", "mean_of_folds": fit_e["mean_after"],
                 "pooled": fit_e["cv_after"], "wall_s": t_c + t_e, "note": f"submission {submission}"})
    print(f"== (e): mean of folds {fit_e['mean_after']:.4f} pooled {fit_e['cv_after']:.4f}", flush=True)
    return rows


def _decision_row(arm: str, what: str, fit, seconds: float) -> dict:
    return {"arm": arm, "what": what, "mean_of_folds": fit.mean_after, "pooled": fit.cv_after, "wall_s": seconds,
            "note": f"applied by auto: {fit.helps}"}


def table_text(rows: list[dict]) -> str:
    base = next((r for r in rows if r["arm"] == "(0)"), None)
    lines = ["| arm | what | bal. acc. mean of folds | pooled | wall s | vs (0): pooled diff, time ratio |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        vs = (f"{r['pooled'] - base['pooled']:+.3f}, {r['wall_s'] / base['wall_s']:.2f}x" if base else "")
        lines.append(f"| {r['arm']} | {r['what']} | {r['mean_of_folds']:.4f} | {r['pooled']:.4f} | "
                     f"{r['wall_s']:.0f} | {vs} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=ROOT / "data" / COMPETITION)
    ap.add_argument("--weights", type=Path, default=ROOT / "weights" / "tf_efficientnet_lite0.imagenet.safetensors")
    ap.add_argument("--folds", type=int, default=2)
    ap.add_argument("--size", type=int, default=48)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "bench_quality")
    ap.add_argument("--limit", type=int, default=2000, help="train on this many images (whole lesions; 0 = all)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 on a machine shared with others)")
    ap.add_argument("--skip-anchor", action="store_true")
    ap.add_argument("--ablation", action="store_true", help="only the arms that take kit 0.1's preset apart")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    # an offline Hugging Face cache holding the shared file as timm's Hub weights: timm's own pretrained route
    os.environ["HF_HUB_OFFLINE"] = "1"
    cache = args.out / "hf-cache"
    os.environ["HF_HUB_CACHE"] = str(cache)
    import huggingface_hub.constants as hf_constants  # read at import: set both before and after

    hf_constants.HF_HUB_CACHE, hf_constants.HF_HUB_OFFLINE = str(cache), True
    populate_hf_cache(args.weights, "tf_efficientnet_lite0", cache)
    spec = get_competition(COMPETITION)
    full = load_train_table(spec, args.data)
    table = subset(full, args.limit)
    args.excluded = sorted(set(full["id"]) - set(table["id"])) or None
    fold = make_folds(table["target"].to_numpy(), table["group"].to_numpy(), args.folds, 42, list(spec.classes))
    args.out.mkdir(parents=True, exist_ok=True)
    folds_file = write_folds(args.out / "folds.csv", table["id"], fold, spec.id_col)
    images = load_images(spec, args.data, list(table["id"]), args.size)
    print(f"{len(table)} of {len(full)} images at {args.size} px, {args.folds} lesion-grouped folds, {args.epochs} "
          f"epochs, torch threads {torch.get_num_threads()}", flush=True)
    rows = run_ablation(args, folds_file) if args.ablation else run_arms(args, folds_file, images, table, fold)
    text = table_text(rows)
    print(text)
    name = "bench_quality_ablation" if args.ablation else "bench_quality"
    (args.out / f"{name}.md").write_text(text + "\n")
    (args.out / f"{name}.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    show_messages()  # kit's messages, shown as the kit command shows them
    main()
