"""kit tune: an Optuna search over config keys (fold-aware pruning, resumable, many workers), or --best NAME."""

from kit.commands import data_folds_file, flags, parse_folds, with_folds_file
from kit.commands.flags import add_competition

EPILOG = """\
search space (YAML, config key -> distribution):
  train.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
  train.batch_size: {type: int, low: 16, high: 64, step: 16}
  model.name: {type: categorical, choices: [resnet10t, resnet18]}

--trials N is the total for the study, not for this run: a restarted or second worker runs trials only until the
study holds N trials that ran to an end (complete, pruned, or failed by their values: NaN loss, out of memory,
invalid combination). Trials of a killed worker do not count: they are marked FAIL once their heartbeat is stale
and re-run with the same values, resuming their folds from last.pt.

examples:
  kit tune --competition histopathologic-cancer-detection --data data/hcd --study hcd-lr --trials 30 --folds 0,1
      # the competition's default space, kit/configs/spaces/histopathologic-cancer-detection.yaml
  kit tune --best hcd-lr                 # table, best.yaml, history.png, importances.png
  kit tune ... --storage postgresql+psycopg://user:pass@host/optuna     # on every worker
"""


def add_parser(sub):
    import argparse

    p = sub.add_parser("tune", help="search hyper-parameters with Optuna (pruning, resumable, many workers)",
                       description="Search config values with Optuna. Each trial trains the chosen folds into\n"
                       "<out>/<study>/trial-<n>/ and scores the pooled out-of-fold predictions (maximised).\n"
                       "The study lives in --storage (default: SQLite <out>/<study>.db): run the same command\n"
                       "again to continue it, or on several machines with one PostgreSQL URL to share it.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--study", help="study name (its trials go to <out>/<study>/)")
    p.add_argument("--best", metavar="NAME", default=None,
                   help="do not search: print the best trials of study NAME, write <out>/NAME/best.yaml (a preset "
                   "for kit train --config) and its plots")
    add_competition(p)
    flags.add_data(p)
    flags.add_config(p, "the base config of every trial; default: the competition's preset")
    flags.add_set(p, "of the base config; a key the space searches is refused")
    p.add_argument("--space", default=None, help="search space: a YAML file or a shipped space's name (kit/configs/"
                   "spaces/); default: the competition's own")
    p.add_argument("--trials", type=int, default=None,
                   help="total trials of the STUDY (not of this run): stop once it holds this many finished ones")
    p.add_argument("--storage", default=None, help="SQLAlchemy URL (default: sqlite:///<out>/<study>.db)")
    p.add_argument("--folds", default=None, help="folds each trial trains, e.g. 0,1 (default: all)")
    p.add_argument("--folds-file", default=None, help="folds.csv from `kit folds`; it sets n_folds (default: "
                   "DATA/folds.csv when `kit folds` wrote one there, else folds made from n_folds)")
    p.add_argument("--pruner", default="median", choices=("median", "percentile", "halving", "hyperband", "none"),
                   help="how trials are pruned (default median)")
    p.add_argument("--pruner-startup", type=int, default=5, metavar="N",
                   help="median/percentile: prune only once N trials have completed (default 5)")
    p.add_argument("--pruner-warmup", type=int, default=1, metavar="STEPS",
                   help="median/percentile: never prune before this step, counted in epochs across folds "
                   "(default 1: not on the first epoch alone, whose scores are mostly noise)")
    p.add_argument("--percentile", type=float, default=25.0, help="percentile pruner: prune below it (default 25)")
    p.add_argument("--sampler", default="tpe", choices=("tpe", "random"), help="how values are sampled (default tpe)")
    p.add_argument("--seed", type=int, default=None, help="sampler seed (combined with each trial's number)")
    flags.add_out(p, "the root folder of studies", default="runs/tune", metavar="DIR")
    p.add_argument("--heartbeat", type=int, default=60, metavar="S",
                   help="seconds between a running trial's heartbeats; a trial silent for 2x this is failed and "
                   "retried (default 60)")
    p.add_argument("--max-retry", type=int, default=1, help="times a dead worker's trial is re-run (default 1)")
    p.add_argument("--keep-checkpoints", action="store_true",
                   help="keep each finished trial's best.pt/last.pt (default: delete them, keep scores and OOF)")
    p.add_argument("--top", type=int, default=10, help="--best: rows of the table (default 10)")
    p.set_defaults(func=run)


def run(args) -> int:
    import optuna

    from kit.tune import experimental_warnings_once

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # kit prints one line per trial: optuna's would repeat it
    with experimental_warnings_once():
        return show_best(args) if args.best else search(args)


def search(args) -> int:
    from pathlib import Path

    from kit import tune
    from kit.config import load_config
    from kit.errors import ConfigError
    from kit.trackers import finish_study

    missing = [f"--{n}" for n in ("study", "competition", "data", "trials") if getattr(args, n) is None]
    if missing:
        raise ConfigError(f"missing {', '.join(missing)} (or use --best NAME to see a study's results)")
    if args.trials < 1:
        raise ConfigError(f"--trials must be at least 1, got {args.trials}")
    # a finished trial's last.pt is never resumed: dropped unless --set train.keep_last=true (which comes later)
    from kit.config import parse_overrides

    args.folds_file = data_folds_file(args.folds_file, Path(args.data), parse_overrides(args.overrides))
    base = with_folds_file(load_config(args.competition, args.config, ["train.keep_last=false", *args.overrides]),
                           args.folds_file)
    space_path = tune.resolve_space(args.space, base.competition)
    print(f"kit tune: search space {space_path}")
    space = tune.load_space(space_path)
    _refuse_set_of_searched_keys(args.overrides, space, space_path)
    tune.check_space(space, base, str(space_path))
    folds = parse_folds(args.folds) if args.folds else list(range(base.n_folds))
    bad = [k for k in folds if not 0 <= k < base.n_folds]
    if bad or not folds:
        raise ConfigError(f"--folds {args.folds} out of range for {base.n_folds} folds")
    out = Path(args.out)
    setup = tune.TuneSetup(base, space, Path(args.data), out / args.study, folds,
                           Path(args.folds_file) if args.folds_file else None, args.keep_checkpoints)
    options = tune.PrunerOptions(startup_trials=args.pruner_startup, warmup_steps=args.pruner_warmup,
                                 percentile=args.percentile, max_resource=len(folds) * setup.stride)
    pruner = tune.make_pruner(args.pruner, options)
    sampler = tune.make_sampler(args.sampler, args.seed)
    storage = tune.open_storage(args.storage or tune.default_storage_url(out, args.study), args.heartbeat,
                                max_retry=args.max_retry)
    study = tune.open_study(args.study, storage, setup, sampler, pruner)
    ran = tune.run_study(study, setup, args.trials, poll_s=args.heartbeat,
                         retry=storage.get_heartbeat_stale_trial_callback())
    values = [t.value for t in study.get_trials(deepcopy=False) if t.value is not None]
    finish_study(base, setup.study_dir, max(values, default=None))  # train.loggers: the study's MLflow run ends
    print(f"\nkit tune: worker {tune.worker_id()} ran {len(ran)} trial(s): {' '.join(map(str, ran)) or '-'}")
    print(tune.trials_table(study, top=5))
    return 0


def _refuse_set_of_searched_keys(overrides: list[str], space: dict, space_path) -> None:
    """A --set of a key the space searches would be overridden by every trial's suggestion: say so, naming it."""
    from kit.errors import ConfigError

    searched = [pair.split("=", 1)[0] for pair in overrides if pair.split("=", 1)[0] in space]
    if searched:
        raise ConfigError(f"--set {searched[0]}: the search space {space_path} searches {searched[0]}, so every trial "
                          "would override it; drop the --set, or give a --space without that key")


def show_best(args) -> int:
    from pathlib import Path

    from kit import tune
    from kit.errors import ConfigError

    out = Path(args.out)
    default = out / f"{args.best}.db"
    if args.storage is None and not default.is_file():  # opening a missing SQLite file would create it
        raise ConfigError(f"no study database {default}; pass the --out or --storage the study was run with")
    storage = tune.open_storage(args.storage or tune.default_storage_url(out, args.best), heartbeat=None)
    study = _load(args.best, storage)
    print(tune.trials_table(study, top=args.top))
    study_dir = out / args.best
    path = tune.write_best(study, study_dir / "best.yaml")
    print(f"\nbest config: {path}")
    for name, result in tune.save_plots(study, study_dir).items():
        print(f"{name}: {result}" if isinstance(result, Path) else f"{name}: skipped ({result})")
    print(f"browse the study: optuna-dashboard {tune.redact_url(storage.url)}")
    return 0


def _load(name, storage):
    import optuna

    from kit.errors import ConfigError

    names = optuna.get_all_study_names(storage)
    if name not in names:
        raise ConfigError(f"no study '{name}' in the storage; studies there: {', '.join(names) or 'none'}")
    return optuna.load_study(study_name=name, storage=storage)
