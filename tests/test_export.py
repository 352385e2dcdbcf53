"""Exported checkpoints behave as the HF ecosystem expects: the tokenizer's special tokens, generation that stops at
``</s>``, a tokenizer that truncates at the model's context, and checkpoints that refuse to disagree with it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, LogitsProcessor

from iiet.errors import IIETError
from iiet.models.export import SPECIAL_TOKEN_KEYS, save_pretrained_with_tokenizer, special_token_ids
from iiet.train import DataConfig, ModelConfig, OptimConfig, RunConfig, TrainConfig, Trainer

from .conftest import TINY, tiny_model
from .test_data import _make_documents

SEQ_LEN = 32
VOCAB = 300


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """A 300-token BPE (``<s>`` = 0, ``</s>`` = 1, ``<pad>`` = 2) and 32-token sequences of 200 short documents."""
    from iiet.data import prepare_data, train_tokenizer

    root = tmp_path_factory.mktemp("data")
    source = root / "docs.jsonl"
    source.write_text("".join(json.dumps({"text": text}) + "\n" for text in _make_documents(200)))
    train_tokenizer([str(source)], root / "tokenizer", vocab_size=VOCAB)
    prepare_data([str(source)], str(root / "tokenizer"), root / "packed", seq_len=SEQ_LEN, val_fraction=0.1)
    return root


def run_config(data_dir: Path, output_dir: Path, steps: int = 2, **overrides) -> TrainConfig:
    return TrainConfig(
        model=ModelConfig(preset="tiny", scheme={"name": "euler"}, overrides=overrides),
        data=DataConfig(path=str(data_dir / "packed")),
        optim=OptimConfig(lr=3e-3, batch_tokens=4 * SEQ_LEN, micro_batch_size=4, max_steps=steps),
        run=RunConfig(output_dir=str(output_dir), device="cpu", log_every=1, eval_every=0, eval_batches=1,
                      checkpoint_every=1, progress_bar=False),
    )


def fit(config: TrainConfig) -> dict:
    trainer = Trainer(config)
    try:
        return trainer.fit()
    finally:
        trainer.close()


@pytest.fixture(scope="module")
def final_dir(data_dir, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("run")
    fit(run_config(data_dir, run))
    return run / "final"


class EndOfTextAt(LogitsProcessor):
    """Forbids ``</s>`` (and ``<pad>``) before the sequence holds ``length`` tokens, then allows only ``</s>``."""

    def __init__(self, length: int, eos: int, pad: int):
        self.length, self.eos, self.pad = length, eos, pad

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        scores = scores.clone()
        if input_ids.shape[1] == self.length:
            scores.fill_(-torch.inf)
            scores[:, self.eos] = 0.0
        else:
            scores[:, [self.eos, self.pad]] = -torch.inf
        return scores


def test_exported_model_carries_the_tokenizers_special_tokens_and_context(final_dir):
    model = AutoModelForCausalLM.from_pretrained(final_dir)
    tokenizer = AutoTokenizer.from_pretrained(final_dir)
    ids = special_token_ids(tokenizer)
    assert ids == {"bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 2}  # the trained tokenizer's order
    for config in (model.config, model.generation_config):
        assert {key: getattr(config, key) for key in SPECIAL_TOKEN_KEYS} == ids
    assert tokenizer.model_max_length == model.config.max_position_embeddings
    long_text = " ".join(_make_documents(100))
    assert len(tokenizer(long_text)["input_ids"]) > model.config.max_position_embeddings
    assert len(tokenizer(long_text, truncation=True)["input_ids"]) == model.config.max_position_embeddings


def test_generate_stops_at_a_forced_end_of_text(final_dir):
    model = AutoModelForCausalLM.from_pretrained(final_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(final_dir)
    prompt = tokenizer("the river flows past", return_tensors="pt")
    prompt_length = prompt["input_ids"].shape[1]
    forced = EndOfTextAt(prompt_length + 3, tokenizer.eos_token_id, tokenizer.pad_token_id)
    for options in ({"do_sample": False}, {"do_sample": True, "top_k": 0}, {"num_beams": 2, "early_stopping": True}):
        output = model.generate(**prompt, max_new_tokens=20, logits_processor=[forced], **options)
        assert output.shape[1] == prompt_length + 4, f"generation ran past </s> with {options}"
        assert output[0, -1].item() == tokenizer.eos_token_id
    # The pipeline reads the same generation config.
    from transformers import pipeline

    generator = pipeline("text-generation", model=model, tokenizer=tokenizer)
    (result,) = generator("the river flows past", max_new_tokens=20, logits_processor=[forced], return_tensors=True)
    assert len(result["generated_token_ids"]) == prompt_length + 4


def test_overrides_naming_other_special_tokens_are_refused_before_any_work(data_dir, tmp_path):
    from iiet.cli import main

    with pytest.raises(IIETError, match="eos_token_id=2 but the tokenizer has 1"):
        Trainer(run_config(data_dir, tmp_path / "a", eos_token_id=2))
    assert not (tmp_path / "a" / "checkpoints").exists()
    recipe = tmp_path / "run.yaml"
    recipe.write_text(json.dumps(run_config(data_dir, tmp_path / "b").to_dict()))
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--config", str(recipe), "--model.overrides", "{bos_token_id: 1}"])
    assert exit_info.value.code == 2
    assert not (tmp_path / "b" / "checkpoints").exists()


def test_saving_a_model_whose_ids_disagree_with_its_tokenizer_is_refused(data_dir, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(data_dir / "tokenizer")
    model = tiny_model("euler", vocab_size=VOCAB, bos_token_id=1, eos_token_id=2, pad_token_id=None)  # LLaMA's ids
    with pytest.raises(IIETError, match=r"config\.eos_token_id=2 \(tokenizer: 1\).*would not stop"):
        save_pretrained_with_tokenizer(model, tmp_path / "out", tokenizer)
    assert not (tmp_path / "out").exists()


def test_resuming_a_checkpoint_written_with_llamas_default_ids(data_dir, tmp_path):
    # Checkpoints written before the ids came from the tokenizer recorded LLaMA's bos=1, eos=2, pad=None.
    fit(run_config(data_dir, tmp_path, steps=1))
    state_file = tmp_path / "checkpoints" / "step_00000001" / "trainer_state.json"
    state = json.loads(state_file.read_text())
    state["model_config"].update(bos_token_id=1, eos_token_id=2, pad_token_id=None)
    state_file.write_text(json.dumps(state))
    summary = fit(run_config(data_dir, tmp_path, steps=2))
    assert summary["step"] == 2
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "final").generation_config.eos_token_id == 1


def test_upcycle_takes_the_special_tokens_of_the_llamas_tokenizer(data_dir, tmp_path):
    from iiet.models.convert import upcycle

    torch.manual_seed(0)
    llama = LlamaForCausalLM(LlamaConfig(**{**TINY, "vocab_size": VOCAB}))  # LLaMA's default ids: bos=1, eos=2
    llama.save_pretrained(tmp_path / "llama")
    AutoTokenizer.from_pretrained(data_dir / "tokenizer").save_pretrained(tmp_path / "llama")
    upcycle(str(tmp_path / "llama"), str(tmp_path / "iiet"), "iiet")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "iiet")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "iiet")
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id == 1
    assert tokenizer.model_max_length == TINY["max_position_embeddings"]


# -- iiet export --to llama -----------------------------------------------------------------------------------------

# Runs in a fresh interpreter that never imports iiet: what vLLM, llama.cpp's converter or a plain script would do.
_PLAIN_TRANSFORMERS = """
import json, sys
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM
path, ids = sys.argv[1], json.loads(sys.argv[2])
model = LlamaForCausalLM.from_pretrained(path).eval()
auto = AutoModelForCausalLM.from_pretrained(path)
tokenizer = AutoTokenizer.from_pretrained(path)
with torch.no_grad():
    logits = model(torch.tensor([ids])).logits[0].tolist()
print(json.dumps({"logits": logits, "auto_class": type(auto).__name__, "iiet_imported": "iiet" in sys.modules,
                  "eos": [tokenizer.eos_token_id, model.generation_config.eos_token_id, model.config.eos_token_id],
                  "model_max_length": tokenizer.model_max_length}))
"""


def test_llama_export_loads_in_plain_transformers_with_the_same_logits(final_dir, tmp_path, capsys):
    import subprocess
    import sys

    from iiet.cli import main

    main(["export", "--model", str(final_dir), "--output_dir", str(tmp_path / "llama"), "--to", "llama"])
    assert "max |logit difference|" in capsys.readouterr().out
    config = json.loads((tmp_path / "llama" / "config.json").read_text())
    assert config["model_type"] == "llama" and "auto_map" not in config and "scheme" not in config
    assert not list((tmp_path / "llama").glob("*.py"))  # no model code travels: none is needed

    ids = [5, 17, 42, 99, 3, 250, 7, 1, 64, 128]
    result = subprocess.run([sys.executable, "-c", _PLAIN_TRANSFORMERS, str(tmp_path / "llama"), json.dumps(ids)],
                            capture_output=True, text=True, timeout=300, check=True)
    plain = json.loads(result.stdout.strip().splitlines()[-1])
    assert plain["iiet_imported"] is False and plain["auto_class"] == "LlamaForCausalLM"
    assert plain["eos"] == [1, 1, 1] and plain["model_max_length"] == config["max_position_embeddings"]
    model = AutoModelForCausalLM.from_pretrained(final_dir).eval()
    with torch.no_grad():
        expected = model(torch.tensor([ids])).logits[0]
    torch.testing.assert_close(torch.tensor(plain["logits"]), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("scheme, reason", [
    ({"name": "iiet", "num_iterations": 2}, "implicit-Euler corrections"),
    ({"name": "iiet", "iteration_plan": [0, 3, 1]}, r"\(E-IIET .*corrections \(per layer: \[0, 3, 1\]\)"),
    ({"name": "iiet", "iteration_plan": [0, 0, 0]}, r"\(Lower Bound\) .*learned combination of all earlier layers"),
    ({"name": "dlcl"}, "learned combination of all earlier layers"),
    ({"name": "pcformer"}, "Runge-Kutta predictor"),
    ({"name": "weight_shared", "repeats": 3}, "applied 3 times"),
    ({"name": "euler", "multiplier": 8.0}, "embedding_multiplier=8.0"),
], ids=["iiet", "e-iiet", "lower-bound", "dlcl", "pcformer", "trans-ws", "euler-scaled-embeddings"])
def test_llama_export_refuses_what_a_llama_cannot_compute(tmp_path, capsys, scheme, reason):
    from iiet.cli import main

    scheme = dict(scheme)
    overrides = {"embedding_multiplier": scheme.pop("multiplier")} if "multiplier" in scheme else {}
    tiny_model(scheme, **overrides).save_pretrained(tmp_path / "model")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "--model", str(tmp_path / "model"), "--output_dir", str(tmp_path / "out"), "--to", "llama"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and error.startswith("iiet: error: ") and "cannot be exported to LLaMA" in error
    assert re.search(reason, error), error
    assert not (tmp_path / "out").exists()


def test_a_single_repeat_of_weight_sharing_is_explicit_euler_and_exports(tmp_path):
    from iiet.models.export import max_logit_difference, to_llama

    model = tiny_model({"name": "weight_shared", "repeats": 1})
    assert max_logit_difference(model, to_llama(model), TINY["vocab_size"]) < 1e-5


def test_llama_export_of_an_older_checkpoint_takes_its_tokenizers_ids(data_dir, tmp_path, capsys):
    from iiet.models.export import export

    model = tiny_model("euler", vocab_size=VOCAB)  # LLaMA's bos=1, eos=2 (conftest's pad=0): saved before the fix
    model.save_pretrained(tmp_path / "old")
    AutoTokenizer.from_pretrained(data_dir / "tokenizer").save_pretrained(tmp_path / "old")
    export(str(tmp_path / "old"), str(tmp_path / "llama"))
    assert "taking the tokenizer's special-token ids" in capsys.readouterr().out
    exported = LlamaForCausalLM.from_pretrained(tmp_path / "llama")
    for config in (exported.config, exported.generation_config):
        assert (config.bos_token_id, config.eos_token_id, config.pad_token_id) == (0, 1, 2)
