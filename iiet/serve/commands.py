"""``iiet serve``: one checkpoint behind an OpenAI-compatible API (docs/serving.md)."""

from __future__ import annotations

import errno
import socket
import threading
import time
from pathlib import Path

from iiet.errors import IIETError
from iiet.eval.harness import scheme_overrides
from iiet.models.loading import load_model, load_tokenizer, resolve_device, resolve_dtype
from iiet.models.speculative import resolve_draft

LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: a free one), or ``IIETError`` naming the fix.

    Bound before the model loads, so that a taken port is reported at once, and handed to uvicorn as it is, so that
    nothing can take the port in between.
    """
    if not 0 <= port <= 65535:
        raise IIETError(f"port must be in 0..65535, got {port}")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        raise IIETError(f"cannot resolve host {host!r} ({error.strerror}); pass an address such as 127.0.0.1") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as error:
        sock.close()
        reason = "is in use" if error.errno == errno.EADDRINUSE else f"cannot be bound ({error.strerror})"
        raise IIETError(f"{host}:{port} {reason}; pass another --port (or --host)") from None
    sock.listen(128)
    return sock


def server_url(sock: socket.socket) -> str:
    """``http://HOST:PORT`` of a bound socket (an IPv6 address in brackets)."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class BackgroundServer:
    """uvicorn serving ``app`` from a thread of this process (notebooks, tests, benchmarks); ``stop()`` ends it.

    ``url`` is where it listens (``port=0``: a free port); construction returns once the server accepts requests.
    """

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, startup_seconds: float = 30.0):
        import uvicorn

        sock = bind_socket(host, port)
        self.url = server_url(sock)
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="error"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + startup_seconds
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                self.stop()
                raise RuntimeError(f"the server on {self.url} did not start within {startup_seconds:g} s")
            time.sleep(0.05)

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=timeout)
        if self.thread.is_alive():
            raise RuntimeError(f"the server on {self.url} did not stop within {timeout:g} s")


def load_served(
    model: str,
    device: str = "auto",
    dtype: str = "auto",
    overrides: dict | None = None,
    draft_plan: str | None = None,
    num_draft_tokens: int = 4,
    draft_confidence: float | None = None,
):
    """The ``ServedModel`` of checkpoint directory ``model``: weights and tokenizer, in eval mode on ``device``,
    decoding self-speculatively with ``draft_plan`` when one is given (validated here, before serving)."""
    from iiet.serve.app import ServedModel

    torch_device = resolve_device(device)
    network = load_model(model, torch_device, resolve_dtype(dtype, torch_device), overrides)
    draft = None
    if draft_plan is not None:
        resolve_draft(network.config, draft_plan)  # IIETError naming the fix for a plan this model cannot draft with
        draft = {"draft_plan": draft_plan, "num_draft_tokens": num_draft_tokens, "draft_confidence": draft_confidence}
    return ServedModel(model, network, load_tokenizer(model), draft)


def serve(
    model: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    device: str = "auto",
    dtype: str = "auto",
    num_iterations: int | None = None,
    iteration_plan: list[int] | None = None,
    adaptive_tolerance: float | None = None,
    draft_plan: str | None = None,
    num_draft_tokens: int = 4,  # iiet.models.speculative.DEFAULT_DRAFT_TOKENS (not imported: --help needs no torch)
    draft_confidence: float | None = None,
    log_level: str = "warning",
) -> None:
    """Serve a checkpoint behind an OpenAI-compatible API (transformers serve's app) until Ctrl+C.

    Endpoints: POST /v1/completions and /v1/chat/completions (streaming with "stream": true), GET /v1/models and
    /health. Clients pass the checkpoint path as "model", e.g. openai.OpenAI(base_url="http://127.0.0.1:8000/v1",
    api_key="none").completions.create(model=CKPT, prompt="...", max_tokens=32). Without a temperature the
    server decodes greedily, exactly as model.generate() does; concurrent requests queue and are decoded one at a
    time with the exact cache (one KV slot per block evaluation). Continuous batching is not offered (see
    docs/serving.md).

    Args:
        model: Checkpoint directory saved with save_pretrained, with its tokenizer (e.g. a training run's final/).
        host: Address to listen on; the default answers this machine only (0.0.0.0 answers every interface).
        port: TCP port to listen on (0: any free port).
        device: cpu, cuda, cuda:N or auto (CUDA when available).
        dtype: auto (bf16 on GPU, fp32 on CPU), float32, bfloat16 or float16.
        num_iterations: IIET checkpoints only: serve with this many implicit-Euler corrections in every layer
            instead of the trained number (clears a saved per-layer plan).
        iteration_plan: IIET checkpoints only: corrections per layer, one number per layer, e.g. [0,2,2,1].
        adaptive_tolerance: IIET checkpoints only: stop correcting a token at a layer once 1 - cos between its
            successive iterates is below this (docs/adaptive.md); 0 runs every correction.
        draft_plan: Decode by exact self-speculative decoding, drafting with this cheaper plan of the same weights:
            lower-bound, e-iiet:PLAN.json, adaptive[:TOL] or corrections per layer "r0,r1,..." (same greedy text,
            same sampling distribution; streamed answers then arrive whole, and stop/frequency_penalty are refused).
        num_draft_tokens: Tokens the draft proposes per verification round (with --draft_plan), at most.
        draft_confidence: With --draft_plan: a round stops drafting at the first token the draft gives less than
            this probability (adapts the draft length; the output stays exact).
        log_level: Server log level: critical, error, warning, info, debug or trace.
    """
    from transformers.utils.import_utils import is_serve_available

    if not is_serve_available():
        raise IIETError("iiet serve needs fastapi, uvicorn and openai; install them with pip install 'iiet[serve]'")
    import uvicorn

    from iiet.serve.app import build_app

    if log_level not in LOG_LEVELS:
        raise IIETError(f"unknown log_level {log_level!r}; use one of {', '.join(LOG_LEVELS)}")
    if not Path(model).expanduser().is_dir():
        raise IIETError(f"checkpoint {model} does not exist (expected a directory saved with save_pretrained)")
    overrides = scheme_overrides(num_iterations, iteration_plan, adaptive_tolerance)
    if num_draft_tokens < 1:
        raise IIETError(f"num_draft_tokens must be >= 1, got {num_draft_tokens}")
    if draft_confidence is not None and not 0 <= draft_confidence <= 1:
        raise IIETError(f"draft_confidence must be a probability in [0, 1], got {draft_confidence}")
    sock = bind_socket(host, port)
    try:
        served = load_served(model, device, dtype, overrides, draft_plan, num_draft_tokens, draft_confidence)
    except BaseException:
        sock.close()
        raise
    network = served.model
    what = network.config.model_type
    if hasattr(network, "num_block_evaluations"):  # an iiet model (any AutoModelForCausalLM loads)
        what += f", {network.config.scheme['name']}, {network.num_block_evaluations()} block evaluations/token"
    if served.draft:
        what += f", self-speculative: {num_draft_tokens} draft tokens per round with plan {draft_plan}"
    url = server_url(sock)
    print(f"serving {model} ({what}, context {served.context_length}) at {url}/v1; Ctrl+C stops", flush=True)
    try:
        uvicorn.Server(uvicorn.Config(build_app(served), log_level=log_level)).run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn re-raises Ctrl+C after a clean shutdown, for the caller to see
        print("stopped", flush=True)
