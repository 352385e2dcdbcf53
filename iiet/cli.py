"""The ``iiet`` command line.

Every subcommand is a plain typed Python function; jsonargparse builds its ``--help`` from the signature and the
docstring, and accepts ``--config recipe.yaml`` for any of them. To add a command, add one ``name: "module:function"``
entry to ``COMMANDS``.
"""

from __future__ import annotations

import importlib
import sys

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
    "demo": "iiet.train.commands:demo",
    "tokenizer-train": "iiet.data.commands:tokenizer_train",
    "data-prepare": "iiet.data.commands:data_prepare",
    "eval": "iiet.eval.commands:eval_command",
    "serve": "iiet.serve.commands:serve",
}


def _resolve(path: str):
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


def main(argv: list[str] | None = None) -> None:
    from jsonargparse import CLI

    argv = sys.argv[1:] if argv is None else argv
    from iiet.errors import IIETError

    try:
        CLI({name: _resolve(path) for name, path in COMMANDS.items()}, args=argv, as_positional=False)
    except (IIETError, FileNotFoundError) as error:
        # Bad user input surfaces as one line naming the problem; the message itself says how to fix it.
        print(f"iiet: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
