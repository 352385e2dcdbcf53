"""Reading and writing the JSON files of IIAD (``influence.json``, ``plan.json``) with one set of clear errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from iiet.errors import IIETError
from iiet.outputs import atomic_write


def write_json(path: str | Path, format: str, version: int, values: dict[str, Any]) -> Path:
    """Write ``values`` tagged with its file ``format`` and ``version``; creates the parent folder."""
    return atomic_write(path, json.dumps({"format": format, "version": version, **values}, indent=1) + "\n")


def read_json(path: str | Path, what: str, command: str) -> Any:
    """The parsed JSON at ``path``; ``IIETError`` naming ``what`` and the ``command`` that makes it otherwise."""
    path = Path(path)
    if not path.is_file():
        raise IIETError(f"{what} {path} does not exist; make one with `{command}`.")
    try:
        raw = json.loads(path.read_text())
    except ValueError as error:  # not JSON, or not even text
        raise IIETError(f"{path} is not JSON ({str(error)[:80]}); give a {what} written by `{command}`.") from None
    if not isinstance(raw, dict):
        raise IIETError(f"{path} holds a JSON {type(raw).__name__}, not an object; give the {what} written by "
                        f"`{command}`.")
    return raw
