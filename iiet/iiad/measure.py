"""Measure a model's influence and write it with its figures: the library side of ``iiet influence``.

    influence.json            the values and the model's identity (``Influence.save``)
    iteration_influence.png   the layer x iteration heatmap (Figures 5/6)
    block_influence.png       per-layer block influence, next to any compared models (Figure 4)
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from iiet.errors import IIETError
from iiet.iiad.influence import Influence, compute_influence
from iiet.iiad.plots import plot_block_influence, plot_iteration_influence
from iiet.iiad.segments import is_prepared_data, sample_segments
from iiet.models.loading import load_model
from iiet.outputs import check_writable

INFLUENCE_FILE = "influence.json"
HEATMAP_FILE = "iteration_influence.png"
BLOCK_PLOT_FILE = "block_influence.png"
DEFAULT_SEGMENT_TOKENS = 512


def measure_influence(
    model: str,
    data: str,
    num_segments: int = 5000,
    seq_len: int | None = None,
    batch_size: int = 8,
    output_dir: str = "runs/influence",
    split: str = "val",
    tokenizer: str | None = None,
    seed: int = 0,
    device: str = "auto",
    dtype: Literal["float32", "bfloat16", "float16"] = "float32",
    compare: list[str] | None = None,
    progress_bar: bool = True,
) -> tuple[Influence, dict[str, Path]]:
    """Measure block influence (Eq. 12) and iteration influence (§4.1) of a model over random text segments.

    Writes influence.json (the values and the model's identity), iteration_influence.png (the layer x iteration
    heatmap of Figures 5/6) and block_influence.png (per-layer block influence, Figure 4) into output_dir.

    Args:
        model: Model directory saved with save_pretrained (e.g. a training run's final/).
        data: Prepared data folder (iiet data-prepare) or a text source (file, directory, glob, builtin), e.g.
            wikitext-2-raw/valid.raw.
        num_segments: Segments to sample (the paper uses 5,000); fewer if the data holds fewer.
        seq_len: Maximum tokens per segment (prepared rows are cut to this length; text is split into pieces of it);
            default 512, or the model's max_position_embeddings when that is smaller.
        batch_size: Segments per forward pass.
        output_dir: Where influence.json and the two pictures go.
        split: Split of prepared data to sample from (train or val).
        tokenizer: Tokenizer for a text source (default: the one saved in the model directory).
        seed: Seed of the segment sample.
        device: cpu, cuda, cuda:N or auto (CUDA when available).
        dtype: Dtype the model runs in; cosines are always accumulated in float64.
        compare: Other influence.json files to draw next to this model in block_influence.png (e.g. a Transformer++).
        progress_bar: Show a progress bar.

    Returns:
        the measured ``Influence`` and the paths of the files written (``influence``, ``heatmap``, ``block_plot``).
    """
    check_writable(output_dir, "--output_dir")  # before the model loads and the segments run
    others = [Influence.load(path) for path in compare or []]  # fail on a bad path before the long part
    network = load_model(model, device, dtype, require_iiet=True)
    if seq_len is None:
        seq_len = min(DEFAULT_SEGMENT_TOKENS, network.config.max_position_embeddings)
    if seq_len > network.config.max_position_embeddings:
        raise IIETError(f"seq_len={seq_len} exceeds the model's max_position_embeddings "
                        f"({network.config.max_position_embeddings}); lower --seq_len.")
    if tokenizer is None and not is_prepared_data(data):
        tokenizer = model
    segments, description = sample_segments(data, num_segments, seq_len, network.config.vocab_size, tokenizer,
                                            split, seed)
    result = compute_influence(network, segments, batch_size, model_path=model, data=description,
                               progress=progress_bar)
    out = Path(output_dir)
    files = {
        "influence": result.save(out / INFLUENCE_FILE),
        "heatmap": plot_iteration_influence(result, out / HEATMAP_FILE),
        "block_plot": plot_block_influence([result, *others], out / BLOCK_PLOT_FILE),
    }
    return result, files
