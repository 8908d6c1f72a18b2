"""kit stack: gradient-boosted trees on the metadata and the image runs' OOF scores, then a submission
(:func:`kit.pipeline.stack_and_submit`)."""

from __future__ import annotations

from kit.commands import flags
from kit.commands.flags import add_competition


def add_parser(sub):
    p = sub.add_parser("stack", help="GBDT stacking of metadata features and image runs' OOF scores (ISIC)",
                       description="Build a feature table from the competition's metadata (every column of the test "
                       "metadata, engineered size/shape/colour ratios, each numeric feature normalised within the "
                       "patient, the patient's lesion count) and the predicted runs' out-of-fold and test scores; "
                       "train LightGBM / XGBoost / CatBoost (several seeds each) fold by fold on the runs' own "
                       "folds.csv; write the stack folder STACK (stack.json, folds.csv, oof.csv, "
                       "test_fold{k}.csv, scores.json, predict.json, feature importances) that kit ensemble, submit, "
                       "bundle and runs take like a run, and a "
                       "validated submission. Binary competitions with metadata only.")
    add_competition(p, required=True)
    flags.add_data(p, default_note="default: the first run's")
    flags.add_run_dir(p, "predicted run folders (same folds.csv); none: metadata only, on patient-grouped folds of "
                      "the stack's own", nargs="*")
    flags.deprecated(p, ["--runs"], "the run folders as arguments (kit stack -c NAME RUN [RUN ...])", "old_runs",
                     nargs="*")
    flags.add_out(p, "the stack folder", required=True, metavar="STACK")
    p.add_argument("--models", default="lgbm,xgb,cat", help="comma-separated: lgbm, xgb, cat (default all three)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per model, averaged (default 3)")
    p.add_argument("--trees", type=int, default=None, help="boosting rounds of every model (default: each model's "
                   "own, 200)")
    p.add_argument("--tune", type=int, default=0, metavar="TRIALS", help="Optuna trials per model, nested in each "
                   "outer fold (tuned on its training part by an inner grouped CV); default 0: no search")
    p.add_argument("--neg-per-pos", type=float, default=None, metavar="R", help="undersample each training part's "
                   "negatives to R per positive (ISIC 2024 has ~1 positive per 1000)")
    p.add_argument("--n-folds", type=int, default=5, help="folds when no run is given (default 5)")
    p.add_argument("--seed", type=int, default=42, help="fold seed when no run is given (default 42)")
    flags.add_submissions(p, old=("--out-dir",))
    p.add_argument("--no-submission", action="store_true", help="write the stack folder only")
    p.set_defaults(func=run)


def run(args) -> int:
    from kit.pipeline import stack_and_submit
    from kit.stack import StackSettings

    settings = StackSettings(models=[m.strip() for m in args.models.split(",") if m.strip()], seeds=args.seeds,
                             trees=args.trees, tune=args.tune, n_folds=args.n_folds, fold_seed=args.seed,
                             neg_per_pos=args.neg_per_pos)
    runs = [*args.run_dirs, *getattr(args, "old_runs", [])]
    stack_and_submit(args.competition, args.data, runs, args.out, settings, args.out_dir,
                     not args.no_submission)
    return 0


def __getattr__(name: str):
    """``stack_and_submit`` moved to kit.pipeline (kit 0.3); imported from here it still works."""
    if name == "stack_and_submit":
        from kit.pipeline import stack_and_submit

        return stack_and_submit
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
