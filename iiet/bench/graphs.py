"""The decode step replayed from a CUDA graph: one launch per token instead of thousands.

Eager decoding of a small model is bound by the host, not the GPU: every block evaluation issues ~45 small kernels
from Python, so time per token grows with the number of *kernels*, and a scheme's extra elementwise work (the layer
history combination) costs as much as a matmul. A CUDA graph records the step once and replays it, which leaves the
GPU work alone. Shapes and addresses must then be fixed: the step writes the cache at a device-side position
(``SlotCache.writing_at``), attends over all ``max_length`` positions with a mask ``position <= t`` built on the
device, and reads RoPE positions from the same tensor. Decoding stays exact (tests/test_bench.py runs this path
eagerly on CPU against the full forward).
"""

from __future__ import annotations

import torch

from iiet.models.cache import SlotCache

WARMUP_STEPS = 2  # eager runs on a side stream before capture (cuBLAS/SDPA workspace set-up), as PyTorch advises


class _Capture:
    """Static inputs, output and (on CUDA) the graph of one (model, cache) pair."""

    def __init__(self, model: torch.nn.Module, cache: SlotCache):
        B, S, device = cache.layers[0].batch_size, cache.max_length, cache.key_buffer.device
        self.model, self.cache = model, cache
        self.token = torch.zeros(B, 1, dtype=torch.long, device=device)
        self.index = torch.zeros(1, dtype=torch.long, device=device)  # position being written
        self.positions = torch.arange(S, device=device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.out: torch.Tensor | None = None

    def run(self) -> torch.Tensor:
        B = self.token.shape[0]
        mask = (self.positions <= self.index)[None, None, None, :]  # (1, 1, 1, S): written positions only
        with self.cache.writing_at(self.index):
            logits = self.model(
                self.token,
                attention_mask=mask,
                position_ids=self.index.view(1, 1).expand(B, 1),
                past_key_values=self.cache,
                use_cache=True,
            ).logits
        return logits[:, -1].argmax(-1, keepdim=True)

    def capture(self) -> None:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(WARMUP_STEPS):  # rewrites the current position with the same values: harmless
                self.run()
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.out = self.run()


class GraphDecodeStep:
    """A drop-in ``decode_step(model, token, cache)``: replays a CUDA graph per (model, cache) on GPU.

    On CPU it runs the same fixed-shape step eagerly (no graphs there), which is what the tests check. Prompts must
    not be left-padded (the mask covers positions ``<= t`` of every row).
    """

    def __init__(self):
        self._captures: dict[tuple[int, int], _Capture] = {}

    @torch.inference_mode()
    def __call__(self, model: torch.nn.Module, token: torch.Tensor, cache: SlotCache) -> torch.Tensor:
        key = (id(model), id(cache))
        capture = self._captures.get(key)
        if capture is None:
            capture = self._captures[key] = _Capture(model, cache)
        capture.token.copy_(token)
        capture.index.fill_(cache.get_seq_length())
        if token.device.type == "cuda":
            if capture.graph is None:
                capture.capture()
            capture.graph.replay()
            out = capture.out.clone()
        else:
            out = capture.run()
        cache.advance(1)
        return out
