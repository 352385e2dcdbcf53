"""Held-out scoring: bits per byte of whole files and per document (iiet.study.heldout)."""

from __future__ import annotations

import math
import random

import pytest
import torch

from iiet.data.tokenizer import train_tokenizer
from iiet.study.heldout import MIN_DOCUMENT_TOKENS, document_bits_per_byte, text_perplexity

from .conftest import tiny_model

WORDS = "a quiet river flows past the old town where bridges cross water and birds sing over wheat".split()


def _documents(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(60, 200))) + "." for _ in range(count)]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny model whose LM head is zero: every token has probability 1 / V, so its NLL is exactly ln V."""
    root = tmp_path_factory.mktemp("heldout")
    corpus = root / "corpus.txt"
    corpus.write_text("\n\n".join(_documents(40, seed=1)))
    tokenizer = train_tokenizer([str(corpus)], root / "tok", vocab_size=300, min_frequency=2)
    model = tiny_model({"name": "iiet", "iteration_plan": [0, 2, 1]}, vocab_size=len(tokenizer),
                       tie_word_embeddings=False)
    with torch.no_grad():
        model.lm_head.weight.zero_()
    model.save_pretrained(root / "ckpt")
    tokenizer.save_pretrained(root / "ckpt")
    return root / "ckpt", tokenizer


def test_uniform_model_scores_log_vocab_per_token(checkpoint, tmp_path):
    ckpt, tokenizer = checkpoint
    text = _documents(1, seed=7)[0]
    path = tmp_path / "text.txt"
    path.write_text(text)
    seq_len = 16
    result = text_perplexity(ckpt, path, seq_len=seq_len)
    ids = tokenizer(text)["input_ids"]
    windows = (len(ids) - 1) // seq_len
    assert result["tokens"] == windows * seq_len
    assert result["token_perplexity"] == pytest.approx(len(tokenizer), rel=1e-4)
    scored_bytes = len(tokenizer.decode(ids[1 : windows * seq_len + 1]).encode())
    assert result["bits_per_byte"] == pytest.approx(result["tokens"] * math.log2(len(tokenizer)) / scored_bytes, rel=1e-4)


def test_per_document_spread_skips_short_documents_and_caps_counts(checkpoint):
    ckpt, tokenizer = checkpoint
    documents = ["too short."] + _documents(6, seed=3)
    result = document_bits_per_byte(ckpt, documents, seq_len=16, max_documents=4, max_tokens_per_document=64)
    assert result["documents"] == 4  # the short one skipped, then capped at 4
    assert len(result["per_document"]) == 4
    assert result["q1"] <= result["median"] <= result["q3"]
    assert min(result["per_document"]) <= result["bits_per_byte"] <= max(result["per_document"])
    # With every token at 1/V, a document's bpb is log2(V) tokens / bytes: documents differ only by bytes per token.
    for doc, bpb in zip(documents[1:5], result["per_document"]):
        ids = tokenizer(doc)["input_ids"][:65]
        assert len(ids) > MIN_DOCUMENT_TOKENS
        tokens = (len(ids) - 1) // 16 * 16
        scored_bytes = len(tokenizer.decode(ids[1 : tokens + 1]).encode())
        assert bpb == pytest.approx(tokens * math.log2(len(tokenizer)) / scored_bytes, rel=1e-4)


def test_no_scorable_document_is_an_error(checkpoint):
    with pytest.raises(ValueError, match="no document"):
        document_bits_per_byte(checkpoint[0], ["tiny."], seq_len=16)
