"""Packed token files: read fixed-length training sequences from a prepared-data folder, memory-mapped.

Packing (the HF causal-LM convention). Documents are tokenized without special tokens and joined as

    d_1 </s> d_2 </s> d_3 </s> ...

and that stream is cut into rows of exactly ``seq_len`` tokens; a row may span document boundaries, and the
remainder shorter than ``seq_len`` at the end of each split is dropped. A row is both input and label
(``labels = input_ids``; the model shifts by one internally), so no token is wasted on padding.

On disk (``output_dir``, written by :func:`iiet.data.prepare.prepare_data`): ``shards/NNNNN.{train,val}.bin`` are
raw token streams (uint16 when every id fits in 16 bits, else uint32), and ``meta.json`` (the index, written last)
lists per split its shards in order; the split's stream is their concatenation, so a row may span two shards.
Folders of format 1 (one ``train.bin``/``val.bin`` of whole rows) are still read. See ``docs/data.md``.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from iiet.errors import IIETError

META_FILE = "meta.json"
SHARDS_DIR = "shards"
SPLITS = ("train", "val")
FORMAT_VERSION = 2
UINT16_VOCAB_LIMIT = 1 << 16  # ids 0 .. 65535 fit in uint16
_PREPARE_HINT = "run `iiet data-prepare` to create it"


def tokenizer_hash(tokenizer: PreTrainedTokenizerBase) -> str:
    """Hash a tokenizer's vocabulary (token -> id, special tokens included), to tell tokenizers apart.

    Args:
        tokenizer: The tokenizer.

    Returns:
        A hex sha256 digest.
    """
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: (item[1], item[0]))
    return hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode()).hexdigest()


def load_meta(path: str | Path) -> dict[str, Any]:
    """Read ``meta.json`` from a prepared-data folder.

    Args:
        path: The folder written by :func:`prepare_data`.

    Returns:
        The metadata dict.

    Raises:
        IIETError: The folder or its ``meta.json`` is missing or unreadable.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise IIETError(f"prepared data folder {str(folder)!r} does not exist; {_PREPARE_HINT}")
    meta_path = folder / META_FILE
    if not meta_path.is_file():
        raise IIETError(f"{str(meta_path)!r} is missing (preparation never finished there?); {_PREPARE_HINT}")
    try:
        return json.loads(meta_path.read_text())
    except json.JSONDecodeError as error:
        raise IIETError(f"{str(meta_path)!r} is corrupt ({error}); delete the folder and re-run `iiet data-prepare`")


def check_compatible(meta: dict[str, Any], vocab_size: int, max_position_embeddings: int) -> None:
    """Check that prepared data fits a model: every token id has an embedding and a sequence fits its positions.

    Args:
        meta: Metadata of prepared data (``PackedDataset.meta`` or :func:`load_meta`).
        vocab_size: The model's ``vocab_size``.
        max_position_embeddings: The model's ``max_position_embeddings``.

    Raises:
        IIETError: The tokenizer has more tokens than the model's vocabulary, or ``seq_len`` exceeds
            ``max_position_embeddings``; the message names the fix.
    """
    if meta["vocab_size"] > vocab_size:
        raise IIETError(
            f"the data's tokenizer ({meta['tokenizer']}) has {meta['vocab_size']} tokens but the model's vocab_size is "
            f"{vocab_size}; set the model's vocab_size to at least {meta['vocab_size']} or prepare the data with the "
            "model's tokenizer"
        )
    if meta["seq_len"] > max_position_embeddings:
        raise IIETError(
            f"the data's seq_len {meta['seq_len']} exceeds the model's max_position_embeddings "
            f"{max_position_embeddings}; re-run `iiet data-prepare --seq_len {max_position_embeddings}` (or less) "
            "or raise max_position_embeddings"
        )


class PackedDataset(torch.utils.data.Dataset):
    """Fixed-length token sequences from a folder written by :func:`iiet.data.prepare_data`, memory-mapped.

    ``ds[i]`` is a ``torch.LongTensor`` of shape ``(seq_len,)``, used as both input ids and labels: tokens
    ``[i * seq_len, (i + 1) * seq_len)`` of the split's stream, which is the concatenation of its shards. Shard files
    are opened lazily and reopened in each DataLoader worker, so workers share the page cache instead of copies.

    Args:
        path: The prepared-data folder.
        split: ``train`` or ``val``.

    Raises:
        IIETError: The folder, ``meta.json`` or a shard file is missing, or a file's size does not match the
            metadata (truncated or corrupt).
    """

    def __init__(self, path: str | Path, split: str = "train") -> None:
        self.path = Path(path)
        self.meta = load_meta(self.path)
        if split not in self.meta["splits"]:
            raise IIETError(f"unknown split {split!r} in {str(self.path)!r}; choose one of {list(self.meta['splits'])}")
        self.split = split
        self.seq_len: int = self.meta["seq_len"]
        self.vocab_size: int = self.meta["vocab_size"]
        info = self.meta["splits"][split]
        self.num_sequences: int = info["num_sequences"]
        self.dtype = np.dtype(self.meta["dtype"])
        if "shards" in info:
            shards = [(self.path / shard["file"], shard["num_tokens"]) for shard in info["shards"]]
        else:  # format 1: one file of whole rows
            shards = [(self.path / f"{split}.bin", self.num_sequences * self.seq_len)]
        for file, num_tokens in shards:
            if not file.is_file():
                raise IIETError(f"{str(file)!r} is missing; re-run `iiet data-prepare` for {str(self.path)!r}")
            expected, actual = num_tokens * self.dtype.itemsize, file.stat().st_size
            if actual != expected:
                raise IIETError(
                    f"{str(file)!r} is truncated or corrupt ({actual} bytes, meta.json expects {expected}); "
                    "delete the folder and re-run `iiet data-prepare`"
                )
        self.files = [file for file, _ in shards]
        self.starts = [0]  # token offset of each shard in the split's stream
        for _, num_tokens in shards:
            self.starts.append(self.starts[-1] + num_tokens)
        self._tokens: list[np.ndarray] | None = None

    def __len__(self) -> int:
        return self.num_sequences

    def __getitem__(self, index: int) -> torch.Tensor:
        if not -self.num_sequences <= index < self.num_sequences:
            raise IndexError(f"sequence {index} out of range for {self.num_sequences} sequences")
        start = (index % self.num_sequences) * self.seq_len
        end = start + self.seq_len
        shards = self._arrays()
        shard = bisect.bisect_right(self.starts, start) - 1
        parts = []
        while start < end:  # a row may continue into the next shard(s)
            stop = min(end, self.starts[shard + 1])
            parts.append(shards[shard][start - self.starts[shard] : stop - self.starts[shard]])
            start, shard = stop, shard + 1
        row = parts[0] if len(parts) == 1 else np.concatenate(parts)  # (seq_len,)
        return torch.from_numpy(row.astype(np.int64))

    def __getstate__(self) -> dict[str, Any]:
        # Pickling (DataLoader workers with spawn) must not copy the mapped arrays into every worker.
        return {**self.__dict__, "_tokens": None}

    def _arrays(self) -> list[np.ndarray]:
        if self._tokens is None:  # an empty file cannot be memory-mapped (and holds nothing to read)
            self._tokens = [np.memmap(file, dtype=self.dtype, mode="r") if end > start else np.empty(0, self.dtype)
                            for file, start, end in zip(self.files, self.starts, self.starts[1:])]
        return self._tokens


def write_atomically(path: Path, content: bytes) -> None:
    """Write ``content`` under a temporary name and move it into place, so ``path`` is never half written."""
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    temporary.write_bytes(content)
    os.replace(temporary, path)
