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

Tokenizing one piece (batches, long documents, the text check) is :mod:`iiet.data.shards`.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import queue
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from iiet.data.packed import (
    FORMAT_VERSION, META_FILE, SHARDS_DIR, SPLITS, UINT16_VOCAB_LIMIT, PackedDataset, load_meta, tokenizer_hash,
    write_atomically,
)
from iiet.data.shards import WARN_REPLACEMENT_SHARE, ShardTokenizer, chunking_is_exact, empty_record
from iiet.data.sources import Piece, check_text_file, list_pieces, source_fingerprint
from iiet.data.tokenizer import load_tokenizer
from iiet.errors import IIETError

# Changing any of these must re-tokenize; everything else in meta.json is derived from them.
_REUSE_KEYS = ("format_version", "tokenizer_hash", "seq_len", "sources", "val_fraction", "seed", "max_documents",
               "text_field")


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
    for split in SPLITS:  # the single files of a format-1 preparation in this folder, now replaced by shards
        (output / f"{split}.bin").unlink(missing_ok=True)
    job = ShardTokenizer(output, loaded, settings, max_replacement_share, chunking_is_exact(loaded))
    if max_documents is None:
        keys = [job.shard_key(piece, None) for piece in pieces]
        records = [job.finished(index, key) for index, key in enumerate(keys)]
        todo = [index for index, record in enumerate(records)
                if record is None and index % num_nodes == node_rank]
        if len(todo) < len(pieces):
            print(f"resuming: {len(pieces) - len(todo)} of {len(pieces)} shards already prepared (or by other nodes)")
        for index, record in _run(job, [(index, pieces[index], keys[index], None) for index in todo], num_proc):
            records[index] = record
        for index, record in enumerate(records):  # other nodes may have finished theirs meanwhile
            if record is None:
                records[index] = job.finished(index, keys[index])
    else:
        records = _run_in_order(job, pieces, max_documents)
    missing = [index for index, record in enumerate(records) if record is None]
    if missing:
        print(f"node {node_rank} of {num_nodes} is done; {len(missing)} of {len(pieces)} shards are still missing "
              "(other nodes): the last node to finish writes meta.json, or rerun with --num_nodes 1")
        return {**settings, "missing_shards": missing}
    return _write_index(output, settings, sources, pieces, records)


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


_job: ShardTokenizer | None = None  # the job of forked workers
_progress_queue: Any = None


def _run_in_order(job: ShardTokenizer, pieces: list[Piece], max_documents: int) -> list[dict[str, Any] | None]:
    """Pieces one after another until ``max_documents`` documents are read (pieces past it get empty records)."""
    records, remaining = [], max_documents
    progress = _Progress(None, max_documents)
    job.report = progress.update
    try:
        for index, piece in enumerate(pieces):
            if remaining == 0:
                records.append(empty_record())
                continue
            key = job.shard_key(piece, remaining)
            record = job.finished(index, key) or job.tokenize(index, piece, key, remaining)
            records.append(record)
            remaining -= sum(record["splits"][split]["num_documents"] for split in SPLITS)
    finally:
        progress.close()
    return records


def _run(job: ShardTokenizer, tasks: list[tuple[int, Piece, str, None]], num_proc: int | None
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


def _run_forked(job: ShardTokenizer, tasks: list, workers: int, progress: _Progress
                ) -> Iterator[tuple[int, dict[str, Any]]]:
    # fork, not spawn: workers inherit the loaded tokenizer instead of re-importing torch and transformers
    # (seconds each). prepare_data itself never runs Rust's thread pool before forking; if the caller did (it
    # trained the tokenizer), tokenizers' fork hook switches parallelism off in the workers, which is safe.
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
