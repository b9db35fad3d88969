"""The reports' figures: matplotlib on the Agg backend (no display), imported only when a
figure is drawn, so a script's `--help` and its measurements need no matplotlib."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def figure(ncols: int = 1, nrows: int = 1, width: float = 5.0, height: float = 3.6
           ) -> tuple[Any, Any]:
    """A matplotlib figure on the Agg backend (no display); axes always a flat list."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows),
                             squeeze=False)
    return fig, [ax for row in axes for ax in row]


def cdf(ax: Any, values: Sequence[float], label: str, scale: float = 1000.0) -> None:
    """An empirical CDF of `values` (seconds, shown ×scale, i.e. ms by default)."""
    v = sorted(x * scale for x in values if x == x)
    if not v:
        return
    ax.plot(v, [(i + 1) / len(v) for i in range(len(v))], label=label, drawstyle="steps-post")



def tidy_log(ax: Any) -> None:
    """No labels on a log axis's minor ticks (they overlap on short ranges)."""
    from matplotlib.ticker import NullFormatter

    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.yaxis.set_minor_formatter(NullFormatter())
