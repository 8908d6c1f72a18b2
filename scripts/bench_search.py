"""Benchmark fold-aware pruning: the same Optuna search with and without a pruner, on synthetic HCD patches.

Both searches use the same sampler and seed (seeded per trial number, so they draw the same first trials), the same
folds and the same number of trials. Prints the epochs each trained and the best CV score each found.
Issue target: with pruning, the same best score (within 0.005 AUC) with at most 60% of the epochs.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_search.py            # ~5 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from optuna.trial import TrialState

from kit import tune
from kit.config import load_config
from kit.console import show_messages
from kit.data.synthetic import make_demo_data

HCD = "histopathologic-cancer-detection"
SPACE = {
    # wide enough that some draws are hopeless (too small or too large a learning rate): what pruning is for
    "train.lr": {"type": "float", "low": 1e-5, "high": 1e-1, "log": True},
    "train.weight_decay": {"type": "float", "low": 1e-6, "high": 1e-1, "log": True},
    "model.drop_rate": {"type": "float", "low": 0.0, "high": 0.5},
}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=240, help="synthetic training patches")
    p.add_argument("--img-size", type=int, default=32)
    p.add_argument("--model", default="resnet10t")
    p.add_argument("--trials", type=int, default=10)
    p.add_argument("--folds", type=int, default=2)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--sampler", default="tpe", choices=sorted(tune.SAMPLERS))
    p.add_argument("--pruner", default="median", choices=[k for k in tune.PRUNERS if k != "none"])
    p.add_argument("--startup", type=int, default=3, help="median/percentile: completed trials before pruning")
    p.add_argument("--warmup", type=int, default=1, help="median/percentile: steps (epochs) before pruning")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="work folder (default: a temporary one)")
    return p.parse_args()


def search(args: argparse.Namespace, root: Path, data: Path, pruner_name: str) -> dict:
    base = load_config(HCD, overrides={
        "n_folds": args.folds, "model": {"name": args.model, "img_size": args.img_size},
        "train": {"epochs": args.epochs, "batch_size": 32, "warmup_epochs": 0, "seed": args.seed}})
    space = tune.parse_space(SPACE)
    name = f"bench-{pruner_name}"
    setup = tune.TuneSetup(base, space, data, root / name, list(range(args.folds)))
    options = tune.PrunerOptions(startup_trials=args.startup, warmup_steps=args.warmup,
                                 max_resource=args.folds * setup.stride)
    storage = tune.open_storage(tune.default_storage_url(root, name), heartbeat=None)
    study = tune.open_study(name, storage, setup, tune.make_sampler(args.sampler, args.seed),
                            tune.make_pruner(pruner_name, options))
    start = time.perf_counter()
    tune.run_study(study, setup, args.trials)
    trials = study.get_trials(deepcopy=False)
    return {"pruner": pruner_name, "epochs": sum(t.user_attrs.get("epochs", 0) for t in trials),
            "best": study.best_value, "best_trial": study.best_trial.number,
            "pruned": sum(t.state == TrialState.PRUNED for t in trials),
            "failed": sum(t.state == TrialState.FAIL for t in trials), "seconds": time.perf_counter() - start}


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_search_") as tmp:
        root = args.out or Path(tmp)
        data = make_demo_data(HCD, root / "data", n=args.n, seed=args.seed)
        results = [search(args, root, data, "none"), search(args, root, data, args.pruner)]
    full, pruned = results
    print(f"\n{args.trials} trials x {args.folds} folds x {args.epochs} epochs, {args.model} at {args.img_size} px, "
          f"n={args.n}, sampler {args.sampler} seed {args.seed}, {args.pruner} pruner "
          f"(startup {args.startup}, warmup {args.warmup})")
    print(f"{'pruner':>10} {'epochs':>7} {'best CV':>8} {'trial':>6} {'pruned':>7} {'failed':>7} {'time s':>7}")
    for r in results:
        print(f"{r['pruner']:>10} {r['epochs']:>7} {r['best']:>8.4f} {r['best_trial']:>6} {r['pruned']:>7} "
              f"{r['failed']:>7} {r['seconds']:>7.0f}")
    ratio, delta = pruned["epochs"] / full["epochs"], pruned["best"] - full["best"]
    met = ratio <= 0.6 and delta >= -0.005
    print(f"epochs ratio {ratio:.2f}, best CV difference {delta:+.4f} -> issue target "
          f"(<= 0.60 of the epochs, within 0.005 AUC) {'met' if met else 'NOT met'}")


if __name__ == "__main__":
    show_messages()  # kit's messages, shown as the kit command shows them
    main()
