"""Held-out evaluation: token perplexity and bits per byte of text the model never trained on, per document.

A text is scored in non-overlapping windows of ``seq_len`` tokens (each window predicts ``seq_len`` tokens from
its own prefix only, no context carried across windows). Bits per byte divides the total negative log-likelihood
(nats / ln 2) by the UTF-8 bytes of the scored tokens, so it compares models with different tokenizers; token
perplexity compares only models that share one.

``text_perplexity`` scores one file as one stream (WikiText-2 style); ``document_bits_per_byte`` scores each document
of a corpus on its own and reports the spread over documents (median and quartiles), so that a difference between
two models can be read against how much documents vary.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Iterable

import torch

from iiet.data.packed import PackedDataset
from iiet.data.sources import iter_documents
from iiet.models.loading import load_model, load_tokenizer

# Documents shorter than this many tokens are skipped in the per-document spread: one window of a few tokens
# measures the first-token guess, not the model.
MIN_DOCUMENT_TOKENS = 32


def _score_ids(model, ids: torch.Tensor, seq_len: int, device: str, batch_size: int) -> tuple[float, int, int, float]:
    """Summed NLL (nats), scored-token count, the index past the last scored token, over whole windows, and the
    block evaluations per scored token the model ran (with adaptive corrections, the ones its tokens took)."""
    windows = (len(ids) - 1) // seq_len
    if windows == 0:  # shorter than one window: score what there is as one window
        seq_len, windows = len(ids) - 1, 1 if len(ids) > 1 else 0
    if windows == 0:
        return 0.0, 0, 0, float(model.config.num_block_evaluations)
    usable = windows * seq_len
    inputs = ids[:usable].view(windows, seq_len)
    targets = ids[1 : usable + 1].view(windows, seq_len)
    nll, corrections = 0.0, None
    with torch.no_grad():
        for x, y in zip(inputs.split(batch_size), targets.split(batch_size)):
            out = model(x.to(device), use_cache=False)
            logits = out.logits.float()
            nll += torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten().to(device), reduction="sum").item()
            if getattr(out, "corrections", None) is not None:  # (L, B, T) corrections taken: adaptive only
                corrections = (corrections or 0.0) + out.corrections.sum().item()
    count = targets.numel()
    # Teacher-forced adaptive decisions are those of decoding (docs/adaptive.md): this is what generation runs.
    evaluations = (model.config.num_block_evaluations if corrections is None
                   else model.config.num_hidden_layers + corrections / count)
    return nll, count, usable + 1, evaluations


def _load(model_dir: str | Path, device: str):
    return load_model(model_dir, device), load_tokenizer(model_dir)


def _score_tokens(model, tokenizer, ids: list[int], seq_len: int, device: str, batch_size: int) -> dict[str, float]:
    ids = torch.tensor(ids, dtype=torch.long)
    nll, count, end, evaluations = _score_ids(model, ids, seq_len, device, batch_size)
    scored_bytes = len(tokenizer.decode(ids[1:end]).encode("utf-8")) if count else 0
    return {"tokens": count, "nll": nll, "bytes": scored_bytes, "block_evaluations": evaluations}


def _summary(nll: float, tokens: int, scored_bytes: int) -> dict[str, float]:
    return {"tokens": tokens, "token_perplexity": math.exp(nll / tokens), "bits_per_byte": nll / math.log(2) / scored_bytes}


def text_perplexity(
    model_dir: str | Path, text_file: str | Path, seq_len: int, device: str = "cpu", batch_size: int = 16
) -> dict[str, float]:
    """Token perplexity and bits per byte of a whole text file, in non-overlapping windows of ``seq_len`` tokens."""
    model, tokenizer = _load(model_dir, device)
    ids = tokenizer(Path(text_file).read_text(encoding="utf-8"), verbose=False)["input_ids"]
    score = _score_tokens(model, tokenizer, ids, seq_len, device, batch_size)
    return _summary(score["nll"], score["tokens"], score["bytes"])


def document_bits_per_byte(
    model_dir: str | Path,
    source: str | Iterable[str],
    seq_len: int,
    max_documents: int = 200,
    max_tokens_per_document: int = 2048,
    device: str = "cpu",
    batch_size: int = 16,
) -> dict:
    """Bits per byte of each document of a corpus, and their spread.

    Args:
        model_dir: a saved checkpoint (with its tokenizer).
        source: a source string as ``iiet data-prepare`` takes it (``builtin``, a file, directory or glob, ``hf:...``)
            or an iterable of document strings.
        seq_len: scoring window (the training sequence length).
        max_documents: documents scored, the first ones in the source's fixed order.
        max_tokens_per_document: each document is cut to this many tokens, so long documents do not dominate.

    Returns:
        ``{"documents": n, "bits_per_byte": aggregate, "token_perplexity": aggregate, "median", "q1", "q3",
        "per_document": [bpb, ...]}``; the aggregate pools every scored token and byte.
    """
    model, tokenizer = _load(model_dir, device)
    documents = iter_documents(source) if isinstance(source, str) else iter(source)
    per_document, nll, tokens, scored_bytes = [], 0.0, 0, 0
    for text in documents:
        if len(per_document) >= max_documents:
            break
        ids = tokenizer(text, verbose=False)["input_ids"][: max_tokens_per_document + 1]
        if len(ids) <= MIN_DOCUMENT_TOKENS:
            continue
        score = _score_tokens(model, tokenizer, ids, seq_len, device, batch_size)
        if not score["bytes"]:
            continue
        per_document.append(score["nll"] / math.log(2) / score["bytes"])
        nll, tokens, scored_bytes = nll + score["nll"], tokens + score["tokens"], scored_bytes + score["bytes"]
    if not per_document:
        raise ValueError(f"no document of {source!r} has more than {MIN_DOCUMENT_TOKENS} tokens")
    quartiles = statistics.quantiles(per_document, n=4) if len(per_document) > 1 else [per_document[0]] * 3
    return {
        "documents": len(per_document),
        **_summary(nll, tokens, scored_bytes),
        "median": quartiles[1],
        "q1": quartiles[0],
        "q3": quartiles[2],
        "per_document": per_document,
    }


def held_out_ids(data_dir: str | Path, max_tokens: int) -> list[int]:
    """The first ``max_tokens`` tokens of a prepared data folder's own held-out (``val``) split, as one stream."""
    val = PackedDataset(data_dir, "val")
    count = min(len(val), math.ceil(max_tokens / val.seq_len))
    return torch.cat([val[i] for i in range(count)])[:max_tokens].tolist() if count else []


def held_out_split(model_dir: str | Path, data_dir: str | Path, max_tokens: int, seq_len: int, device: str = "cpu",
                   batch_size: int = 16) -> dict[str, float]:
    """Loss, token perplexity, bits per byte and block evaluations per token on the first ``max_tokens`` tokens of the
    training data's held-out split (whole documents the model never trained on, same domain)."""
    model, tokenizer = _load(model_dir, device)
    score = _score_tokens(model, tokenizer, held_out_ids(data_dir, max_tokens), seq_len, device, batch_size)
    if not score["tokens"]:
        raise ValueError(f"the held-out split of {data_dir} has no tokens to score")
    return {**_summary(score["nll"], score["tokens"], score["bytes"]), "loss": score["nll"] / score["tokens"],
            "block_evaluations": score["block_evaluations"]}
