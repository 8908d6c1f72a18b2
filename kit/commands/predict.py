"""kit predict: TTA predictions of a run's folds on the test set (and their OOF images), then a submission.

The chain (prediction, the blend of the folds, decision weights, the validated submission, the report) is
:func:`kit.pipeline.predict_and_submit`; the command parses, calls and prints.
"""

from __future__ import annotations

from kit.commands import flags


def add_parser(sub):
    p = sub.add_parser("predict", help="predict the test images with each fold's checkpoint and TTA; write a "
                       "submission", description="For each fold's best.pt (the model rebuilt from the checkpoint "
                       "alone), predict the test images and the fold's out-of-fold images with TTA. Writes "
                       "RUN_DIR/test_fold{k}.csv, oof_tta.csv, scores_tta.json (CV without and with TTA), "
                       "report/ plots, and a validated submission of the folds blended.")
    flags.add_run_dir(p)
    flags.add_data(p, default_note="default: the run's, from run.json")
    flags.add_tta(p)
    flags.add_merge(p)
    p.add_argument("--folds", default=None, help="comma-separated folds to use, e.g. 0,1 (default: every finished fold)")
    flags.add_fold_merge(p)
    p.add_argument("--batch-size", type=int, default=None,
                   help="images per batch (default: twice the training batch over the views per forward)")
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: as in training)")
    flags.add_device(p)
    flags.add_submissions(p)
    p.add_argument("--decision", default="auto", choices=("auto", "on", "off"),
                   help="balanced-accuracy competitions: per-class decision weights fitted on the OOF and applied to "
                   "the test probabilities; auto applies them where the nested CV improves (default auto)")
    p.add_argument("--no-report", action="store_true", help="skip the report/ plots")
    p.set_defaults(func=run)


def run(args) -> int:
    from kit.commands import parse_folds
    from kit.pipeline import predict_and_submit

    folds = parse_folds(args.folds) if args.folds else None
    _, submission = predict_and_submit(args.run_dir, args.data, args.tta, args.merge, folds, args.batch_size,
                                       args.fold_merge, args.out_dir, args.device, args.workers,
                                       report=not args.no_report, decision=args.decision)
    print(submission)
    return 0


def __getattr__(name: str):
    """``predict_and_submit`` moved to kit.pipeline (kit 0.3); imported from here it still works."""
    if name == "predict_and_submit":
        from kit.pipeline import predict_and_submit

        return predict_and_submit
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
