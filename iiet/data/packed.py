"""Tokenize once into memory-mapped packed token files; read fixed-length training sequences from them.

Packing (the HF causal-LM convention). Documents are tokenized without special tokens and joined as

    d_1 </s> d_2 </s> d_3 </s> ...

and that stream is cut into rows of exactly ``seq_len`` tokens; a row may span document boundaries, and the
remainder shorter than ``seq_len`` at the end of each split is dropped. A row is both input and label
(``labels = input_ids``; the model shifts by one internally), so no token is wasted on padding.

Validation split. Whole documents are held out, never a cut inside one: a document goes to ``val`` when
``blake2b(seed, text) / 2**64 < val_fraction``. The choice depends only on the seed and the document's text, so it
is reproducible, independent of source order, and identical duplicates always land in the same split.

On disk (``output_dir``): ``train.bin`` and ``val.bin`` are raw row-major ``(num_sequences, seq_len)`` arrays
(uint16 when every id fits in 16 bits, else uint32), and ``meta.json`` describes them (see ``docs/data.md``).
Each file is written under a temporary name and moved into place with ``os.replace``; ``meta.json`` comes last, so
a folder whose ``meta.json`` exists is complete, and an interrupted run never leaves a half file that looks whole.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
from collections.abc import Iterable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from iiet.data.sources import batched, iter_corpus, source_fingerprint
from iiet.data.tokenizer import load_tokenizer
from iiet.errors import IIETError

META_FILE = "meta.json"
SPLITS = ("train", "val")
FORMAT_VERSION = 1
UINT16_VOCAB_LIMIT = 1 << 16  # ids 0 .. 65535 fit in uint16
_ENCODE_BATCH_DOCUMENTS = 512  # documents per tokenizer call: large enough for the Rust side to use every core
_FLUSH_TOKENS = 1 << 22  # buffered tokens per split before rows are written out
_HASH_BITS = 64
# Changing any of these must re-tokenize; everything else in meta.json is derived from them.
_REUSE_KEYS = ("format_version", "tokenizer_hash", "seq_len", "sources", "val_fraction", "seed", "max_documents",
               "text_field")
_PREPARE_HINT = "run `iiet data-prepare` to create it"


def prepare_data(
    sources: list[str],
    tokenizer: str,
    output_dir: str | Path,
    seq_len: int = 512,
    val_fraction: float = 0.01,
    max_documents: int | None = None,
    seed: int = 0,
    num_proc: int = 1,
    text_field: str = "text",
) -> dict[str, Any]:
    """Tokenize the sources once and write packed ``train.bin``/``val.bin`` plus ``meta.json``.

    If ``output_dir/meta.json`` already describes the same tokenizer (by vocabulary hash), ``seq_len``, sources
    (by sha256 for local files), ``val_fraction``, ``seed``, ``max_documents`` and ``text_field``, and its files are
    intact, nothing is redone.

    Args:
        sources: Text sources (files, directories, globs, ``hf:NAME[:CONFIG]`` or ``builtin``).
        tokenizer: Tokenizer folder (from ``iiet tokenizer-train``) or Hugging Face name.
        output_dir: Folder for ``train.bin``, ``val.bin`` and ``meta.json`` (created if missing).
        seq_len: Tokens per packed sequence.
        val_fraction: Expected fraction of documents held out for validation (whole documents), in [0, 1).
        max_documents: Read at most this many documents (all sources together); ``None`` reads all.
        seed: Seed of the validation-document choice.
        num_proc: Tokenizer processes. 1 is right for fast (Rust) tokenizers, which already spread each batch
            over all cores; raise it for slow Python tokenizers.
        text_field: Field holding the text in structured records.

    Returns:
        The metadata written to (or found in) ``meta.json``.

    Raises:
        IIETError: Bad arguments, an unloadable tokenizer, an invalid source, or too little text for one sequence.
    """
    if seq_len < 1:
        raise IIETError(f"seq_len must be positive, got {seq_len}")
    if not 0.0 <= val_fraction < 1.0:
        raise IIETError(f"val_fraction must be in [0, 1), got {val_fraction}; 0.01 holds out about 1% of documents")
    if num_proc < 1:
        raise IIETError(f"num_proc must be at least 1, got {num_proc}")
    output = Path(output_dir)
    loaded = load_tokenizer(tokenizer)
    if loaded.eos_token_id is None:
        raise IIETError(f"tokenizer {tokenizer!r} has no eos token to separate documents; use one that defines it")
    vocab_size = len(loaded)
    dtype = np.dtype(np.uint16 if vocab_size <= UINT16_VOCAB_LIMIT else np.uint32)
    settings = {
        "format_version": FORMAT_VERSION,
        "tokenizer": os.path.abspath(tokenizer) if os.path.isdir(tokenizer) else tokenizer,
        "tokenizer_hash": tokenizer_hash(loaded),
        "vocab_size": vocab_size,
        "bos_token_id": loaded.bos_token_id,
        "eos_token_id": loaded.eos_token_id,
        "pad_token_id": loaded.pad_token_id,
        "seq_len": seq_len,
        "dtype": dtype.name,
        "sources": [source_fingerprint(source) for source in sources],
        "text_field": text_field,
        "val_fraction": val_fraction,
        "seed": seed,
        "max_documents": max_documents,
        "iiet_version": _library_version(),
    }
    existing = _reusable_meta(output, settings)
    if existing is not None:
        print(f"reusing prepared data in {output} (same tokenizer, seq_len and sources); delete it to re-tokenize")
        return existing

    output.mkdir(parents=True, exist_ok=True)
    (output / META_FILE).unlink(missing_ok=True)  # from here until the end, the folder must not look complete
    writers = {split: _PackedWriter(output / f"{split}.bin", seq_len, dtype) for split in SPLITS}
    documents = iter_corpus(sources, text_field=text_field, max_documents=max_documents)
    progress = tqdm(desc="tokenizing", unit="doc", total=max_documents)
    try:
        for batch, token_ids in _encode(loaded, documents, num_proc):
            for text, ids in zip(batch, token_ids):
                split = "val" if is_validation_document(text, seed, val_fraction) else "train"
                writers[split].add(ids, loaded.eos_token_id)
            progress.update(len(batch))
            progress.set_postfix(tokens=sum(writer.num_tokens_seen for writer in writers.values()), refresh=False)
    except BaseException:
        for writer in writers.values():
            writer.abort()
        raise
    finally:
        progress.close()
    splits = {split: writer.commit() for split, writer in writers.items()}
    if splits["train"]["num_sequences"] == 0:
        raise IIETError(
            f"the sources hold {splits['train']['num_tokens_seen']} training tokens, fewer than one sequence of "
            f"seq_len {seq_len}; add text or lower --seq_len"
        )
    if val_fraction > 0 and splits["val"]["num_sequences"] == 0:
        print(f"warning: no validation sequence came out ({splits['val']['num_documents']} held-out documents); "
              "raise --val_fraction or add text if you need validation loss")
    meta = {**settings, "splits": splits}
    _write_atomically(output / META_FILE, (json.dumps(meta, indent=2) + "\n").encode())
    for split, info in splits.items():
        print(f"{split}: {info['num_documents']} documents -> {info['num_sequences']} sequences of {seq_len} tokens")
    return meta


def is_validation_document(text: str, seed: int, val_fraction: float) -> bool:
    """Say whether a document belongs to the validation split (a deterministic function of seed and text).

    Args:
        text: The document.
        seed: Seed of the split.
        val_fraction: Probability that a document is held out.

    Returns:
        True for a validation document.
    """
    if val_fraction <= 0.0:
        return False
    digest = hashlib.blake2b(text.encode("utf-8", errors="replace"), digest_size=_HASH_BITS // 8,
                             key=str(seed).encode())
    return int.from_bytes(digest.digest(), "little") < val_fraction * (1 << _HASH_BITS)


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
    """Fixed-length token sequences from a folder written by :func:`prepare_data`, memory-mapped.

    ``ds[i]`` is a ``torch.LongTensor`` of shape ``(seq_len,)``, used as both input ids and labels. The file is
    opened lazily and reopened in each DataLoader worker, so workers share the page cache instead of copies.

    Args:
        path: The prepared-data folder.
        split: ``train`` or ``val``.

    Raises:
        IIETError: The folder, ``meta.json`` or the split file is missing, or the file size does not match the
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
        self.num_sequences: int = self.meta["splits"][split]["num_sequences"]
        self.dtype = np.dtype(self.meta["dtype"])
        self.file = self.path / f"{split}.bin"
        if not self.file.is_file():
            raise IIETError(f"{str(self.file)!r} is missing; re-run `iiet data-prepare` for {str(self.path)!r}")
        expected = self.num_sequences * self.seq_len * self.dtype.itemsize
        actual = self.file.stat().st_size
        if actual != expected:
            raise IIETError(
                f"{str(self.file)!r} is truncated or corrupt ({actual} bytes, meta.json expects {expected}); "
                "delete the folder and re-run `iiet data-prepare`"
            )
        self._tokens: np.ndarray | None = None

    def __len__(self) -> int:
        return self.num_sequences

    def __getitem__(self, index: int) -> torch.Tensor:
        if not -self.num_sequences <= index < self.num_sequences:
            raise IndexError(f"sequence {index} out of range for {self.num_sequences} sequences")
        row = self._array()[index]  # (seq_len,)
        return torch.from_numpy(row.astype(np.int64))

    def __getstate__(self) -> dict[str, Any]:
        # Pickling (DataLoader workers with spawn) must not copy the mapped array into every worker.
        return {**self.__dict__, "_tokens": None}

    def _array(self) -> np.ndarray:
        if self._tokens is None:
            if self.num_sequences == 0:  # an empty file cannot be memory-mapped
                self._tokens = np.empty((0, self.seq_len), dtype=self.dtype)
            else:
                self._tokens = np.memmap(self.file, dtype=self.dtype, mode="r",
                                         shape=(self.num_sequences, self.seq_len))
        return self._tokens


class _PackedWriter:
    """Appends ``ids + [eos]`` per document and writes whole rows of ``seq_len`` tokens to a temporary file."""

    def __init__(self, path: Path, seq_len: int, dtype: np.dtype) -> None:
        self.path, self.seq_len, self.dtype = path, seq_len, dtype
        self.temporary = path.with_name(path.name + ".tmp")
        self.file = open(self.temporary, "wb")
        self.pending: list[np.ndarray] = []
        self.num_pending = 0
        self.num_documents = 0
        self.num_tokens_seen = 0
        self.num_sequences = 0

    def add(self, ids: list[int], eos_token_id: int) -> None:
        tokens = np.empty(len(ids) + 1, dtype=self.dtype)
        tokens[:-1] = ids
        tokens[-1] = eos_token_id
        self.pending.append(tokens)
        self.num_pending += len(tokens)
        self.num_documents += 1
        self.num_tokens_seen += len(tokens)
        if self.num_pending >= _FLUSH_TOKENS:
            self._flush()

    def _flush(self) -> None:
        stream = np.concatenate(self.pending) if self.pending else np.empty(0, dtype=self.dtype)
        num_rows = len(stream) // self.seq_len
        self.file.write(stream[: num_rows * self.seq_len].tobytes())
        self.num_sequences += num_rows
        remainder = stream[num_rows * self.seq_len :]
        self.pending, self.num_pending = [remainder], len(remainder)

    def commit(self) -> dict[str, int]:
        self._flush()  # what is left over (< seq_len tokens) is the dropped tail
        self.file.close()
        os.replace(self.temporary, self.path)
        return {
            "num_sequences": self.num_sequences,
            "num_tokens": self.num_sequences * self.seq_len,
            "num_documents": self.num_documents,
            "num_tokens_seen": self.num_tokens_seen,
        }

    def abort(self) -> None:
        self.file.close()
        self.temporary.unlink(missing_ok=True)


def _encode(
    tokenizer: PreTrainedTokenizerBase, documents: Iterable[str], num_proc: int
) -> Iterator[tuple[list[str], list[list[int]]]]:
    """Yield ``(documents, token ids)`` batch by batch, in input order."""
    batches = batched(documents, _ENCODE_BATCH_DOCUMENTS)
    if num_proc == 1:
        for batch in batches:
            yield batch, _encode_batch(tokenizer, batch)
        return
    # spawn, not fork: forking after the Rust tokenizer has started its thread pool can deadlock.
    with multiprocessing.get_context("spawn").Pool(num_proc, initializer=_init_worker, initargs=(tokenizer,)) as pool:
        yield from pool.imap(_encode_in_worker, batches)


def _encode_batch(tokenizer: PreTrainedTokenizerBase, batch: list[str]) -> list[list[int]]:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:  # straight to Rust: skips building a BatchEncoding we would throw away
        return [encoding.ids for encoding in backend.encode_batch(batch, add_special_tokens=False)]
    return tokenizer(batch, add_special_tokens=False, return_attention_mask=False, verbose=False)["input_ids"]


_worker_tokenizer: PreTrainedTokenizerBase | None = None


def _init_worker(tokenizer: PreTrainedTokenizerBase) -> None:
    global _worker_tokenizer
    _worker_tokenizer = tokenizer


def _encode_in_worker(batch: list[str]) -> tuple[list[str], list[list[int]]]:
    assert _worker_tokenizer is not None
    return batch, _encode_batch(_worker_tokenizer, batch)


def _reusable_meta(output: Path, settings: dict[str, Any]) -> dict[str, Any] | None:
    """Return the existing metadata if it was made with the same settings and its files are intact."""
    try:
        meta = load_meta(output)
        for split in SPLITS:
            PackedDataset(output, split)  # validates presence and size
    except (IIETError, KeyError):
        return None
    if any(meta.get(key) != settings[key] for key in _REUSE_KEYS):
        return None
    return meta


def _write_atomically(path: Path, content: bytes) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_bytes(content)
    os.replace(temporary, path)


def _library_version() -> str:
    try:
        return metadata.version("iiet")
    except metadata.PackageNotFoundError:
        return "unknown"
