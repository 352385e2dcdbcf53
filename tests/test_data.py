"""Tests for iiet.data: sources, tokenizer training, packed token files, and the two data commands."""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

import iiet.cli
from iiet.data import (
    PackedDataset,
    builtin_corpus,
    check_compatible,
    iter_corpus,
    iter_documents,
    load_tokenizer,
    prepare_data,
    train_tokenizer,
)
from iiet.data.shards import is_validation_document
from iiet.errors import IIETError

TINY_VOCAB = 300
SEQ_LEN = 16
VAL_FRACTION = 0.25
WORDS = ("the river flows past a quiet town where old bridges cross water and people walk to the market "
         "every morning while birds sing over fields of wheat near hills").split()


def _make_documents(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    documents = []
    for index in range(count):
        words = [rng.choice(WORDS) for _ in range(rng.randint(3, 40))]
        documents.append(f"Document {index}: " + " ".join(words) + ".")
    return documents


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, list[str]]:
    """A JSONL corpus of 80 short, distinct documents."""
    documents = _make_documents(80)
    path = tmp_path_factory.mktemp("corpus") / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": text, "id": i}) + "\n" for i, text in enumerate(documents)))
    return path, documents


@pytest.fixture(scope="module")
def tokenizer_dir(corpus, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("tokenizer")
    train_tokenizer([str(corpus[0])], output, vocab_size=TINY_VOCAB, min_frequency=2)
    return output


@pytest.fixture(scope="module")
def prepared(corpus, tokenizer_dir, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("prepared")
    prepare_data([str(corpus[0])], str(tokenizer_dir), output, seq_len=SEQ_LEN, val_fraction=VAL_FRACTION, seed=3)
    return output


def _expected_stream(tokenizer, documents: list[str]) -> list[int]:
    stream: list[int] = []
    for text in documents:
        stream += tokenizer.encode(text, add_special_tokens=False) + [tokenizer.eos_token_id]
    return stream


# -- sources ---------------------------------------------------------------------------------------------------------


def test_wikiextractor_markup_and_title_are_stripped(tmp_path):
    path = tmp_path / "wiki_00.txt"
    path.write_text(
        '<doc id="1" url="?curid=1" title="Stub Only">\nStub Only\n\n\n</doc>\n'
        '<doc id="2" url="?curid=2" title="Tom &amp; Jerry">\nTom &amp; Jerry\n\nTom &amp; Jerry is a cartoon.\n'
        "History.\nIt began in 1940.\n</doc>\n"
        '<doc id="3" url="?curid=3" title="Alpha">\nAlpha\n\nAlpha is a letter.\n</doc>\n'
        '<doc id="4" url="?curid=4" title="Jarred Shaw">\nJarred Shaw\n\nJarred Shaw (born 1990) plays.\n</doc>\n'
    )
    documents = list(iter_documents(str(path)))
    # The title-only stub disappears; the title line and markup go (a body that starts with the title stays whole);
    # entities are unescaped.
    assert documents == ["Tom & Jerry is a cartoon.\nHistory.\nIt began in 1940.", "Alpha is a letter.",
                         "Jarred Shaw (born 1990) plays."]


def test_plain_json_glob_and_directory_sources(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.txt").write_text("first file\nsecond line\n")
    (tmp_path / "sub" / "b.jsonl").write_text('{"body": "json line one"}\n\n{"body": "json line two"}\n')
    (tmp_path / "sub" / "c.json").write_text(json.dumps([{"body": "array record"}]))
    (tmp_path / "sub" / "ignored.csv").write_text("not,a,source\n")
    assert list(iter_documents(str(tmp_path / "a.txt"))) == ["first file\nsecond line\n"]
    assert list(iter_documents(str(tmp_path / "sub" / "*.json*"), text_field="body")) == [
        "json line one", "json line two", "array record"  # files in sorted order: b.jsonl, c.json
    ]
    with pytest.raises(IIETError, match="text_field"):  # a.txt is fine, but b.jsonl has no "text" field
        list(iter_documents(str(tmp_path)))
    assert len(list(iter_corpus([str(tmp_path / "sub")], text_field="body", max_documents=2))) == 2


def test_source_errors_name_the_problem(tmp_path):
    with pytest.raises(IIETError, match="does not exist"):
        iter_documents(str(tmp_path / "missing"))
    with pytest.raises(IIETError, match="no files match"):
        iter_documents(str(tmp_path / "*.jsonl"))
    (tmp_path / "blank.txt").write_text("  \n\n")
    with pytest.raises(IIETError, match="no documents"):
        list(iter_documents(str(tmp_path / "blank.txt")))
    with pytest.raises(IIETError, match="no sources"):
        iter_corpus([])


def test_builtin_corpus_is_deterministic_python_source():
    first = [text for _, text in zip(range(20), builtin_corpus())]
    second = [text for _, text in zip(range(20), builtin_corpus())]
    assert first == second
    assert len(first) == 20 and all(text.strip() for text in first)
    assert any("def " in text or "import " in text for text in first)


# -- tokenizer -------------------------------------------------------------------------------------------------------


def test_tokenizer_round_trip_through_auto_tokenizer(tokenizer_dir, corpus):
    reloaded = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    assert len(reloaded) == TINY_VOCAB
    assert [reloaded.bos_token, reloaded.eos_token, reloaded.pad_token, reloaded.unk_token] == [
        "<s>", "</s>", "<pad>", "<unk>"
    ]
    assert [reloaded.bos_token_id, reloaded.eos_token_id, reloaded.pad_token_id, reloaded.unk_token_id] == [0, 1, 2, 3]
    text = "the river flows; Größe — 東京 ü\n\tend"  # unseen characters still encode (byte level)
    ids = reloaded.encode(text, add_special_tokens=False)
    assert reloaded.unk_token_id not in ids
    assert reloaded.decode(ids) == text
    # Trained merges are used: a frequent corpus word is fewer tokens than bytes.
    assert len(reloaded.encode("the river", add_special_tokens=False)) < len("the river")
    assert load_tokenizer(tokenizer_dir).encode(text, add_special_tokens=False) == ids


def test_tokenizer_errors(tmp_path, corpus):
    with pytest.raises(IIETError, match="vocab_size"):
        train_tokenizer([str(corpus[0])], tmp_path / "tok", vocab_size=100)
    with pytest.raises(IIETError, match="does not exist"):
        load_tokenizer(tmp_path / "no-such-tokenizer")
    with pytest.raises(IIETError, match="no tokenizer files"):
        load_tokenizer(tmp_path)


# -- packing ---------------------------------------------------------------------------------------------------------


def test_packed_sequences_reproduce_the_token_stream(prepared, tokenizer_dir, corpus):
    _, documents = corpus
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    train = PackedDataset(prepared, "train")
    assert train.seq_len == SEQ_LEN and train.vocab_size == TINY_VOCAB and train.meta["dtype"] == "uint16"
    assert len(train) > 0
    rows = [train[i] for i in range(len(train))]
    assert all(row.dtype == torch.long and row.shape == (SEQ_LEN,) for row in rows)

    train_documents = [text for text in documents if not is_validation_document(text, 3, VAL_FRACTION)]
    stream = _expected_stream(tokenizer, train_documents)
    packed = torch.cat(rows).tolist()
    assert packed == stream[: len(packed)]  # documents in order, each followed by </s>
    assert len(stream) - len(packed) < SEQ_LEN  # only the tail remainder is dropped
    # Split at </s>: every complete piece decodes back to the next training document.
    pieces = np.split(np.array(packed), np.flatnonzero(np.array(packed) == tokenizer.eos_token_id) + 1)[:-1]
    assert len(pieces) >= len(train_documents) - 2
    assert [tokenizer.decode(piece[:-1].tolist()) for piece in pieces] == train_documents[: len(pieces)]
    assert train.meta["splits"]["train"]["num_documents"] == len(train_documents)


def test_validation_split_is_disjoint_whole_documents(prepared, tokenizer_dir, corpus):
    _, documents = corpus
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    held_out = [text for text in documents if is_validation_document(text, 3, VAL_FRACTION)]
    kept = [text for text in documents if not is_validation_document(text, 3, VAL_FRACTION)]
    assert held_out and kept and not set(held_out) & set(kept)
    val = PackedDataset(prepared, "val")
    assert val.meta["splits"]["val"]["num_documents"] == len(held_out)
    packed = torch.cat([val[i] for i in range(len(val))]).tolist()
    assert len(packed) > 0
    assert packed == _expected_stream(tokenizer, held_out)[: len(packed)]  # val is made of whole documents
    # A different seed holds out different documents.
    assert held_out != [text for text in documents if is_validation_document(text, 4, VAL_FRACTION)]


def test_meta_records_tokenizer_sources_and_counts(prepared, corpus):
    meta = json.loads((prepared / "meta.json").read_text())
    assert meta["vocab_size"] == TINY_VOCAB and meta["seq_len"] == SEQ_LEN
    assert (meta["bos_token_id"], meta["eos_token_id"], meta["pad_token_id"]) == (0, 1, 2)
    assert len(meta["tokenizer_hash"]) == 64 and meta["val_fraction"] == VAL_FRACTION and meta["seed"] == 3
    assert meta["sources"] == [
        {"source": str(corpus[0]), "files": 1, "sha256": hashlib.sha256(corpus[0].read_bytes()).hexdigest()}
    ]
    for split in ("train", "val"):
        info = meta["splits"][split]
        sizes = [(prepared / shard["file"]).stat().st_size for shard in info["shards"]]
        assert sizes == [2 * shard["num_tokens"] for shard in info["shards"]]  # uint16 token streams
        assert info["num_tokens_seen"] == sum(shard["num_tokens"] for shard in info["shards"])
        assert info["num_sequences"] == info["num_tokens_seen"] // SEQ_LEN
        assert info["num_tokens"] == info["num_sequences"] * SEQ_LEN
    assert meta["text"]["replacement_characters"] == 0 and meta["text"]["characters"] > 0
    assert not list(prepared.rglob("*.tmp"))


def test_second_prepare_reuses_and_changed_settings_retokenize(corpus, tokenizer_dir, tmp_path, capsys):
    arguments = dict(sources=[str(corpus[0])], tokenizer=str(tokenizer_dir), output_dir=tmp_path, seq_len=SEQ_LEN)
    first = prepare_data(**arguments)
    written = (tmp_path / "meta.json").stat().st_mtime_ns
    capsys.readouterr()
    assert prepare_data(**arguments) == first
    assert "reusing" in capsys.readouterr().out
    assert (tmp_path / "meta.json").stat().st_mtime_ns == written
    longer = prepare_data(**{**arguments, "seq_len": 2 * SEQ_LEN})
    assert "reusing" not in capsys.readouterr().out
    assert longer["seq_len"] == 2 * SEQ_LEN and PackedDataset(tmp_path).seq_len == 2 * SEQ_LEN


def test_interrupted_prepare_leaves_no_complete_looking_output(corpus, tokenizer_dir, tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        yield from corpus[1][:40]
        raise KeyboardInterrupt

    monkeypatch.setattr("iiet.data.shards.iter_piece", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare_data([str(corpus[0])], str(tokenizer_dir), tmp_path, seq_len=SEQ_LEN)
    assert sorted(str(path.relative_to(tmp_path)) for path in tmp_path.rglob("*")) == ["shards"]
    with pytest.raises(IIETError, match="data-prepare"):
        PackedDataset(tmp_path)


def test_packed_dataset_rejects_truncated_and_missing_data(prepared, tmp_path):
    with pytest.raises(IIETError, match="data-prepare"):
        PackedDataset(tmp_path / "never-prepared")
    copy = tmp_path / "copy"
    shutil.copytree(prepared, copy)
    train_shard, val_shard = (copy / "shards" / "00000.train.bin"), (copy / "shards" / "00000.val.bin")
    with open(train_shard, "r+b") as file:
        file.truncate(train_shard.stat().st_size - 3)
    with pytest.raises(IIETError, match="truncated or corrupt"):
        PackedDataset(copy, "train")
    assert len(PackedDataset(copy, "val")) > 0  # the other split is still fine
    val_shard.unlink()
    with pytest.raises(IIETError, match="missing"):
        PackedDataset(copy, "val")


def test_prepare_rejects_too_little_text(tokenizer_dir, tmp_path):
    (tmp_path / "tiny.txt").write_text("a b c")
    with pytest.raises(IIETError, match="seq_len"):
        prepare_data([str(tmp_path / "tiny.txt")], str(tokenizer_dir), tmp_path / "out", seq_len=512)


def test_check_compatible(prepared):
    meta = PackedDataset(prepared).meta
    check_compatible(meta, vocab_size=TINY_VOCAB, max_position_embeddings=SEQ_LEN)  # exact fit is fine
    with pytest.raises(IIETError, match="vocab_size to at least 300"):
        check_compatible(meta, vocab_size=TINY_VOCAB - 1, max_position_embeddings=SEQ_LEN)
    with pytest.raises(IIETError, match="max_position_embeddings"):
        check_compatible(meta, vocab_size=TINY_VOCAB, max_position_embeddings=SEQ_LEN - 1)


def test_dataloader_batches(prepared):
    loader = torch.utils.data.DataLoader(PackedDataset(prepared), batch_size=4, shuffle=False)
    batch = next(iter(loader))
    assert batch.shape == (4, SEQ_LEN) and batch.dtype == torch.long
    assert int(batch.max()) < TINY_VOCAB
    mapped = np.fromfile(prepared / "shards" / "00000.train.bin", dtype=np.uint16)[: 4 * SEQ_LEN].reshape(4, SEQ_LEN)
    assert torch.equal(batch, torch.from_numpy(mapped.astype(np.int64)))


# -- CLI -------------------------------------------------------------------------------------------------------------


@pytest.fixture
def data_commands_only(monkeypatch):
    """Run the CLI with just the data commands, so this test does not depend on other packages importing."""
    commands = {name: iiet.cli.COMMANDS[name] for name in ("tokenizer-train", "data-prepare")}
    monkeypatch.setattr(iiet.cli, "COMMANDS", commands)


def test_cli_tokenizer_train_and_data_prepare(data_commands_only, tmp_path, capsys):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for index, text in enumerate(_make_documents(40, seed=1)):
        (corpus / f"doc{index:02d}.txt").write_text(text)
    tokenizer, prepared = tmp_path / "tok", tmp_path / "prepared"
    iiet.cli.main(["tokenizer-train", "--sources", f"[{corpus}]", "--output_dir", str(tokenizer),
                   "--vocab_size", "300"])
    assert len(AutoTokenizer.from_pretrained(str(tokenizer))) == 300
    iiet.cli.main(["data-prepare", "--sources", f"[{corpus}]", "--tokenizer", str(tokenizer),
                   "--output_dir", str(prepared), "--seq_len", "8", "--val_fraction", "0.1", "--max_documents", "30"])
    dataset = PackedDataset(prepared)
    assert len(dataset) > 0 and dataset.seq_len == 8
    assert dataset.meta["max_documents"] == 30
    assert sum(split["num_documents"] for split in dataset.meta["splits"].values()) == 30
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        iiet.cli.main(["data-prepare", "--sources", f"[{tmp_path / 'missing'}]", "--tokenizer", str(tokenizer),
                       "--output_dir", str(tmp_path / "x")])
    assert exit_info.value.code == 2
    assert "iiet: error:" in capsys.readouterr().err
