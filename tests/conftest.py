"""Shared fixtures: tiny configs for every scheme, and a tiny English-like corpus (CPU, fp32, seconds).

Nothing here reads outside the repository: a clean clone runs every non-GPU test.
"""

from __future__ import annotations

import contextlib
import json
import logging
import pathlib
import random

import pytest
import torch

import iiet  # noqa: F401  (registers the HF Auto classes)
from iiet import IIETConfig, IIETForCausalLM

TINY = dict(
    vocab_size=101,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,  # grouped-query attention on purpose
    max_position_embeddings=128,
    tie_word_embeddings=True,
    pad_token_id=0,
)

# Every scheme and reading the model family offers, including an uneven E-IIET plan and the Lower Bound.
ALL_SCHEMES = {
    "euler": {"name": "euler"},
    "dlcl": {"name": "dlcl"},
    "dlcl-normalized": {"name": "dlcl", "history": "normalized"},
    "iiet-r2": {"name": "iiet", "num_iterations": 2},
    "iiet-r2-normalized": {"name": "iiet", "num_iterations": 2, "history": "normalized"},
    "e-iiet": {"name": "iiet", "iteration_plan": [0, 3, 1]},
    "lower-bound": {"name": "iiet", "iteration_plan": [0, 0, 0]},
    "pcformer": {"name": "pcformer", "order": 2},
    "pcformer-rk4-per-layer": {"name": "pcformer", "order": 4, "coefficient": "per_layer"},
    "pcformer-normalized": {"name": "pcformer", "history": "normalized"},
    "pcformer-fl": {"name": "pcformer", "order_plan": [0, 2, 4]},  # explicit first layer, orders per layer
    "iiet-anderson": {"name": "iiet", "num_iterations": 3, "corrector": {"name": "anderson", "window": 2}},
    "weight-shared": {"name": "weight_shared", "repeats": 3},
}


def tiny_model(scheme, seed: int = 0, perturb: bool = True, **overrides) -> IIETForCausalLM:
    """A tiny fp32 model in eval mode; ``perturb`` moves the scheme's own parameters off their initial values so
    that tests also cover trained combination weights, not only the identity start."""
    torch.manual_seed(seed)
    model = IIETForCausalLM(IIETConfig(**{**TINY, **overrides}, scheme=scheme)).eval()
    if perturb:
        with torch.no_grad():
            for p in model.model.scheme.parameters():
                p.add_(0.1 * torch.randn_like(p))
    return model


# A small grammar: subject (adjective) verb object (clause). Learnable structure for a tiny model, no download.
_WORDS = {
    "subject": "the river|a quiet town|the old bridge|people|the market|a small boat|the teacher|children|the city|"
               "a farmer|the train|the museum|an engineer|the garden|birds".split("|"),
    "adjective": "green|old|busy|cold|bright|narrow|famous|wooden|early|distant|empty|tall".split("|"),
    "verb": "crosses|follows|opens|builds|watches|carries|reaches|visits|paints|remembers|finds|leaves".split("|"),
    "object": "the water|a letter|the road|its history|the hills|a new school|the north gate|fresh bread|"
              "the last light|a long wall|the harbour|two stones".split("|"),
    "clause": "before the rain|in the morning|after the war|every summer|near the station|for many years|"
              "without a sound|at the end of the day".split("|"),
}


def english_like_documents(count: int, seed: int = 0) -> list[str]:
    """``count`` documents of 3-12 simple sentences each, drawn from ``_WORDS`` with a seeded generator."""
    rng = random.Random(seed)

    def sentence() -> str:
        words = [rng.choice(_WORDS["subject"])]
        if rng.random() < 0.4:
            words.insert(0, "one day")
        words.append(rng.choice(_WORDS["verb"]))
        obj = rng.choice(_WORDS["object"])
        if rng.random() < 0.5:
            first, _, rest = obj.partition(" ")
            obj = f"{first} {rng.choice(_WORDS['adjective'])} {rest}"
        words.append(obj)
        if rng.random() < 0.5:
            words.append(rng.choice(_WORDS["clause"]))
        text = " ".join(words)
        return text[0].upper() + text[1:] + "."

    return [" ".join(sentence() for _ in range(rng.randint(3, 12))) for _ in range(count)]


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory) -> pathlib.Path:
    """~100 KB of English-like text, one JSON document per line (``{"text": ...}``)."""
    path = tmp_path_factory.mktemp("corpus") / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": text}) + "\n" for text in english_like_documents(250)))
    return path


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Tiny models gain nothing from a second thread, and OpenMP threads spin badly on a shared CPU (~15x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(params=list(ALL_SCHEMES), ids=list(ALL_SCHEMES))
def scheme(request):
    return ALL_SCHEMES[request.param]


@contextlib.contextmanager
def logged_messages(logger_name: str):
    """The list of messages logged to ``logger_name`` (or its children) while the block runs."""
    messages: list[str] = []

    class Recorder(logging.Handler):
        def emit(self, record):
            messages.append(record.getMessage())

    recorder, logger = Recorder(), logging.getLogger(logger_name)
    logger.addHandler(recorder)
    try:
        yield messages
    finally:
        logger.removeHandler(recorder)
