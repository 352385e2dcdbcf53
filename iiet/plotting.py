"""Figure set-up in one place: Matplotlib with the Agg backend (draws without a display) and one way to save."""

from __future__ import annotations

from pathlib import Path

from iiet.outputs import atomic_savefig

DPI = 120
_QUALITATIVE = "tab10"  # Matplotlib's default cycle: the familiar colours for up to ten lines
_MANY = "turbo"  # more lines: evenly spaced hues of a map whose neighbours stay apart
_MANY_RANGE = (0.05, 0.95)  # turbo's ends are near-black and dark red


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (imported on first use: Matplotlib is slow to import)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure, path: str | Path, dpi: int = DPI) -> Path:
    """Lay out, write atomically (PNG, PDF or SVG by the suffix; parent folders created) and close ``figure``."""
    path = Path(path)
    figure.tight_layout()
    atomic_savefig(figure, path, dpi=dpi)
    pyplot().close(figure)
    return path


def distinct_colors(count: int) -> list[tuple[float, float, float, float]]:
    """``count`` RGBA colours, no two alike: tab10 (Matplotlib's default cycle) up to ten, else evenly spaced hues.

    ``f"C{i}"`` repeats after ten lines, so a figure of twelve runs would show two blues and two oranges.
    """
    import matplotlib

    if count <= matplotlib.colormaps[_QUALITATIVE].N:
        return [matplotlib.colormaps[_QUALITATIVE](i) for i in range(count)]
    low, high = _MANY_RANGE
    return [matplotlib.colormaps[_MANY](low + (high - low) * i / (count - 1)) for i in range(count)]
