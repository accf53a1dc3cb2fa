"""Names, colours and axes shared by the notebooks' figures (matplotlib / seaborn)."""
from __future__ import annotations

import matplotlib.pyplot as plt
import matplotlib.ticker as mticker
import seaborn as sns

from ..optim import LABELS  # the display names, re-exported for the notebooks

__all__ = ["LABELS", "PALETTE", "cut_loss_axis", "log_loss_axis", "log_x_axis", "panel_grid"]

#: One colour per optimizer display name, the same in every figure.
PALETTE = dict(zip(LABELS.values(), sns.color_palette("tab10", len(LABELS))))


def _plain(value, _position=None) -> str:
    return f"{value:g}"


def log_loss_axis(ax) -> None:
    """Log-scale y axis labelled with plain numbers (minor labels at 2, 3, 4, 5 x 10^k)."""
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(mticker.FuncFormatter(_plain))
    ax.yaxis.set_minor_formatter(mticker.FuncFormatter(lambda v, _: _plain(v) if _plain(v)[0] in "2345" else ""))


def log_x_axis(ax, ticks) -> None:
    """Log-scale x axis with ticks at the values tried, labelled with plain numbers."""
    ax.set_xscale("log")
    ax.set_xticks(ticks)
    ax.xaxis.set_major_formatter(mticker.FuncFormatter(_plain))
    ax.xaxis.set_minor_locator(mticker.NullLocator())


def panel_grid(titles, xlabel: str, ylabel: str, cols: int = 5, height: float = 3.4, **subplots):
    """One panel per title, in rows of ``cols``: returns the figure and the titled panels.

    The panels left over in the last row are hidden, the first column carries ``ylabel`` and the
    bottom row ``xlabel``; ``subplots`` goes to :func:`matplotlib.pyplot.subplots` (e.g. ``sharey``).
    """
    titles = list(titles)
    rows = max(1, -(-len(titles) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(16, height * rows), squeeze=False, **subplots)
    for ax in axes.flat[len(titles):]:
        ax.axis("off")
    for ax in axes[:, 0]:
        ax.set_ylabel(ylabel)
    for ax in axes[-1]:
        ax.set_xlabel(xlabel)
    panels = list(axes.flat[:len(titles)])
    for ax, title in zip(panels, titles):
        ax.set_title(title)
    return fig, panels


def cut_loss_axis(ax, frame, top: float, column: str = "train_loss") -> dict[str, float]:
    """Cut the y axis at ``top`` and return {optimizer: its highest value} of the curves that leave it.

    So that one unstable run does not squeeze the others into a sliver of the figure; the caller
    says in the caption which curves were cut.
    """
    low, _ = ax.get_ylim()
    ax.set_ylim(low, top)
    peaks = frame.groupby("optimizer", observed=True)[column].max()
    return {str(name): float(value) for name, value in peaks.items() if value > top}
