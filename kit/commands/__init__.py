"""One module per ``kit`` subcommand: ``add_parser(subparsers)`` registers it, ``run(args)`` does the work; the flags
they share are defined once in :mod:`kit.commands.flags`."""

from kit.commands.flags import add_competition  # noqa: F401  (the commands' import of it predates flags.py)


def parse_folds(text: str) -> list[int]:
    """``"0,1,3"`` -> ``[0, 1, 3]`` for the ``--folds`` options."""
    from kit.errors import ConfigError

    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--folds expects comma-separated integers, got '{text}'") from None


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


def data_folds_file(given: str | None, data_dir, overrides: dict) -> str | None:
    """--folds-file, else the DATA/folds.csv that `kit folds` wrote (the user made it for a reason: the start line
    names it); None: folds made from n_folds. An explicit n_folds that the file contradicts wins, with one line."""
    found = data_dir / "folds.csv"
    if given or not found.is_file():
        return given
    n, wanted = folds_in_file(found), overrides.get("n_folds")
    if wanted is not None and n != wanted:
        print(f"note: {found} ({n} folds) is not used since --set n_folds={wanted} asks for other folds; "
              f"use it with --folds-file {found}", flush=True)
        return None
    return str(found)


def add_config_source(parser) -> None:
    """``RUN`` (a run folder: its config and data) or ``-c NAME --data DIR [--config PRESET]``, with ``--set``: the
    setup a look-before-training command (kit show batch, kit lr-find) works on."""
    from kit.commands.flags import add_config, add_data, add_run_dir, add_set

    add_run_dir(parser, "a run folder: its saved config and data folder (or give -c and --data)", nargs="?")
    add_competition(parser)
    add_data(parser, default_note="default: the run's")
    add_config(parser)
    add_set(parser)


def config_source(args):
    """(config, data folder) of :func:`add_config_source`'s arguments."""
    import tempfile
    from pathlib import Path

    from kit.config import config_to_yaml, load_config
    from kit.errors import ConfigError

    run_dir = args.run_dirs
    if run_dir is None:
        missing = [f"--{n}" for n in ("competition", "data") if not getattr(args, n)]
        if missing:
            raise ConfigError(f"missing {', '.join(missing)} (or give a run folder)")
        return load_config(args.competition, args.config, args.overrides), Path(args.data)
    from kit.rundir import RunDir

    if args.competition or args.config:
        raise ConfigError("a run folder brings its own config: -c/--config are not allowed with it (--set is)")
    run = RunDir.open(run_dir)
    data = Path(args.data) if args.data else run.data_dir()
    if data is None or not data.is_dir():
        raise ConfigError(f"data folder {data} not found (from {run.path / run.INFO}); pass --data DIR")
    if not args.overrides:
        return run.config(), data
    with tempfile.TemporaryDirectory() as tmp:  # the saved config as a preset, so --set is checked as everywhere
        saved = Path(tmp) / "config.yaml"
        saved.write_text(config_to_yaml(run.config(), with_provenance=False))
        return load_config(None, str(saved), args.overrides), data
