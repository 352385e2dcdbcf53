"""What serving costs: ``iiet serve`` answering the ``openai`` client vs calling ``model.generate()`` directly.

For one model and fixed prompt/completion lengths (every request generates exactly ``--new_tokens`` tokens), it
measures in one process, interleaved round by round so that load swings hit both sides:

* ``generate()``: one direct greedy call, the floor a server can reach;
* ``served``: one non-streaming request through the ``openai`` client to a server on 127.0.0.1, and the paired ratio
  served / direct per round (median and quartiles);
* ``streamed``: one streaming request: time to the first text chunk and to the last;
* ``concurrent``: ``--concurrency`` clients at once; requests queue on the server's one inference thread, so the
  throughput should equal one stream's (the server does not batch requests).

Without ``--model`` it serves a random-weight preset with a small byte-level tokenizer (speed does not depend on the
weights). Prints a table and writes JSON (docs/serving.md).

    python benchmarks/serve.py --preset tiny --scheme '{"name": "iiet", "num_iterations": 3}' --output serve.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import torch

os.environ.setdefault("NO_PROXY", "127.0.0.1")  # the client talks to loopback only


def random_checkpoint(preset: str, scheme: dict, folder: str) -> str:
    from iiet import IIETForCausalLM
    from iiet.data.tokenizer import train_tokenizer
    from iiet.models.presets import build_config

    tokenizer = train_tokenizer(["builtin"], folder, vocab_size=512, max_documents=50)
    config = build_config(preset, scheme=scheme, vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id)
    IIETForCausalLM(config).save_pretrained(folder)
    return folder


def quartiles(values: list[float]) -> tuple[float, float, float]:
    q1, median, q3 = statistics.quantiles(values, n=4) if len(values) > 1 else (values[0],) * 3
    return q1, median, q3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="checkpoint directory (with tokenizer); default: a random preset")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--scheme", default='{"name": "iiet", "num_iterations": 3}', type=json.loads)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--prompt_tokens", type=int, default=32)
    parser.add_argument("--new_tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--output", default="serve_benchmark.json")
    args = parser.parse_args()

    import openai

    from iiet.serve.app import build_app
    from iiet.serve.commands import BackgroundServer, load_served

    folder = tempfile.TemporaryDirectory()  # the random checkpoint, kept while it is served under its path
    served = load_served(args.model or random_checkpoint(args.preset, args.scheme, folder.name), device=args.device)
    model, tokenizer = served.model, served.tokenizer
    ids = torch.randint(4, len(tokenizer), (1, args.prompt_tokens), generator=torch.Generator().manual_seed(0))
    prompt = tokenizer.decode(ids[0])
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"].to(model.device)  # what the server will see
    exact = {"min_new_tokens": args.new_tokens, "max_new_tokens": args.new_tokens, "do_sample": False}
    request = dict(model=served.name, prompt=prompt, max_tokens=args.new_tokens,
                   extra_body={"generation_config": json.dumps(exact)})

    server = BackgroundServer(build_app(served))
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", timeout=600, max_retries=0)

    def direct() -> float:
        start = time.perf_counter()
        with torch.no_grad():
            model.generate(ids, attention_mask=torch.ones_like(ids), **exact)
        return time.perf_counter() - start

    def one_request(_=None) -> float:
        start = time.perf_counter()
        answer = client.completions.create(**request)
        assert answer.usage.completion_tokens == args.new_tokens, answer.usage
        return time.perf_counter() - start

    def streamed() -> tuple[float, float]:
        start, first = time.perf_counter(), None
        for chunk in client.completions.create(**request, stream=True):
            if first is None and chunk.choices and chunk.choices[0].text:
                first = time.perf_counter() - start
        return first, time.perf_counter() - start

    try:
        direct(), one_request()  # warm-up
        rows = {"direct": [], "served": [], "ratio": [], "first_chunk": [], "streamed": [], "concurrent": []}
        for _ in range(args.rounds):
            d, s = direct(), one_request()
            first, total = streamed()
            start = time.perf_counter()
            with ThreadPoolExecutor(args.concurrency) as pool:
                list(pool.map(one_request, range(args.concurrency)))
            rows["concurrent"].append(time.perf_counter() - start)
            values = {"direct": d, "served": s, "ratio": s / d, "first_chunk": first, "streamed": total}
            for key, value in values.items():
                rows[key].append(value)
    finally:
        server.stop()
        folder.cleanup()

    n = args.new_tokens
    table = [
        ("generate() direct", quartiles(rows["direct"]), n),
        ("served (openai client)", quartiles(rows["served"]), n),
        ("streamed: first chunk", quartiles(rows["first_chunk"]), None),
        ("streamed: whole answer", quartiles(rows["streamed"]), n),
        (f"{args.concurrency} concurrent clients", quartiles(rows["concurrent"]), n * args.concurrency),
    ]
    what = f"{model.config.model_type} {model.config.scheme['name']}, {model.num_block_evaluations()} block evaluations"
    print(f"{what}/token, prompt {ids.shape[1]} + {n} new tokens, {args.rounds} rounds, {args.device}\n")
    print(f"| {'measure':<28} | median s | {'q1 - q3 s':<15} | tokens/s |")
    print(f"|{'-' * 30}|----------|{'-' * 17}|----------|")
    for name, (q1, median, q3), tokens in table:
        rate = f"{tokens / median:8.1f}" if tokens else " " * 8
        print(f"| {name:<28} | {median:8.3f} | {q1:6.3f} - {q3:6.3f} | {rate} |")
    q1, median, q3 = quartiles(rows["ratio"])
    print(f"\nserved / direct time, paired per round: {median:.3f} (quartiles {q1:.3f} - {q3:.3f})")
    result = {"model": args.model or {"preset": args.preset, "scheme": args.scheme}, "device": args.device,
              "prompt_tokens": ids.shape[1], "new_tokens": n, "concurrency": args.concurrency, "seconds": rows,
              "served_over_direct": {"median": median, "q1": q1, "q3": q3}}
    with open(args.output, "w") as file:
        json.dump(result, file, indent=2)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
