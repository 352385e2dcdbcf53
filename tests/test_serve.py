"""``iiet serve`` as a client sees it: a server on 127.0.0.1 answering the ``openai`` client and plain HTTP.

Every answer is checked against ``model.generate()``'s greedy output and against a greedy loop over full forwards
without any cache, so a server that decoded with a wrong cache (or batched requests into each other) would fail.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

pytest.importorskip("fastapi", reason="serving needs transformers[serving]")
openai = pytest.importorskip("openai", reason="the serving tests use the openai client")

from iiet import IIETConfig, IIETForCausalLM  # noqa: E402
from iiet import cli  # noqa: E402
from iiet.errors import IIETError  # noqa: E402
from iiet.eval.harness import scheme_overrides  # noqa: E402
from iiet.serve.app import build_app  # noqa: E402
from iiet.serve.commands import BackgroundServer, bind_socket, load_served  # noqa: E402

CORPUS = ["the quick brown fox jumps over the lazy dog", "a tiny model serves tiny answers to every client"] * 8
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)
PROMPTS = ["a tiny model", "every client", "lazy dog jumps", "the quick"]  # the last one stops at once (eos)
NEW_TOKENS = 6
STARTUP_SECONDS = 20
REQUEST_SECONDS = 30


def make_tokenizer():
    """Byte-level BPE over the corpus' own characters only: every token decodes to whole ASCII characters, so
    streamed pieces and a one-shot decode agree even for the random tokens of an untrained model."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    specials = ["<s>", "</s>", "<pad>", "<unk>"]
    trainer = trainers.BpeTrainer(vocab_size=120, special_tokens=specials, show_progress=False)
    bpe.train_from_iterator(CORPUS, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny E-IIET checkpoint (uneven plan: 1 + 3 + 2 = 6 KV slots per token for 3 layers) with its tokenizer."""
    tokenizer = make_tokenizer()
    torch.manual_seed(0)
    config = IIETConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=48,
        scheme={"name": "iiet", "iteration_plan": [0, 2, 1]},
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    path = tmp_path_factory.mktemp("serve") / "tiny-iiet"
    IIETForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def served(checkpoint):
    return load_served(checkpoint, device="cpu")


@pytest.fixture(scope="module")
def server(served):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NO_PROXY", "127.0.0.1")  # loopback only, whatever proxy the environment names
        patch.setenv("no_proxy", "127.0.0.1")
        running = BackgroundServer(build_app(served))
        yield running
        running.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", timeout=REQUEST_SECONDS, max_retries=0)


def post(url: str, body) -> tuple[int, dict]:
    """Plain HTTP POST of a JSON body: (status, decoded JSON answer)."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_SECONDS) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def greedy_references(served, input_ids: list[int], new_tokens: int) -> tuple[str, str]:
    """(generate()'s greedy text, the text of a greedy loop over full forwards without a cache)."""
    model, tokenizer = served.model, served.tokenizer
    ids = torch.tensor([input_ids])
    with torch.no_grad():
        generated = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, do_sample=False)
        uncached = ids
        for _ in range(new_tokens):
            token = model(uncached, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
            uncached = torch.cat([uncached, token], dim=1)
            if token.item() == model.config.eos_token_id:
                break
    decode = lambda row: tokenizer.decode(row[len(input_ids):], skip_special_tokens=True)  # noqa: E731
    return decode(generated[0].tolist()), decode(uncached[0].tolist())


def expected_completion(served, prompt: str, new_tokens: int = NEW_TOKENS) -> str:
    text, uncached = greedy_references(served, served.tokenizer(prompt)["input_ids"], new_tokens)
    assert text == uncached, "generate() with the multi-slot cache must equal the uncached greedy loop"
    return text


def test_completion_equals_greedy_generate(served, client, checkpoint):
    answer = client.completions.create(model=checkpoint, prompt=PROMPTS[0], max_tokens=NEW_TOKENS, temperature=0)
    expected = expected_completion(served, PROMPTS[0])
    assert expected  # the check below compares real text
    assert answer.choices[0].text == expected
    assert answer.model == checkpoint
    assert answer.usage.prompt_tokens == len(served.tokenizer(PROMPTS[0])["input_ids"])
    assert answer.usage.completion_tokens <= NEW_TOKENS
    assert answer.choices[0].finish_reason == ("length" if answer.usage.completion_tokens == NEW_TOKENS else "stop")


def test_streaming_completion_streams_the_same_text(served, client, checkpoint):
    chunks = list(client.completions.create(model=checkpoint, prompt=PROMPTS[1], max_tokens=NEW_TOKENS, stream=True))
    assert len(chunks) > 2  # several pieces, then the closing chunk with finish_reason
    assert "".join(chunk.choices[0].text for chunk in chunks) == expected_completion(served, PROMPTS[1])
    assert chunks[-1].choices[0].finish_reason in ("length", "stop")


def test_chat_completion_uses_the_chat_template(served, client, checkpoint):
    messages = [{"role": "user", "content": "the quick brown fox"}]
    answer = client.chat.completions.create(model=checkpoint, messages=messages, max_tokens=NEW_TOKENS)
    ids = served.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
    text, uncached = greedy_references(served, ids["input_ids"], NEW_TOKENS)
    assert answer.choices[0].message.content == text == uncached
    streamed = client.chat.completions.create(model=checkpoint, messages=messages, max_tokens=NEW_TOKENS, stream=True)
    assert "".join(chunk.choices[0].delta.content or "" for chunk in streamed if chunk.choices) == text


def test_a_temperature_samples_and_a_seed_repeats(served, client, checkpoint):
    def sample(seed: int) -> str:
        return client.completions.create(
            model=checkpoint, prompt=PROMPTS[0], max_tokens=NEW_TOKENS, temperature=1.5, seed=seed
        ).choices[0].text

    assert sample(0) == sample(0)
    # An untrained model's next-token distribution is nearly flat: sampled text is not the greedy text.
    assert {sample(seed) for seed in range(3)} != {expected_completion(served, PROMPTS[0])}


def test_concurrent_requests_each_get_their_own_answer(served, server, checkpoint):
    def ask(prompt: str) -> str:
        body = {"model": checkpoint, "prompt": prompt, "max_tokens": NEW_TOKENS}
        status, answer = post(server.url + "/v1/completions", body)
        assert status == 200, answer
        return answer["choices"][0]["text"]

    requests = PROMPTS * 2
    with ThreadPoolExecutor(len(requests)) as pool:
        answers = list(pool.map(ask, requests, timeout=REQUEST_SECONDS * 2))
    expected = {prompt: expected_completion(served, prompt) for prompt in PROMPTS}
    assert len(set(expected.values())) > 1  # different prompts really get different answers here
    assert answers == [expected[prompt] for prompt in requests]


def test_concurrent_seeded_samples_are_those_of_their_seed(client, checkpoint):
    def sample(seed: int) -> str:
        return client.completions.create(
            model=checkpoint, prompt=PROMPTS[1], max_tokens=NEW_TOKENS, temperature=1.5, seed=seed
        ).choices[0].text

    alone = {seed: sample(seed) for seed in (1, 2)}
    assert alone[1] != alone[2]
    seeds = [1, 2] * 4
    with ThreadPoolExecutor(len(seeds)) as pool:
        together = list(pool.map(sample, seeds, timeout=REQUEST_SECONDS * 2))
    assert together == [alone[seed] for seed in seeds]


BAD_REQUESTS = [
    ({"model": "gpt-4", "prompt": "hi"}, 404, "model 'gpt-4' is not served here"),
    ({"prompt": "the quick " * 40}, 400, "context is 48 tokens; shorten the prompt"),
    ({"prompt": "hi", "max_tokens": 1000}, 400, "max_tokens can be at most"),
    ({"prompt": "hi", "max_tokens": 0}, 400, "max_tokens must be an integer >= 1"),
    ({"prompt": "hi", "max_tokens": "5"}, 400, "max_tokens must be an integer"),
    ({"prompt": "hi", "temperature": -1}, 400, "temperature must be a number in [0, 2]"),
    ({"prompt": "hi", "top_p": 0}, 400, "top_p must be > 0"),
    ({"prompt": "hi", "seed": 2**64}, 400, "seed must be an integer in [0, 2**63)"),
    ({"prompt": "hi", "n": 3}, 400, "n=3 is not supported"),
    ({"prompt": "hi", "stream": "yes"}, 400, "stream must be true or false"),
    ({"prompt": ""}, 400, "prompt must be a non-empty string"),
    ({"max_tokens": 3}, 400, "prompt must be a non-empty string"),
    ({"prompt": "hi", "generation_config": "{not json"}, 400, "generation_config must be a string holding a JSON"),
    ({"prompt": "hi", "generation_config": '{"cache_implementation": "static"}'}, 400, "exact multi-slot cache"),
    ({"prompt": "hi", "frobnicate": 1}, 422, "Unexpected fields"),
    (b"[1, 2]", 400, "the request body must be a JSON object"),
]


@pytest.mark.parametrize("body, status, message", BAD_REQUESTS, ids=[m for _, _, m in BAD_REQUESTS])
def test_bad_request_gets_a_4xx_with_a_clear_message(server, body, status, message):
    got, answer = post(server.url + "/v1/completions", body)
    assert got == status, answer
    assert message in answer["error"]["message"]


def test_bad_requests_through_openai_client_and_the_server_keeps_serving(served, client, checkpoint, server):
    with pytest.raises(openai.NotFoundError, match="not served here"):
        client.completions.create(model="gpt-4", prompt="hi", max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="context is 48 tokens"):
        client.completions.create(model=checkpoint, prompt="the quick " * 40, max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="messages must be a non-empty list"):
        client.chat.completions.create(model=checkpoint, messages=[], max_tokens=2)
    status, answer = post(server.url + "/v1/responses", {"model": checkpoint, "input": "hi"})
    assert status == 404 and "/v1/completions and /v1/chat/completions only" in answer["error"]["message"]
    answer = client.completions.create(model=checkpoint, prompt=PROMPTS[2], max_tokens=NEW_TOKENS)
    assert answer.choices[0].text == expected_completion(served, PROMPTS[2])


def test_models_health_and_default_length(client, checkpoint, server):
    assert [model.id for model in client.models.list()] == [checkpoint]
    with urllib.request.urlopen(server.url + "/health", timeout=REQUEST_SECONDS) as answer:
        assert json.loads(answer.read()) == {"status": "ok"}
    answer = client.completions.create(model=checkpoint, prompt="hi")  # no max_tokens: OpenAI's 16
    assert answer.usage.completion_tokens <= 16


def test_scheme_overrides_serve_the_overridden_model(checkpoint):
    served = load_served(checkpoint, device="cpu", overrides=scheme_overrides(num_iterations=0))
    assert served.model.num_block_evaluations() == 3  # Lower Bound: one evaluation per layer
    running = BackgroundServer(build_app(served))
    try:
        status, answer = post(running.url + "/v1/completions", {"prompt": PROMPTS[3], "max_tokens": NEW_TOKENS})
    finally:
        running.stop()
    assert status == 200, answer
    assert answer["choices"][0]["text"] == expected_completion(served, PROMPTS[3])


def test_a_speculative_draft_serves_the_full_models_text(served, checkpoint):
    from iiet.models.speculative import DEFAULT_DRAFT_TOKENS
    from iiet.serve.commands import serve

    assert inspect.signature(serve).parameters["num_draft_tokens"].default == DEFAULT_DRAFT_TOKENS
    drafted = load_served(checkpoint, device="cpu", draft_plan="lower-bound", num_draft_tokens=3, draft_confidence=0.1)
    running = BackgroundServer(build_app(drafted))
    try:
        client = openai.OpenAI(base_url=running.url + "/v1", api_key="unused", timeout=REQUEST_SECONDS, max_retries=0)
        for prompt in PROMPTS[:2]:  # the Lower Bound drafts, the full E-IIET verifies: its greedy text comes out
            answer = client.completions.create(model=checkpoint, prompt=prompt, max_tokens=NEW_TOKENS)
            assert answer.choices[0].text == expected_completion(served, prompt)
        chunks = client.completions.create(model=checkpoint, prompt=PROMPTS[0], max_tokens=NEW_TOKENS, stream=True)
        assert "".join(chunk.choices[0].text for chunk in chunks) == expected_completion(served, PROMPTS[0])
        with pytest.raises(openai.BadRequestError, match="stop is not available .* --draft_plan"):
            client.completions.create(model=checkpoint, prompt="hi", max_tokens=2, stop=["x"])
        with pytest.raises(openai.BadRequestError, match="does not support min_new_tokens"):  # the model's refusal
            client.completions.create(model=checkpoint, prompt="hi", max_tokens=2,
                                      extra_body={"generation_config": '{"min_new_tokens": 2}'})
    finally:
        running.stop()
    with pytest.raises(IIETError, match="draft"):
        load_served(checkpoint, device="cpu", draft_plan="1,2")  # not one number per layer


def test_continuous_batching_is_refused(served):
    with pytest.raises(IIETError, match="continuous batching .* needs 6 \\(one per block evaluation\\)"):
        served.model.generate_batch([[5, 6, 7]])
    with pytest.raises(IIETError, match="continuous batching"):
        served.model.generate(torch.tensor([[5, 6, 7]]), cache_implementation="paged", max_new_tokens=2)


def test_cli_rejects_bad_input_before_loading(tmp_path, capsys):
    taken = bind_socket("127.0.0.1", 0)
    port = taken.getsockname()[1]
    cases = [
        (["--model", str(tmp_path / "absent")], "does not exist"),
        (["--model", str(tmp_path), "--port", "0"], "holds no config.json"),
        (["--model", str(tmp_path), "--port", str(port)], f"127.0.0.1:{port} is in use; pass another --port"),
        (["--model", str(tmp_path), "--port", "70000"], "port must be in 0..65535"),
        (["--model", str(tmp_path), "--log_level", "loud"], "unknown log_level 'loud'"),
        (["--model", str(tmp_path), "--num_iterations", "-1"], "num_iterations must be >= 0"),
        (["--model", str(tmp_path), "--num_draft_tokens", "0"], "num_draft_tokens must be >= 1"),
        (["--model", str(tmp_path), "--draft_confidence", "2"], "draft_confidence must be a probability"),
    ]
    try:
        for args, message in cases:
            with pytest.raises(SystemExit) as exit_info:
                cli.main(["serve", *args])
            assert exit_info.value.code == 2
            err = capsys.readouterr().err
            assert err.startswith("iiet: error: ") and message in err and err.count("\n") == 1, err
    finally:
        taken.close()


@pytest.mark.slow
def test_iiet_serve_command_answers_a_client(served, checkpoint, tmp_path):
    """The command a user types, in its own process: it prints where it listens, answers, and stops on Ctrl+C."""
    env = {**os.environ, "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "iiet.cli", "serve", "--model", checkpoint, "--port", "0", "--device", "cpu"]
    with open(tmp_path / "stderr", "w") as stderr:
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # Ctrl+C reaches it, as in a terminal
        )
    try:
        line = process.stdout.readline()  # blocks until the server has bound, loaded and printed (or died)
        match = re.search(r"at (http://127\.0\.0\.1:\d+)/v1", line)
        assert match, f"unexpected first line {line!r} (exit status {process.poll()})"
        client = openai.OpenAI(base_url=match[1] + "/v1", api_key="unused", timeout=REQUEST_SECONDS, max_retries=0)
        for _ in range(STARTUP_SECONDS * 10):  # uvicorn starts answering just after the line is printed
            try:
                answer = client.completions.create(model=checkpoint, prompt=PROMPTS[0], max_tokens=NEW_TOKENS)
                break
            except openai.APIConnectionError:
                time.sleep(0.1)
        else:
            raise AssertionError("the server never answered")
        assert answer.choices[0].text == expected_completion(served, PROMPTS[0])
    finally:
        process.send_signal(signal.SIGINT)
        status = process.wait(timeout=STARTUP_SECONDS)
    assert status == 0 and process.stdout.read().strip() == "stopped"
    assert "Traceback" not in (tmp_path / "stderr").read_text()
