"""python -m foretell.runtime: all four services in one process on one port."""

from foretell.runtime.main import run

run()
