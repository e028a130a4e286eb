"""One module per CLI subcommand: ``add_parser(subparsers, name, summary) -> parser`` and ``run(args) -> int``."""
