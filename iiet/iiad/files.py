"""Reading and writing the JSON files of IIAD (``influence.json``, ``plan.json``) with one set of clear errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from iiet.errors import IIETError


def write_json(path: str | Path, format: str, version: int, values: dict[str, Any]) -> Path:
    """Write ``values`` tagged with its file ``format`` and ``version``; creates the parent folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"format": format, "version": version, **values}, indent=1) + "\n")
    return path


def read_json(path: str | Path, what: str, command: str) -> Any:
    """The parsed JSON at ``path``; ``IIETError`` naming ``what`` and the ``command`` that makes it otherwise."""
    path = Path(path)
    if not path.is_file():
        raise IIETError(f"{what} {path} does not exist; make one with `{command}`.")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise IIETError(f"{path} is not JSON ({error}); give a {what} written by `{command}`.") from None
