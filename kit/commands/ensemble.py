"""kit ensemble: blend the OOF and test predictions of several predicted runs and stacks into one submission
(:func:`kit.pipeline.ensemble_and_submit`)."""

from __future__ import annotations

from kit.commands import flags


def add_parser(sub):
    p = sub.add_parser("ensemble", help="blend several predicted runs (mean, rank, gmean, fitted weights)",
                       description="Blend runs trained on the same folds.csv and predicted with kit predict. "
                       "Prints the CV of each run and of every blend side by side (a fitted blend's CV is nested: "
                       "weights fitted on the other folds' OOF, scored on the held-out fold), then writes a "
                       "validated submission of the chosen blend and a JSON summary next to it.")
    flags.add_run_dir(p, "predicted run folders (or stack folders)", nargs="+")
    p.add_argument("--method", default="mean", choices=flags.BLEND_METHODS,
                   help="mean, rank (percentile ranks, binary), gmean, or fit (ensemble selection on the OOF); "
                   "default mean")
    flags.add_fold_merge(p)
    p.add_argument("--name", default="ensemble", help="the name in the submission file (default ensemble)")
    flags.add_data(p, default_note="for the test ids; default: the first run's")
    flags.add_submissions(p)
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
