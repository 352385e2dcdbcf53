"""The numerical-Transformer model: embeddings -> scheme over shared LLaMA blocks -> RMSNorm -> LM head.

``IIETModel`` owns the blocks and hands the scheme a block runner ``blocks(n, i, x)``; the scheme decides how the
updates combine (``schemes.py``). Block evaluation ``i`` of layer ``n`` owns KV-cache slot ``offset[n] + i``, so the
cache has one slot per block evaluation, handed out in evaluation order, and cached decoding equals the full forward
for every scheme and iteration plan (tests/test_cache.py).

``forward(..., scheme_options=SchemeOptions(...))`` runs one call differently on the same weights (another plan, a
corrector, its own cache slots from ``slot_base``; see ``schemes.py``). ``adaptive_tolerance=`` and
``output_iterations=`` are shorthands for the corresponding options.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from itertools import accumulate

import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from .configuration_iiet import SCHEMES, IIETConfig
from .correctors import parse_corrector
from .errors import IIETError
from .layers import AttentionContext, DecoderBlock, RMSNorm, rotary_cos_sin
from .schemes import SchemeOptions, build_scheme
from .speculative import DEFAULT_DRAFT_TOKENS
from .speculative import generate as speculative_generate


@dataclass
class IIETModelOutput(BaseModelOutputWithPast):
    """``BaseModelOutputWithPast`` (normed final states) plus ``iterations`` and ``corrections`` (see ``IIETOutput``)."""

    iterations: tuple[tuple[torch.Tensor, ...], ...] | None = None
    corrections: torch.Tensor | None = None


@dataclass
class IIETOutput(CausalLMOutputWithPast):
    """``CausalLMOutputWithPast`` plus, on request, every iterate of every layer.

    ``iterations[n]`` is ``[layer input, iterate 0, ..., iterate r_n]`` for layer ``n`` (``output_iterations=True``);
    ``hidden_states`` (``output_hidden_states=True``) is ``(embedding, output of layer 0, ..., output of layer L-1)``,
    before the final norm. ``corrections`` (adaptive corrections only) is an (L, B, T) tensor of the corrections each
    token took at each layer.
    """

    iterations: tuple[tuple[torch.Tensor, ...], ...] | None = None
    corrections: torch.Tensor | None = None


class IIETPreTrainedModel(PreTrainedModel):
    config_class = IIETConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["DecoderBlock"]
    _skip_keys_device_placement = ["past_key_values"]
    _supports_sdpa = True

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)  # Linear, Embedding, RMSNorm, LayerNorm
        if getattr(module, "writes_residual", False) and self.config.residual_init_scale != 1.0:
            # Attention o_proj and MLP down_proj (marked in layers.py): the block update F starts small.
            init.normal_(module.weight, mean=0.0, std=self.config.initializer_range * self.config.residual_init_scale)
        own = getattr(module, "init_parameters", None)  # the scheme's modules initialise their own parameters
        if own is not None:
            own()


# The outputs' cache field: ``cache`` in transformers >= 5.24, where ``past_key_values`` is a deprecated alias that
# warns when set or read; ``past_key_values`` before. Outputs are built and read under the name this version has.
_CACHE_FIELD = "cache" if "cache" in BaseModelOutputWithPast.__dataclass_fields__ else "past_key_values"


def _output_cache(output: BaseModelOutputWithPast) -> Cache | None:
    return getattr(output, _CACHE_FIELD)


class BlockRunner:
    """The scheme's ``blocks``: block ``n``'s ``i``-th evaluation uses cache slot ``slot_offsets[n] + i``."""

    def __init__(self, layers: nn.ModuleList, slot_offsets: list[int], ctx: AttentionContext):
        self.layers, self.slot_offsets, self.ctx = layers, slot_offsets, ctx

    def __call__(self, n: int, i: int, x: torch.Tensor) -> torch.Tensor:
        return self.layers[n](x, self.ctx, self.slot_offsets[n] + i)

    def write_cache(self, n: int, i: int, x: torch.Tensor) -> None:
        if self.ctx.cache is not None:
            self.layers[n].write_cache(x, self.ctx, self.slot_offsets[n] + i)


def _ensure_slots(cache: Cache, num_slots: int) -> None:
    """Grow an HF cache to one entry per block evaluation (``generate()`` builds one per layer)."""
    while len(cache.layers) < num_slots:
        cache.layers.append(DynamicLayer())


class IIETModel(IIETPreTrainedModel):
    def __init__(self, config: IIETConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.layers = nn.ModuleList(DecoderBlock(config) for _ in range(config.num_hidden_layers))
        self.scheme = build_scheme(config)
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.scheme_config = config.scheme_config
        self.slot_offsets = self.slot_offsets_for()  # first cache slot of each layer
        self.num_slots = config.num_block_evaluations
        self.adaptive_tolerance = getattr(self.scheme_config, "adaptive_tolerance", None)
        self.post_init()

    def slot_offsets_for(self, options: SchemeOptions = SchemeOptions()) -> list[int]:
        """First cache slot of each layer for a call with ``options`` (its plan and ``slot_base``)."""
        passes = self._call_scheme(options).passes_per_layer(self.config.num_hidden_layers)
        return [options.slot_base + offset for offset in [0, *accumulate(passes)][:-1]]

    def num_slots_for(self, options: SchemeOptions = SchemeOptions()) -> int:
        """Cache slots a call with ``options`` uses, ``slot_base`` included (the size of a cache it fits in)."""
        return options.slot_base + sum(self._call_scheme(options).passes_per_layer(self.config.num_hidden_layers))

    def _call_scheme(self, options: SchemeOptions):
        if options.plan is None:
            return self.scheme_config
        scheme = self.scheme_config.with_plan(options.plan)
        scheme.validate(self.config.num_hidden_layers)
        return scheme

    def _options(
        self, options: SchemeOptions | None, output_iterations: bool, adaptive_tolerance: float | None
    ) -> SchemeOptions:
        """The call's options: ``scheme_options`` with the shorthand arguments folded in, checked."""
        options = SchemeOptions() if options is None else options
        if not isinstance(options.slot_base, int) or options.slot_base < 0:
            raise IIETError(f"slot_base={options.slot_base!r} must be an integer >= 0 (the call's first cache slot).")
        changes = {}
        if output_iterations and not options.output_iterations:
            changes["output_iterations"] = True
        if (adaptive_tolerance is not None or options.corrector is not None) and not self.scheme_config.accepts_tolerance:
            accepting = ", ".join(sorted(name for name, cls in SCHEMES.items() if cls.accepts_tolerance))
            raise IIETError(f"adaptive_tolerance and correctors apply to the {accepting} scheme only, not "
                            f"{self.scheme_config.name!r}.")
        if adaptive_tolerance is not None:
            if not adaptive_tolerance >= 0:
                raise IIETError(f"adaptive_tolerance={adaptive_tolerance!r} must be >= 0 (0 = run every correction).")
            base = options.corrector if options.corrector is not None else self.scheme_config.corrector
            changes["corrector"] = parse_corrector(base).with_tolerance(adaptive_tolerance)
        if changes:
            options = dataclasses.replace(options, **changes)
        return options

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        output_iterations: bool = False,
        adaptive_tolerance: float | None = None,
        scheme_options: SchemeOptions | None = None,
        cache: Cache | None = None,
        **kwargs,
    ) -> IIETModelOutput:
        # transformers >= 5.24 names the cache argument ``cache`` (``past_key_values`` before); accept both.
        past_key_values = cache if past_key_values is None else past_key_values
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        want_iterations = output_iterations or (scheme_options is not None and scheme_options.output_iterations)
        options = self._options(scheme_options, want_iterations or bool(output_hidden_states), adaptive_tolerance)
        default_slots = options.plan is None and options.slot_base == 0
        slot_offsets = self.slot_offsets if default_slots else self.slot_offsets_for(options)
        h = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        if self.config.embedding_multiplier != 1.0:
            h = h * self.config.embedding_multiplier
        B, T, _ = h.shape
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if use_cache and past_key_values is None and not self.training:
            past_key_values = DynamicCache()
        if not use_cache:
            past_key_values = None
        if isinstance(past_key_values, DynamicCache):
            _ensure_slots(past_key_values, self.num_slots if default_slots else self.num_slots_for(options))
        # This call's own slots: a draft's (``slot_base > 0``) may hold fewer positions than the verifier's.
        past = past_key_values.get_seq_length(slot_offsets[0]) if past_key_values is not None else 0

        if attention_mask is not None and attention_mask.dim() == 2 and attention_mask.shape[1] != past + T:
            raise ValueError(
                f"attention_mask covers {attention_mask.shape[1]} positions; expected past + new = {past + T}"
            )
        if position_ids is None:
            if attention_mask is not None and attention_mask.dim() == 2:
                # Left padding: a row's positions count its real tokens only (as HF LLaMA's generate does).
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, past:]
            else:
                position_ids = torch.arange(past, past + T, device=h.device).unsqueeze(0).expand(B, T)
        cos, sin = rotary_cos_sin(position_ids, self.config.head_dim, self.config.rope_parameters["rope_theta"], h.dtype)
        mask, is_causal = self._attention_mask(attention_mask, B, T, past, h.device)
        ctx = AttentionContext(cos, sin, mask, is_causal, past_key_values)

        result = self.scheme(h, BlockRunner(self.layers, slot_offsets, ctx), options)
        trace = result.iterations
        hidden_states = None
        if output_hidden_states:
            hidden_states = (trace[0][0], *(states[-1] for states in trace))
        return IIETModelOutput(
            last_hidden_state=self.norm(result.hidden),
            **{_CACHE_FIELD: past_key_values},
            hidden_states=hidden_states,
            iterations=tuple(tuple(states) for states in trace) if want_iterations else None,
            corrections=result.corrections,
        )

    @staticmethod
    def _attention_mask(
        attention_mask: torch.Tensor | None, B: int, T: int, past: int, device: torch.device
    ) -> tuple[torch.Tensor | None, bool]:
        """A boolean (B, 1, T, past + T) mask, or ``None`` with SDPA's own causal flag when no mask is needed."""
        if attention_mask is not None and attention_mask.dim() == 4:
            # A 4D mask is complete as given (causality included). Checked first: no host sync, so CUDA graphs can
            # capture it (iiet.bench.graphs).
            return attention_mask.bool(), False
        padded = attention_mask is not None and not bool(attention_mask.all())
        if not padded:
            if past == 0:
                return None, T > 1  # plain causal: SDPA can use its flash/efficient kernels
            if T == 1:
                return None, False  # one new token sees the whole cache
        S = past + T
        query_pos = torch.arange(past, S, device=device)[:, None]
        mask = (torch.arange(S, device=device)[None, :] <= query_pos)[None, None]  # (1, 1, T, S)
        if attention_mask is not None:
            mask = mask & attention_mask.bool()[:, None, None, :]
        # A query that may see nothing (a left-padding position) would give NaN; let it see everything. Its output
        # is never used, and real tokens never attend to it.
        return mask | ~mask.any(-1, keepdim=True), False


class IIETForCausalLM(IIETPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: IIETConfig):
        super().__init__(config)
        self.model = IIETModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        output_iterations: bool = False,
        adaptive_tolerance: float | None = None,
        scheme_options: SchemeOptions | None = None,
        cache: Cache | None = None,
        logits_to_keep: int = 0,
        **kwargs,
    ) -> IIETOutput:
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=cache if past_key_values is None else past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_hidden_states=output_hidden_states,
            output_iterations=output_iterations,
            adaptive_tolerance=adaptive_tolerance,
            scheme_options=scheme_options,
        )
        h = out.last_hidden_state
        if logits_to_keep:
            h = h[:, -logits_to_keep:]
        logits = self.lm_head(h)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return IIETOutput(
            loss=loss,
            logits=logits,
            **{_CACHE_FIELD: _output_cache(out)},
            hidden_states=out.hidden_states,
            iterations=out.iterations,
            corrections=out.corrections,
        )

    def generate(self, *args, draft_plan=None, num_draft_tokens: int = DEFAULT_DRAFT_TOKENS, **kwargs):
        """``GenerationMixin.generate``. With ``draft_plan`` (``"lower-bound"``, ``"e-iiet:PLAN.json"``,
        ``"adaptive[:TOL]"`` or corrections per layer): exact self-speculative decoding, the same weights drafting
        ``num_draft_tokens`` tokens per round with that cheaper plan (``iiet.models.speculative``; same greedy tokens,
        same sampling distribution)."""
        if draft_plan is None:
            return super().generate(*args, **kwargs)
        return speculative_generate(self, *args, draft_plan=draft_plan, num_draft_tokens=num_draft_tokens, **kwargs)

    def num_block_evaluations(self) -> int:
        """Block evaluations per token (= KV-cache slots per token)."""
        return self.model.num_slots

    def init_continuous_batching(self, *args, **kwargs):
        """Refused: transformers' continuous batching would not compute this model (docs/serving.md).

        Its paged cache holds one KV entry per *layer* and it packs all requests into one row whose separation only
        an attention reading its paged kwargs respects; this model needs one slot per block evaluation. Refusing here
        covers every way in: ``generate_batch``, ``generate(cache_implementation="paged")`` and
        ``transformers serve --continuous-batching``.
        """
        raise IIETError(
            "continuous batching (paged attention: generate_batch, cache_implementation='paged', transformers serve "
            "--continuous-batching) is not supported: its paged cache holds one KV entry per layer and this model "
            f"needs {self.num_block_evaluations()} (one per block evaluation); use generate() or `iiet serve`, "
            "which decode each request exactly"
        )
