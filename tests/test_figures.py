"""Figures: a colour per run however many there are, the right quantity under each axis label, whole-number layer
ticks, and the paper's names in the legends."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.colors
import pytest

from iiet.iiad.influence import Influence
from iiet.iiad.plots import block_influence_figure
from iiet.plotting import distinct_colors, pyplot
from iiet.train.plots import loss_curves_figure


def _write_run(directory: Path, losses: list[float], **extra: list[float]) -> Path:
    directory.mkdir(parents=True)
    records = [{"step": s, "tokens": 64 * s, "elapsed_s": 0.5 * s, "loss": loss,
                **{key: values[s - 1] for key, values in extra.items()}} for s, loss in enumerate(losses, 1)]
    records.append({"step": len(losses), "tokens": 64 * len(losses), "elapsed_s": 0.5 * len(losses), "val_loss": 4.0})
    (directory / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return directory


@pytest.mark.parametrize("count", [1, 10, 12, 30])
def test_distinct_colors_never_repeat(count):
    colors = distinct_colors(count)
    assert len(colors) == count and len({matplotlib.colors.to_hex(c) for c in colors}) == count
    if count <= 10:  # Matplotlib's default cycle, as before
        assert [matplotlib.colors.to_hex(c) for c in colors] == [matplotlib.colors.to_hex(f"C{i}")
                                                                 for i in range(count)]


def test_twelve_runs_get_twelve_colours_and_a_distillation_plots_its_cross_entropy(tmp_path):
    runs = [_write_run(tmp_path / f"run{i:02d}", [5.0 - 0.1 * i, 4.5 - 0.1 * i]) for i in range(11)]
    # A distillation run: its loss is CE + alpha MSE + beta KL; only its "ce" is a cross-entropy.
    runs.append(_write_run(tmp_path / "distilled", [9.0, 8.0], ce=[4.2, 4.1], mse=[0.03, 0.02], kl=[1.1, 1.0]))
    figure = loss_curves_figure([str(r) for r in runs])
    train_axis, val_axis = figure.axes
    assert train_axis.get_ylabel() == "cross-entropy (nats/token)"
    lines = train_axis.get_lines()
    assert len({matplotlib.colors.to_hex(line.get_color()) for line in lines}) == 12
    distilled = {line.get_label(): line for line in lines}["distilled (CE term)"]
    assert list(distilled.get_ydata()) == [4.2, 4.1]  # not the combined 9.0, 8.0
    assert [line.get_color() for line in val_axis.get_lines()] == [line.get_color() for line in lines]
    pyplot().close(figure)


def test_block_influence_has_whole_layer_ticks_and_a_colour_per_model():
    influences = [Influence(block=[0.1 * i, 0.2, 0.15], iteration=[[0.1], [0.2], [0.1]],
                            model={"scheme": {"name": "euler"}}) for i in range(11)]
    figure = block_influence_figure(influences, labels=[f"model {i}" for i in range(11)])
    figure.canvas.draw()
    (axis,) = figure.axes
    ticks = [t for t in axis.get_xticks() if axis.get_xlim()[0] <= t <= axis.get_xlim()[1]]
    assert ticks and all(float(t).is_integer() for t in ticks), ticks
    assert len({matplotlib.colors.to_hex(line.get_color()) for line in axis.get_lines()}) == 11
    pyplot().close(figure)


def test_legends_use_the_papers_names_of_the_runs_models(tmp_path):
    from .conftest import tiny_model

    runs = {"euler-s0": "euler", "euler-s1": "euler", "iiet-r3": {"name": "iiet", "num_iterations": 3},
            "lb": {"name": "iiet", "iteration_plan": [0, 0, 0]}}
    for name, scheme in runs.items():
        _write_run(tmp_path / name, [5.0, 4.0])
        tiny_model(scheme).config.save_pretrained(tmp_path / name / "final")
    _write_run(tmp_path / "bare", [5.0, 4.0])  # a metrics.jsonl without a model: its directory names it
    figure = loss_curves_figure([str(tmp_path / name) for name in [*runs, "bare"]])
    legend = [text.get_text() for text in figure.axes[0].get_legend().get_texts()]
    assert legend == ["Transformer++: euler-s0", "Transformer++: euler-s1", "IIET (r=3)", "Lower Bound", "bare"]
    pyplot().close(figure)

    influences = [Influence(block=[0.1, 0.2, 0.15], iteration=[[0.1]] * 3, model={"scheme": {"name": "euler"}}),
                  Influence(block=[0.1, 0.2, 0.15], iteration=[[0.1, 0.0]] * 3,
                            model={"scheme": {"name": "iiet", "num_iterations": 1}})]
    figure = block_influence_figure(influences)
    assert [t.get_text() for t in figure.axes[0].get_legend().get_texts()] == ["Transformer++", "IIET (r=1)"]
    pyplot().close(figure)


def test_the_compute_figure_labels_only_the_2x_and_5x_minor_ticks_of_its_flops_axis(tmp_path, monkeypatch):
    # over one or two decades matplotlib labels every minor tick of a log axis, and the labels overlap
    from iiet.study import compute

    figures = []
    monkeypatch.setattr(compute, "save_figure", lambda figure, path: figures.append(figure) or path)
    curve = [{"training_flops": flops, "tokens": flops / 1e7, "val_loss": loss}
             for flops, loss in ((1.5e13, 6.4), (1e14, 5.0), (3.5e14, 4.3))]
    row = {"label": "Transformer++", "block_evaluations": 4, "val_curve": curve, "distilled": False}
    compute.plot_loss_vs_compute([row], tmp_path / "compute.png")
    figure = figures[0]
    figure.canvas.draw()
    axis = figure.axes[0]
    low, high = axis.get_xlim()
    labelled = sorted(tick.get_loc() for tick in axis.xaxis.get_minor_ticks()
                      if tick.label1.get_text() and low <= tick.get_loc() <= high)
    pyplot().close(figure)
    assert labelled == pytest.approx([2e13, 5e13, 2e14]), labelled
