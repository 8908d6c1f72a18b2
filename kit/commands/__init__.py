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
