"""The ``iiet`` console command: the table of subcommands, and answers that need none of them.

``iiet``, ``iiet --help``, ``iiet --version`` and an unknown subcommand are answered from the table below without
importing ``iiet`` (whose ``import`` registers the models with transformers, and so imports torch: seconds on a busy
machine). Any real subcommand is handed to ``iiet.cli``, which imports only that command's module. This module lives
outside the package because importing anything inside ``iiet`` runs ``iiet/__init__.py`` first.

To add a command: one ``name: "module:function"`` entry in ``COMMANDS`` and its one-line summary (the first line of
the function's docstring; a test keeps the two equal) in ``SUMMARIES``.
"""

from __future__ import annotations

import difflib
import os
import sys
from importlib import metadata

COMMANDS: dict[str, str] = {
    "info": "iiet.models.presets:info",
    "upcycle": "iiet.models.convert:upcycle",
    "export": "iiet.models.export:export",
    "reproduce": "iiet.study.reproduce:reproduce",
    # -- commands --
    "bench": "iiet.bench.commands:bench",
    "influence": "iiet.iiad.commands:influence",
    "plan": "iiet.iiad.commands:plan",
    "distill": "iiet.iiad.commands:distill",
    "train": "iiet.train.commands:train",
    "plot": "iiet.train.commands:plot",
    "demo": "iiet.study.demo:demo",
    "tokenizer-train": "iiet.data.commands:tokenizer_train",
    "data-prepare": "iiet.data.commands:data_prepare",
    "eval": "iiet.eval.commands:eval_command",
    "serve": "iiet.serve.commands:serve",
}
SUMMARIES: dict[str, str] = {
    "info": "Print each preset's parameters, block evaluations, FLOPs and KV-cache bytes per token under each scheme.",
    "upcycle": "Convert a LLaMA checkpoint directory into a numerical-Transformer checkpoint that starts from its "
               "weights.",
    "export": "Write a checkpoint in another model family's format, loadable without iiet (--to llama: "
              "LlamaForCausalLM).",
    "reproduce": "Run the paper's study end to end (train, evaluate, IIAD, benchmark, report); skips what is already "
                 "done.",
    "bench": "Measure prefill and decode speed, FLOPs, KV cache and memory of several models in one run.",
    "influence": "Measure block influence (Eq. 12) and iteration influence (§4.1) of a model over random text segments.",
    "plan": "Turn measured iteration influence into an iteration plan (corrections per layer) for an efficient IIET.",
    "distill": "Iteration Influence-Aware Distillation: continue pretraining an efficient student against its full "
               "teacher.",
    "train": "Pretrain a model from scratch (or resume a run): AdamW, warm-up + cosine, checkpoints, HF export.",
    "plot": "Draw the training and validation loss of several runs side by side, from their metrics.jsonl.",
    "demo": "Offline demo of the whole method: train, IIAD, evaluate and benchmark in about ``--minutes``, one table.",
    "tokenizer-train": "Train a byte-level BPE tokenizer (special tokens <s>, </s>, <pad>, <unk>) and save it for "
                       "AutoTokenizer.",
    "data-prepare": "Tokenize sources once into packed shards (seq_len tokens per row) indexed by meta.json.",
    "eval": "Zero-shot lm-eval evaluation of one or more checkpoints, printed and saved as the paper's Table 1.",
    "serve": "Serve a checkpoint behind an OpenAI-compatible API (transformers serve's app) until Ctrl+C.",
}
HELP_FLAGS = ("-h", "--help")


def version() -> str:
    try:
        return metadata.version("iiet")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [
        "usage: iiet [-h] [--version] COMMAND ...",
        "",
        "Numerical Transformers (IIET, E-IIET, PCformer, DLCL, Transformer++, weight sharing): train, distil,",
        "evaluate, benchmark and serve them. `iiet COMMAND --help` lists a command's options; every command also",
        "takes --config FILE.yaml.",
        "",
        "commands:",
        *(f"  {name:<{width}}  {SUMMARIES[name]}" for name in COMMANDS),
        "",
        "options:",
        "  -h, --help  show this help message and exit",
        "  --version   print the version and exit",
    ]
    return "\n".join(lines)


def unknown_command(name: str) -> str:
    close = difflib.get_close_matches(name, list(COMMANDS), n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"iiet: error: unknown command {name!r}; {hint}choose from {', '.join(COMMANDS)} (iiet --help)."


def main(argv: list[str] | None = None) -> None:
    try:
        _run(sys.argv[1:] if argv is None else argv)
        sys.stdout.flush()  # inside the try: a closed pipe surfaces here, not at interpreter exit
    except BrokenPipeError:
        # The reader went away (``iiet bench --help | head``): stop quietly, as other command-line tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(1) from None


def _run(argv: list[str]) -> None:
    if not argv or argv[0] in HELP_FLAGS:
        print(usage())
        return
    if argv[0] == "--version":
        print(f"iiet {version()}")
        return
    if argv[0] not in COMMANDS:
        print(unknown_command(argv[0]), file=sys.stderr)
        raise SystemExit(2)
    from iiet import cli

    cli.main(argv)


if __name__ == "__main__":
    main()
