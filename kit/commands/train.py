"""kit train: k-fold training into a run folder (or --resume an interrupted one)."""

from kit.commands import data_folds_file, flags, parse_folds, with_folds_file
from kit.commands.flags import add_competition


def add_parser(sub):
    p = sub.add_parser("train", help="train k folds and write checkpoints, OOF predictions and CV scores",
                       description="Train each fold on the others and validate on it. Writes runs/<name>/: "
                       "config.yaml, folds.csv, fold{k}/best.pt, last.pt, history.csv, oof.csv, scores.json. "
                       "Interrupt at any time and continue with --resume.")
    add_competition(p, help="default: the one --config names")
    flags.add_data(p)
    flags.add_out(p, "the run folder, e.g. runs/hcd-resnet18", metavar="RUN")
    flags.add_config(p)
    p.add_argument("--folds", default=None, help="comma-separated folds to train, e.g. 0,1 (default: all); with "
                   "--resume, the ones of the run to train now (a failed fold again, say)")
    p.add_argument("--folds-file", default=None, help="folds.csv from `kit folds`; it sets n_folds (default: "
                   "DATA/folds.csv when `kit folds` wrote one there, else folds made from n_folds and fold_seed)")
    flags.add_set(p)
    flags.add_device(p, default=None)
    p.add_argument("--extra-data", action="append", default=[], metavar="COMPETITION=DIR",
                   help="add another competition's labelled data to the training part of every fold only (never "
                   "validated, never in oof.csv or the CV), e.g. isic-2019=data/isic-2019 for a 2020 run "
                   "(repeatable; sets data.extra)")
    p.add_argument("--exclude", default=None, metavar="CSV",
                   help="ids to leave out (the bad-image list of `kit check-data --skip-bad-images`)")
    p.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue the interrupted run in RUN_DIR")
    p.add_argument("--overwrite", action="store_true", help="replace the run already in --out (its checkpoints, "
                   "predictions and scores are deleted)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (or, when stderr is not a terminal, "
                   "no progress line every KIT_PROGRESS_EVERY seconds, default 30)")
    p.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                   help="stop cleanly at an epoch boundary when the next epoch would end after SECONDS (from the "
                   "start of this command); every finished epoch is kept, exit code 75, continue with --resume")
    p.add_argument("--devices", default=None, metavar="LIST", help="train folds in parallel, one process per device: "
                   "GPU indexes (0,1,2,3) or cpu (cpu,cpu); for one fold on several GPUs use torchrun instead")
    p.set_defaults(func=run)


def run(args) -> int:
    import contextlib
    import time
    from pathlib import Path

    from kit.config import load_config, preset_competition
    from kit.errors import ConfigError
    from kit.train import resume_config

    started = time.monotonic()  # the budget counts from here: loading the data is part of the session
    progress = not args.no_progress  # a bar in a terminal, a line every KIT_PROGRESS_EVERY s in a log
    only = None
    if args.resume:
        if args.overrides or args.config or args.overwrite or args.extra_data:
            raise ConfigError("--resume continues a run with its saved config; --set/--config/--overwrite/"
                              "--extra-data are not allowed")
        cfg, data_dir, folds = resume_config(Path(args.resume))
        if args.device:  # where it runs, not what it trains: a resumed run may move to another device
            import dataclasses

            cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, device=args.device))
        out = Path(args.resume)
        data_dir = Path(args.data) if args.data else data_dir
        only = _resume_only(args.folds, folds)
    else:
        competition = args.competition or (preset_competition(args.config) if args.config else None)
        missing = [f"--{n}" for n, v in (("competition", competition), ("data", args.data), ("out", args.out))
                   if not v]
        if missing:
            raise ConfigError(f"missing {', '.join(missing)} (or use --resume RUN_DIR)")
        overrides = _overrides(args)
        args.folds_file = data_folds_file(args.folds_file, Path(args.data), overrides)
        cfg = with_folds_file(load_config(competition, args.config, overrides), args.folds_file)
        out, data_dir = Path(args.out), Path(args.data)
        folds = parse_folds(args.folds) if args.folds else None
    exclude = None
    if args.exclude:
        from kit.data.labels import read_csv

        exclude = list(read_csv(Path(args.exclude), ["id"], what="exclude list")["id"])
    from kit.distributed import session
    from kit.rundir import RunDir

    with session(cfg.train.device) as group:  # under torchrun: one process group; otherwise a no-op
        runner = _fold_runner(args.devices, exclude, group.enabled)
        # train.log: everything printed from here on, once the run has started; rank 0 alone writes it
        log = RunDir(out).logging() if group.is_main else contextlib.nullcontext()
        with log:
            return _train(cfg, data_dir, out, folds, exclude, progress, args, started, only=only, runner=runner,
                          is_main=group.is_main)


def _train(cfg, data_dir, out, folds, exclude, progress, args, started, *, only, runner, is_main) -> int:
    from kit.budget import EXIT_BUDGET, TimeBudgetReached
    from kit.report import write_report
    from kit.trackers import RunTracking
    from kit.train import train_folds

    budget = _budget(args.time_budget, cfg, only or folds, started)
    # train.loggers: the run's MLflow run is opened before the folds (each fold's run nests in it) and ended after
    try:
        with RunTracking(cfg, out, fresh=not args.resume, stopped=(TimeBudgetReached,), enabled=is_main) as tracking:
            result = train_folds(cfg, data_dir, out, folds, args.folds_file, on_epoch=budget, progress=progress,
                                 exclude=exclude, fresh=not args.resume, overwrite=args.overwrite, only=only,
                                 runner=runner)
            written = write_report(out) if is_main else []
            tracking.finish({"cv": result.cv_score, "mean_fold_score": result.mean_fold_score}, written)
    except TimeBudgetReached as e:
        if is_main:
            print(f"kit train: {e}; continue with: kit train --resume {out} [--time-budget SECONDS]", flush=True)
        return EXIT_BUDGET
    if not is_main:  # rank 0 reports
        return 0
    print(f"\n{'fold':>6}  {result.metric}")
    for k, score in result.fold_scores.items():
        print(f"{k:>6}  {score:.4f}")
    print(f"{'mean':>6}  {result.mean_fold_score:.4f}")
    print(f"{'CV':>6}  {result.cv_score:.4f}   (pooled out-of-fold, from {out / 'oof.csv'})")
    if written:
        print(f"report: {len(written) - 1} plots and the run page {out / 'report' / 'index.html'}")
    return 0


def _overrides(args) -> dict:
    """``--set`` pairs, with ``--extra-data`` entries appended to data.extra."""
    from kit.config import parse_overrides
    from kit.data.extra import parse_extra

    overrides = parse_overrides(args.overrides)
    if args.device:  # --device D is --set train.device=D, as in kit predict
        overrides.setdefault("train", {})["device"] = args.device
    if args.extra_data:
        data = overrides.setdefault("data", {})
        given = data.get("extra") or []  # a malformed --set value is left for the config check to name
        data["extra"] = (given if isinstance(given, list) else [given]) + [parse_extra(t) for t in args.extra_data]
    return overrides


def _budget(seconds, cfg, folds, started):
    """The --time-budget callback, its clock started with the command (None without the option)."""
    if seconds is None:
        return None
    from kit.budget import TimeBudget

    return TimeBudget(seconds, cfg.train.epochs, folds if folds is not None else range(cfg.n_folds), start=started)


def _resume_only(text: str | None, folds: list[int]) -> list[int] | None:
    """``--folds`` with ``--resume``: which of the run's folds to train now (None: every unfinished one)."""
    from kit.errors import ConfigError

    if not text:
        return None
    only = parse_folds(text)
    alien = [k for k in only if k not in folds]
    if alien:
        raise ConfigError(f"--folds {text}: fold {alien[0]} is not one of this run's folds "
                          f"({','.join(map(str, folds))})")
    return only


def _fold_runner(devices: str | None, exclude: list[str] | None, distributed: bool):
    """The fold runner of ``--devices`` (None: the folds one after the other in this process)."""
    if devices is None:
        return None
    from kit.errors import ConfigError
    from kit.parallel_folds import ParallelFolds, parse_devices

    if distributed:
        raise ConfigError("--devices runs one process per fold; under torchrun every process trains the same fold: "
                          "use one or the other")
    return ParallelFolds(parse_devices(devices), exclude)
