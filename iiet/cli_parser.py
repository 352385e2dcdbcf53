"""The CLI's argument parser: every parse error is one ``iiet: error:`` line with a "did you mean", and each
command's ``--help`` ends with examples.

jsonargparse builds the parsers from the commands' signatures (``iiet.cli``); this subclass only changes how they
fail and what ``--help`` shows. A typo of a subcommand, an option (``--run.outptu_dir``), a YAML key of a
``--config`` file (``run: {outptu_dir: x}``) or a choice (``--run.parallel dpp``) is answered with the closest
valid name instead of ~35 lines of usage.
"""

from __future__ import annotations

import difflib
import re
import sys
from typing import NoReturn

from jsonargparse import ArgumentParser

PROG = "iiet"
# Shown at the end of `iiet COMMAND --help`; each line is a command a user can paste.
EXAMPLES: dict[str, list[str]] = {
    "info": ["iiet info"],
    "upcycle": ["iiet upcycle --llama_dir llama-dir --output_dir iiet-from-llama --scheme '{name: iiet, num_iterations: 2}'"],
    "reproduce": ["iiet reproduce --preset tiny --output_dir runs/reproduce-tiny",
                  "iiet reproduce --preset cpu-small --sources '[corpus.jsonl]' --eval_data_dir /data/zero-shot"],
    "bench": ["iiet bench --models '[transformer++,iiet=3,e-iiet]' --preset cpu-small",
              "iiet bench --models '[runs/iiet/final]' --output_dir bench_results"],
    "influence": ["iiet influence --model runs/iiet/final --data data/wiki --output_dir runs/influence"],
    "plan": ["iiet plan --influence runs/influence/influence.json --rule e-iiet --output plan.json",
             "iiet plan --influence runs/influence/influence.json --rule budget --budget_flops_fraction 0.5"],
    "distill": ["iiet distill --distill.teacher runs/iiet/final --distill.plan plan.json --data.path data/wiki "
                "--optim.max_steps 1000 --run.output_dir runs/e-iiet"],
    "export": ["iiet export --model runs/euler/final --to llama --output_dir llama-export"],
    "serve": ["iiet serve --model runs/iiet/final --port 8000"],
    "train": ["iiet train --config configs/iiet-r3-55M.yaml --data.path data/wiki --run.output_dir runs/iiet",
              "iiet train --config configs/iiet-r3-55M.yaml --data.path data/wiki --run.resume auto   # continue",
              "torchrun --nproc_per_node 8 -m iiet.cli train --config configs/iiet-r3-340M.yaml --run.parallel fsdp"],
    "plot": ["iiet plot --runs '[runs/euler,runs/iiet]' --output loss_curves.png --x_axis step"],
    "demo": ["iiet demo --minutes 3"],
    "tokenizer-train": ["iiet tokenizer-train --sources '[corpus.jsonl]' --output_dir tokenizer --vocab_size 8192"],
    "data-prepare": ["iiet data-prepare --sources '[corpus.jsonl]' --tokenizer tokenizer --output_dir data/wiki"],
    "eval": ["iiet eval --models '[runs/euler/final,runs/iiet/final]' --data_dir /data/zero-shot --output_dir eval"],
}


def one_line(text: str) -> str:
    """A possibly multi-line message as one line."""
    line = ""
    for part in (p.strip() for p in text.strip().splitlines()):
        if part:
            line += part if not line else (" " if line.endswith(":") else "; ") + part
    return line


class Parser(ArgumentParser):
    """``ArgumentParser`` whose errors are one line (exit status 2) and whose help ends with examples."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("prog", PROG)
        super().__init__(*args, **kwargs)

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error:  # parsers used as libraries (e.g. load_config) raise instead
            super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        hint = suggestion(message, parser)
        command = _command(parser)
        help_hint = f" (see `{PROG}{' ' + command if command else ''} --help`)" if not hint else ""
        print(f"{PROG}: error: {one_line(message)}{hint}{help_hint}", file=sys.stderr)
        raise SystemExit(2)

    def format_help(self) -> str:
        text = super().format_help()
        examples = EXAMPLES.get(_command(self) or "")
        if examples:
            text += "\nexamples:\n" + "".join(f"  {line}\n" for line in examples)
        return text


def _command(parser: ArgumentParser) -> str | None:
    """The subcommand a parser belongs to (its prog is "iiet [options] train")."""
    last = (parser.prog or "").split()[-1:]
    return last[0] if last and last[0] in EXAMPLES else None


def _subparsers(parser: ArgumentParser) -> dict[str, ArgumentParser]:
    action = getattr(parser, "_subcommands_action", None)
    return dict(action._name_parser_map) if action is not None else {}


def _options(parser: ArgumentParser) -> list[str]:
    return [option for action in parser._actions for option in action.option_strings if option.startswith("--")]


def _closest(word: str, candidates: list[str]) -> str | None:
    matches = difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    return matches[0] if matches else None


def suggestion(message: str, parser: ArgumentParser) -> str:
    """" (did you mean ...?)" for the misspelt name in a jsonargparse/argparse error message, or ""."""
    if match := re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message):
        choices = re.findall(r"'([^']*)'", match.group(2))
        guess = _closest(match.group(1), choices)
        return f" (did you mean '{guess}'?)" if guess else ""
    if match := re.search(r"[Ss]ubcommand '([^']*)' does not accept option '([^']*)'", message):
        subparser = _subparsers(parser).get(match.group(1), parser)
        keys = [option[2:] for option in _options(subparser)]
        guess = _closest(match.group(2), keys)
        return f" (did you mean '{guess}'?)" if guess else ""
    if match := re.search(r"nrecognized arguments: (.*)", message):
        options = _options(parser) + [o for sub in _subparsers(parser).values() for o in _options(sub)]
        guesses = []
        for word in match.group(1).split():
            if word.startswith("--"):
                name = word.split("=", 1)[0]
                if guess := _closest(name, options):
                    guesses.append((name, guess))
        if len(guesses) == 1:
            return f" (did you mean {guesses[0][1]}?)"
        return f" (did you mean {', '.join(f'{g} for {n}' for n, g in guesses)}?)" if guesses else ""
    if match := re.search(r"Expected a typing\.Literal\[(.*?)\]\. Got value: (\S+)", message, re.DOTALL):
        choices = re.findall(r"'([^']*)'", match.group(1))
        guess = _closest(match.group(2), choices)
        return f" (did you mean '{guess}'?)" if guess else f" (choose one of {', '.join(choices)})"
    return ""
