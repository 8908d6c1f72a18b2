"""kit train: k-fold training into a run folder (or --resume an interrupted one)."""

from kit.commands import add_competition, parse_folds, with_folds_file


def add_parser(sub):
    p = sub.add_parser("train", help="train k folds and write checkpoints, OOF predictions and CV scores",
                       description="Train each fold on the others and validate on it. Writes runs/<name>/: "
                       "config.yaml, folds.csv, fold{k}/best.pt, last.pt, history.csv, oof.csv, scores.json. "
                       "Interrupt at any time and continue with --resume.")
    add_competition(p)
    p.add_argument("--data", help="competition data folder")
    p.add_argument("--out", help="run folder to create, e.g. runs/hcd-resnet18")
    p.add_argument("--config", default=None, help="preset name (see kit/configs) or YAML file; "
                   "default: the competition's preset")
    p.add_argument("--folds", default=None, help="comma-separated folds to train, e.g. 0,1 (default: all)")
    p.add_argument("--folds-file", default=None, help="folds.csv from `kit folds`; it sets n_folds (default: folds "
                   "made on the fly)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set train.epochs=3 (repeatable)")
    p.add_argument("--exclude", default=None, metavar="CSV",
                   help="ids to leave out (the bad-image list of `kit check-data --skip-bad-images`)")
    p.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue an interrupted run")
    p.add_argument("--overwrite", action="store_true", help="replace the run already in --out (its checkpoints, "
                   "predictions and scores are deleted)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (or, when stderr is not a terminal, "
                   "no progress line every KIT_PROGRESS_EVERY seconds, default 30)")
    p.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                   help="stop cleanly at an epoch boundary when the next epoch would end after SECONDS (from the "
                   "start of this command); every finished epoch is kept, exit code 75, continue with --resume")
    p.set_defaults(func=run)


def run(args) -> int:
    import time
    from pathlib import Path

    from kit.config import load_config
    from kit.errors import ConfigError
    from kit.train import resume_config

    started = time.monotonic()  # the budget counts from here: loading the data is part of the session
    progress = not args.no_progress  # a bar in a terminal, a line every KIT_PROGRESS_EVERY s in a log
    if args.resume:
        if args.overrides or args.config or args.overwrite:
            raise ConfigError("--resume continues a run with its saved config; --set/--config/--overwrite are not "
                              "allowed")
        cfg, data_dir, folds = resume_config(Path(args.resume))
        out = Path(args.resume)
        data_dir = Path(args.data) if args.data else data_dir
    else:
        missing = [f"--{n}" for n in ("competition", "data", "out") if not getattr(args, n)]
        if missing:
            raise ConfigError(f"missing {', '.join(missing)} (or use --resume RUN_DIR)")
        cfg = with_folds_file(load_config(args.competition, args.config, args.overrides), args.folds_file)
        out, data_dir = Path(args.out), Path(args.data)
        folds = parse_folds(args.folds) if args.folds else None
    exclude = None
    if args.exclude:
        from kit.data.labels import read_csv

        exclude = list(read_csv(Path(args.exclude), ["id"], what="exclude list")["id"])
    from kit.rundir import RunDir

    with RunDir(out).logging():  # train.log: everything printed from here on, once the run has started
        return _train(cfg, data_dir, out, folds, exclude, progress, args, started)


def _train(cfg, data_dir, out, folds, exclude, progress, args, started) -> int:
    from kit.budget import EXIT_BUDGET, TimeBudgetReached
    from kit.report import write_report
    from kit.train import train_folds

    budget = _budget(args.time_budget, cfg, folds, started)
    try:
        result = train_folds(cfg, data_dir, out, folds, args.folds_file, on_epoch=budget, progress=progress,
                             exclude=exclude, fresh=not args.resume, overwrite=args.overwrite)
    except TimeBudgetReached as e:
        print(f"kit train: {e}; continue with: kit train --resume {out} [--time-budget SECONDS]", flush=True)
        return EXIT_BUDGET
    written = write_report(out)
    print(f"\n{'fold':>6}  {result.metric}")
    for k, score in result.fold_scores.items():
        print(f"{k:>6}  {score:.4f}")
    print(f"{'mean':>6}  {result.mean_fold_score:.4f}")
    print(f"{'CV':>6}  {result.cv_score:.4f}   (pooled out-of-fold, from {out / 'oof.csv'})")
    if written:
        print(f"report: {len(written)} plots in {out / 'report'}")
    return 0


def _budget(seconds, cfg, folds, started):
    """The --time-budget callback, its clock started with the command (None without the option)."""
    if seconds is None:
        return None
    from kit.budget import TimeBudget

    return TimeBudget(seconds, cfg.train.epochs, folds if folds is not None else range(cfg.n_folds), start=started)
