"""Sharded, parallel, resumable data preparation: kill and resume, several nodes, long documents, non-text input."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow
import pyarrow.parquet
import pytest
import torch
from transformers import AutoTokenizer

import iiet.cli
import iiet.data.shards
from iiet.data import PackedDataset, iter_documents, prepare_data, train_tokenizer
from iiet.data.sources import iter_piece, list_pieces
from iiet.data.shards import is_validation_document, split_long_document
from iiet.errors import IIETError

SEQ_LEN = 16
NUM_FILES = 6
WORDS = "alpha beta gamma delta river stone cloud seven ninety it's don't (note) end.".split()
ROOT = Path(__file__).resolve().parents[1]


def _text(rng: random.Random, num_words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(num_words))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """A folder of NUM_FILES JSONL files; with 1-byte pieces (``one_piece_per_file``) each file is one shard."""
    folder = tmp_path_factory.mktemp("corpus")
    rng = random.Random(0)
    for index in range(NUM_FILES):
        lines = [json.dumps({"text": f"file {index} doc {d}: " + _text(rng, rng.randint(2, 30))}) for d in range(12)]
        (folder / f"part{index}.jsonl").write_text("\n".join(lines) + "\n")
    return folder


@pytest.fixture(scope="module")
def tokenizer_dir(corpus, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("tokenizer")
    train_tokenizer([str(corpus)], output, vocab_size=300, min_frequency=2)
    return output


@pytest.fixture
def one_piece_per_file(monkeypatch):
    monkeypatch.setattr("iiet.data.sources._MIN_PIECE_BYTES", 1)
    monkeypatch.setattr("iiet.data.sources._RANGES_ABOVE", float("inf"))  # whole files, however small the target


def _tree(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` by relative path, with its bytes."""
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def _prepare(corpus: Path, tokenizer_dir: Path, output: Path, **options) -> dict:
    return prepare_data([str(corpus)], str(tokenizer_dir), output, seq_len=SEQ_LEN, val_fraction=0.2, **options)


def test_shards_read_as_the_sequential_token_stream(corpus, tokenizer_dir, tmp_path, one_piece_per_file, capsys):
    meta = _prepare(corpus, tokenizer_dir, tmp_path, num_proc=2)
    progress = capsys.readouterr().err
    assert "tokenizing" in progress and "tokens/s" in progress and "100%" in progress  # the bar, its rate and ETA
    assert meta["num_shards"] == NUM_FILES and len(meta["splits"]["train"]["shards"]) == NUM_FILES
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    documents = list(iter_documents(str(corpus)))
    for split, is_val in (("train", False), ("val", True)):
        stream = []
        for text in documents:  # one process reading the sources in order, each document followed by </s>
            if is_validation_document(text, 0, 0.2) == is_val:
                stream += tokenizer.encode(text, add_special_tokens=False) + [tokenizer.eos_token_id]
        dataset = PackedDataset(tmp_path, split)
        assert len(dataset) == len(stream) // SEQ_LEN > 0
        rows = torch.stack([dataset[index] for index in range(len(dataset))])  # rows cross shard boundaries
        assert rows.flatten().tolist() == stream[: len(dataset) * SEQ_LEN]
        assert torch.equal(dataset[-1], rows[-1])


def test_killed_preparation_resumes_to_byte_identical_output(corpus, tokenizer_dir, tmp_path, one_piece_per_file,
                                                             monkeypatch):
    reference = tmp_path / "reference"
    _prepare(corpus, tokenizer_dir, reference, num_proc=1)
    # SIGKILL the preparing process itself in the middle of its fourth shard: no cleanup code gets to run.
    killed = tmp_path / "killed"
    script = f"""
import os, signal, sys
sys.path.insert(0, {str(ROOT)!r})
import iiet.data.shards as shards, iiet.data.prepare as prepare, iiet.data.sources as sources
sources._MIN_PIECE_BYTES, sources._RANGES_ABOVE = 1, float("inf")
real = shards.ShardTokenizer._pack
def pack(job, token_ids, layout, writers, *args):
    if writers["train"].path.name.startswith("00003"):
        os.kill(os.getpid(), signal.SIGKILL)
    return real(job, token_ids, layout, writers, *args)
shards.ShardTokenizer._pack = pack
prepare.prepare_data([{str(corpus)!r}], {str(tokenizer_dir)!r}, {str(killed)!r}, seq_len={SEQ_LEN},
                     val_fraction=0.2, num_proc=1)
"""
    process = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert process.returncode == -9, process.stderr[-2000:]
    left = _tree(killed)
    assert "meta.json" not in left and "shards/00002.json" in left and "shards/00003.json" not in left
    assert any(name.startswith("shards/00003.train.bin") and name.endswith(".tmp") for name in left)

    tokenized = []
    real_tokenize = iiet.data.shards.ShardTokenizer.tokenize
    monkeypatch.setattr(iiet.data.shards.ShardTokenizer, "tokenize",
                        lambda job, index, *args: tokenized.append(index) or real_tokenize(job, index, *args))
    _prepare(corpus, tokenizer_dir, killed, num_proc=1)
    assert tokenized == [3, 4, 5]  # finished shards are not redone
    assert _tree(killed) == _tree(reference)


def test_failed_worker_keeps_finished_shards(corpus, tokenizer_dir, tmp_path, one_piece_per_file, monkeypatch):
    reference = tmp_path / "reference"
    _prepare(corpus, tokenizer_dir, reference, num_proc=1)
    real_tokenize = iiet.data.shards.ShardTokenizer.tokenize

    def failing(job, index, *args):
        if index == 4:
            raise IIETError("injected failure")
        return real_tokenize(job, index, *args)

    monkeypatch.setattr(iiet.data.shards.ShardTokenizer, "tokenize", failing)  # forked workers inherit the patch
    output = tmp_path / "parallel"
    with pytest.raises(IIETError, match="injected failure"):
        _prepare(corpus, tokenizer_dir, output, num_proc=2)
    assert not (output / "meta.json").exists() and not list(output.rglob("*.tmp"))
    monkeypatch.setattr(iiet.data.shards.ShardTokenizer, "tokenize", real_tokenize)
    _prepare(corpus, tokenizer_dir, output, num_proc=2)
    assert _tree(output) == _tree(reference)  # as many workers as wanted, the same bytes as one process


def test_nodes_share_one_output_folder(corpus, tokenizer_dir, tmp_path, one_piece_per_file, capsys):
    reference = tmp_path / "reference"
    _prepare(corpus, tokenizer_dir, reference, num_proc=1)
    shared = tmp_path / "shared"
    first = _prepare(corpus, tokenizer_dir, shared, num_proc=1, num_nodes=2, node_rank=1)
    assert first["missing_shards"] == [0, 2, 4] and not (shared / "meta.json").exists()
    assert "still missing" in capsys.readouterr().out
    _prepare(corpus, tokenizer_dir, shared, num_proc=1, num_nodes=2, node_rank=0)  # the last node writes the index
    assert _tree(shared) == _tree(reference)
    with pytest.raises(IIETError, match="node_rank"):
        _prepare(corpus, tokenizer_dir, shared, num_nodes=2, node_rank=2)


def test_max_documents_reads_pieces_in_order(corpus, tokenizer_dir, tmp_path, one_piece_per_file):
    meta = _prepare(corpus, tokenizer_dir, tmp_path, max_documents=30)  # 12 documents per file
    assert sum(split["num_documents"] for split in meta["splits"].values()) == 30
    assert [shard["file"] for shard in meta["splits"]["train"]["shards"]][-1].startswith("shards/00002")


def test_long_documents_are_tokenized_in_chunks_exactly(tokenizer_dir, tmp_path, monkeypatch):
    rng = random.Random(1)
    text = _text(rng, 3000) + "  double  spaces\n\nand lines " + "x" * 500 + " " + _text(rng, 500)
    chunks, hard_cuts = split_long_document(text, chunk_chars=256)
    assert "".join(chunks) == text and max(map(len, chunks)) <= 256 and len(chunks) > 50
    assert hard_cuts >= 1  # the 500-character word has no space to cut at
    # Every other cut is a space between two non-spaces (where the pre-tokenizer starts a word anyway).
    assert sum(not (chunk.startswith(" ") and not chunk[1].isspace()) for chunk in chunks[1:]) == hard_cuts

    source = tmp_path / "long.txt"
    source.write_text(text.replace("x" * 500, "y"))  # one document, no word longer than a chunk
    monkeypatch.setattr(iiet.data.shards, "LONG_DOCUMENT_CHARS", 256)
    monkeypatch.setattr(iiet.data.shards, "_BATCH_CHARS", 1000)  # the document spans many tokenizer batches
    meta = prepare_data([str(source)], str(tokenizer_dir), tmp_path / "out", seq_len=SEQ_LEN, val_fraction=0.0)
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    expected = tokenizer.encode(source.read_text(), add_special_tokens=False) + [tokenizer.eos_token_id]
    stream = np.fromfile(tmp_path / "out" / meta["splits"]["train"]["shards"][0]["file"], dtype=np.uint16)
    assert stream.tolist() == expected and meta["text"]["hard_cuts"] == 0
    assert meta["splits"]["train"]["num_documents"] == 1


def test_binary_and_non_utf8_sources_are_refused_before_any_work(tokenizer_dir, tmp_path, capsys):
    rng = random.Random(2)
    binary = tmp_path / "random.bin"
    binary.write_bytes(bytes(rng.randrange(256) for _ in range(20000)))
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes(("Café déjà vu, naïve façade. " * 200).encode("latin-1"))
    for source, reason in ((binary, "looks binary"), (latin1, "not UTF-8")):
        with pytest.raises(IIETError, match=reason):
            prepare_data([str(source)], str(tokenizer_dir), tmp_path / "out", seq_len=SEQ_LEN)
        assert not (tmp_path / "out").exists()
    accepted = prepare_data([str(latin1)], str(tokenizer_dir), tmp_path / "forced", seq_len=SEQ_LEN,
                            max_replacement_share=1.0)
    assert accepted["text"]["replacement_characters"] > 0

    # A few stray undecodable bytes in real text: a warning, and the data is prepared.
    mostly = tmp_path / "mostly.txt"
    mostly.write_bytes(("plain english text here. " * 400).encode() + b"\xff\xfe")
    capsys.readouterr()
    prepare_data([str(mostly)], str(tokenizer_dir), tmp_path / "mostly", seq_len=SEQ_LEN)
    assert "not UTF-8" in capsys.readouterr().out


def test_binary_source_is_one_line_cli_error(tokenizer_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(iiet.cli, "COMMANDS", {"data-prepare": iiet.cli.COMMANDS["data-prepare"]})
    binary = tmp_path / "blob.dat"
    binary.write_bytes(bytes(range(256)) * 40)
    with pytest.raises(SystemExit) as exit_info:
        iiet.cli.main(["data-prepare", "--sources", f"[{binary}]", "--tokenizer", str(tokenizer_dir),
                       "--output_dir", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("iiet: error:") and "binary" in error[0]


def test_parquet_source_is_streamed_by_record_batches(tmp_path):
    texts = [f"row {index} " + "word " * index for index in range(2500)]
    table = pyarrow.table({"id": list(range(2500)), "content": texts})
    pyarrow.parquet.write_table(table, tmp_path / "data.parquet", row_group_size=1000)
    assert list(iter_documents(str(tmp_path / "data.parquet"), text_field="content")) == texts
    with pytest.raises(IIETError, match="no 'text' column"):
        list(iter_documents(str(tmp_path / "data.parquet")))


def test_hugging_face_dataset_is_prepared_shard_by_shard(corpus, tokenizer_dir, tmp_path, monkeypatch):
    import datasets

    files = sorted(str(path) for path in corpus.glob("*.jsonl"))

    def load_local(source, split, streaming):  # a streamed dataset with one shard per data file, no network
        assert source == "hf:local/corpus" and streaming
        return datasets.load_dataset("json", data_files=files, split=split, streaming=True)

    monkeypatch.setattr("iiet.data.sources._load_hf_dataset", load_local)
    meta = prepare_data(["hf:local/corpus"], str(tokenizer_dir), tmp_path / "hf", seq_len=SEQ_LEN, val_fraction=0.2,
                        num_proc=2)
    assert meta["num_shards"] == NUM_FILES and meta["sources"][0]["dataset"] == "local/corpus"
    local = prepare_data([str(corpus)], str(tokenizer_dir), tmp_path / "local", seq_len=SEQ_LEN, val_fraction=0.2)
    for split in ("train", "val"):
        streamed, read = PackedDataset(tmp_path / "hf", split), PackedDataset(tmp_path / "local", split)
        assert len(streamed) == len(read) > 0
        assert all(torch.equal(streamed[index], read[index]) for index in range(len(read)))
    assert meta["splits"]["train"]["num_documents"] == local["splits"]["train"]["num_documents"]


def test_format_1_folders_are_still_read(tmp_path):
    rows = np.arange(5 * SEQ_LEN, dtype=np.uint16).reshape(5, SEQ_LEN)
    rows.tofile(tmp_path / "train.bin")
    (tmp_path / "val.bin").write_bytes(b"")
    split_info = {"num_sequences": 5, "num_tokens": 5 * SEQ_LEN, "num_documents": 3, "num_tokens_seen": 90}
    meta = {"format_version": 1, "seq_len": SEQ_LEN, "vocab_size": 300, "dtype": "uint16",
            "splits": {"train": split_info, "val": {**split_info, "num_sequences": 0, "num_tokens": 0}}}
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    train = PackedDataset(tmp_path, "train")
    assert len(train) == 5 and train[3].tolist() == rows[3].tolist() and len(PackedDataset(tmp_path, "val")) == 0


def test_trainer_reads_shards_as_one_dataset_and_resumes_exactly(corpus_file, tmp_path, monkeypatch):
    from .test_train import SEQ_LEN as TRAIN_SEQ_LEN, fit, losses, tiny_config

    lines = corpus_file.read_text().splitlines(keepends=True)
    parts = tmp_path / "parts"
    parts.mkdir()
    for index in range(5):
        (parts / f"part{index}.jsonl").write_text("".join(lines[index::5]))
    train_tokenizer([str(parts)], tmp_path / "tokenizer", vocab_size=512)
    arguments = dict(sources=[str(parts)], tokenizer=str(tmp_path / "tokenizer"), seq_len=TRAIN_SEQ_LEN,
                     val_fraction=0.1)
    assert prepare_data(output_dir=tmp_path / "whole", **arguments)["num_shards"] == 1  # ~100 KB: one piece
    monkeypatch.setattr("iiet.data.sources._MIN_PIECE_BYTES", 1)  # from here on: one piece per file
    monkeypatch.setattr("iiet.data.sources._RANGES_ABOVE", float("inf"))
    assert prepare_data(output_dir=tmp_path / "sharded", **arguments, num_proc=2)["num_shards"] == 5

    fit(tiny_config(tmp_path / "whole", tmp_path / "run-whole"))
    config = tiny_config(tmp_path / "sharded", tmp_path / "run-sharded")
    fit(config, until_step=4)  # stopped after the step-4 checkpoint, then resumed by a fresh Trainer
    fit(config)
    expected = losses(tmp_path / "run-whole")
    assert losses(tmp_path / "run-sharded") == expected and len(expected) == 8  # bitwise, every step
    assert losses(tmp_path / "run-sharded", "val_loss") == losses(tmp_path / "run-whole", "val_loss")


def test_compressed_files_are_read_as_their_text(corpus, tokenizer_dir, tmp_path):
    import bz2
    import gzip
    import lzma

    import zstandard

    compressors = {".gz": gzip.compress, ".bz2": bz2.compress, ".xz": lzma.compress,
                   ".zst": zstandard.ZstdCompressor().compress}
    plain = sorted(corpus.glob("*.jsonl"))
    packed = tmp_path / "packed"
    packed.mkdir()
    for index, (suffix, compress) in enumerate(compressors.items()):  # SlimPajama ships .jsonl.zst
        (packed / f"{plain[index].name}{suffix}").write_bytes(compress(plain[index].read_bytes()))
    for path in plain[len(compressors):]:
        (packed / path.name).write_bytes(path.read_bytes())
    assert list(iter_documents(str(packed))) == list(iter_documents(str(corpus)))
    compressed = _prepare(packed, tokenizer_dir, tmp_path / "from-compressed")
    reference = _prepare(corpus, tokenizer_dir, tmp_path / "from-plain")
    assert compressed["splits"] == reference["splits"]
    streams = [{name: data for name, data in _tree(tmp_path / folder / "shards").items() if name.endswith(".bin")}
               for folder in ("from-compressed", "from-plain")]
    assert streams[0] == streams[1]

    damaged = tmp_path / "damaged.jsonl.gz"
    damaged.write_bytes(gzip.compress(plain[0].read_bytes())[:40])
    with pytest.raises(IIETError, match="cannot decompress"):
        _prepare(damaged, tokenizer_dir, tmp_path / "never")


def test_a_large_jsonl_file_is_cut_into_byte_ranges(tmp_path, monkeypatch):
    rng = random.Random(3)
    path = tmp_path / "big.jsonl"
    lines = [json.dumps({"text": f"doc {index}: " + _text(rng, rng.randint(1, 40)) + " ü東"}, ensure_ascii=False)
             for index in range(400)]
    path.write_text("\n".join(lines[:200]) + "\n\n" + "\r\n".join(lines[200:]) + "\n")
    monkeypatch.setattr("iiet.data.sources._MIN_PIECE_BYTES", 997)  # ranges end anywhere, mid-line and mid-character
    pieces = list_pieces(str(path))
    assert len(pieces) > 10 and all(piece.end is not None for piece in pieces)
    assert pieces[0].start == 0 and pieces[-1].end == path.stat().st_size
    assert all(a.end == b.start for a, b in zip(pieces, pieces[1:]))
    ranged = [text for piece in pieces for text in iter_piece(piece)]
    assert ranged == list(iter_documents(str(path))) and len(ranged) == 400
