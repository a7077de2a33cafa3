"""A forecast as a PNG: the history, the forecast mean and a shaded quantile band (CLI and demo output).

The figure is drawn on matplotlib's Agg canvas directly (no pyplot): no display is needed, and the
process-wide backend and pyplot's figure registry are left alone, so worker threads may plot at
once. Timestamps are epoch seconds (UTC).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _dates(ts: np.ndarray) -> np.ndarray:
    return np.asarray(ts, dtype=np.int64).astype("datetime64[s]")


def plot_forecast(
    path: Path,
    history_ts: np.ndarray,
    history: np.ndarray,
    forecast_ts: np.ndarray,
    mean: np.ndarray,
    lower: np.ndarray | None,
    upper: np.ndarray | None,
    band_label: str = "p10–p90",
    title: str = "",
) -> None:
    """Writes a PNG of `history` and the forecast `mean`, with the `lower`..`upper` band when both are given."""
    import matplotlib.dates as mdates  # imported here: only the CLI and demo draw
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if len(history_ts) != len(history) or len(forecast_ts) != len(mean):
        raise ValueError("each series needs as many timestamps as values")
    for name, band in (("lower", lower), ("upper", upper)):
        if band is not None and len(band) != len(mean):
            raise ValueError(f"{name} needs one value per forecast step")
    fig = Figure(figsize=(10, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(_dates(history_ts), np.asarray(history, dtype=np.float64), color="#1f77b4", lw=1.4, label="history")
    future = _dates(forecast_ts)
    if len(history_ts) and len(forecast_ts):  # join the forecast to the last observation
        ax.plot(
            np.r_[_dates(history_ts[-1:]), future[:1]],
            [float(history[-1]), float(mean[0])],
            color="#d62728",
            lw=1.0,
            ls=":",
        )
    if lower is not None and upper is not None:
        ax.fill_between(
            future,
            np.asarray(lower, dtype=np.float64),
            np.asarray(upper, dtype=np.float64),
            color="#d62728",
            alpha=0.2,
            lw=0,
            label=band_label,
        )
    ax.plot(future, np.asarray(mean, dtype=np.float64), color="#d62728", lw=1.6, label="forecast mean")
    locator = mdates.AutoDateLocator()
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(Path(path), format="png")
