"""A pre-allocated KV cache with one slot per block evaluation (``SlotCache``).

A scheme that evaluates layer ``n`` ``p_n`` times per token needs ``sum_n p_n`` cache slots
(``config.num_block_evaluations``; slot ``model.model.slot_offsets[n] + i`` for pass ``i`` of layer ``n``,
docs/architecture.md). ``DynamicCache`` grows every slot by concatenation, i.e. it re-allocates and copies
``slots x 2`` tensors per generated token. ``SlotCache`` allocates all of them once, as two tensors::

    keys, values: (slots, B, H_kv, max_length, D)

``update(k, v, slot)`` copies the new positions in place and returns views of the slot up to its current length, so the
attention sees exactly the keys/values the full forward would (cached == uncached, tests/test_bench.py), with no
allocation per token. It subclasses ``transformers.cache_utils.Cache`` so that ``model.generate(...,
past_key_values=SlotCache.for_model(model, batch_size, max_length))`` uses it.

For CUDA-graph replay (``iiet.bench.graphs``) shapes and addresses must not change between steps: inside
``with cache.writing_at(index):`` ``update`` writes at the positions held by the device tensor ``index`` and returns
all ``max_length`` positions; the caller masks the unwritten ones and calls ``advance`` after each step.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from .errors import IIETError

from .configuration_iiet import IIETConfig


class SlotLayer(CacheLayerMixin):
    """One slot: views of the shared buffers and a length. Filled in place, never re-allocated."""

    is_sliding = False
    is_croppable = True
    # Not "compileable" in HF's sense: that flag makes generate() replace our 2D mask by HF's full-length 4D float
    # mask and auto-compile the forward, both built for caches that return all ``max_length`` positions.
    is_compileable = False

    def __init__(self, keys: torch.Tensor, values: torch.Tensor):
        super().__init__()
        self.keys, self.values = keys, values  # (B, H_kv, max_length, D) views
        self.batch_size = keys.shape[0]
        self.max_length = keys.shape[2]
        self.dtype, self.device = keys.dtype, keys.device
        self.length = 0
        self.is_initialized = True

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        """Nothing to do: the buffers exist from construction."""

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        start, end = self.length, self.length + key_states.shape[-2]
        if end > self.max_length:
            raise IIETError(
                f"SlotCache holds {self.max_length} positions but this forward needs {end}; build it with a larger "
                "max_length (prompt length + new tokens)."
            )
        if key_states.shape[0] != self.batch_size:
            raise IIETError(
                f"SlotCache was built for batch size {self.batch_size}, got {key_states.shape[0]}; "
                "build one per batch size."
            )
        self.keys[:, :, start:end].copy_(key_states)
        self.values[:, :, start:end].copy_(value_states)
        self.length = end
        return self.keys[:, :, :end], self.values[:, :, :end]  # (B, H_kv, S, D) views, no copy

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.length + query_length, 0

    def get_seq_length(self) -> int:
        return self.length

    def get_max_length(self) -> int:
        return self.max_length

    def reset(self) -> None:
        # Stale positions are never read (views stop at ``length``), so there is nothing to zero.
        self.length = 0

    def crop(self, tokens_to_remove: int) -> None:
        # HF convention: a negative value removes that many tokens, a positive one is the length to keep.
        keep = self.length + tokens_to_remove if tokens_to_remove < 0 else tokens_to_remove
        self.length = max(0, min(self.length, keep))

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        if self.length:
            idx = beam_idx.to(self.device)
            self.keys[:, :, : self.length] = self.keys[idx, :, : self.length]
            self.values[:, :, : self.length] = self.values[idx, :, : self.length]


class SlotCache(Cache):
    """Static KV cache: ``num_slots`` slots of ``(batch_size, num_kv_heads, max_length, head_dim)``, allocated up front.

    Args:
        config: an ``IIETConfig`` (slots, KV heads and head size are read from it) or the number of slots.
        batch_size: rows the cache holds; every forward must use exactly this batch size.
        max_length: positions per row (prompt + generated tokens).
        num_kv_heads: key/value heads (only when ``config`` is a number).
        head_dim: size of one head (only when ``config`` is a number).
        dtype: element type; the model's dtype.
        device: where the buffers live; the model's device.
    """

    def __init__(
        self,
        config: IIETConfig | int,
        batch_size: int,
        max_length: int,
        num_kv_heads: int | None = None,
        head_dim: int | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ):
        if isinstance(config, int):
            if num_kv_heads is None or head_dim is None:
                raise IIETError("SlotCache(num_slots, ...) needs num_kv_heads and head_dim; or pass the model config.")
            num_slots = config
        else:
            num_slots = config.num_block_evaluations
            num_kv_heads = config.num_key_value_heads if num_kv_heads is None else num_kv_heads
            head_dim = config.head_dim if head_dim is None else head_dim
        if min(num_slots, batch_size, max_length) < 1:
            raise IIETError(
                f"SlotCache needs positive sizes, got slots={num_slots}, batch={batch_size}, length={max_length}."
            )
        shape = (num_slots, batch_size, num_kv_heads, max_length, head_dim)
        # Zeroed once: the fixed-shape mode attends over unwritten positions with weight 0, and 0 x NaN garbage
        # would still be NaN.
        self.key_buffer = torch.zeros(shape, dtype=dtype, device=device)
        self.value_buffer = torch.zeros(shape, dtype=dtype, device=device)
        super().__init__(layers=[SlotLayer(self.key_buffer[s], self.value_buffer[s]) for s in range(num_slots)])
        self._write_index: torch.Tensor | None = None  # set only inside ``writing_at``

    @classmethod
    def for_model(cls, model, batch_size: int, max_length: int) -> "SlotCache":
        """A cache matching ``model`` (an ``IIETForCausalLM`` or ``IIETModel``): its config, dtype and device."""
        return cls(model.config, batch_size, max_length, dtype=model.dtype, device=model.device)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        # Skips ``Cache.update``'s lazy-append and offloading checks: slots exist from construction.
        layer = self.layers[layer_idx]
        if self._write_index is None:
            return layer.update(key_states, value_states)
        layer.keys.index_copy_(2, self._write_index, key_states)
        layer.values.index_copy_(2, self._write_index, value_states)
        return layer.keys, layer.values  # (B, H_kv, max_length, D): fixed shape and address

    @contextmanager
    def writing_at(self, index: torch.Tensor):
        """Fixed-shape mode: ``update`` writes at positions ``index`` (a (T,) long tensor on the cache's device) and
        returns every position, written or not; lengths stay as they are (call ``advance``)."""
        self._write_index = index
        try:
            yield self
        finally:
            self._write_index = None

    def advance(self, tokens: int) -> None:
        """Count ``tokens`` positions written in fixed-shape mode."""
        for layer in self.layers:
            if layer.length + tokens > layer.max_length:
                raise IIETError(f"SlotCache holds {layer.max_length} positions; cannot advance past it.")
            layer.length += tokens

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.layers[layer_idx].length

    def compact(self, index: torch.Tensor) -> None:
        """Keep, in every slot, the positions ``index[b]`` of row ``b`` (a (B, n) long tensor, in order) as its
        positions ``0..n-1``; every slot's length becomes ``n``.

        Used to squeeze out the holes that rows' rejected drafts leave in a batch (``iiet.models.speculative``).
        Keys carry their rotary position already, so moving them changes nothing the attention computes.
        """
        S, B, H, _, D = self.key_buffer.shape
        n = index.shape[1]
        gather = index.to(self.key_buffer.device)[None, :, None, :, None].expand(S, B, H, n, D)
        for buffer in (self.key_buffer, self.value_buffer):
            length = self.layers[0].length
            buffer[:, :, :, :n] = buffer[:, :, :, :length].gather(3, gather)  # gather copies first: overlap is safe
        for layer in self.layers:
            layer.length = n

    @property
    def num_slots(self) -> int:
        return len(self.layers)

    @property
    def max_length(self) -> int:
        return self.key_buffer.shape[3]

    @property
    def nbytes(self) -> int:
        """Bytes allocated for keys and values (all slots, all positions)."""
        return self.key_buffer.nbytes + self.value_buffer.nbytes

    def bytes_per_token(self) -> int:
        """Bytes one position of one row occupies across all slots: ``slots x 2 x H_kv x D x itemsize``."""
        B, L = self.key_buffer.shape[1], self.key_buffer.shape[3]
        return self.nbytes // (B * L)
