"""One module per ``kit`` subcommand: ``add_parser(subparsers)`` registers it, ``run(args)`` does the work."""


def parse_folds(text: str) -> list[int]:
    """``"0,1,3"`` -> ``[0, 1, 3]`` for the ``--folds`` options."""
    from kit.errors import ConfigError

    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--folds expects comma-separated integers, got '{text}'") from None


def add_competition(parser, required: bool = False, help: str = "") -> None:
    """``-c/--competition NAME``, the same in every command (the kaggle CLI's habit), its choices in --help."""
    from kit.competitions import list_competitions

    specs = list_competitions()
    names = ", ".join(s.name for s in specs)
    aliases = ", ".join(f"{a}={s.name}" for s in specs for a in s.aliases)
    parser.add_argument("-c", "--competition", required=required, default=None, metavar="NAME",
                        help=f"{help + '; ' if help else ''}one of: {names}" + (f" (aliases: {aliases})" if aliases
                                                                                 else ""))


def folds_in_file(path) -> int | None:
    """The number of folds of a folds CSV (its 'fold' column's largest value + 1); None when it cannot be read
    here (the folds check names the problem later)."""
    from kit.data.folds import load_folds
    from kit.errors import KitError

    try:
        fold = load_folds(path)
    except (KitError, OSError):
        return None
    return int(fold.max()) + 1 if len(fold) else None


def with_folds_file(cfg, path):
    """``cfg`` with ``n_folds`` set by the folds file ``path`` (a --folds-file decides the fold count)."""
    import dataclasses

    n = folds_in_file(path) if path else None
    return dataclasses.replace(cfg, n_folds=n) if n is not None and n >= 2 else cfg


def add_config_source(parser) -> None:
    """``RUN`` (a run folder: its config and data) or ``-c NAME --data DIR [--config PRESET]``, with ``--set``: the
    setup a look-before-training command (kit show batch, kit lr-find) works on."""
    parser.add_argument("run_dir", nargs="?", default=None, metavar="RUN_DIR",
                        help="a run folder: its saved config and data folder (or give -c and --data)")
    add_competition(parser)
    parser.add_argument("--data", default=None, help="competition data folder (default: the run's)")
    parser.add_argument("--config", default=None, help="preset name or YAML file (default: the competition's preset)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set aug.preset=histo (repeatable)")


def config_source(args):
    """(config, data folder) of :func:`add_config_source`'s arguments."""
    import tempfile
    from pathlib import Path

    from kit.config import config_to_yaml, load_config
    from kit.errors import ConfigError

    if args.run_dir is None:
        missing = [f"--{n}" for n in ("competition", "data") if not getattr(args, n)]
        if missing:
            raise ConfigError(f"missing {', '.join(missing)} (or give a run folder)")
        return load_config(args.competition, args.config, args.overrides), Path(args.data)
    from kit.rundir import RunDir

    if args.competition or args.config:
        raise ConfigError("a run folder brings its own config: -c/--config are not allowed with it (--set is)")
    run = RunDir.open(args.run_dir)
    data = Path(args.data) if args.data else run.data_dir()
    if data is None or not data.is_dir():
        raise ConfigError(f"data folder {data} not found (from {run.path / run.INFO}); pass --data DIR")
    if not args.overrides:
        return run.config(), data
    with tempfile.TemporaryDirectory() as tmp:  # the saved config as a preset, so --set is checked as everywhere
        saved = Path(tmp) / "config.yaml"
        saved.write_text(config_to_yaml(run.config(), with_provenance=False))
        return load_config(None, str(saved), args.overrides), data
