"""One piece of the sources -> one shard: token streams of its documents, per split, and a record written last.

Speed. Batches of about 1 MiB of text go to the Rust tokenizer (``encode_batch_fast``: no offsets) in a background
thread, so reading, hashing and packing in Python overlap tokenization. With several workers each tokenizes
single-threaded (one per core, no idle threads at the end of a batch); with one, Rust uses every core.

Validation split. Whole documents are held out: a document goes to ``val`` when ``blake2b(seed, text) / 2**64 <
val_fraction``, a function of the seed and the text only, so it does not depend on order or sharding.

Long documents. A document longer than 64 Ki characters is tokenized in chunks cut at a space between two
non-spaces; a probe (:func:`chunking_is_exact`) checks at start-up that this tokenizer splits identically there
(true for byte-level BPE and Metaspace tokenizers), otherwise long documents are tokenized whole. Memory stays
bounded by the batch size rather than growing with the tokenizer's per-token bookkeeping of a whole document.

Text check. The share of U+FFFD (bytes that were not UTF-8) is counted per piece, warned about above 0.01% and
refused above ``max_replacement_share``.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from transformers import PreTrainedTokenizerBase

from iiet.data.packed import SHARDS_DIR, SPLITS, write_atomically
from iiet.data.sources import REPLACEMENT_CHARACTER, Piece, file_sha256, is_compressed, iter_piece
from iiet.errors import IIETError

LONG_DOCUMENT_CHARS = 1 << 16  # longer documents are tokenized in chunks of about this many characters
_BATCH_CHARS = 1 << 20  # text per tokenizer call: enough for every Rust thread, small enough to bound memory
_BATCH_DOCUMENTS = 1024
_FLUSH_TOKENS = 1 << 22  # buffered tokens per split before they are written out
_HASH_BITS = 64
WARN_REPLACEMENT_SHARE = 1e-4  # more undecodable characters than this in a piece gets a warning
_CHECK_AFTER_CHARS = 1 << 16  # judge a piece's replacement share once it has this many characters
_CHUNK_PROBE = ("It's 1,000 km  long.\n\nThe river's   source (est. 1850) -- \"Größe\" 東京;\tnew line\n"
                " leading space, trailing space \nx=y+2*z   end. Don't stop!? 12 34.5 don't ")


def is_validation_document(text: str, seed: int, val_fraction: float) -> bool:
    """Say whether a document belongs to the validation split (a deterministic function of seed and text).

    A document goes to ``val`` when ``blake2b(seed, text) / 2**64 < val_fraction``: reproducible, independent of
    source order and sharding, and identical duplicates always land in the same split.

    Args:
        text: The document.
        seed: Seed of the split.
        val_fraction: Probability that a document is held out.

    Returns:
        True for a validation document.
    """
    return val_fraction > 0.0 and _hash_fraction(text.encode("utf-8", errors="replace"), seed) < val_fraction


def _hash_fraction(data: bytes, seed: int) -> float:
    digest = hashlib.blake2b(data, digest_size=_HASH_BITS // 8, key=str(seed).encode()).digest()
    return int.from_bytes(digest, "little") / (1 << _HASH_BITS)


def split_long_document(text: str, chunk_chars: int = LONG_DOCUMENT_CHARS) -> tuple[list[str], int]:
    """Cut a document into chunks of at most ~``chunk_chars`` characters, each but the first starting with a space
    that follows a non-space and precedes one (where pre-tokenizers split anyway).

    Args:
        text: The document.
        chunk_chars: Target chunk length.

    Returns:
        The chunks (concatenating to ``text``) and how many cuts found no such space in their window and were made
        mid-word (a text without spaces, such as a long base64 blob).
    """
    chunks, hard_cuts, start = [], 0, 0
    while len(text) - start > chunk_chars:
        end = start + chunk_chars
        cut = text.rfind(" ", start + chunk_chars // 2, end)
        while cut > start and not _is_cut(text, cut):
            cut = text.rfind(" ", start + chunk_chars // 2, cut)
        if cut <= start:
            cut, hard_cuts = end, hard_cuts + 1
        chunks.append(text[start:cut])
        start = cut
    chunks.append(text[start:])
    return chunks, hard_cuts


def _is_cut(text: str, position: int) -> bool:
    """A space between two non-spaces: pre-tokenizers (GPT-2's regex, Metaspace) start a new word there."""
    return (text[position] == " " and 0 < position < len(text) - 1
            and not text[position - 1].isspace() and not text[position + 1].isspace())


def chunking_is_exact(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether tokenizing a text in chunks cut by :func:`split_long_document` gives the tokens of the whole text."""
    cuts = [0] + [position for position in range(len(_CHUNK_PROBE)) if _is_cut(_CHUNK_PROBE, position)]
    chunks = [_CHUNK_PROBE[start:end] for start, end in zip(cuts, cuts[1:] + [len(_CHUNK_PROBE)])]
    # One text per call: a batch call would start Rust's thread pool, which forked workers must not inherit.
    encode = _encoder(tokenizer)
    return [token for chunk in chunks for token in encode([chunk])[0]] == encode([_CHUNK_PROBE])[0]


def _encoder(tokenizer: PreTrainedTokenizerBase) -> Callable[[list[str]], list[list[int]]]:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:  # straight to Rust, without offsets or a BatchEncoding we would throw away
        encode = getattr(backend, "encode_batch_fast", backend.encode_batch)

        def encode_batch(batch: list[str]) -> list[list[int]]:
            if len(batch) == 1:  # no thread pool for one text
                return [backend.encode(batch[0], add_special_tokens=False).ids]
            return [encoding.ids for encoding in encode(batch, add_special_tokens=False)]

        return encode_batch
    return lambda batch: tokenizer(batch, add_special_tokens=False, return_attention_mask=False,
                                   verbose=False)["input_ids"]


class ShardTokenizer:
    """Tokenizes pieces into shards of one output folder: everything a worker needs (forked workers inherit it)."""

    def __init__(self, output: Path, tokenizer: PreTrainedTokenizerBase, settings: dict[str, Any],
                 max_replacement_share: float, chunk_long_documents: bool) -> None:
        self.output, self.tokenizer, self.settings = output, tokenizer, settings
        self.max_replacement_share = max_replacement_share
        self.chunk_chars = LONG_DOCUMENT_CHARS if chunk_long_documents else None
        self.encode = _encoder(tokenizer)
        self.dtype = np.dtype(settings["dtype"])
        self.eos = settings["eos_token_id"]
        self.report: Callable[[int, int, int], None] = lambda num_bytes, documents, tokens: None
        self._shard_inputs = {key: settings[key] for key in
                              ("format_version", "tokenizer_hash", "dtype", "eos_token_id", "text_field",
                               "val_fraction", "seed")}

    def shard_key(self, piece: Piece, document_limit: int | None) -> str:
        """A digest of everything a shard's bytes depend on."""
        files = [[file, file_sha256(file)] for file in piece.files]
        description = {**self._shard_inputs, "piece": {**asdict(piece), "files": files},
                       "document_limit": document_limit, "chunk_chars": self.chunk_chars}
        return hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()

    def path(self, index: int, suffix: str) -> Path:
        return self.output / SHARDS_DIR / f"{index:05d}{suffix}"

    def finished(self, index: int, key: str) -> dict[str, Any] | None:
        """The record of shard ``index`` if it is complete, intact and made with ``key``."""
        try:
            record = json.loads(self.path(index, ".json").read_text())
        except (OSError, json.JSONDecodeError):
            return None
        if record.get("key") != key:
            return None
        for split in SPLITS:
            file = self.path(index, f".{split}.bin")
            if not file.is_file() or file.stat().st_size != record["splits"][split]["num_tokens"] * self.dtype.itemsize:
                return None
        return record

    def tokenize(self, index: int, piece: Piece, key: str, document_limit: int | None) -> dict[str, Any]:
        """Tokenize one piece into shard ``index`` and return its record (written last)."""
        writers = {split: _StreamWriter(self.path(index, f".{split}.bin"), self.dtype) for split in SPLITS}
        counts = {"characters": 0, "replacement_characters": 0, "hard_cuts": 0}
        # Compressed files: their size on disk is not the size of their text, so they count at the end.
        exact_bytes = not any(is_compressed(file) for file in piece.files)
        bytes_reported = 0
        try:
            documents = _documents(iter_piece(piece, self.settings["text_field"]), document_limit)
            with concurrent.futures.ThreadPoolExecutor(1) as encoder:
                pending = None
                for batch in self._batches(documents, counts):
                    submitted = encoder.submit(self._encode, batch)  # tokenizes while we pack the previous batch
                    if pending is not None:
                        bytes_reported += self._pack(*pending.result(), writers, exact_bytes)
                    pending = submitted
                    self._check_text(piece, counts)
                if pending is not None:
                    bytes_reported += self._pack(*pending.result(), writers, exact_bytes)
            self._check_text(piece, counts, final=True)
            record = {"key": key, "piece": piece.describe(), "document_limit": document_limit, **counts,
                      "splits": {split: writer.commit() for split, writer in writers.items()}}
        except BaseException:
            for writer in writers.values():
                writer.abort()
            raise
        write_atomically(self.path(index, ".json"), (json.dumps(record, indent=1) + "\n").encode())
        if piece.num_bytes is not None and piece.num_bytes > bytes_reported:  # markup and blank text count too
            self.report(piece.num_bytes - bytes_reported, 0, 0)
        return record

    def _batches(self, documents: Iterable[str], counts: dict[str, int]) -> Iterator[tuple[list[str], list]]:
        """Batches of text chunks and their layout: per document (end of its chunks in the batch, its utf-8 size
        or -1 when it continues in the next batch, whether it is a validation document)."""
        chunks: list[str] = []
        layout: list[tuple[int, int, bool]] = []
        num_chars = 0
        seed, val_fraction = self.settings["seed"], self.settings["val_fraction"]
        for text in documents:
            counts["characters"] += len(text)
            counts["replacement_characters"] += text.count(REPLACEMENT_CHARACTER)
            data = text.encode("utf-8", errors="replace")
            is_val = val_fraction > 0.0 and _hash_fraction(data, seed) < val_fraction
            if self.chunk_chars is not None and len(text) > self.chunk_chars:
                parts, hard_cuts = split_long_document(text, self.chunk_chars)
                counts["hard_cuts"] += hard_cuts
            else:
                parts = [text]
            for position, part in enumerate(parts):  # a long document may span batches: its chunks stay in order
                chunks.append(part)
                num_chars += len(part)
                if num_chars >= _BATCH_CHARS and position < len(parts) - 1:
                    layout.append((len(chunks), -1, is_val))  # continued in the next batch
                    yield chunks, layout
                    chunks, layout, num_chars = [], [], 0
            layout.append((len(chunks), len(data), is_val))
            if num_chars >= _BATCH_CHARS or len(layout) >= _BATCH_DOCUMENTS:
                yield chunks, layout
                chunks, layout, num_chars = [], [], 0
        if chunks:
            yield chunks, layout

    def _encode(self, batch: tuple[list[str], list]) -> tuple[list[list[int]], list]:
        chunks, layout = batch
        return self.encode(chunks), layout

    def _pack(self, token_ids: list[list[int]], layout: list, writers: dict[str, "_StreamWriter"],
              report_bytes: bool = True) -> int:
        """Append each document's tokens and eos to its split; returns the input bytes reported to the progress bar
        (the utf-8 size of the finished documents, or 0 when ``report_bytes`` is off)."""
        streams: dict[bool, list[int]] = {False: [], True: []}
        documents = {False: 0, True: 0}
        start, num_bytes = 0, 0
        for end, size, is_val in layout:
            stream = streams[is_val]
            for ids in token_ids[start:end]:
                stream.extend(ids)
            start = end
            if size >= 0:  # the document ends in this batch
                stream.append(self.eos)
                documents[is_val] += 1
                num_bytes += size
        for is_val, stream in streams.items():
            writers["val" if is_val else "train"].add(np.array(stream, dtype=self.dtype), documents[is_val])
        num_bytes *= report_bytes
        self.report(num_bytes, documents[False] + documents[True], len(streams[False]) + len(streams[True]))
        return num_bytes

    def _check_text(self, piece: Piece, counts: dict[str, int], final: bool = False) -> None:
        characters, replaced = counts["characters"], counts["replacement_characters"]
        if characters == 0 or (characters < _CHECK_AFTER_CHARS and not final):
            return
        share = replaced / characters
        if share > self.max_replacement_share:
            raise IIETError(f"{piece.describe()}: {share:.1%} of the characters are undecodable (not UTF-8 text); "
                            "convert it to UTF-8 or drop it (pass --max_replacement_share 1 to tokenize it anyway)")
        if final and share > WARN_REPLACEMENT_SHARE:
            print(f"warning: {piece.describe()}: {share:.2%} of the characters are not UTF-8 (replaced by U+FFFD)")


def _documents(texts: Iterable[str], limit: int | None) -> Iterator[str]:
    count = 0
    for text in texts:
        if limit is not None and count >= limit:
            return
        if text.strip():
            count += 1
            yield text


def empty_record() -> dict[str, Any]:
    empty = {"num_tokens": 0, "num_documents": 0}
    return {"characters": 0, "replacement_characters": 0, "hard_cuts": 0, "splits": {s: dict(empty) for s in SPLITS}}


class _StreamWriter:
    """Appends token arrays to a temporary file named after this process; ``commit`` moves it into place."""

    def __init__(self, path: Path, dtype: np.dtype) -> None:
        self.path, self.dtype = path, dtype
        self.temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        self.file = open(self.temporary, "wb")
        self.pending: list[np.ndarray] = []
        self.num_pending = self.num_tokens = self.num_documents = 0

    def add(self, tokens: np.ndarray, num_documents: int) -> None:
        self.pending.append(tokens)
        self.num_pending += len(tokens)
        self.num_tokens += len(tokens)
        self.num_documents += num_documents
        if self.num_pending >= _FLUSH_TOKENS:
            self._flush()

    def _flush(self) -> None:
        for tokens in self.pending:
            self.file.write(tokens.tobytes())
        self.pending, self.num_pending = [], 0

    def commit(self) -> dict[str, int]:
        self._flush()
        self.file.close()
        os.replace(self.temporary, self.path)
        return {"num_tokens": self.num_tokens, "num_documents": self.num_documents}

    def abort(self) -> None:
        self.file.close()
        self.temporary.unlink(missing_ok=True)
