"""The ``iiet`` command line (``python -m iiet.cli`` and ``torchrun -m iiet.cli`` too).

Every subcommand is a plain typed Python function; jsonargparse builds its ``--help`` from the signature and the
docstring, and accepts ``--config recipe.yaml`` for any of them. Only the module of the command being run is
imported. The table of commands and the answers that need no command (``--help``, ``--version``) are in the
top-level ``iiet_cli`` module, which the console script runs without importing torch.
"""

from __future__ import annotations

import importlib
import sys

from jsonargparse import CLI

import iiet_cli
from iiet.cli_parser import Parser, one_line
from iiet.errors import IIETError

COMMANDS = iiet_cli.COMMANDS


def _resolve(path: str):
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


def run_command(argv: list[str]) -> None:
    """Run ``argv[0]`` (a name in ``COMMANDS``) with the options ``argv[1:]``."""
    name = argv[0]
    try:
        # Parser: parse errors are one line with a "did you mean" too, and --help ends with examples.
        CLI({name: _resolve(COMMANDS[name])}, args=argv, as_positional=False, prog="iiet", parser_class=Parser)
    except (IIETError, FileNotFoundError) as error:
        # Bad user input surfaces as one line naming the problem; the message itself says how to fix it. Runs that
        # stop for another reason (divergence, a full disk: 1; a signal: 128 + its number) say so the same way.
        print(f"iiet: error: {one_line(str(error))}", file=sys.stderr)
        raise SystemExit(getattr(error, "exit_code", 2)) from None
    except KeyboardInterrupt:  # Ctrl-C outside a training loop (which saves a checkpoint first)
        print("iiet: error: interrupted (Ctrl-C); no result was left half-written: rerun the command to start over.",
              file=sys.stderr)
        raise SystemExit(130) from None


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in COMMANDS:
        run_command(argv)
    else:
        iiet_cli.main(argv)  # help, version, or an unknown command


if __name__ == "__main__":
    main()
