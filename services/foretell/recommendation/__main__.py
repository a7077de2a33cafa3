"""python -m foretell.recommendation: the recommendation service alone."""

from foretell.runtime.main import run

run(("recommendation",))
