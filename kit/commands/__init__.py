"""One module per ``kit`` subcommand: ``add_parser(subparsers)`` registers it, ``run(args)`` does the work."""
