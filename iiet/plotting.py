"""Figure set-up in one place: Matplotlib with the Agg backend (draws without a display) and one way to save."""

from __future__ import annotations

from pathlib import Path

DPI = 120


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (imported on first use: Matplotlib is slow to import)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure, path: str | Path, dpi: int = DPI) -> Path:
    """Lay out, write (PNG, PDF or SVG by the suffix; parent folders created) and close ``figure``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=dpi)
    pyplot().close(figure)
    return path
