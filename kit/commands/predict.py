"""kit predict: TTA predictions of a run's folds on the test set (and their OOF images), then a submission.

The command chains three stages: prediction (kit.predict), the blend of the folds (kit.ensemble) and the validated
submission (kit.submission), then draws the report.
"""

from __future__ import annotations


def add_parser(sub):
    p = sub.add_parser("predict", help="predict the test images with each fold's checkpoint and TTA; write a "
                       "submission", description="For each fold's best.pt (the model rebuilt from the checkpoint "
                       "alone), predict the test images and the fold's out-of-fold images with TTA. Writes "
                       "RUN_DIR/test_fold{k}.csv, oof_tta.csv, scores_tta.json (CV without and with TTA), "
                       "report/ plots, and a validated submission of the folds blended.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run folder written by kit train")
    p.add_argument("--data", default=None, help="competition data folder (default: the run's, from run.json)")
    p.add_argument("--tta", default="8", help="TTA view set: 1 (none), 2 (+hflip), 4 (flips), 8 (dihedral group); "
                   "default 8")
    p.add_argument("--merge", default="mean", help="how TTA views merge: mean, gmean, max, logits (default mean)")
    p.add_argument("--folds", default=None, help="comma-separated folds to use, e.g. 0,1 (default: every finished fold)")
    p.add_argument("--fold-merge", default="mean", help="how folds blend: mean, rank, gmean (default mean)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="images per batch (default: twice the training batch over the views per forward)")
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: as in training)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ... (default auto)")
    p.add_argument("--out", "--out-dir", dest="out_dir", default="submissions",
                   help="where the submission goes (default submissions)")
    p.add_argument("--decision", default="auto", choices=("auto", "on", "off"),
                   help="balanced-accuracy competitions: per-class decision weights fitted on the OOF and applied to "
                   "the test probabilities; auto applies them where the nested CV improves (default auto)")
    p.add_argument("--no-report", action="store_true", help="skip the report/ plots")
    p.set_defaults(func=run)


def predict_and_submit(run_dir, data=None, tta="8", merge="mean", folds=None, batch_size=None, fold_merge="mean",
                       out_dir="submissions", device="auto", workers=None, report=True, decision="auto"):
    """``kit predict`` as a function: (PredictResult, the submission's path)."""
    from kit.decision import apply_weights, decide_run
    from kit.ensemble import blend_folds, get_fold_blend
    from kit.predict import predict_run
    from kit.report import write_report
    from kit.rundir import RunDir
    from kit.submission import write_submission

    get_fold_blend(fold_merge)  # a bad --fold-merge fails before any prediction
    result = predict_run(run_dir, data, tta, merge, folds, batch_size, device, workers)
    run = RunDir(result.run_dir)
    test_ids, test = blend_folds(run.path, fold_merge)
    weights = decide_run(run.path, decision)  # balanced accuracy: argmax towards the rare classes, rows renormalised
    test = test if weights is None else apply_weights(test, weights)
    expected = [str(i) for i in test_ids]
    submission = write_submission(run.competition(), expected, test, run.name, out_dir, expected_ids=expected)
    print(f"wrote {submission} ({fold_merge} of {len(result.folds)} fold{'s' * (len(result.folds) > 1)})")
    if report:
        paths = write_report(run.path)
        print(f"report: {len(paths) - 1} plots and the run page {run.report_dir / 'index.html'}")
    return result, submission


def run(args) -> int:
    from kit.commands import parse_folds

    folds = parse_folds(args.folds) if args.folds else None
    _, submission = predict_and_submit(args.run_dir, args.data, args.tta, args.merge, folds, args.batch_size,
                                       args.fold_merge, args.out_dir, args.device, args.workers,
                                       report=not args.no_report, decision=args.decision)
    print(submission)
    return 0
