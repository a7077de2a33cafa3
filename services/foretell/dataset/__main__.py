"""python -m foretell.dataset: the dataset service alone."""

from foretell.runtime.main import run

run(("dataset",))
