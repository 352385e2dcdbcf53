"""``iiet data-prepare`` throughput against the tokenizer's own ceiling, on the same text, cores and run.

Each repeat measures, in rotating order so that load on a shared machine hits all of them alike:

* ``encode_batch``: the raw ``tokenizers`` ceiling (issue 18): the documents, already in memory, encoded by
  ``Tokenizer.encode_batch`` in batches of 1024 with Rust's thread pool on every core, in a fresh process that
  imports nothing but ``tokenizers``;
* ``encode_batch_fast``: the same without offsets (what ``data-prepare`` calls), a stricter ceiling;
* ``data-prepare``: ``prepare_data`` end to end into an empty folder (hashing and reading the sources, tokenizing,
  packing, writing the shards and the index).

Tokens are the documents' tokens (eos separators not counted). Prints a Markdown table with medians and quartiles
of tokens/s (wall clock) and tokens per CPU-second (user + system time of all threads and processes: on a
crowded machine more runnable threads get a bigger share of the cores, which favours several workers on the wall
clock, never on CPU time), the per-repeat ratios ``data-prepare / ceiling``, the machine's load average, and the
hours 16B tokens would take; writes the JSON last.

    nice -n 10 python benchmarks/data_prepare.py --sources 'data/enwiki-extract/wiki_0[0-7].txt' \\
        --tokenizer tokenizers/enwiki-8k --repeats 3
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from iiet.data import iter_corpus, prepare_data

PAPER_TOKENS = 16e9  # SlimPajama tokens the paper trains on
_CEILING_BATCH = 1024
RATES = ("tokens_per_second", "tokens_per_cpu_second")
_CEILING_CHILD = """
import json, sys, time
from tokenizers import Tokenizer
tokenizer = Tokenizer.from_file(sys.argv[1])
documents = json.load(open(sys.argv[2]))
encode = getattr(tokenizer, sys.argv[3])
start, cpu = time.perf_counter(), time.process_time()
tokens = sum(len(encoding.ids) for i in range(0, len(documents), {batch})
             for encoding in encode(documents[i : i + {batch}], add_special_tokens=False))
seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
print(json.dumps({{"tokens": tokens, "seconds": seconds, "cpu_seconds": cpu_seconds}}))
""".format(batch=_CEILING_BATCH)


def ceiling(tokenizer_file: Path, documents_file: Path, method: str) -> dict:
    output = subprocess.run([sys.executable, "-c", _CEILING_CHILD, str(tokenizer_file), str(documents_file), method],
                            check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def prepare(sources: list[str], tokenizer: str, output: Path, num_proc: int | None) -> dict:
    start, cpu = time.perf_counter(), _cpu_seconds()
    meta = prepare_data(sources, tokenizer, output, num_proc=num_proc)
    seconds, cpu_seconds = time.perf_counter() - start, _cpu_seconds() - cpu
    splits = meta["splits"].values()
    tokens = sum(split["num_tokens_seen"] - split["num_documents"] for split in splits)  # without the eos tokens
    return {"tokens": tokens, "seconds": seconds, "cpu_seconds": cpu_seconds}


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (the worker processes are joined at the end)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def quartiles(values: list[float]) -> tuple[float, float, float]:
    if len(values) < 2:
        return values[0], values[0], values[0]
    low, median, high = statistics.quantiles(values, n=4, method="inclusive")
    return low, median, high


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sources", nargs="+", required=True, help="files, globs or directories (local text)")
    parser.add_argument("--tokenizer", required=True, help="a tokenizer folder with tokenizer.json")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--num_proc", type=int, default=None, help="data-prepare workers (default: every core)")
    parser.add_argument("--output", default="benchmarks/results/data_prepare.json")
    args = parser.parse_args()
    sources = [match for pattern in args.sources for match in (sorted(glob.glob(pattern)) or [pattern])]
    cores = len(os.sched_getaffinity(0))

    with tempfile.TemporaryDirectory(prefix="iiet-data-bench-") as scratch:
        documents_file = Path(scratch) / "documents.json"
        documents = list(iter_corpus(sources))
        documents_file.write_text(json.dumps(documents))
        num_bytes = sum(len(text.encode()) for text in documents)
        del documents
        methods = ["encode_batch", "encode_batch_fast", "data-prepare"]
        runs: dict[str, list[dict]] = {method: [] for method in methods}
        for repeat in range(args.repeats):
            for method in methods[repeat % len(methods):] + methods[: repeat % len(methods)]:
                load_before = os.getloadavg()[0]
                if method == "data-prepare":
                    result = prepare(sources, args.tokenizer, Path(scratch) / f"prepared-{repeat}", args.num_proc)
                else:
                    result = ceiling(Path(args.tokenizer) / "tokenizer.json", documents_file, method)
                result.update(repeat=repeat, load_before=load_before, load_after=os.getloadavg()[0],
                              tokens_per_second=result["tokens"] / result["seconds"],
                              tokens_per_cpu_second=result["tokens"] / result["cpu_seconds"])
                runs[method].append(result)
                print(f"repeat {repeat} {method:>17}: {result['tokens_per_second'] / 1e3:7.1f}k tokens/s, "
                      f"{result['tokens_per_cpu_second'] / 1e3:5.1f}k per CPU-second ({result['seconds']:.1f} s, "
                      f"load {load_before:.1f} -> {result['load_after']:.1f})", file=sys.stderr)

    summary = {}
    for method in methods:
        summary[method] = {f"{rate}_quartiles": quartiles([run[rate] for run in runs[method]]) for rate in RATES}
    for ceiling_method in methods[:2]:
        summary[f"data-prepare / {ceiling_method}"] = {}
        for rate in RATES:
            ratios = [prepared[rate] / reference[rate]
                      for prepared, reference in zip(runs["data-prepare"], runs[ceiling_method])]
            summary[f"data-prepare / {ceiling_method}"].update({f"{rate}_ratio_quartiles": quartiles(ratios),
                                                                f"{rate}_ratios": ratios})
    median_rate = summary["data-prepare"]["tokens_per_second_quartiles"][1]
    cpu_rate = summary["data-prepare"]["tokens_per_cpu_second_quartiles"][1]
    hours = PAPER_TOKENS / median_rate / 3600
    loads = [run[key] for method in methods for run in runs[method] for key in ("load_before", "load_after")]

    print(f"\n{num_bytes / 1e6:.1f} MB of text, {runs['data-prepare'][0]['tokens'] / 1e6:.2f}M tokens, {cores} cores, "
          f"{args.repeats} interleaved repeats, load average {min(loads):.1f} .. {max(loads):.1f}\n")
    print("| measurement | tokens/s: median (quartiles) | tokens per CPU-second: median (quartiles) |")
    print("|---|---|---|")
    for method in methods:
        cells = [summary[method][f"{rate}_quartiles"] for rate in RATES]
        print(f"| {method} | "
              + " | ".join(f"{m / 1e3:.1f}k ({lo / 1e3:.1f}k .. {hi / 1e3:.1f}k)" for lo, m, hi in cells) + " |")
    for ceiling_method in methods[:2]:
        cells = [summary[f"data-prepare / {ceiling_method}"][f"{rate}_ratio_quartiles"] for rate in RATES]
        print(f"| data-prepare / {ceiling_method} (per repeat) | "
              + " | ".join(f"{m:.2f}x ({lo:.2f}x .. {hi:.2f}x)" for lo, m, hi in cells) + " |")
    core_hours = PAPER_TOKENS / cpu_rate / 3600
    print(f"\n16B tokens at the median data-prepare rate: {hours:.1f} hours on these {cores} shared cores; "
          f"{core_hours:.0f} CPU-hours at the median rate per CPU-second, so about {core_hours:.0f}/N hours on "
          "N free cores (pieces are independent)")
    result = {"sources": sources, "num_bytes": num_bytes, "cores": cores, "repeats": args.repeats,
              "load_average_range": [min(loads), max(loads)], "runs": runs, "summary": summary,
              "hours_for_16B_tokens": hours, "cpu_hours_for_16B_tokens": core_hours}
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["summary"]))


if __name__ == "__main__":
    main()
