"""kit ensemble: blend the OOF and test predictions of several predicted runs into one submission."""

from __future__ import annotations


def add_parser(sub):
    p = sub.add_parser("ensemble", help="blend several predicted runs (mean, rank, gmean, fitted weights)",
                       description="Blend runs trained on the same folds.csv and predicted with kit predict. "
                       "Prints the CV of each run and of every blend side by side (a fitted blend's CV is nested: "
                       "weights fitted on the other folds' OOF, scored on the held-out fold), then writes a "
                       "validated submission of the chosen blend and a JSON summary next to it.")
    p.add_argument("run_dirs", metavar="RUN_DIR", nargs="+", help="predicted run folders")
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


def ensemble_and_submit(run_dirs, method="mean", out_dir="submissions", name="ensemble", data=None,
                        fold_merge="mean", decision="auto"):
    """``kit ensemble`` as a function: (EnsembleResult, the submission's path, its JSON summary's path)."""
    from kit.ensemble import ensemble_runs, write_summary
    from kit.submission import write_submission

    result = ensemble_runs(run_dirs, method, data, fold_merge, decision=decision)
    if result.decision_note:
        print(result.decision_note)
    path = write_submission(result.spec, [str(i) for i in result.test_ids], result.test, name, out_dir,
                            expected_ids=result.expected_ids)
    summary = write_summary(result, path.with_suffix(".json"))
    n = len(result.members)
    print(f"wrote {path} ({method} blend of {n} run{'s' * (n > 1)}; summary {summary.name})")
    return result, path, summary


def run(args) -> int:
    _, path, _ = ensemble_and_submit(args.run_dirs, args.method, args.out_dir, args.name, args.data, args.fold_merge,
                                     args.decision)
    print(path)
    return 0
