"""kit ensemble: blend the OOF and test predictions of several predicted runs and stacks into one submission
(:func:`kit.pipeline.ensemble_and_submit`)."""

from __future__ import annotations


def add_parser(sub):
    p = sub.add_parser("ensemble", help="blend several predicted runs (mean, rank, gmean, fitted weights)",
                       description="Blend runs trained on the same folds.csv and predicted with kit predict. "
                       "Prints the CV of each run and of every blend side by side (a fitted blend's CV is nested: "
                       "weights fitted on the other folds' OOF, scored on the held-out fold), then writes a "
                       "validated submission of the chosen blend and a JSON summary next to it.")
    p.add_argument("run_dirs", metavar="RUN_DIR", nargs="+", help="predicted run folders or stack folders")
    p.add_argument("--method", default="mean",
                   help="mean | rank (percentile ranks, binary) | gmean | fit (ensemble selection on OOF)")
    p.add_argument("--fold-merge", default="mean", help="how each run's folds blend first: mean, rank, gmean "
                   "(default mean)")
    p.add_argument("--name", default="ensemble", help="the name in the submission file (default ensemble)")
    p.add_argument("--data", default=None, help="competition data folder for the test ids (default: the first run's)")
    p.add_argument("--out", "--out-dir", dest="out_dir", default="submissions",
                   help="where the submission goes (default submissions)")
    p.add_argument("--decision", default="auto", choices=("auto", "on", "off"),
                   help="balanced-accuracy competitions: per-class decision weights fitted on the blend's OOF and "
                   "applied to its test predictions; auto (default) applies them when the nested CV gains")
    p.set_defaults(func=run)


def run(args) -> int:
    from kit.pipeline import ensemble_and_submit

    _, path, _ = ensemble_and_submit(args.run_dirs, args.method, args.out_dir, args.name, args.data, args.fold_merge,
                                     args.decision)
    print(path)
    return 0


def __getattr__(name: str):
    """``ensemble_and_submit`` moved to kit.pipeline (kit 0.3); imported from here it still works."""
    if name == "ensemble_and_submit":
        from kit.pipeline import ensemble_and_submit

        return ensemble_and_submit
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
