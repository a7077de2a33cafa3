"""python -m foretell.training: the training service alone."""

from foretell.runtime.main import run

run(("training",))
