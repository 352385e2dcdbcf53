"""Text segments for influence measurement: a seeded random sample from prepared data or from text files.

The paper samples 5,000 text segments from WikiText (§3.5). Here a segment is

* prepared data (a folder with ``meta.json`` from ``iiet data-prepare``): one packed row of the chosen split, cut to
  its first ``seq_len`` tokens; rows are drawn without replacement by a seeded permutation;
* text (any source ``iiet.data`` reads: files, directories, globs, ``builtin``): each document is tokenized (no
  special tokens) and cut into consecutive pieces of at most ``seq_len`` tokens; a seeded reservoir sample keeps
  ``num_segments`` of them in one pass, so a corpus of any size needs memory for the sample only.

Segments of a text source have different lengths; the batches pad them on the right and mask the padding out.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Iterator

import torch

from iiet.data.packed import META_FILE, PackedDataset
from iiet.data.sources import iter_documents
from iiet.data.tokenizer import load_tokenizer
from iiet.errors import IIETError


def is_prepared_data(path: str | Path) -> bool:
    return (Path(path) / META_FILE).is_file()


def sample_segments(
    data: str,
    num_segments: int,
    seq_len: int,
    vocab_size: int,
    tokenizer: str | None = None,
    split: str = "val",
    seed: int = 0,
) -> tuple[list[torch.Tensor], dict[str, Any]]:
    """Draw up to ``num_segments`` token segments (1-D LongTensors) and describe where they came from.

    Args:
        data: prepared-data folder or text source.
        num_segments: segments to draw; fewer when the source holds fewer (the description says how many).
        seq_len: maximum tokens per segment.
        vocab_size: the model's vocabulary size (every token id must be below it).
        tokenizer: tokenizer for a text source (a folder or hub name); ignored for prepared data.
        split: split of prepared data ("train" or "val").
        seed: seed of the sample.
    """
    if num_segments < 1 or seq_len < 1:
        raise IIETError(f"num_segments={num_segments} and seq_len={seq_len} must both be >= 1.")
    if is_prepared_data(data):
        segments, description = _packed_segments(data, num_segments, seq_len, split, seed, vocab_size)
    else:
        if tokenizer is None:
            raise IIETError(f"{data} is text, not prepared data; give --tokenizer (or a model directory that holds "
                            "one) to tokenize it.")
        segments, description = _text_segments(data, num_segments, seq_len, tokenizer, seed, vocab_size)
    if not segments:
        raise IIETError(f"{data} yielded no text segments; give a source with text in it.")
    description.update(seq_len=seq_len, seed=seed, num_segments=len(segments),
                       num_tokens=int(sum(len(s) for s in segments)))
    return segments, description


def _packed_segments(path, num_segments, seq_len, split, seed, vocab_size):
    dataset = PackedDataset(path, split)
    if dataset.vocab_size > vocab_size:
        raise IIETError(f"the data in {path} uses {dataset.vocab_size} token ids but the model has only {vocab_size}; "
                        "measure on data prepared with the model's tokenizer.")
    if len(dataset) == 0:
        raise IIETError(f"split {split!r} of {path} holds no sequences; choose --split train.")
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:num_segments]
    segments = [dataset[int(i)][:seq_len] for i in order.sort().values]  # sorted: sequential reads of the file
    return segments, {"source": str(path), "kind": "prepared", "split": split, "available": len(dataset)}


def _text_segments(source, num_segments, seq_len, tokenizer_name, seed, vocab_size):
    tokenizer = load_tokenizer(tokenizer_name)
    if len(tokenizer) > vocab_size:
        raise IIETError(f"tokenizer {tokenizer_name} has {len(tokenizer)} tokens but the model has {vocab_size}; "
                        "use the model's own tokenizer.")

    def pieces() -> Iterator[torch.Tensor]:
        for document in iter_documents(source):
            ids = tokenizer(document, add_special_tokens=False)["input_ids"]
            for start in range(0, len(ids), seq_len):
                yield torch.tensor(ids[start : start + seq_len], dtype=torch.long)

    segments, seen = reservoir_sample(pieces(), num_segments, seed)
    return segments, {"source": str(source), "kind": "text", "tokenizer": str(tokenizer_name), "available": seen}


def reservoir_sample(items: Iterator, k: int, seed: int) -> tuple[list, int]:
    """A uniform sample of ``k`` items from a stream of unknown length (Algorithm R), and the stream's length."""
    rng = random.Random(seed)
    sample: list = []
    seen = 0
    for item in items:
        seen += 1
        if len(sample) < k:
            sample.append(item)
        else:
            j = rng.randrange(seen)
            if j < k:
                sample[j] = item
    return sample, seen


def batches(
    segments: list[torch.Tensor], batch_size: int, pad_id: int = 0
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(input_ids, attention_mask)`` batches of right-padded segments; the mask is 1 on real tokens."""
    for start in range(0, len(segments), batch_size):
        chunk = segments[start : start + batch_size]
        T = max(len(s) for s in chunk)
        ids = torch.full((len(chunk), T), pad_id, dtype=torch.long)  # (B, T)
        mask = torch.zeros((len(chunk), T), dtype=torch.long)
        for row, segment in enumerate(chunk):
            ids[row, : len(segment)] = segment
            mask[row, : len(segment)] = 1
        yield ids, mask
