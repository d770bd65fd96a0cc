"""The ``cpn`` subcommands, grouped by what they drive; cluster/cli.py assembles them."""
