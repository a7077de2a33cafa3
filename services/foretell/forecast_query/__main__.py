"""python -m foretell.forecast_query: the forecast-query service alone."""

from foretell.runtime.main import run

run(("forecast-query",))
