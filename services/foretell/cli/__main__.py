"""python -m foretell.cli: the same as the `foretell` console script."""

from foretell.cli.main import cli

cli(prog_name="foretell")
