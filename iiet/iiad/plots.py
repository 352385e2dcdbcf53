"""Pictures of influence: the layer x iteration heatmap (paper Figures 5 and 6) and per-layer block influence of
several models (Figure 4). Matplotlib with the Agg backend, so they draw without a display."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from iiet.iiad.influence import Influence
from iiet.models.names import label_of
from iiet.plotting import distinct_colors, pyplot, save_figure

CELL_INCHES = 0.55  # heatmap cell width: room for a two-decimal annotation
DARK_TEXT_FRACTION = 0.6  # cells darker than this fraction of the colour range get white text
FIGURE_DPI = 130  # a little sharper than the default: the heatmap's annotations are small


def influence_matrix(influence: Influence) -> np.ndarray:
    """(rows, layers) array of iteration influence, NaN where a layer has fewer iterations."""
    rows = max(len(row) for row in influence.iteration)
    matrix = np.full((rows, len(influence.iteration)), np.nan)
    for n, row in enumerate(influence.iteration):
        matrix[: len(row), n] = row
    return matrix


def plot_iteration_influence(influence: Influence, path: str | Path, title: str | None = None) -> Path:
    """Heatmap of iteration influence: layers left to right, initial compute at the bottom, annotated cells."""
    plt = pyplot()
    matrix = influence_matrix(influence)
    rows, layers = matrix.shape
    figure, axis = plt.subplots(figsize=(max(4.0, CELL_INCHES * layers + 2.5), 0.6 * rows + 1.6))
    cmap = plt.get_cmap("Blues").with_extremes(bad="white")  # a layer without this iteration: an empty cell
    vmax = float(np.nanmax(matrix)) or 1.0
    image = axis.imshow(np.ma.masked_invalid(matrix), cmap=cmap, origin="lower", aspect="auto", vmin=0.0, vmax=vmax)
    for i in range(rows):
        for n in range(layers):
            if not np.isnan(matrix[i, n]):
                color = "white" if matrix[i, n] > DARK_TEXT_FRACTION * vmax else "black"
                axis.text(n, i, f"{matrix[i, n]:.2f}", ha="center", va="center", fontsize=7, color=color)
    axis.set_xticks(range(layers), [str(n) for n in range(layers)])
    axis.set_yticks(range(rows), influence.row_labels())
    axis.set_xlabel("layer index")
    axis.set_ylabel("iteration calculation phase")
    figure.colorbar(image, ax=axis, label="influence (1 - cos)")
    axis.set_title(title or f"Iteration influence ({_model_label(influence)})")
    return save_figure(figure, path, dpi=FIGURE_DPI)


def plot_block_influence(
    influences: list[Influence], path: str | Path, labels: list[str] | None = None, title: str | None = None
) -> Path:
    """Draw ``block_influence_figure`` into ``path``."""
    return save_figure(block_influence_figure(influences, labels, title), path, dpi=FIGURE_DPI)


def block_influence_figure(influences: list[Influence], labels: list[str] | None = None, title: str | None = None):
    """Block influence per layer, one line (and colour) per model (higher = the layer changes its input more);
    legend: the paper's names of the models unless ``labels`` are given."""
    from matplotlib.ticker import MaxNLocator

    labels = labels or [_model_label(x) for x in influences]
    figure, axis = pyplot().subplots(figsize=(7, 4))
    for influence, label, color in zip(influences, labels, distinct_colors(len(influences))):
        axis.plot(range(len(influence.block)), influence.block, marker="o", markersize=3, color=color, label=label)
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))  # layers are whole numbers
    axis.set_xlabel("layer index")
    axis.set_ylabel("block influence (1 - cos)")
    axis.grid(alpha=0.3)
    axis.legend()
    axis.set_title(title or "Block influence")
    return figure


def _model_label(influence: Influence) -> str:
    scheme = influence.scheme_config
    return label_of(scheme, len(influence.iteration)) if scheme is not None else "?"
