"""The static KV cache (exact for every scheme, usable by generate()) and ``iiet bench`` (well-formed output).

Speed is never asserted here: only that the benchmark measures every model and reports every field.
"""

from __future__ import annotations

import json

import pytest
import torch

from iiet import IIETForCausalLM
from iiet.bench import generate_fast
from iiet.bench.commands import bench, run_benchmark
from iiet.bench.generation import decode, decode_step, prefill
from iiet.bench.graphs import GraphDecodeStep
from iiet.bench.specs import default_plan, parse_spec
from iiet.cli import main as cli_main
from iiet.errors import IIETError
from iiet.models.cache import SlotCache
from iiet.models.presets import build_config

from .conftest import TINY, tiny_model
from .test_cache import ATOL, _batch


@torch.no_grad()
def test_slot_cache_decoding_with_left_padding_equals_full_forward(scheme):
    model = tiny_model(scheme)
    ids, mask = _batch(pad=(0, 4, 2))
    full = model(ids, attention_mask=mask).logits
    real = mask.bool()
    for prefill, chunk in ((5, 1), (3, 4)):
        cache = SlotCache.for_model(model, ids.shape[0], ids.shape[1] + 2)
        keys = cache.key_buffer.data_ptr()
        logits = [model(ids[:, :prefill], attention_mask=mask[:, :prefill], past_key_values=cache).logits]
        for t in range(prefill, ids.shape[1], chunk):
            end = min(t + chunk, ids.shape[1])
            logits.append(model(ids[:, t:end], attention_mask=mask[:, :end], past_key_values=cache).logits)
        cached = torch.cat(logits, dim=1)
        assert (cached - full)[real].abs().max() <= ATOL, (prefill, chunk)
        assert cache.num_slots == model.num_block_evaluations() and cache.get_seq_length() == ids.shape[1]
        assert cache.key_buffer.data_ptr() == keys  # written in place, never re-allocated


@torch.no_grad()
def test_generate_with_a_slot_cache_matches_generate_and_generate_fast(scheme):
    model = tiny_model(scheme)
    ids, mask = _batch(B=2, T=8, pad=(0, 3))
    new = 5
    reference = model.generate(ids, attention_mask=mask, max_new_tokens=new, do_sample=False, pad_token_id=0)
    cache = SlotCache.for_model(model, 2, ids.shape[1] + new)
    static = model.generate(
        ids, attention_mask=mask, max_new_tokens=new, do_sample=False, pad_token_id=0, past_key_values=cache
    )
    assert torch.equal(static, reference)
    assert cache.get_seq_length() == ids.shape[1] + new - 1  # generate() really used our cache
    assert torch.equal(generate_fast(model, ids, new, attention_mask=mask), reference)


@torch.no_grad()
def test_fixed_shape_cache_mode_equals_full_forward(scheme):
    """The CUDA-graph step's arithmetic (write at a device index, attend over the masked full buffer), run eagerly."""
    model = tiny_model(scheme)
    ids, _ = _batch(pad=(0, 0, 0))
    full = model(ids).logits
    T, S = 5, ids.shape[1] + 3
    cache = SlotCache.for_model(model, ids.shape[0], S)
    logits = [model(ids[:, :T], past_key_values=cache).logits]
    for t in range(T, ids.shape[1]):
        index = torch.tensor([t])
        mask = (torch.arange(S) <= index)[None, None, None, :]
        with cache.writing_at(index):
            out = model(ids[:, t : t + 1], attention_mask=mask, position_ids=index.expand(3, 1), past_key_values=cache)
        cache.advance(1)
        logits.append(out.logits)
    assert (torch.cat(logits, dim=1) - full).abs().max() <= ATOL
    # The graph step object (eager on CPU) gives the same greedy tokens as the plain step.
    caches = [SlotCache.for_model(model, 3, S) for _ in range(2)]
    tokens = [decode(model, prefill(model, ids[:, :T], c), c, 4, step=step)
              for c, step in zip(caches, (GraphDecodeStep(), decode_step))]
    assert torch.equal(tokens[0], tokens[1]) and caches[0].get_seq_length() == T + 4


def test_slot_cache_sizes_and_errors():
    model = tiny_model({"name": "iiet", "iteration_plan": [0, 3, 1]})
    cache = SlotCache.for_model(model, batch_size=2, max_length=6)
    itemsize = 4  # fp32
    per_token = 7 * 2 * TINY["num_key_value_heads"] * model.config.head_dim * itemsize  # 1 + 4 + 2 slots
    assert cache.bytes_per_token() == per_token and cache.nbytes == per_token * 2 * 6
    assert SlotCache(7, 2, 6, num_kv_heads=2, head_dim=16).nbytes == cache.nbytes
    with torch.no_grad(), pytest.raises(IIETError, match="max_length"):
        model(torch.ones(2, 7, dtype=torch.long), past_key_values=cache)
    cache.reset()
    with torch.no_grad(), pytest.raises(IIETError, match="batch size"):
        model(torch.ones(3, 2, dtype=torch.long), past_key_values=cache)
    with pytest.raises(IIETError, match="num_kv_heads"):
        SlotCache(7, 2, 6)


def test_model_specs():
    assert default_plan(4) == [0, 0, 0, 2] and default_plan(24) == [0] * 19 + [3] * 5
    assert parse_spec("lower-bound", "tiny").config.scheme["iteration_plan"] == [0, 0, 0, 0]
    spec = parse_spec("cpu-small:e-iiet=0,1,0,2", "tiny")
    assert spec.config.scheme["iteration_plan"] == [0, 1, 0, 2] and spec.preset == "cpu-small"
    assert parse_spec("iiet=2", "tiny").label == "IIET (r=2)"
    assert parse_spec("adaptive=0.01", "tiny").config.scheme["adaptive_tolerance"] == 0.01
    for bad in ("resnet", "huge:iiet", "iiet=two", "adaptive=tight"):
        with pytest.raises(IIETError):
            parse_spec(bad, "tiny")


def test_draft_model_specs(tmp_path):
    spec = parse_spec("iiet+draft=lower-bound:k=6", "tiny")
    assert (spec.draft, spec.num_draft_tokens, spec.label) == ("lower-bound", 6, "IIET (r=3) + draft lower-bound (k=6)")
    assert spec.config.scheme == parse_spec("iiet", "tiny").config.scheme  # the verifier is the plain model
    assert parse_spec("cpu-small:iiet=2+draft", "tiny").num_draft_tokens == 4  # defaults: lower-bound, k = 4
    assert parse_spec("iiet+draft=0,1,0,0", "tiny").draft == "0,1,0,0"
    checkpoint = tmp_path / "run" / "final"
    IIETForCausalLM(build_config("tiny", {"name": "iiet", "num_iterations": 1})).save_pretrained(checkpoint)
    assert parse_spec(f"{checkpoint}+draft=adaptive:0.01:k=2", "tiny").label == "run + draft adaptive:0.01 (k=2)"
    spec = parse_spec("iiet+draft:k=6:c=0.5", "tiny")
    assert spec.draft_confidence == 0.5 and spec.label == "IIET (r=3) + draft lower-bound (k=6, c=0.5)"
    for bad in ("+draft", "iiet+draft:k=0", "iiet+draft:k=2:c=1.5", "iiet+draft=0,1", "transformer+++draft", "iiet+draft=lower-bound:k=x"):
        with pytest.raises(IIETError):
            parse_spec(bad, "tiny")


MODEL_FIELDS = {"label", "spec", "source", "preset", "scheme", "num_layers", "parameters", "block_evaluations",
                "flops_per_token", "kv_bytes_per_token", "kv_bytes_per_token_analytic", "weights_bytes", "batches",
                "baseline", "ideal_ratio", "flop_ratio"}
BATCH_FIELDS = {"prefill_s", "decode_s", "prefill_tokens_per_s", "decode_tokens_per_s", "decode_ms_per_step",
                "kv_cache_bytes", "activation_peak_bytes", "peak_memory_bytes", "memory_measured", "decode_ratio",
                "decode_ratio_quartiles", "prefill_ratio"}


def test_bench_writes_a_complete_report(tmp_path, capsys):
    checkpoint = tmp_path / "my-iiet"
    IIETForCausalLM(build_config("tiny", {"name": "iiet", "num_iterations": 1})).save_pretrained(checkpoint)
    models = ["transformer++", "pcformer", "iiet", "e-iiet", "lower-bound", "adaptive", str(checkpoint),
              f"{checkpoint}+draft=lower-bound:k=2"]
    bench(models=models, preset="tiny", batch_sizes=[1, 2], prompt_len=4, new_tokens=2, repeats=1,
          device="cpu", cuda_graphs=True, output_dir=str(tmp_path / "out"))  # the graph step runs eagerly on CPU
    out = capsys.readouterr().out
    table = out[out.index("| model | params") :].split("\n\n")[0]  # Table 3, before the targets table
    result = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [m["label"] for m in result["models"]] == [
        "Transformer++", "PCformer", "IIET (r=3)", "E-IIET (sum r=2)", "Lower Bound", "IIET adaptive (tol=0.001)",
        "my-iiet", "my-iiet + draft lower-bound (k=2)"]
    for m in result["models"]:
        assert MODEL_FIELDS <= m.keys(), MODEL_FIELDS - m.keys()
        assert m["baseline"] == "Transformer++"
        assert sorted(m["batches"]) == ["1", "2"]
        for batch in m["batches"].values():
            assert BATCH_FIELDS <= batch.keys(), BATCH_FIELDS - batch.keys()
            assert batch["decode_tokens_per_s"] > 0 and len(batch["decode_s"]) == 1
        assert sum(line.startswith(f"| {m['label']} |") for line in table.splitlines()) == 1  # one Table-3 row
    kinds = {(t["model"], t["target"].split()[0]) for t in result["targets"]}
    assert ("IIET (r=3)", "decode") in kinds and ("Lower Bound", "decode") in kinds
    assert ("E-IIET (sum r=2)", "decode") in kinds and ("PCformer", "KV") in kinds
    assert all(t["passed"] for t in result["targets"] if t["target"].startswith("KV"))
    # The drafted model: its own table (random weights flagged), its acceptance, the same tokens as plain decoding.
    drafted = result["models"][-1]
    assert drafted["plain"] == "my-iiet" and drafted["draft"]["plan"] == [0, 0, 0, 0]
    for batch in drafted["batches"].values():
        spec = batch["speculative"]
        assert spec["identical_tokens"] and 0 <= spec["acceptance_rate"] <= 1 and 1 <= spec["tokens_per_verify"] <= 3
        assert spec["speedup_vs_plain"] > 0 and set(spec["ms_per_round"]) == {"draft", "verify", "other"}
    assert ("my-iiet + draft lower-bound (k=2)", "greedy") in kinds
    assert sum(line.startswith("| my-iiet + draft lower-bound (k=2) | checkpoint |") for line in out.splitlines()) == 2
    assert (tmp_path / "out" / "decode_vs_iterations.png").stat().st_size > 0
    assert (tmp_path / "out" / "results.md").read_text().strip() in out


def test_bench_prompts_from_a_text_file(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    checkpoint = tmp_path / "ckpt"
    IIETForCausalLM(build_config("tiny", {"name": "iiet", "num_iterations": 1})).save_pretrained(checkpoint)
    words = Tokenizer(models.WordLevel({f"w{i}": i for i in range(50)}, unk_token="w0"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=words).save_pretrained(checkpoint)
    text = tmp_path / "text.txt"
    text.write_text("\n".join(" ".join(f"w{(3 * i + j) % 50}" for j in range(5)) for i in range(4)))
    result = run_benchmark([str(checkpoint), f"{checkpoint}+draft:k=2"], "tiny", [3], 6, 2, 1, "cpu", False,
                           prompt_text=str(text))
    assert result["settings"]["prompt_text"] == str(text)
    assert result["models"][1]["batches"][3]["speculative"]["identical_tokens"]
    for bad_text, models in ((tmp_path / "missing.txt", [str(checkpoint)]), (text, ["iiet"])):
        with pytest.raises(IIETError, match="prompt_text"):
            run_benchmark(models, "tiny", [1], 6, 2, 1, "cpu", False, prompt_text=str(bad_text))
    with pytest.raises(IIETError, match="has 20 tokens"):
        run_benchmark([str(checkpoint)], "tiny", [4], 6, 2, 1, "cpu", False, prompt_text=str(text))


def test_bench_sampling_decodes_every_model_by_sampling():
    result = run_benchmark(["iiet=1", "iiet=1+draft:k=2"], "tiny", [2], 4, 3, 1, "cpu", False, temperature=0.8,
                           top_k=20)
    assert result["settings"]["sampling"] == {"temperature": 0.8, "top_k": 20, "top_p": None}
    spec = result["models"][1]["batches"][2]["speculative"]
    assert spec["identical_tokens"] is None and spec["rounds"] > 0  # sampled tokens are not compared
    assert not any(t["target"].startswith("greedy") for t in result["targets"])
    for bad in (dict(temperature=0.0, top_k=5), dict(temperature=-1.0), dict(temperature=1.0, cuda_graphs=True)):
        with pytest.raises(IIETError, match="temperature|sampling"):
            run_benchmark(["iiet=1"], "tiny", [1], 4, 3, 1, "cpu", False, **bad)


def test_bench_cli_smoke(tmp_path, capsys):
    cli_main(["bench", "--models", "[transformer++, iiet=1]", "--preset", "tiny", "--batch_sizes", "[1]",
              "--prompt_len", "3", "--new_tokens", "1", "--repeats", "1", "--device", "cpu",
              "--output_dir", str(tmp_path)])
    assert "| IIET (r=1) |" in capsys.readouterr().out
    assert json.loads((tmp_path / "results.json").read_text())["settings"]["preset"] == "tiny"


def test_bench_help_lists_every_model_spec(capsys):
    from iiet.models.names import ALIASES, MODELS

    names = [*MODELS, *ALIASES]
    for name in names:  # every name parses ...
        parse_spec(name, "tiny")
    with pytest.raises(SystemExit):
        cli_main(["bench", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # ... and --help names it
    missing = [name for name in MODELS if f"``{name}" not in text]
    assert not missing, missing
