"""Where training text comes from: one iterator of documents over files, globs and Hugging Face datasets.

A *source* is a string, resolved in this order:

- ``builtin``: the Python standard library's own ``.py`` files (:func:`builtin_corpus`), an offline demo corpus.
- ``hf:NAME[:CONFIG]``: a Hugging Face dataset, read with ``datasets.load_dataset(..., streaming=True)``.
- a glob (``data/**/*.jsonl``), a directory (searched recursively, sorted) or a single file:
  ``.txt``/``.raw``/``.text`` (one document per file, or one per ``<doc>`` for WikiExtractor output),
  ``.jsonl``/``.json`` (one document per record, read from ``text_field``), ``.parquet`` (via ``datasets``).
  A file named explicitly with any other suffix is read as plain text. Any of these may be compressed
  (``.gz``, ``.bz2``, ``.xz``, ``.zst`` as SlimPajama's ``.jsonl.zst``): it is decompressed while it is read.

Every source yields documents in a fixed order, so tokenizer training and data preparation are reproducible.
:func:`source_fingerprint` records what a source held (file sha256s), so prepared data can say what it was made of.

For parallel preparation a source is cut into :class:`Piece` s (:func:`list_pieces`): runs of consecutive files of
about ``total / 64`` bytes (256 KiB to 256 MiB), byte ranges of a large ``.jsonl`` file, or one shard of a Hugging
Face dataset. The pieces depend only on
the source, so the concatenation of their documents is the source's document stream, whoever reads them.
:func:`check_text_file` refuses binary or non-UTF-8 files before anything is tokenized.
"""

from __future__ import annotations

import bz2
import functools
import glob
import gzip
import hashlib
import html
import io
import itertools
import json
import lzma
import os
import platform
import re
import sysconfig
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TextIO

from iiet.errors import IIETError

BUILTIN_SOURCE = "builtin"
HF_PREFIX = "hf:"
TEXT_SUFFIXES = (".txt", ".raw", ".text")
JSON_SUFFIXES = (".jsonl", ".json")
PARQUET_SUFFIXES = (".parquet",)
SUPPORTED_SUFFIXES = TEXT_SUFFIXES + JSON_SUFFIXES + PARQUET_SUFFIXES
COMPRESSION_SUFFIXES = (".gz", ".bz2", ".xz", ".zst")  # streamed through gzip, bz2, lzma, zstandard
# Left out of the builtin corpus: third-party packages (not the standard library, and they vary between machines),
# bytecode caches, and CPython's own test suites (deliberately malformed files and large generated data).
_BUILTIN_SKIPPED_DIRS = frozenset({"site-packages", "dist-packages", "__pycache__", "test", "tests", "idle_test"})
_GLOB_CHARS = re.compile(r"[*?\[]")
_WIKIEXTRACTOR_OPEN = re.compile(r"^<doc\b[^>]*>\s*$")
_WIKIEXTRACTOR_TITLE = re.compile(r'\btitle="([^"]*)"')
_WIKIEXTRACTOR_CLOSE = "</doc>"
_HASH_CHUNK_BYTES = 1 << 20
_PARQUET_BATCH_ROWS = 1024
_PIECES_PER_SOURCE = 64  # a source is cut into about this many pieces (enough to keep every worker busy)
_MIN_PIECE_BYTES = 1 << 18
_MAX_PIECE_BYTES = 1 << 28
_RANGES_ABOVE = 2  # a .jsonl file larger than this many piece targets is cut into byte ranges
_TEXT_CHECK_BYTES = 1 << 16  # bytes read from the head of each file to tell text from binary
REPLACEMENT_CHARACTER = "\ufffd"  # what undecodable bytes become when text is read with errors="replace"
_SOURCE_HELP = "pass an existing file, directory or glob, `hf:NAME[:CONFIG]` for a Hugging Face dataset, or `builtin`"


def iter_documents(
    source: str, text_field: str = "text", split: str = "train", streaming: bool = True
) -> Iterator[str]:
    """Yield the documents of one source, in a fixed order.

    Args:
        source: ``builtin``, ``hf:NAME[:CONFIG]``, a glob, a directory or a file (see the module docstring).
        text_field: Field holding the text in ``.jsonl``/``.json``/``.parquet`` records and HF datasets.
        split: Split of a Hugging Face dataset (ignored for local files).
        streaming: Stream a Hugging Face dataset instead of downloading it whole first.

    Returns:
        An iterator of non-blank document strings.

    Raises:
        IIETError: The path does not exist, a directory or glob holds no readable files, a record lacks
            ``text_field``, or the source turns out to hold no documents at all.
    """
    if source.startswith(HF_PREFIX):
        documents: Iterable[str] = _iter_hf_dataset(source, text_field, split, streaming)
    else:
        # Resolve eagerly so a wrong path fails here, not at the first ``next()`` deep inside a training run.
        files = _builtin_files() if source == BUILTIN_SOURCE else resolve_files(source)
        documents = (document for path in files for document in _iter_file(path, text_field))
    return _non_blank(documents, source)


@dataclass(frozen=True)
class Piece:
    """A unit of preparation work: consecutive files of one source, a byte range of one large JSON Lines file, or
    one shard of a Hugging Face dataset.

    Args:
        source: The source string it belongs to.
        files: Its local files, in order (empty for a Hugging Face shard).
        shard: Index of the dataset shard (Hugging Face sources).
        num_shards: Number of shards the dataset was cut into (Hugging Face sources).
        num_bytes: Size of its files, when known (drives the progress bar's ETA).
        start: First byte of the range of ``files[0]`` (the lines that begin in ``[start, end)`` are its documents).
        end: End of that range; ``None``: whole files.
    """

    source: str
    files: tuple[str, ...] = ()
    shard: int = 0
    num_shards: int = 1
    num_bytes: int | None = None
    start: int = 0
    end: int | None = None

    def describe(self) -> str:
        """A short human-readable name, for messages."""
        if not self.files:
            return f"{self.source} (shard {self.shard} of {self.num_shards})"
        if self.end is not None:
            return f"{self.files[0]} (bytes {self.start} .. {self.end})"
        if len(self.files) == 1:
            return self.files[0]
        return f"{self.files[0]} .. {self.files[-1]} ({len(self.files)} files)"


def list_pieces(source: str, split: str = "train") -> list[Piece]:
    """Cut a source into pieces whose documents, concatenated in order, are the source's documents.

    Local files are grouped into runs of at least ``clamp(total / 64, 256 KiB, 256 MiB)`` bytes; a larger file is a
    piece of its own, except an uncompressed ``.jsonl`` file of more than twice that, which is cut into byte ranges
    of about that size (a line belongs to the range it begins in); a Hugging Face dataset gives one piece per shard
    of its streaming form (usually a data file).

    Args:
        source: A source string (see :func:`iter_documents`).
        split: Split of a Hugging Face dataset.

    Returns:
        The pieces, in document order.

    Raises:
        IIETError: The source is invalid (see :func:`resolve_files`) or the dataset cannot be loaded.
    """
    if source.startswith(HF_PREFIX):
        num_shards = _load_hf_dataset(source, split, streaming=True).num_shards
        return [Piece(source, shard=index, num_shards=num_shards) for index in range(num_shards)]
    files = _builtin_files() if source == BUILTIN_SOURCE else resolve_files(source)
    sizes = [file.stat().st_size for file in files]
    target = min(max(sum(sizes) // _PIECES_PER_SOURCE, _MIN_PIECE_BYTES), _MAX_PIECE_BYTES)
    pieces, group, group_bytes = [], [], 0
    for file, size in zip(files, sizes):
        if size > _RANGES_ABOVE * target and format_suffix(file) == ".jsonl" and not is_compressed(file):
            if group:
                pieces.append(Piece(source, tuple(group), num_bytes=group_bytes))
                group, group_bytes = [], 0
            bounds = [size * index // -(-size // target) for index in range(-(-size // target) + 1)]
            pieces += [Piece(source, (str(file),), num_bytes=end - start, start=start, end=end)
                       for start, end in zip(bounds, bounds[1:])]
            continue
        group.append(str(file))
        group_bytes += size
        if group_bytes >= target:
            pieces.append(Piece(source, tuple(group), num_bytes=group_bytes))
            group, group_bytes = [], 0
    if group:
        pieces.append(Piece(source, tuple(group), num_bytes=group_bytes))
    return pieces


def iter_piece(piece: Piece, text_field: str = "text", split: str = "train") -> Iterator[str]:
    """Yield the documents of one piece, blank ones included (callers skip them).

    Args:
        piece: From :func:`list_pieces`.
        text_field: Field holding the text in structured records.
        split: Split of a Hugging Face dataset.

    Returns:
        An iterator of document strings.
    """
    if not piece.files:
        rows = _load_hf_dataset(piece.source, split, streaming=True).shard(piece.num_shards, piece.shard)
        for index, row in enumerate(rows):
            yield _record_text(row, text_field, f"{piece.describe()} row {index}")
        return
    if piece.end is not None:
        yield from _iter_json_lines_range(Path(piece.files[0]), piece.start, piece.end, text_field)
        return
    for file in piece.files:
        if not is_compressed(file):
            yield from _iter_file(Path(file), text_field)
            continue
        try:
            yield from _iter_file(Path(file), text_field)
        except _decompression_errors() as error:  # damaged or truncated past the head that was checked
            raise IIETError(f"cannot decompress {file!r} ({error}); re-download it or remove it") from None


def check_text_file(path: str | Path, max_replacement_share: float) -> float:
    """Refuse a file that is not UTF-8 text, judged from its first 64 KiB; return its share of undecodable bytes.

    Binary data (NUL bytes, as in executables, archives, UTF-16 text) is refused outright; otherwise the head is
    decoded as UTF-8 and the share of characters that come out as U+FFFD (bytes that are not UTF-8) is compared
    with ``max_replacement_share``. Parquet files are binary by design and are not checked here.

    Args:
        path: The file.
        max_replacement_share: Largest accepted share of replacement characters.

    Returns:
        The share of replacement characters in the head (0.0 for parquet).

    Raises:
        IIETError: The file looks binary or holds too many bytes that are not UTF-8.
    """
    path = Path(path)
    if format_suffix(path) in PARQUET_SUFFIXES:
        return 0.0
    try:
        with _open_bytes(path) as file:
            head = file.read(_TEXT_CHECK_BYTES)
    except _decompression_errors() as error:
        raise IIETError(f"cannot decompress {str(path)!r} ({error}); re-download it or remove it") from None
    override = "pass --max_replacement_share 1 to tokenize it anyway"
    if b"\x00" in head and max_replacement_share < 1.0:
        raise IIETError(f"{str(path)!r} looks binary (it holds NUL bytes), not text; remove it from the sources or "
                        f"convert it to UTF-8 text ({override})")
    text = head.decode("utf-8", errors="replace")
    if len(head) == _TEXT_CHECK_BYTES:  # the read may have cut the last character in two
        text = text[:-4]
    share = text.count(REPLACEMENT_CHARACTER) / max(len(text), 1)
    if share > max_replacement_share:
        raise IIETError(f"{str(path)!r} is not UTF-8 text ({share:.1%} of its first characters are undecodable); "
                        f"convert it to UTF-8 (e.g. `iconv -f latin1 -t utf-8`) or drop it ({override})")
    return share


def iter_corpus(
    sources: list[str], text_field: str = "text", max_documents: int | None = None, split: str = "train"
) -> Iterator[str]:
    """Chain the documents of several sources, stopping after ``max_documents`` in total.

    Args:
        sources: Source strings, read one after another (see :func:`iter_documents`).
        text_field: Field holding the text in structured records.
        max_documents: Stop after this many documents; ``None`` reads everything.
        split: Split of Hugging Face datasets.

    Returns:
        An iterator of document strings.

    Raises:
        IIETError: ``sources`` is empty, ``max_documents`` is not positive, or a source is invalid.
    """
    if not sources:
        raise IIETError("no sources given; " + _SOURCE_HELP)
    if max_documents is not None and max_documents <= 0:
        raise IIETError(f"max_documents must be positive, got {max_documents}; omit it to read every document")
    # Validate every source up front: a typo in the last one should not surface after hours of reading the first.
    iterators = [iter_documents(source, text_field=text_field, split=split) for source in sources]
    return itertools.islice(itertools.chain.from_iterable(iterators), max_documents)


def builtin_corpus() -> Iterator[str]:
    """Yield the Python standard library's ``.py`` files, sorted by path: a corpus that needs no download.

    The library is found with ``sysconfig.get_paths()["stdlib"]``; third-party packages, bytecode caches and
    CPython's test suites are left out. The order (and, for one Python version, the content) is deterministic.

    Returns:
        An iterator of source-file texts (about 1,000 documents, ~12 MB, depending on the Python version).
    """
    for path in _builtin_files():
        yield from _iter_text_file(path)


def resolve_files(source: str) -> list[Path]:
    """List the files a local source stands for, sorted.

    Args:
        source: A file, a directory (searched recursively for supported suffixes) or a glob pattern.

    Returns:
        The files, in sorted order.

    Raises:
        IIETError: Nothing exists at ``source`` or it holds no supported files.
    """
    if _GLOB_CHARS.search(source):
        matches = [Path(match) for match in sorted(glob.glob(source, recursive=True))]
        files = [file for match in matches for file in (_files_in(match) if match.is_dir() else [match])]
        if not files:
            raise IIETError(f"no files match the glob {source!r}; check the pattern (use ** for subfolders)")
        return files
    path = Path(source).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        files = _files_in(path)
        if not files:
            suffixes = "/".join(SUPPORTED_SUFFIXES)
            raise IIETError(f"directory {source!r} holds no {suffixes} files; point at a folder of text data")
        return files
    raise IIETError(f"source {source!r} does not exist; {_SOURCE_HELP}")


def source_fingerprint(source: str, split: str = "train") -> dict[str, Any]:
    """Describe what a source held, so prepared data records (and can later check) what it was made from.

    Local files get a sha256: a single file's own digest (compare it with ``sha256sum``), or for several files the
    digest of a ``SHA256SUMS``-style listing of their digests and relative paths. A Hugging Face dataset is named
    (its content is not hashed: streaming it twice just to hash it would double the cost).

    Args:
        source: A source string (see :func:`iter_documents`).
        split: Split of a Hugging Face dataset.

    Returns:
        A JSON-serialisable dict, equal for equal inputs.
    """
    if source.startswith(HF_PREFIX):
        name, _, config = source[len(HF_PREFIX) :].partition(":")
        return {"source": source, "dataset": name, "config": config or None, "split": split}
    if source == BUILTIN_SOURCE:
        files, root = _builtin_files(), Path(sysconfig.get_paths()["stdlib"])
        fingerprint = {"source": source, "python": platform.python_version()}
    else:
        files = resolve_files(source)
        root = Path(os.path.commonpath([file.absolute() for file in files]))
        fingerprint = {"source": source}
    if len(files) == 1:
        return {**fingerprint, "files": 1, "sha256": file_sha256(files[0])}
    # absolute(), not resolve(): a symbolic link inside the tree (e.g. a distribution's sitecustomize.py pointing
    # to /etc) must keep its place under the root.
    listing = "".join(f"{file_sha256(file)}  {file.absolute().relative_to(root).as_posix()}\n" for file in files)
    return {**fingerprint, "files": len(files), "sha256": hashlib.sha256(listing.encode()).hexdigest()}


def file_sha256(path: str | Path) -> str:
    """Return the hex sha256 digest of a file, read in chunks (once per process while size and mtime stay).

    Args:
        path: The file.

    Returns:
        The 64-character hex digest.
    """
    status = os.stat(path)
    return _file_sha256(str(path), status.st_size, status.st_mtime_ns)


@functools.lru_cache(maxsize=None)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(_HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def batched(items: Iterable[str], size: int) -> Iterator[list[str]]:
    """Group an iterator into lists of ``size`` items (the last may be shorter); feeds batched tokenizer calls.

    Args:
        items: The items.
        size: Items per list.

    Returns:
        An iterator of lists.
    """
    batch: list[str] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _builtin_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for directory, subdirectories, names in os.walk(root):
        subdirectories[:] = [name for name in subdirectories if name not in _BUILTIN_SKIPPED_DIRS]
        files.extend(Path(directory, name) for name in names if name.endswith(".py"))
    return sorted(files, key=lambda file: file.relative_to(root).as_posix())


def _files_in(directory: Path) -> list[Path]:
    found = (path for path in directory.rglob("*") if path.is_file() and format_suffix(path) in SUPPORTED_SUFFIXES)
    return sorted(found, key=lambda path: path.as_posix())


def _non_blank(documents: Iterable[str], source: str) -> Iterator[str]:
    count = 0
    for document in documents:
        if document.strip():
            count += 1
            yield document
    if count == 0:
        raise IIETError(f"source {source!r} holds no documents (only blank text); point at a non-empty source")


def _iter_file(path: Path, text_field: str) -> Iterator[str]:
    suffix = format_suffix(path)
    if suffix == ".jsonl":
        yield from _iter_json_lines(path, text_field)
    elif suffix == ".json":
        yield from _iter_json(path, text_field)
    elif suffix in PARQUET_SUFFIXES:
        yield from _iter_parquet(path, text_field)
    else:
        yield from _iter_text_file(path)


def format_suffix(path: str | Path) -> str:
    """The suffix that says how a file is read, behind any compression suffix: ``.jsonl`` for ``a.jsonl.zst``.

    Args:
        path: The file.

    Returns:
        The lower-case suffix, or ``""``.
    """
    suffixes = [suffix.lower() for suffix in Path(path).suffixes]
    if suffixes and suffixes[-1] in COMPRESSION_SUFFIXES:
        suffixes.pop()
    return suffixes[-1] if suffixes else ""


def is_compressed(path: str | Path) -> bool:
    """Whether a file is read through a decompressor (its size on disk is not the size of its text)."""
    return Path(path).suffix.lower() in COMPRESSION_SUFFIXES


def _open_bytes(path: Path) -> BinaryIO:
    suffix = path.suffix.lower()
    if suffix == ".gz":
        return gzip.open(path, "rb")
    if suffix == ".bz2":
        return bz2.open(path, "rb")
    if suffix == ".xz":
        return lzma.open(path, "rb")
    if suffix == ".zst":
        try:
            import zstandard
        except ImportError:
            raise IIETError(f"{str(path)!r} is zstandard-compressed; `pip install zstandard` to read it") from None
        return zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), read_across_frames=True, closefd=True)
    return open(path, "rb")


def _decompression_errors() -> tuple[type[Exception], ...]:
    """What gzip, bz2, lzma and zstandard raise for a damaged or truncated stream."""
    errors: tuple[type[Exception], ...] = (OSError, EOFError, lzma.LZMAError)
    try:
        import zstandard
    except ImportError:
        return errors
    return (*errors, zstandard.ZstdError)


def _open_text(path: Path) -> TextIO:
    """UTF-8 text, undecodable bytes as U+FFFD (counted by data preparation), universal newlines."""
    return io.TextIOWrapper(_open_bytes(path), encoding="utf-8", errors="replace")


def _iter_text_file(path: Path) -> Iterator[str]:
    with _open_text(path) as file:
        first_line = file.readline()
        if _WIKIEXTRACTOR_OPEN.match(first_line):
            yield from iter_wikiextractor(itertools.chain([first_line], file))
        else:
            yield first_line + file.read()


def iter_wikiextractor(lines: Iterable[str]) -> Iterator[str]:
    """Split WikiExtractor output into article bodies.

    Each ``<doc id=.. url=.. title="T">`` ... ``</doc>`` block becomes one document: the markup lines and the
    repeated title line ``T`` are dropped and HTML entities (``&amp;``) are unescaped. Title-only stubs come out
    empty (callers skip blank documents).

    Args:
        lines: The file's lines, with their newlines.

    Returns:
        An iterator of article texts, stripped of surrounding whitespace.
    """
    body: list[str] | None = None
    title = ""
    expect_title = False
    for line in lines:
        if body is None:  # between articles: only an opening tag matters
            if _WIKIEXTRACTOR_OPEN.match(line):
                match = _WIKIEXTRACTOR_TITLE.search(line)
                title = html.unescape(match.group(1)).strip() if match else ""
                body, expect_title = [], True
            continue
        if line.startswith(_WIKIEXTRACTOR_CLOSE):
            yield html.unescape("".join(body)).strip()
            body = None
            continue
        if expect_title:
            expect_title = False
            if html.unescape(line).strip() == title:
                continue
        body.append(line)
    if body is not None:  # a truncated last article still counts
        yield html.unescape("".join(body)).strip()


def _record_text(record: Any, text_field: str, where: str) -> str:
    if not isinstance(record, dict) or text_field not in record:
        fields = sorted(record) if isinstance(record, dict) else type(record).__name__
        raise IIETError(f"{where}: no {text_field!r} field (found {fields}); pass --text_field NAME")
    text = record[text_field]
    if not isinstance(text, str):
        raise IIETError(f"{where}: field {text_field!r} is {type(text).__name__}, not text; pick a text field")
    return text


def _iter_json_lines(path: Path, text_field: str) -> Iterator[str]:
    with _open_text(path) as file:
        for line_number, line in enumerate(file, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise IIETError(f"{path}:{line_number}: not valid JSON ({error}); fix or remove that line") from None
            yield _record_text(record, text_field, f"{path}:{line_number}")


def _iter_json_lines_range(path: Path, start: int, end: int, text_field: str) -> Iterator[str]:
    """The records of the lines of a JSON Lines file that begin at a byte in ``[start, end)``."""
    with open(path, "rb") as file:
        file.seek(max(start - 1, 0))
        if start > 0:
            file.readline()  # the rest of the line that began before ``start`` (only its newline, if one ends there)
        position = file.tell()
        while position < end and (line := file.readline()):
            where = f"{path} (line at byte {position})"
            position += len(line)
            if not line.strip():
                continue
            try:
                record = json.loads(line.decode("utf-8", errors="replace"))
            except json.JSONDecodeError as error:
                raise IIETError(f"{where}: not valid JSON ({error}); fix or remove that line") from None
            yield _record_text(record, text_field, where)


def _iter_json(path: Path, text_field: str) -> Iterator[str]:
    """A ``.json`` file is a list of records, one record, or (as many exports are) JSON Lines."""
    with _open_text(path) as file:
        try:
            content = json.load(file)
        except json.JSONDecodeError:
            content = None
    if content is None:
        yield from _iter_json_lines(path, text_field)
        return
    records = content if isinstance(content, list) else [content]
    for index, record in enumerate(records):
        yield _record_text(record, text_field, f"{path}[{index}]")


def _iter_parquet(path: Path, text_field: str) -> Iterator[str]:
    """Stream one column of a parquet file batch by batch (never the whole table)."""
    import pyarrow.parquet

    try:
        table = pyarrow.parquet.ParquetFile(path)
    except pyarrow.ArrowException as error:
        raise IIETError(f"{str(path)!r} is not a readable parquet file ({error}); fix or remove it") from None
    names = table.schema_arrow.names
    if text_field not in names:
        raise IIETError(f"{path}: no {text_field!r} column (found {sorted(names)}); pass --text_field NAME")
    for batch in table.iter_batches(batch_size=_PARQUET_BATCH_ROWS, columns=[text_field]):
        column = batch.column(0)
        if not (pyarrow.types.is_string(column.type) or pyarrow.types.is_large_string(column.type)):
            raise IIETError(f"{path}: column {text_field!r} is {column.type}, not text; pick a text column")
        for text in column.to_pylist():
            if text is not None:
                yield text


def _iter_hf_dataset(source: str, text_field: str, split: str, streaming: bool) -> Iterator[str]:
    rows = _load_hf_dataset(source, split, streaming)
    for index, row in enumerate(rows):
        yield _record_text(row, text_field, f"{source} row {index}")


def _load_hf_dataset(source: str, split: str, streaming: bool):
    import datasets

    name, _, config = source[len(HF_PREFIX) :].partition(":")
    if not name:
        raise IIETError(f"source {source!r} names no dataset; write hf:NAME or hf:NAME:CONFIG")
    try:
        rows = datasets.load_dataset(name, config or None, split=split, streaming=streaming)
    except Exception as error:  # datasets raises many types (network, auth, missing config); all mean the same here
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise IIETError(
            f"cannot load Hugging Face dataset {name!r} (config {config or None!r}, split {split!r}): {first_line}; "
            "check the name/config/split and your network or HF_TOKEN, or download it and pass local files"
        ) from error
    return rows
