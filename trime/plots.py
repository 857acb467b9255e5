"""Figures of trime's console scripts and ``trime-repro`` (matplotlib, the ``[plots]`` extra):
``pyplot`` (None, with a warning, where matplotlib is missing), ``save_figure``, ``line_plot``
and ``heat_map``."""

import logging

logger = logging.getLogger("trime.plots")


def pyplot():
    """matplotlib.pyplot with a file backend, or None (and a warning) when it is not installed."""
    logging.getLogger("matplotlib").setLevel(logging.WARNING)  # before its import logs
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed, no plot written: pip install 'trime[plots]'")
        return None
    return plt


def line_plot(png, curves, xlabel, ylabel) -> bool:
    """Curves {label: (xs, ys, matplotlib line style)} into ``png``; False without matplotlib."""
    plt = pyplot()
    if plt is None:
        return False
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for label, (xs, ys, style) in curves.items():
        ax.plot(xs, ys, marker="o", linestyle=style, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(plt, fig, png)
    return True


def save_figure(plt, fig, png):
    """Write ``fig`` to ``png`` and free it (trime-repro --in-process plots many times in one
    process; pyplot keeps every open figure)."""
    fig.tight_layout()
    fig.savefig(png, dpi=150)
    plt.close(fig)


def heat_map(fig, ax, rows, x_key, y_key, xlabel, ylabel, value_key="perplexity",
             lower_is_better=True):
    """``rows``' ``value_key`` over the x × y grid, each cell labelled (also trime-mt-tune's)."""
    xs = sorted({r[x_key] for r in rows})
    ys = sorted({r[y_key] for r in rows})
    table = {(r[y_key], r[x_key]): r[value_key] for r in rows}
    values = [[table.get((y, x), float("nan")) for x in xs] for y in ys]
    image = ax.imshow(values, cmap="viridis_r" if lower_is_better else "viridis", aspect="auto",
                      origin="lower")
    ax.set_xticks(range(len(xs)), [f"{x:g}" for x in xs])
    ax.set_yticks(range(len(ys)), [f"{y:g}" for y in ys])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    for i, row in enumerate(values):
        for j, value in enumerate(row):
            ax.text(j, i, f"{value:.1f}", ha="center", va="center", fontsize=7, color="white")
    fig.colorbar(image, label=value_key)
