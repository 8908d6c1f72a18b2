"""Quality on real images: kit's recipes and presets on the real ISIC 2018 Task 3 images (HAM10000).

Every arm trains on the same lesion-grouped folds (kit's make_folds over HAM10000 lesion ids), at the same image
size and for the same epochs, and is scored by balanced accuracy on its out-of-fold predictions (mean of folds, and
pooled over all OOF rows), with its wall time.

--suite recipes (the default): the winners' training toolbox, one recipe at a time on top of the CPU preset
    (isic-2018-task3-cpu: tf_efficientnet_lite0 with the shared ImageNet weights, head first, then all of it):
    (p) the preset;
    (mix) + mixup 0.2 / CutMix 1.0, the last epoch unmixed (train.mixup, train.cutmix, train.mixup_off_epochs);
    (swa) + SWA over the last 2 epochs (train.swa_epochs); (topk) + the 2 best epochs averaged (train.top_k);
    (grow) growing sizes: half the epochs at half the size, then the rest at full size from those weights
        (model.init_from; each size its own pack);
    (pl) + one pseudo-label round: (p)'s confident test predictions as soft labels (data.pseudo; fold k from (p)'s
        fold k model); its time includes (p)'s training and prediction;
    (ens) the blend of every arm with equal weights (kit ensemble's default; its submission is written), and
        (ens fit) with weights fitted by kit ensemble --method fit (nested CV over the folds).
    Every arm is predicted (kit predict --tta 1, no decision weights); the best arm's submission and the blend's
    (1,512 official test images) are checked with kit submit --dry-run. An arm whose config keys this kit does not
    have is listed as skipped.
--suite presets: the anchor script's recipe against kit's presets, pretrained weights, decision weights and TTA.
--suite ablation: kit 0.1's ISIC preset taken apart, one change at a time (compare with the presets' arm (a)).

Sizes: --limit images (whole lesions drawn at random; 0 = all 5,984), --size px (the shipped 128 px images
area-resized), --epochs, --folds, --threads. The defaults (all 5,984 images, 96 px, 5 epochs, 2 folds, 2 torch
threads) ran the recipes suite in 48 minutes on the idle 2-core machine (2026-12-08); --size 128 costs about 2.2x
that per arm (--size 128 --skip mix,topk: 74 minutes). --limit 2000 --size 48 is the quick check (6.5 minutes
there), and the presets and ablation suites' tables in the README were measured with --limit 2000 --size 48
--threads 1. Closer still to the real setting is --limit 0 --size 128 --epochs 8 --folds 5 (about 8x the default's
training).

    PYTHONPATH=. .venv/bin/python scripts/bench_quality.py [--suite recipes|presets|ablation]
        [--data ../shared/data/isic-2018-task3] [--weights ../shared/weights/tf_efficientnet_lite0.imagenet.safetensors]
        [--folds 2] [--size 96] [--epochs 5] [--limit 0] [--threads 2] [--out /tmp/bench_quality] [--skip-anchor]
        [--skip mix,swa,topk,grow,pl] [--pseudo 0.9]
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
from kit.errors import ConfigError
from kit.metrics import balanced_accuracy
from kit.records import Decision
from kit.rundir import RunDir
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
    fit_e = RunDir(run_c).load(Decision)
    rows.append({"arm": "(e)", "what": "(d) + 8-view TTA (nested CV)", "mean_of_folds": fit_e.mean_after,
                 "pooled": fit_e.cv_after, "wall_s": t_c + t_e, "note": f"submission {submission}"})
    print(f"== (e): mean of folds {fit_e.mean_after:.4f} pooled {fit_e.cv_after:.4f}", flush=True)
    return rows


RECIPES = {
    "(p)": ("p_preset", "the CPU preset: lite0 ImageNet, head then all", []),
    "(mix)": ("mix", "(p) + mixup 0.2 / CutMix 1.0, last epoch unmixed",
              ["train.mixup=0.2", "train.cutmix=1.0", "train.mixup_off_epochs=1"]),
    "(swa)": ("swa", "(p) + SWA over the last 2 epochs", ["train.swa_epochs=2"]),
    "(topk)": ("topk", "(p) + the 2 best epochs averaged", ["train.top_k=2"]),
}
"""--suite recipes: arm -> (run name, what, overrides on the preset); growing sizes and pseudo-labels are two-step."""


def _predicted(args, run: Path) -> tuple[Path, float]:
    """kit predict on the run (test images and OOF, no TTA, no decision weights): its submission and the seconds."""
    from kit.pipeline import predict_and_submit

    start = time.perf_counter()
    _, submission = predict_and_submit(run, tta="1", out_dir=args.out / "submissions", device="cpu", report=False,
                                       decision="off")
    return submission, time.perf_counter() - start


def _grow(args, folds_file: Path) -> tuple[Path, float, str]:
    """Half the epochs at half the size, then the rest at full size from those weights (model.init_from)."""
    small, first = max(32, args.size // 2), max(1, args.epochs // 2)
    second = max(1, args.epochs - first)
    stage1, t1 = kit_arm(args, "grow_stage1", folds_file, [f"model.img_size={small}", f"train.epochs={first}"])
    # the second stage goes on fine-tuning: every weight at the rate the preset gives the backbone after its head epoch
    preset = load_config(COMPETITION, PRESET)
    lr = preset.train.lr * preset.model.backbone_lr_scale
    stage2, t2 = kit_arm(args, "grow", folds_file, [f"model.init_from={stage1}", "model.freeze_epochs=0",
                                                    f"train.epochs={second}", f"train.lr={lr}"])
    return stage2, t1 + t2, f"{first} epochs at {small} px, then {second} at {args.size} px from them (lr {lr:g})"


def run_recipes(args, folds_file: Path) -> list[dict]:
    rows: list[dict] = []
    add = _adder(rows)
    runs: dict[str, tuple[Path, float, Path]] = {}  # arm -> (run, seconds with its prediction, submission)
    for arm, (name, what, overrides) in RECIPES.items():
        try:
            if name in args.skip:
                raise ConfigError("--skip")
            run, seconds = kit_arm(args, name, folds_file, overrides)
        except ConfigError as e:  # a recipe whose keys this kit lacks
            rows.append({"arm": arm, "what": what, "mean_of_folds": float("nan"), "pooled": float("nan"),
                         "wall_s": 0.0, "note": f"skipped: {str(e).split('. ')[0]}"})
            print(f"== {arm} skipped: {e}", flush=True)
            continue
        add(arm, what, *oof_of(run), seconds)
        runs[arm] = (run, seconds, *_predicted(args, run))
    if "grow" not in args.skip:
        run, seconds, note = _grow(args, folds_file)
        add("(grow)", "growing sizes from (p)'s recipe", *oof_of(run), seconds, note)
        runs["(grow)"] = (run, seconds, *_predicted(args, run))
    if "pl" not in args.skip:
        _pseudo_round(args, folds_file, add, runs)
    return rows + _ensemble_rows(args, rows, runs)


def _pseudo_round(args, folds_file: Path, add, runs: dict) -> None:
    """(pl): (p) retrained with (p)'s confident test predictions as soft labels; its time includes (p)'s."""
    preset, t_p, _, t_pred = runs["(p)"]
    run, seconds = kit_arm(args, "pl", folds_file, [f"data.pseudo={preset}", f"data.pseudo_threshold={args.pseudo}"])
    folder = RunDir(run)
    per_fold = [str(folder.history(k)["pseudo_images"].iloc[-1]) for k in folder.fold_numbers()]
    add("(pl)", f"(p) + one pseudo-label round (threshold {args.pseudo})", *oof_of(run), t_p + t_pred + seconds,
        f"test images in each fold's training: {', '.join(per_fold)}")
    runs["(pl)"] = (run, t_p + t_pred + seconds, *_predicted(args, run))


def _ensemble_rows(args, rows: list[dict], runs: dict) -> list[dict]:
    """The blends of every arm: equal weights (kit ensemble's default, whose submission is written) and weights
    fitted in nested CV; both submissions (best arm, blend) checked by kit submit."""
    from kit.cli import main as kit
    from kit.pipeline import ensemble_and_submit

    start = time.perf_counter()
    result, blend_sub, _ = ensemble_and_submit([r[0] for r in runs.values()], "mean", args.out / "submissions",
                                               "bench-blend")
    seconds = sum(r[1] + r[3] for r in runs.values()) + time.perf_counter() - start
    best = max((r for r in rows if r["arm"] in runs), key=lambda r: r["pooled"])
    best_sub = runs[best["arm"]][2]
    for path in (best_sub, blend_sub):
        code = kit(["submit", str(path), "-c", COMPETITION, "--data", str(args.data), "--dry-run"])
        print(f"== kit submit --dry-run {path}: exit {code}", flush=True)
        if code:
            raise SystemExit(f"kit submit --dry-run rejected {path}")
    best["note"] = "; ".join(filter(None, [best["note"], f"best arm: {best_sub.name} passes kit submit --dry-run"]))
    mean = next(r for r in result.scores if r.name == "blend mean")
    fit = next(r for r in result.scores if r.name == "blend fit")
    weights = ", ".join(f"{k} {v:.2f}" for k, v in fit.weights.items() if v)
    print(f"== (ens) blend mean: pooled {mean.cv:.4f}; blend fit: pooled {fit.cv:.4f}", flush=True)
    return [{"arm": "(ens)", "what": "every arm blended, equal weights (kit ensemble's default)",
             "mean_of_folds": mean.mean_of_folds, "pooled": mean.cv, "wall_s": seconds,
             "note": f"submission {blend_sub.name} passes kit submit --dry-run"},
            {"arm": "(ens fit)", "what": "every arm blended, weights fitted (--method fit, nested CV)",
             "mean_of_folds": fit.mean_of_folds, "pooled": fit.cv, "wall_s": seconds, "note": f"weights {weights}"}]


def _decision_row(arm: str, what: str, fit, seconds: float) -> dict:
    return {"arm": arm, "what": what, "mean_of_folds": fit.mean_after, "pooled": fit.cv_after, "wall_s": seconds,
            "note": f"applied by auto: {fit.helps}"}


def table_text(rows: list[dict]) -> str:
    """The markdown table; differences against the anchor (0), or against the preset (p) in the recipes suite."""
    base = next((r for r in rows if r["arm"] in ("(0)", "(p)")), None)
    vs = f"vs {base['arm']}: pooled diff, time ratio" if base else "vs -"
    lines = [f"| arm | what | bal. acc. mean of folds | pooled | wall s | {vs} | note |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        diff = (f"{r['pooled'] - base['pooled']:+.3f}, {r['wall_s'] / base['wall_s']:.2f}x"
                if base and r["wall_s"] else "")
        lines.append(f"| {r['arm']} | {r['what']} | {r['mean_of_folds']:.4f} | {r['pooled']:.4f} | "
                     f"{r['wall_s']:.0f} | {diff} | {r.get('note', '')} |")
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--suite", choices=("recipes", "presets", "ablation"), default="recipes",
                    help="recipes: the training toolbox on the CPU preset (default); presets: the anchor against "
                    "kit's presets; ablation: kit 0.1's ISIC preset taken apart")
    ap.add_argument("--data", type=Path, default=ROOT / "data" / COMPETITION)
    ap.add_argument("--weights", type=Path, default=ROOT / "weights" / "tf_efficientnet_lite0.imagenet.safetensors")
    ap.add_argument("--folds", type=int, default=2)
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "bench_quality")
    ap.add_argument("--limit", type=int, default=0, help="train on this many images (whole lesions; 0 = all)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (1 on a machine shared with others)")
    ap.add_argument("--pseudo", type=float, default=0.9, help="the pseudo-label round's data.pseudo_threshold")
    ap.add_argument("--skip-anchor", action="store_true", help="presets suite: leave out the anchor's arm (0)")
    ap.add_argument("--skip", type=lambda text: text.split(","), default=[], metavar="ARMS",
                    help="recipes suite: leave out these of mix,swa,topk,grow,pl (e.g. swa,topk)")
    return ap.parse_args()


def offline_weights(args) -> None:
    """An offline Hugging Face cache holding the shared file as timm's Hub weights: timm's own pretrained route."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    cache = args.out / "hf-cache"
    os.environ["HF_HUB_CACHE"] = str(cache)
    import huggingface_hub.constants as hf_constants  # read at import: set both before and after

    hf_constants.HF_HUB_CACHE, hf_constants.HF_HUB_OFFLINE = str(cache), True
    populate_hf_cache(args.weights, "tf_efficientnet_lite0", cache)


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    offline_weights(args)
    spec = get_competition(COMPETITION)
    full = load_train_table(spec, args.data)
    table = subset(full, args.limit)
    args.excluded = sorted(set(full["id"]) - set(table["id"])) or None
    fold = make_folds(table["target"].to_numpy(), table["group"].to_numpy(), args.folds, 42, list(spec.classes))
    args.out.mkdir(parents=True, exist_ok=True)
    folds_file = write_folds(args.out / "folds.csv", table["id"], fold, spec.id_col)
    print(f"{args.suite}: {len(table)} of {len(full)} images at {args.size} px, {args.folds} lesion-grouped folds, "
          f"{args.epochs} epochs, torch threads {torch.get_num_threads()}", flush=True)
    start = time.perf_counter()
    if args.suite == "recipes":
        rows = run_recipes(args, folds_file)
    elif args.suite == "ablation":
        rows = run_ablation(args, folds_file)
    else:
        images = load_images(spec, args.data, list(table["id"]), args.size)
        rows = run_arms(args, folds_file, images, table, fold)
    text = table_text(rows)
    print(text)
    print(f"total wall time {time.perf_counter() - start:.0f} s", flush=True)
    name = {"presets": "bench_quality", "recipes": "bench_quality_recipes"}.get(args.suite, "bench_quality_ablation")
    (args.out / f"{name}.md").write_text(text + "\n")
    (args.out / f"{name}.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    show_messages()  # kit's messages, shown as the kit command shows them
    main()
