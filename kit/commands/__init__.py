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
