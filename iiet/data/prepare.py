"""``prepare_data``: tokenize sources once, in parallel resumable shards, into packed token files.

Work. The sources are cut into pieces (:func:`iiet.data.sources.list_pieces`: runs of files, or Hugging Face
dataset shards); piece ``k`` is tokenized into shard ``k``:

    shards/{k:05d}.train.bin, shards/{k:05d}.val.bin   token streams  d_1 </s> d_2 </s> ...  of the piece's documents
    shards/{k:05d}.json                                the shard's record, written last: complete, and made from what

Worker processes take pieces in any order. A rerun (after a kill, or on another node writing into the same folder)
skips every shard whose record matches what it would write, so finished work is never redone. When all shards
exist, ``meta.json`` (the index) is written last. A split is the concatenation of its shards in piece order, cut
into rows of ``seq_len`` (see :mod:`iiet.data.packed`): the same tokens as one process reading the sources in
order, however many processes or nodes wrote the shards.

Speed. Each worker hands batches of about 1 MiB of text to the Rust tokenizer (``encode_batch_fast``: no offsets)
in a background thread, so reading, hashing and packing in Python overlap tokenization. With several workers each
tokenizes single-threaded (one per core, no idle threads at the end of a batch); with one, Rust uses every core.

Long documents. A document longer than 64 Ki characters is tokenized in chunks cut just before a space that
starts a word; a probe checks at start-up that this tokenizer splits identically there (true for byte-level BPE
and Metaspace tokenizers), otherwise long documents are tokenized whole. Memory stays bounded by the batch size
rather than growing with the tokenizer's per-token bookkeeping of a whole 30 MB document.

Text check. Local text files whose head is binary or not UTF-8 are refused before any work; while tokenizing, the
share of U+FFFD (undecodable bytes) is counted per piece, warned about above 0.01% and refused above
``max_replacement_share``.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import json
import multiprocessing
import os
import queue
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from iiet.data.packed import (
    FORMAT_VERSION, META_FILE, SHARDS_DIR, SPLITS, UINT16_VOCAB_LIMIT, PackedDataset, load_meta, tokenizer_hash,
    write_atomically,
)
from iiet.data.sources import (
    REPLACEMENT_CHARACTER, Piece, check_text_file, file_sha256, iter_piece, list_pieces, source_fingerprint,
)
from iiet.data.tokenizer import load_tokenizer
from iiet.errors import IIETError

LONG_DOCUMENT_CHARS = 1 << 16  # longer documents are tokenized in chunks of about this many characters
_BATCH_CHARS = 1 << 20  # text per tokenizer call: enough for every Rust thread, small enough to bound memory
_BATCH_DOCUMENTS = 1024
_FLUSH_TOKENS = 1 << 22  # buffered tokens per split before they are written out
_HASH_BITS = 64
WARN_REPLACEMENT_SHARE = 1e-4  # more undecodable characters than this in a piece gets a warning
_CHECK_AFTER_CHARS = 1 << 16  # judge a piece's replacement share once it has this many characters
# Changing any of these must re-tokenize; everything else in meta.json is derived from them.
_REUSE_KEYS = ("format_version", "tokenizer_hash", "seq_len", "sources", "val_fraction", "seed", "max_documents",
               "text_field")
_CHUNK_PROBE = ("It's 1,000 km  long.\n\nThe river's   source (est. 1850) -- \"Größe\" 東京;\tnew line\n"
                " leading space, trailing space \nx=y+2*z   end. Don't stop!? 12 34.5 don't ")


def prepare_data(
    sources: list[str],
    tokenizer: str,
    output_dir: str | Path,
    seq_len: int = 512,
    val_fraction: float = 0.01,
    max_documents: int | None = None,
    seed: int = 0,
    num_proc: int | None = None,
    text_field: str = "text",
    num_nodes: int = 1,
    node_rank: int = 0,
    max_replacement_share: float = 0.01,
) -> dict[str, Any]:
    """Tokenize the sources once into shards under ``output_dir`` and index them in ``meta.json``.

    If ``output_dir/meta.json`` already describes the same tokenizer (by vocabulary hash), ``seq_len``, sources
    (by sha256 for local files), ``val_fraction``, ``seed``, ``max_documents`` and ``text_field``, and its files are
    intact, nothing is redone; complete shards of an interrupted run are kept.

    Args:
        sources: Text sources (files, directories, globs, ``hf:NAME[:CONFIG]`` or ``builtin``).
        tokenizer: Tokenizer folder (from ``iiet tokenizer-train``) or Hugging Face name.
        output_dir: Folder for ``shards/`` and ``meta.json`` (created if missing).
        seq_len: Tokens per packed sequence.
        val_fraction: Expected fraction of documents held out for validation (whole documents), in [0, 1).
        max_documents: Read at most this many documents (all sources together); ``None`` reads all. Pieces are
            then read one after another (the budget of one depends on the documents before it).
        seed: Seed of the validation-document choice.
        num_proc: Worker processes; ``None`` uses every core this process may run on.
        text_field: Field holding the text in structured records.
        num_nodes: Machines sharing the work through the same ``output_dir`` (a shared file system).
        node_rank: This machine's index in ``0 .. num_nodes - 1``: it prepares the pieces ``k`` with
            ``k % num_nodes == node_rank``; whichever finishes last writes ``meta.json``.
        max_replacement_share: Refuse a file or piece whose share of undecodable (non-UTF-8) characters exceeds
            this; 1 accepts anything.

    Returns:
        The metadata written to (or found in) ``meta.json``; without it (other nodes' shards still missing) the
        settings and ``missing_shards``.

    Raises:
        IIETError: Bad arguments, an unloadable tokenizer, an invalid or binary source, or too little text.
    """
    _check_arguments(seq_len, val_fraction, max_documents, num_proc, num_nodes, node_rank, max_replacement_share)
    if not sources:
        raise IIETError("no sources given; pass files, directories, globs, hf:NAME[:CONFIG] or builtin")
    output = Path(output_dir)
    loaded = load_tokenizer(tokenizer)
    if loaded.eos_token_id is None:
        raise IIETError(f"tokenizer {tokenizer!r} has no eos token to separate documents; use one that defines it")
    pieces = [piece for source in sources for piece in list_pieces(source)]
    for file in (file for piece in pieces for file in piece.files):
        share = check_text_file(file, max_replacement_share)
        if share > WARN_REPLACEMENT_SHARE:
            print(f"warning: {share:.2%} of the first characters of {file} are not UTF-8 (replaced by U+FFFD)")
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

    (output / SHARDS_DIR).mkdir(parents=True, exist_ok=True)
    (output / META_FILE).unlink(missing_ok=True)  # from here until the end, the folder must not look complete
    job = _Job(output, loaded, settings, max_replacement_share, _chunking_is_exact(loaded))
    if max_documents is None:
        keys = [job.shard_key(piece, None) for piece in pieces]
        records = [job.finished(index, key) for index, key in enumerate(keys)]
        todo = [index for index, record in enumerate(records)
                if record is None and index % num_nodes == node_rank]
        if len(todo) < len(pieces):
            print(f"resuming: {len(pieces) - len(todo)} of {len(pieces)} shards already prepared (or by other nodes)")
        for index, record in _run(job, [(index, pieces[index], keys[index], None) for index in todo], num_proc):
            records[index] = record
    else:
        records = job.run_in_order(pieces, max_documents)
        for index, record in enumerate(records):  # other nodes may have finished theirs meanwhile
            if record is None:
                records[index] = job.finished(index, keys[index])
    missing = [index for index, record in enumerate(records) if record is None]
    if missing:
        print(f"node {node_rank} of {num_nodes} is done; {len(missing)} of {len(pieces)} shards are still missing "
              "(other nodes): the last node to finish writes meta.json, or rerun with --num_nodes 1")
        return {**settings, "missing_shards": missing}
    return _write_index(output, settings, sources, pieces, records)


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


def _chunking_is_exact(tokenizer: PreTrainedTokenizerBase) -> bool:
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


class _Job:
    """What every worker needs to tokenize a piece into a shard (inherited by forked workers)."""

    def __init__(self, output: Path, tokenizer: PreTrainedTokenizerBase, settings: dict[str, Any],
                 max_replacement_share: float, chunk_long_documents: bool) -> None:
        self.output, self.tokenizer, self.settings = output, tokenizer, settings
        self.max_replacement_share = max_replacement_share
        self.chunk_chars = LONG_DOCUMENT_CHARS if chunk_long_documents else None
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

    def run_in_order(self, pieces: list[Piece], max_documents: int) -> list[dict[str, Any] | None]:
        """Pieces one after another until ``max_documents`` documents are read (pieces past it get empty records)."""
        records, remaining = [], max_documents
        progress = _Progress(None, max_documents)
        self.report = progress.update
        try:
            for index, piece in enumerate(pieces):
                if remaining == 0:
                    records.append(_empty_record())
                    continue
                key = self.shard_key(piece, remaining)
                record = self.finished(index, key) or self.tokenize(index, piece, key, remaining)
                records.append(record)
                remaining -= sum(record["splits"][split]["num_documents"] for split in SPLITS)
        finally:
            progress.close()
        return records

    def tokenize(self, index: int, piece: Piece, key: str, document_limit: int | None) -> dict[str, Any]:
        """Tokenize one piece into shard ``index`` and return its record (written last)."""
        writers = {split: _StreamWriter(self.path(index, f".{split}.bin"), self.dtype) for split in SPLITS}
        counts = {"characters": 0, "replacement_characters": 0, "hard_cuts": 0}
        bytes_reported = 0
        try:
            documents = _documents(iter_piece(piece, self.settings["text_field"]), document_limit)
            with concurrent.futures.ThreadPoolExecutor(1) as encoder:
                pending = None
                for batch in self._batches(documents, counts):
                    submitted = encoder.submit(self._encode, batch)  # tokenizes while we pack the previous batch
                    if pending is not None:
                        bytes_reported += self._pack(*pending.result(), writers)
                    pending = submitted
                    self._check_text(piece, counts)
                if pending is not None:
                    bytes_reported += self._pack(*pending.result(), writers)
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
        """Batches of text chunks, with per document: (number of chunks, utf-8 size, validation?)."""
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
                pieces, hard_cuts = split_long_document(text, self.chunk_chars)
                counts["hard_cuts"] += hard_cuts
            else:
                pieces = [text]
            for position, piece in enumerate(pieces):  # a long document may span batches: its chunks stay in order
                chunks.append(piece)
                num_chars += len(piece)
                if num_chars >= _BATCH_CHARS and position < len(pieces) - 1:
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
        return _encoder(self.tokenizer)(chunks), layout

    def _pack(self, token_ids: list[list[int]], layout: list, writers: dict[str, "_StreamWriter"]) -> int:
        """Append each document's tokens and eos to its split; returns the utf-8 bytes of the finished documents."""
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


def _empty_record() -> dict[str, Any]:
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


class _Progress:
    """One bar over input bytes (ETA) or documents, with tokens/s; totals as known."""

    def __init__(self, total_bytes: int | None, total_documents: int | None = None) -> None:
        self.by_documents = total_bytes is None
        self.bar = tqdm(desc="tokenizing", total=total_documents if self.by_documents else total_bytes,
                        unit="doc" if self.by_documents else "B", unit_scale=True, unit_divisor=1024,
                        dynamic_ncols=True)
        self.tokens, self.start = 0, time.perf_counter()

    def update(self, num_bytes: int, documents: int, tokens: int) -> None:
        self.tokens += tokens
        self.bar.update(documents if self.by_documents else num_bytes)
        rate = self.tokens / max(time.perf_counter() - self.start, 1e-9)
        self.bar.set_postfix_str(f"{self.tokens / 1e6:.2f}M tokens, {rate / 1e3:.0f}k tokens/s", refresh=False)

    def close(self) -> None:
        self.bar.close()


_job: _Job | None = None  # the job of forked workers
_progress_queue: Any = None


def _run(job: _Job, tasks: list[tuple[int, Piece, str, None]], num_proc: int | None
         ) -> Iterator[tuple[int, dict[str, Any]]]:
    """Tokenize the tasks' pieces, in worker processes when there are several; yield (index, record) as done."""
    sizes = [piece.num_bytes for _, piece, _, _ in tasks]
    progress = _Progress(None if None in sizes else sum(sizes))
    workers = min(num_proc or _usable_cores(), len(tasks))
    try:
        if workers <= 1 or "fork" not in multiprocessing.get_all_start_methods():
            job.report = progress.update
            for index, piece, key, limit in tasks:
                yield index, job.tokenize(index, piece, key, limit)
            return
        yield from _run_forked(job, tasks, workers, progress)
    except BaseException:
        for index, *_ in tasks:  # this node's unfinished shards: nobody else writes them
            for temporary in (job.output / SHARDS_DIR).glob(f"{index:05d}.*.tmp"):
                temporary.unlink(missing_ok=True)
        raise
    finally:
        progress.close()


def _run_forked(job: _Job, tasks: list, workers: int, progress: _Progress) -> Iterator[tuple[int, dict[str, Any]]]:
    # fork, not spawn: workers inherit the loaded tokenizer instead of re-importing torch and transformers
    # (seconds each). Safe because this process never ran the Rust thread pool before forking.
    global _job, _progress_queue
    context = multiprocessing.get_context("fork")
    _job, _progress_queue = job, context.Queue()
    threads = max(1, _usable_cores() // workers)
    # Workers inherit the environment at the fork. One worker per core: no Rust threads that would only compete
    # with the other workers (set before the fork, so tokenizers' fork hook stays quiet).
    environment = {"RAYON_NUM_THREADS": str(threads)}
    if threads == 1:
        environment["TOKENIZERS_PARALLELISM"] = "false"
    with _environment(environment):
        pool = context.Pool(workers, initializer=_init_worker)
    with pool:
        results = [pool.apply_async(_tokenize_in_worker, task) for task in tasks]
        done = set()
        while len(done) < len(results):
            try:
                while True:
                    progress.update(*_progress_queue.get(timeout=0.2))
            except queue.Empty:
                pass
            for position, result in enumerate(results):
                if position not in done and result.ready():
                    done.add(position)
                    yield tasks[position][0], result.get()  # re-raises a worker's error here
        while not _progress_queue.empty():
            progress.update(*_progress_queue.get())


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _init_worker() -> None:
    assert _job is not None
    _job.report = lambda *counts: _progress_queue.put(counts)


def _tokenize_in_worker(index: int, piece: Piece, key: str, limit: int | None) -> dict[str, Any]:
    assert _job is not None
    return _job.tokenize(index, piece, key, limit)


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _write_index(output: Path, settings: dict[str, Any], sources: list[str], pieces: list[Piece],
                 records: list[dict[str, Any]]) -> dict[str, Any]:
    """Write ``meta.json``: per split its shards in piece order and the rows they make."""
    seq_len = settings["seq_len"]
    documents_per_source: dict[str, int] = {}
    for piece, record in zip(pieces, records):
        documents_per_source[piece.source] = documents_per_source.get(piece.source, 0) + sum(
            record["splits"][split]["num_documents"] for split in SPLITS)
    if settings["max_documents"] is None:
        for source in sources:
            if documents_per_source.get(source, 0) == 0:
                raise IIETError(f"source {source!r} holds no documents (only blank text); point at a non-empty source")
    splits = {}
    for split in SPLITS:
        shards = [{"file": f"{SHARDS_DIR}/{index:05d}.{split}.bin", "num_tokens": record["splits"][split]["num_tokens"]}
                  for index, record in enumerate(records) if record["splits"][split]["num_tokens"] > 0]
        tokens_seen = sum(shard["num_tokens"] for shard in shards)
        splits[split] = {
            "num_sequences": tokens_seen // seq_len,
            "num_tokens": tokens_seen // seq_len * seq_len,
            "num_documents": sum(record["splits"][split]["num_documents"] for record in records),
            "num_tokens_seen": tokens_seen,
            "shards": shards,
        }
    if splits["train"]["num_sequences"] == 0:
        raise IIETError(
            f"the sources hold {splits['train']['num_tokens_seen']} training tokens, fewer than one sequence of "
            f"seq_len {seq_len}; add text or lower --seq_len"
        )
    if settings["val_fraction"] > 0 and splits["val"]["num_sequences"] == 0:
        print(f"warning: no validation sequence came out ({splits['val']['num_documents']} held-out documents); "
              "raise --val_fraction or add text if you need validation loss")
    text = {name: sum(record[name] for record in records)
            for name in ("characters", "replacement_characters", "hard_cuts")}
    meta = {**settings, "num_shards": len(pieces), "text": text, "splits": splits}
    for temporary in (output / SHARDS_DIR).glob("*.tmp"):  # every shard is complete: leftovers of killed workers
        temporary.unlink(missing_ok=True)
    write_atomically(output / META_FILE, (json.dumps(meta, indent=1) + "\n").encode())
    for split, info in splits.items():
        print(f"{split}: {info['num_documents']} documents -> {info['num_sequences']} sequences of {seq_len} tokens")
    return meta


def _reusable_meta(output: Path, settings: dict[str, Any]) -> dict[str, Any] | None:
    """Return the existing metadata if it was made with the same settings and its files are intact."""
    try:
        meta = load_meta(output)
        for split in SPLITS:
            PackedDataset(output, split)  # validates presence and sizes
    except (IIETError, KeyError):
        return None
    if any(meta.get(key) != settings[key] for key in _REUSE_KEYS):
        return None
    return meta


def _check_arguments(seq_len: int, val_fraction: float, max_documents: int | None, num_proc: int | None,
                     num_nodes: int, node_rank: int, max_replacement_share: float) -> None:
    if seq_len < 1:
        raise IIETError(f"seq_len must be positive, got {seq_len}")
    if not 0.0 <= val_fraction < 1.0:
        raise IIETError(f"val_fraction must be in [0, 1), got {val_fraction}; 0.01 holds out about 1% of documents")
    if max_documents is not None and max_documents <= 0:
        raise IIETError(f"max_documents must be positive, got {max_documents}; omit it to read every document")
    if num_proc is not None and num_proc < 1:
        raise IIETError(f"num_proc must be at least 1, got {num_proc}; omit it to use every core")
    if num_nodes < 1 or not 0 <= node_rank < num_nodes:
        raise IIETError(f"node_rank must be in 0 .. num_nodes - 1, got node_rank {node_rank} of num_nodes {num_nodes}")
    if num_nodes > 1 and max_documents is not None:
        raise IIETError("max_documents reads the pieces in order and cannot be split over nodes; drop --num_nodes "
                        "or --max_documents")
    if not 0.0 <= max_replacement_share <= 1.0:
        raise IIETError(f"max_replacement_share must be in [0, 1], got {max_replacement_share}; 1 accepts any text")


def _library_version() -> str:
    try:
        return metadata.version("iiet")
    except metadata.PackageNotFoundError:
        return "unknown"
