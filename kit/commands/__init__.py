"""One module per ``kit`` subcommand: ``add_parser(subparsers)`` registers it, ``run(args)`` does the work."""


def parse_folds(text: str) -> list[int]:
    """``"0,1,3"`` -> ``[0, 1, 3]`` for the ``--folds`` options."""
    from kit.errors import ConfigError

    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--folds expects comma-separated integers, got '{text}'") from None
