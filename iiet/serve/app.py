"""An OpenAI-compatible server for one iiet model, made of ``transformers serve``'s own app and handlers.

``transformers serve`` (``transformers.cli.serving``) is the HF ecosystem's server: FastAPI routes for
``/v1/completions``, ``/v1/chat/completions``, ``/v1/models`` and ``/health``, handlers that turn a request into one
``model.generate(...)`` call on an inference thread, and OpenAI-format JSON and server-sent-event responses. This
module reuses all of it and changes four things (docs/serving.md):

1. *Loading.* ``transformers serve`` builds the model class as ``getattr(transformers, config.architectures[0])``,
   which a remote-code architecture never is, so ``transformers serve CKPT --trust-remote-code`` cannot load an
   iiet checkpoint (transformers 5.24). Here the model is loaded with ``AutoModelForCausalLM`` before the server
   starts and transformers' ``ModelManager`` is handed it.
2. *Checks.* A request is checked before the handler sees it: an unknown model gets a 404; bad parameters, a prompt
   that does not fit the context and fields one ``generate()`` call cannot honour (``n > 1``, ``logprobs``, ...) get
   a 400 naming the fix, where transformers would answer 500 or silently ignore the field. Errors come back in
   OpenAI's ``{"error": {"message": ...}}`` shape, so the ``openai`` client raises them with that message.
3. *Sampling.* A temperature > 0 (or top_p < 1) samples; transformers would keep a greedy checkpoint config greedy.
   Without either the server decodes as the checkpoint's ``generation_config`` says (greedy for iiet checkpoints).
4. *Seeds.* A request's ``seed`` is applied on the inference thread just before its ``generate()``; transformers
   seeds on arrival, so under concurrent requests a sample would follow the seed of the last request to arrive.

Decoding is ``model.generate()`` with the exact multi-slot KV cache (one slot per block evaluation), or, with a
draft, exact self-speculative ``model.generate(..., draft_plan=..., num_draft_tokens=k)`` (same greedy tokens, same
sampling distribution). Concurrent requests queue on the one inference thread and are decoded one at a time, each
exactly as alone. Continuous batching
(paged attention) is refused by the model itself (``IIETForCausalLM.init_continuous_batching``).
"""

from __future__ import annotations

import asyncio
import json
import numbers
from contextvars import ContextVar
from dataclasses import dataclass

import torch
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.cli.serving.chat_completion import ChatCompletionHandler
from transformers.cli.serving.completion import CompletionHandler
from transformers.cli.serving.model_manager import ModelManager
from transformers.cli.serving.server import build_server
# _StreamError is how transformers' SSE loop recognises a failed generation; a draft stream reports errors with it.
from transformers.cli.serving.utils import DirectStreamer, GenerateManager, GenerationState, Modality, _StreamError

from iiet.errors import IIETError

# OpenAI's default completion length for /v1/completions; a chat completion runs to eos or the end of the context.
COMPLETIONS_DEFAULT_MAX_TOKENS = 16
# Closed ranges OpenAI's API accepts for these numbers (temperature 0 = greedy); top_p must also be > 0.
NUMBER_RANGES: dict[str, tuple[float, float]] = {
    "temperature": (0.0, 2.0),
    "top_p": (0.0, 1.0),
    "frequency_penalty": (-2.0, 2.0),
}
# Fields of OpenAI's schema that one greedy/sampled generate() call cannot honour, with the values that ask for
# nothing (accepted); any other value is refused rather than silently ignored.
NO_OP_VALUES: dict[str, tuple] = {
    "n": (None, 1),
    "best_of": (None, 1),
    "echo": (None, False),
    "logprobs": (None, False),
    "top_logprobs": (None, 0),
}
# Request fields the self-speculative path cannot honour (it takes no tokenizer for stop strings and no penalties).
NOT_WITH_DRAFT = ("stop", "frequency_penalty", "logit_bias")
SEED_LIMIT = 2**63  # torch.manual_seed takes seeds below this


@dataclass
class ServedModel:
    """The model a server answers for, under the ``name`` clients pass as ``"model"`` (the checkpoint path).

    ``draft``: ``{"draft_plan": ..., "num_draft_tokens": k}`` to decode every request by exact self-speculative
    decoding (``model.generate(..., **draft)``, iiet.models.speculative); ``None``: plain ``generate()``.
    """

    name: str
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    draft: dict | None = None

    @property
    def context_length(self) -> int:
        return self.model.config.max_position_embeddings


def reject(message: str, param: str | None = None, status: int = 400) -> HTTPException:
    """The 4xx for a bad request; ``param`` names the offending field (OpenAI's ``error.param``)."""
    return HTTPException(status_code=status, detail={"message": message, "param": param})


def check_fields(body: dict, served: ServedModel, length_fields: tuple[str, ...]) -> None:
    """Types and ranges of the generation fields, before any tokenization or generation."""
    model = body.get("model")
    if model is not None and model != served.name:
        raise reject(
            f"model {model!r} is not served here; this server serves {served.name!r} (GET /v1/models lists it)",
            "model",
            404,
        )
    if body.get("stream") not in (None, True, False):
        raise reject(f"stream must be true or false, got {body['stream']!r}", "stream")
    for field, (low, high) in NUMBER_RANGES.items():
        value = body.get(field)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not low <= value <= high:
            raise reject(f"{field} must be a number in [{low:g}, {high:g}], got {value!r}", field)
    if body.get("top_p") == 0:
        raise reject("top_p must be > 0 (use temperature 0 for greedy decoding)", "top_p")
    for field, least, limit in (*((field, 1, None) for field in length_fields), ("seed", 0, SEED_LIMIT)):
        value = body.get(field)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < least or limit and value >= limit:
            bounds = f">= {least}" if limit is None else f"in [{least}, 2**63)"
            raise reject(f"{field} must be an integer {bounds}, got {value!r}", field)
    stop = body.get("stop")
    if stop is not None and not isinstance(stop, str) and not (
        isinstance(stop, list) and all(isinstance(s, str) and s for s in stop)
    ):
        raise reject(f"stop must be a string or a list of non-empty strings, got {stop!r}", "stop")
    for field, accepted in NO_OP_VALUES.items():
        if field in body and body[field] not in accepted:
            raise reject(f"{field}={body[field]!r} is not supported by this server; omit it", field)
    if served.draft:
        for field in NOT_WITH_DRAFT:
            if body.get(field) not in (None, 0, "", [], {}):
                raise reject(
                    f"{field} is not available when the server decodes with a speculative draft "
                    "(iiet serve --draft_plan); omit it, or serve without --draft_plan",
                    field,
                )
    if body.get("generation_config") is not None:
        try:
            config = json.loads(body["generation_config"])
        except (TypeError, ValueError):
            config = None
        if not isinstance(config, dict):
            raise reject("generation_config must be a string holding a JSON object", "generation_config")
        if config.get("cache_implementation") not in (None, "dynamic"):
            # HF's static/sliding/offloaded caches hold one entry per layer, not one per block evaluation.
            raise reject(
                "generation_config.cache_implementation is the server's: it decodes with the exact multi-slot cache",
                "generation_config",
            )


def completion_length(body: dict, length_fields: tuple[str, ...], prompt_tokens: int, context: int, default) -> int:
    """Tokens to generate: the request's (checked against the context), else ``default`` capped by the context."""
    room = context - prompt_tokens
    if room < 1:
        raise reject(
            f"the prompt has {prompt_tokens} tokens but this model's context is {context} tokens; shorten the prompt",
            "prompt" if "prompt" in body else "messages",
        )
    field = next((field for field in length_fields if body.get(field) is not None), None)
    if field is None:
        return room if default is None else min(default, room)
    if body[field] > room:
        raise reject(
            f"this model's context is {context} tokens and the prompt has {prompt_tokens}, so {field} can be at most "
            f"{room}; got {body[field]}",
            field,
        )
    return body[field]


# The seed of the request being handled. transformers seeds torch when a request *arrives*, so a request queued
# behind another would sample from the seed of whichever request arrived last; the seed goes with the submission.
_REQUEST_SEED: ContextVar[int | None] = ContextVar("request_seed", default=None)


class _SeededGenerateManager(GenerateManager):
    """transformers' sequential ``GenerateManager``, seeding torch on the inference thread right before a request's
    ``generate()`` runs (``submit``/``async_submit`` are called from the request's handler, where its seed is set)."""

    @staticmethod
    def _seeded(fn):
        seed = _REQUEST_SEED.get()
        if seed is None:
            return fn

        def run(*args, **kwargs):
            torch.manual_seed(seed)
            return fn(*args, **kwargs)

        return run

    def submit(self, fn, *args, **kwargs):
        return super().submit(self._seeded(fn), *args, **kwargs)

    def async_submit(self, fn, *args, **kwargs):
        return super().async_submit(self._seeded(fn), *args, **kwargs)


class _DraftGenerateManager(_SeededGenerateManager):
    """Decodes by ``model.generate(..., draft_plan=..., num_draft_tokens=k)``. That path takes no streamer (nor the
    tokenizer transformers passes for stop strings), so a streamed answer is sent when its generation ends."""

    def __init__(self, draft: dict):
        super().__init__()
        self.draft = draft

    def _generate(self, model, inputs, gen_config):
        return model.generate(**inputs, generation_config=gen_config, **self.draft)

    async def generate_non_streaming(self, model, processor, inputs, gen_config, request_id):
        sequences = await self.async_submit(self._generate, model, inputs, gen_config)
        prompt_length = inputs["input_ids"].shape[-1]
        generated = sequences[0, prompt_length:]
        return processor.decode(generated, skip_special_tokens=True), prompt_length, generated

    def generate_streaming(self, model, processor, inputs, gen_config, request_id, response_parser=None):
        loop, queue = asyncio.get_running_loop(), asyncio.Queue()
        tokenizer = getattr(processor, "tokenizer", processor)._tokenizer
        streamer = DirectStreamer(tokenizer, loop, queue, response_parser=response_parser)

        def run() -> None:
            try:
                sequences = self._generate(model, inputs, gen_config)
                prompt = inputs["input_ids"][0]
                streamer.put(prompt)  # the first put is the prompt, which a DirectStreamer skips
                streamer.put(sequences[0, prompt.shape[-1] :])
                streamer.end()
            except Exception as error:  # as transformers' own streaming: the stream ends with an error event
                loop.call_soon_threadsafe(queue.put_nowait, _StreamError(str(error)))

        self.submit(run)
        return queue, streamer


class _GenerationState(GenerationState):
    """Sequential generation (no continuous batching): plain or self-speculative ``generate()``, seeded per request."""

    def __init__(self, draft: dict | None):
        super().__init__()
        self.draft = draft

    def get_manager(self, model_id: str, use_cb: bool = False):
        if model_id not in self._generate_managers:
            manager = _DraftGenerateManager(self.draft) if self.draft else _SeededGenerateManager()
            self._generate_managers[model_id] = manager
        return super().get_manager(model_id, use_cb=use_cb)


class _CheckedHandler:
    """Checks a request and fixes its completion length before transformers' handler (the next class) runs it."""

    length_fields: tuple[str, ...]  # request fields giving the completion length, the handler's precedence order
    default_length: int | None  # completion length when the request gives none (None: the rest of the context)

    def __init__(self, served: ServedModel, *args, **kwargs):
        self.served = served
        super().__init__(*args, **kwargs)

    def prompt_tokens(self, body: dict) -> int:
        raise NotImplementedError

    async def handle_request(self, body: dict, request_id: str):
        check_fields(body, self.served, self.length_fields)
        length = completion_length(
            body, self.length_fields, self.prompt_tokens(body), self.served.context_length, self.default_length
        )
        body[self.length_fields[0]] = length
        _REQUEST_SEED.set(body.pop("seed", None))  # applied by _SeededGenerateManager, not on arrival
        return await super().handle_request(body, request_id)

    def _build_generation_config(self, body: dict, model_generation_config, use_cb: bool = False):
        config = super()._build_generation_config(body, model_generation_config, use_cb=use_cb)
        temperature, top_p = body.get("temperature"), body.get("top_p")
        if temperature != 0 and ((temperature or 0) > 0 or (top_p is not None and top_p < 1)):
            config.do_sample = True  # transformers sets the temperature but keeps a greedy config greedy
        return config


class CompletionEndpoint(_CheckedHandler, CompletionHandler):
    """``/v1/completions``: a raw text prompt, no template."""

    length_fields = ("max_tokens",)
    default_length = COMPLETIONS_DEFAULT_MAX_TOKENS

    def prompt_tokens(self, body: dict) -> int:
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            raise reject(f"prompt must be a non-empty string, got {prompt!r}", "prompt")
        return len(self.served.tokenizer(prompt)["input_ids"])  # the handler's own tokenization


class ChatCompletionEndpoint(_CheckedHandler, ChatCompletionHandler):
    """``/v1/chat/completions``: messages rendered by the checkpoint's chat template."""

    length_fields = ("max_completion_tokens", "max_tokens")
    default_length = None

    def prompt_tokens(self, body: dict) -> int:
        tokenizer = self.served.tokenizer
        if tokenizer.chat_template is None:
            raise reject(
                "this checkpoint's tokenizer has no chat template; use /v1/completions with a text prompt, or save "
                "a tokenizer with a chat_template into the checkpoint",
                "messages",
            )
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), (str, list))
            for m in messages
        ):
            raise reject("messages must be a non-empty list of {role, content} objects", "messages")
        try:
            rendered = tokenizer.apply_chat_template(
                self.get_processor_inputs_from_messages(messages, Modality.LLM),
                add_generation_prompt=True,
                tools=body.get("tools"),
                tokenize=True,
                return_dict=True,
                **{**self.chat_template_kwargs, **body.get("chat_template_kwargs", {})},
            )
        except Exception as error:  # the template's own raise_exception (e.g. roles must alternate), bad parts
            raise reject(f"the chat template cannot render these messages: {error}", "messages") from error
        return len(rendered["input_ids"])


class _LoadedModelManager(ModelManager):
    """transformers' ``ModelManager`` pinned to a model loaded before the server starts (module docstring, 1)."""

    def __init__(self, served: ServedModel):
        self._served = served
        super().__init__(device=str(served.model.device), force_model=served.name)

    def _load_processor(self, *args, **kwargs) -> PreTrainedTokenizerBase:
        return self._served.tokenizer

    def _load_model(self, *args, **kwargs) -> PreTrainedModel:
        return self._served.model


class _NotServed:
    """The endpoints of ``transformers serve`` that ``iiet serve`` does not answer (responses, audio, decisions)."""

    async def handle_request(self, *args, **kwargs):
        raise reject("iiet serve answers /v1/completions and /v1/chat/completions only", status=404)


def _openai_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
    detail = error.detail if isinstance(error.detail, dict) else {"message": str(error.detail), "param": None}
    kind = "not_found_error" if error.status_code == 404 else "invalid_request_error"
    return JSONResponse({"error": {**detail, "type": kind, "code": None}}, status_code=error.status_code)


def _body_not_object(request: Request, error: RequestValidationError) -> JSONResponse:
    return _openai_error(request, reject("the request body must be a JSON object"))


def _model_refused(request: Request, error: IIETError) -> JSONResponse:
    # The model refuses a request's settings with an IIETError (e.g. a generation_config the draft cannot honour).
    return _openai_error(request, reject(str(error)))


def build_app(served: ServedModel) -> FastAPI:
    """The FastAPI app of ``transformers serve`` answering for ``served`` (run it with uvicorn)."""
    manager = _LoadedModelManager(served)
    state = _GenerationState(served.draft)  # continuous_batching=False: sequential exact generate()
    not_served = _NotServed()
    app = build_server(
        manager,
        ChatCompletionEndpoint(served, manager, state),
        completion_handler=CompletionEndpoint(served, manager, state),
        response_handler=not_served,
        transcription_handler=not_served,
        systemone_handler=not_served,
        generation_state=state,
    )
    app.add_exception_handler(StarletteHTTPException, _openai_error)
    app.add_exception_handler(RequestValidationError, _body_not_object)
    app.add_exception_handler(IIETError, _model_refused)
    return app
