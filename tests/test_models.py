"""The model family: LLaMA parity, exact reductions between schemes, gradients, save/load, presets, bad configs."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from iiet import IIETConfig, IIETForCausalLM
from iiet.errors import IIETError
from iiet.models.convert import upcycle, upcycle_llama
from iiet.models.costs import parameter_count
from iiet.models.presets import build_config

from .conftest import TINY, logged_messages, tiny_model


def _llama(seed=0):
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(**TINY)).eval()


def _ids(B=2, T=10, seed=1):
    return torch.randint(1, TINY["vocab_size"], (B, T), generator=torch.Generator().manual_seed(seed))


def test_euler_equals_hf_llama_on_the_same_weights():
    llama = _llama()
    model = IIETForCausalLM(IIETConfig(**TINY)).eval()
    model.load_state_dict(llama.state_dict(), strict=True)  # LLaMA names, unchanged
    x = _ids()
    torch.testing.assert_close(model(x).logits, llama(x).logits, atol=1e-5, rtol=0)


def test_upcycled_llama_with_zero_corrections_equals_the_llama_and_corrections_change_it():
    llama = _llama()
    x = _ids()
    exact = upcycle_llama(llama, {"name": "iiet", "num_iterations": 0}).eval()
    torch.testing.assert_close(exact(x).logits, llama(x).logits, atol=1e-5, rtol=0)
    iterated = upcycle_llama(llama, {"name": "iiet", "num_iterations": 2}).eval()
    assert (iterated(x).logits - llama(x).logits).abs().max() > 1e-3


def test_upcycle_command_writes_a_loadable_checkpoint(tmp_path, capsys):
    from iiet.cli import main

    _llama().save_pretrained(tmp_path / "llama")
    main(["upcycle", "--llama_dir", str(tmp_path / "llama"), "--output_dir", str(tmp_path / "iiet"),
          "--scheme", "{name: iiet, num_iterations: 1}"])
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "iiet")
    assert isinstance(model, IIETForCausalLM) and model.num_block_evaluations() == 2 * TINY["num_hidden_layers"]
    assert f"wrote {tmp_path / 'iiet'}" in capsys.readouterr().out
    with pytest.raises(IIETError, match="not empty"):
        upcycle(str(tmp_path / "llama"), str(tmp_path / "iiet"), "iiet")


@pytest.mark.parametrize("reading", ["residual", "normalized"])
def test_iiet_with_zero_iterations_equals_dlcl(reading):
    x = _ids()
    dlcl = tiny_model({"name": "dlcl", "history": reading})
    iiet = tiny_model({"name": "iiet", "num_iterations": 0, "history": reading}, perturb=False)
    iiet.load_state_dict(dlcl.state_dict(), strict=True)
    torch.testing.assert_close(iiet(x).logits, dlcl(x).logits, atol=0, rtol=0)


def test_dlcl_with_residual_initialisation_equals_euler():
    x = _ids()
    euler = tiny_model("euler", perturb=False)
    dlcl = tiny_model("dlcl", perturb=False)  # all-ones lower-triangular weights
    dlcl.load_state_dict(euler.state_dict(), strict=False)
    torch.testing.assert_close(dlcl(x).logits, euler(x).logits, atol=1e-5, rtol=0)


def test_weight_sharing_with_one_repeat_equals_euler():
    x = _ids()
    euler = tiny_model("euler", perturb=False)
    ws = tiny_model({"name": "weight_shared", "repeats": 1}, perturb=False)
    ws.load_state_dict(euler.state_dict(), strict=True)
    torch.testing.assert_close(ws(x).logits, euler(x).logits, atol=0, rtol=0)


def test_iiet_corrections_are_implicit_euler_fixed_point_iterations():
    """Residual reading at initialisation: y^i = x + F(y^{i-1}) with a fixed base x (Eq. 9), not y <- y + F(y)."""
    model = tiny_model({"name": "iiet", "num_iterations": 3}, perturb=False)
    x = _ids()
    out = model(x, output_iterations=True)
    block0 = model.model.layers[0]
    states = out.iterations[0]  # [input, y^0, y^1, y^2, y^3]
    assert len(states) == 5
    # Re-run block 0 by hand with a causal context: y^i - x must equal F(y^{i-1}).
    from iiet.models.layers import AttentionContext, rotary_cos_sin

    pos = torch.arange(x.shape[1])[None].expand(x.shape[0], -1)
    cos, sin = rotary_cos_sin(pos, model.config.head_dim, 10000.0, torch.float32)
    ctx = AttentionContext(cos, sin, None, True, None)
    base = states[0]
    for i in range(1, 4):
        expected = base + block0(states[i], ctx, 0)
        torch.testing.assert_close(states[i + 1], expected, atol=1e-5, rtol=0)


def test_iterations_and_hidden_states_are_returned_on_request(scheme):
    model = tiny_model(scheme)
    out = model(_ids(), output_iterations=True, output_hidden_states=True)
    passes = model.config.passes_per_layer
    assert len(out.iterations) == TINY["num_hidden_layers"]
    assert len(out.hidden_states) == TINY["num_hidden_layers"] + 1
    for n, states in enumerate(out.iterations):
        if scheme["name"] in ("iiet", "dlcl", "weight_shared", "euler"):
            assert len(states) == passes[n] + 1  # input + one state per block evaluation
        torch.testing.assert_close(out.hidden_states[n + 1], states[-1])


def test_gradients_are_finite_and_reach_every_parameter(scheme):
    model = tiny_model(scheme).train()
    x = _ids()
    model(x, labels=x).loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"no gradient reaches {name}"
        assert torch.isfinite(p.grad).all(), name
        if name.endswith("history.weights"):
            # only the lower triangle is used; it must all receive gradient
            assert (torch.tril(p.grad) != 0).sum() == torch.tril(torch.ones_like(p)).sum(), name
        else:
            assert p.grad.abs().sum() > 0, f"zero gradient at {name}"


def test_gradient_checkpointing_gives_the_same_gradients():
    x = _ids()
    grads = []
    for checkpointing in (False, True):
        model = tiny_model({"name": "iiet", "num_iterations": 2}).train()
        if checkpointing:
            model.gradient_checkpointing_enable()
        model(x, labels=x).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-6, rtol=1e-5)


def test_save_and_load_through_auto_classes(tmp_path, scheme):
    model = tiny_model(scheme)
    model.save_pretrained(tmp_path)
    config = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(config, IIETConfig) and config.scheme_config == model.config.scheme_config
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, IIETForCausalLM)
    x = _ids()
    torch.testing.assert_close(loaded(x).logits, model(x).logits, atol=0, rtol=0)
    assert (tmp_path / "model.safetensors").is_file()


@pytest.mark.parametrize(
    "scheme, message",
    [
        ({"name": "iiet", "num_iterations": -1}, "num_iterations"),
        ({"name": "iiet", "iteration_plan": [1, 2]}, "3 layers"),
        ({"name": "iiet", "iteration_plan": [1, -2, 0]}, "integers >= 0"),
        ({"name": "rk9"}, "unknown scheme"),
        ({"name": "iiet", "num_iteration": 2}, "no parameter"),
        ({"name": "dlcl", "history": "layernorm"}, "history"),
        ({"name": "pcformer", "order": 3}, "order"),
        ({"name": "weight_shared", "repeats": 0}, "repeats"),
        ({"name": "iiet", "adaptive_tolerance": -0.1}, "adaptive_tolerance"),
    ],
)
def test_bad_scheme_values_fail_at_construction(scheme, message):
    with pytest.raises(IIETError, match=message):
        IIETConfig(**TINY, scheme=scheme)


def test_bad_preset_and_key_are_clear_errors():
    with pytest.raises(IIETError, match="unknown preset"):
        build_config("13B")
    with pytest.raises(IIETError, match="unknown model config key"):
        build_config("tiny", hiden_size=5)


@pytest.mark.parametrize("preset, expected", [("55M", 55e6), ("340M", 340e6), ("740M", 740e6)])
def test_paper_presets_have_their_named_size(preset, expected):
    for scheme in ("euler", {"name": "iiet", "num_iterations": 3}, "pcformer"):
        count = parameter_count(build_config(preset, scheme))
        assert abs(count - expected) / expected < 0.10, (preset, scheme, count)


def test_checkpoints_load_without_iiet_through_trust_remote_code(tmp_path):
    """The plain lm_eval CLI path: a checkpoint carries auto_map + the model code."""
    import json
    import subprocess
    import sys

    model = tiny_model({"name": "iiet", "iteration_plan": [2, 0, 1]})
    model.save_pretrained(tmp_path)
    assert "AutoModelForCausalLM" in json.loads((tmp_path / "config.json").read_text())["auto_map"]
    ids = [[5, 7, 11, 13]]
    script = (
        "import json, sys, torch; from transformers import AutoModelForCausalLM;"
        f"m = AutoModelForCausalLM.from_pretrained({str(tmp_path)!r}, trust_remote_code=True).eval();"
        "assert 'iiet' not in sys.modules, 'loaded through the installed package, not the checkpoint code';"
        f"print(json.dumps(m(torch.tensor({ids})).logits.tolist()))"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=tmp_path)
    remote = torch.tensor(json.loads(out.stdout.strip().splitlines()[-1]))
    torch.testing.assert_close(remote, model(torch.tensor(ids)).logits, atol=1e-6, rtol=0)


def test_buffered_history_without_autograd_equals_the_autograd_path(scheme):
    """Inference combines the history in one matrix-vector product; training term by term. Same numbers."""
    model = tiny_model(scheme)
    x = _ids()
    with torch.no_grad():
        buffered = model(x, output_iterations=True)
    listed = model(x, output_iterations=True)
    torch.testing.assert_close(buffered.logits, listed.logits.detach(), atol=1e-5, rtol=0)
    for a, b in zip(buffered.iterations, listed.iterations):
        for u, v in zip(a, b):
            torch.testing.assert_close(u, v.detach(), atol=1e-5, rtol=0)


def _output_projection(name: str) -> bool:
    return name.endswith(("o_proj.weight", "down_proj.weight"))


@pytest.mark.parametrize("scale", [0.0, 0.1])
def test_residual_init_scale_shrinks_only_the_output_projections_and_survives_save_load(tmp_path, scale):
    scheme = {"name": "iiet", "num_iterations": 2}
    torch.manual_seed(0)
    default = IIETForCausalLM(IIETConfig(**TINY, scheme=scheme))
    torch.manual_seed(0)
    scaled = IIETForCausalLM(IIETConfig(**TINY, scheme=scheme, residual_init_scale=scale))
    for (name, a), (_, b) in zip(default.named_parameters(), scaled.named_parameters()):
        if _output_projection(name):
            assert b.std().item() == pytest.approx(a.std().item() * scale, rel=0.05, abs=1e-7), name
        elif "layers." in name and name.endswith("proj.weight"):
            assert b.std().item() == pytest.approx(a.std().item(), rel=0.1), name  # same distribution
    scaled.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)  # loading must not re-initialise anything
    assert loaded.config.residual_init_scale == scale
    for (name, a), b in zip(scaled.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name


def test_small_residual_init_keeps_the_first_corrections_close_to_the_layer_input():
    # The diagnosis of IIET's slow start (docs/training.md): with LLaMA's initialisation the block update is several
    # times larger than the 0.02-scale embedding, so the fixed-point iteration of layer 0 drifts away from its input
    # (the token's identity); a small output-projection init keeps every iterate near the input.
    scheme = {"name": "iiet", "num_iterations": 3}
    cos = torch.nn.functional.cosine_similarity
    drift = {}
    for scale in (1.0, 0.1):
        torch.manual_seed(0)
        model = IIETForCausalLM(IIETConfig(**TINY, scheme=scheme, residual_init_scale=scale)).eval()
        with torch.no_grad():
            states = model.model(_ids(T=32), output_iterations=True).iterations[0]
        drift[scale] = cos(states[-1], states[0], dim=-1).mean().item()
    assert drift[0.1] > 0.95 > drift[1.0]


def test_embedding_multiplier_scales_only_the_input_embeddings():
    scheme = {"name": "iiet", "num_iterations": 2}
    torch.manual_seed(0)
    plain = IIETForCausalLM(IIETConfig(**TINY, scheme=scheme)).eval()
    scaled = IIETForCausalLM(IIETConfig(**TINY, scheme=scheme, embedding_multiplier=8.0)).eval()
    scaled.load_state_dict(plain.state_dict())
    x = _ids()
    embeds = plain.model.embed_tokens(x)
    with torch.no_grad():
        # the multiplier is the same as feeding scaled embeddings; the tied LM head is untouched
        torch.testing.assert_close(scaled(x).logits, plain(inputs_embeds=8.0 * embeds).logits)
        assert not torch.allclose(scaled(x).logits, plain(x).logits, atol=1e-3)
        torch.testing.assert_close(scaled.lm_head.weight, plain.lm_head.weight, atol=0, rtol=0)


@pytest.mark.parametrize("key, value", [("residual_init_scale", -1.0), ("embedding_multiplier", 0.0)])
def test_bad_initialisation_values_are_clear_errors(key, value):
    with pytest.raises(IIETError, match=key):
        IIETConfig(**TINY, **{key: value})


@pytest.mark.parametrize("scheme, plan", [({"name": "iiet", "num_iterations": 3}, [0, 3, 1]),
                                          ({"name": "pcformer", "order": 2}, [0, 4, 2])])
def test_a_per_call_plan_runs_the_same_weights_as_a_model_built_with_it(scheme, plan):
    from iiet.models.schemes import SchemeOptions

    model = tiny_model(scheme)
    planned = IIETForCausalLM(model.config.__class__(**{**model.config.to_dict(), "scheme": model.config.scheme_config
                                                        .with_plan(plan).to_dict()})).eval()
    planned.load_state_dict(model.state_dict())
    x = _ids()
    with torch.no_grad():
        torch.testing.assert_close(model(x, scheme_options=SchemeOptions(plan=plan)).logits, planned(x).logits,
                                   atol=0, rtol=0)
        assert not torch.allclose(model(x).logits, planned(x).logits, atol=1e-4)
    with pytest.raises(IIETError, match="3 layers"):
        model(x, scheme_options=SchemeOptions(plan=[1, 1]))
    with pytest.raises(IIETError, match="takes no per-layer plan"):
        tiny_model("euler")(x, scheme_options=SchemeOptions(plan=[0, 0, 0]))


@pytest.mark.parametrize("reading", ["residual", "normalized"])
def test_pcformer_with_every_predictor_order_zero_is_dlcl(reading):
    """Order 0 is no predictor: one explicit step per layer, DLCL's (Euler at initialisation in the residual reading);
    so PCformer's explicit first layer ([0, o, ..., o]) is a DLCL step."""
    pc = tiny_model({"name": "pcformer", "order_plan": [0, 0, 0], "history": reading})
    dlcl = tiny_model({"name": "dlcl", "history": reading}, perturb=False)
    dlcl.load_state_dict(pc.state_dict(), strict=False)  # everything but gamma
    x = _ids()
    torch.testing.assert_close(pc(x).logits, dlcl(x).logits, atol=0, rtol=0)
    assert pc.config.passes_per_layer == [1, 1, 1]
    assert tiny_model({"name": "pcformer", "order_plan": [0, 2, 4]}).config.passes_per_layer == [1, 3, 5]


def test_scheme_configs_answer_what_tools_ask():
    from iiet.models.configuration_iiet import parse_scheme

    iiet, pc, euler, ws = (parse_scheme(s) for s in ({"name": "iiet", "num_iterations": 3}, "pcformer", "euler",
                                                     "weight_shared"))
    assert iiet.corrections(4) == [3] * 4 and pc.corrections(4) is None and euler.corrections(4) is None
    assert iiet.explicit_first_layer(4).iteration_plan == [0, 3, 3, 3]
    assert pc.explicit_first_layer(4).order_plan == [0, 2, 2, 2] and pc.explicit_first_layer(4).passes_per_layer(4) \
        == [1, 3, 3, 3]
    assert euler.explicit_first_layer(4) is euler and ws.explicit_first_layer(4) is None
    assert iiet.has_history and pc.has_history and not euler.has_history
    assert iiet.accepts_plan and pc.accepts_plan and not euler.accepts_plan and not ws.accepts_plan
    assert iiet.accepts_tolerance and not pc.accepts_tolerance
    assert iiet.stage_labels(3) == ["initial compute", "iteration 1", "iteration 2"]
    assert pc.stage_labels(2) == ["predictor", "corrector"] and ws.stage_labels(2) == ["pass 1", "pass 2"]
    with pytest.raises(IIETError, match="one of"):
        IIETConfig(**TINY, scheme={"name": "pcformer", "order_plan": [0, 3, 2]})


def test_scheme_modules_initialise_their_own_parameters():
    model = tiny_model({"name": "pcformer", "coefficient": "per_layer", "history": "normalized"})  # perturbed
    model.model.scheme.init_parameters()
    model.model.scheme.history.init_parameters()
    from iiet.models.schemes import GAMMA_INIT

    assert (model.model.scheme.gamma == GAMMA_INIT).all()
    torch.testing.assert_close(model.model.scheme.history.weights, model.model.scheme.history.initial_weights())


def test_forward_and_generate_print_no_deprecation_warning_of_our_own_outputs():
    """Outputs carry the cache under this transformers' field name, so no "`past_key_values` ... deprecated"."""
    import transformers

    transformers.utils.logging.warning_once.cache_clear()  # a warning given earlier in this process would hide
    with logged_messages("transformers") as messages:
        model = tiny_model({"name": "iiet", "num_iterations": 1})
        x = _ids(B=1, T=5)
        out = model(x, use_cache=True)
        assert out.cache is not None and out.cache.get_seq_length() == 5
        model.generate(x, max_new_tokens=3, do_sample=False)
    assert not [m for m in messages if "deprecated" in m], messages


def test_the_table_of_named_models_resolves_every_name_to_its_scheme_and_label():
    from iiet.models.names import MODELS, describe, label_of, resolve

    assert resolve("iiet-r2", 4).scheme == resolve("iiet=2", 4).scheme and resolve("iiet-r2", 4).label == "IIET (r=2)"
    assert resolve("transformer++", 4).label == "Transformer++" and resolve("euler", 4).scheme["name"] == "euler"
    fl = resolve("pcformer-fl", 4)
    assert fl.scheme["order_plan"] == [0, 2, 2, 2] and fl.label == "PCformer, explicit first layer"
    assert resolve("iiet-r3-fl", 4).scheme["iteration_plan"] == [0, 3, 3, 3]
    assert resolve("e-iiet=0,1,2,3", 4).label == "E-IIET (sum r=6)"
    assert resolve("e-iiet=3,3,3,3", 4).label == "IIET (r=3), every layer iterating"  # the paper's IIET, by its plan
    for name in MODELS:  # every name builds a model, and its label is what label_of finds for its scheme
        named = resolve(name, 3)
        IIETConfig(**TINY, scheme=named.scheme)
        assert label_of(named.scheme, 3) == named.label, name
        assert name in describe()
    for bad, message in (("transformer++-fl", "explicit step already"), ("trans-ws-fl", "no explicit-first-layer"),
                         ("rk9", "unknown model name"), ("lower-bound=2", "takes no =VALUE"), ("iiet=x", "valid")):
        with pytest.raises(IIETError, match=message):
            resolve(bad, 4)


def test_label_of_finds_the_papers_name_for_non_default_values_too():
    from iiet.models.names import label_of

    assert label_of({"name": "iiet", "num_iterations": 2}, 3) == "IIET (r=2)"  # the demo's IIET
    assert label_of({"name": "iiet", "num_iterations": 2, "iteration_plan": [0, 2, 2]}, 3) == \
        "IIET (r=2), explicit first layer"
    assert label_of({"name": "pcformer", "order": 4}, 3) == "PCformer (RK4)"
    assert label_of({"name": "weight_shared", "repeats": 2}, 3) == "Trans WS (k=2)"
    assert label_of({"name": "iiet", "iteration_plan": [0, 0, 0]}, 3) == "Lower Bound"  # not "E-IIET (sum r=0)"
    assert label_of({"name": "iiet", "iteration_plan": [0, 1, 3]}, 3) == "E-IIET (sum r=4)"
