"""Typed configs chosen by name: ``"name"`` or ``{"name": ..., **parameters}`` -> the registered dataclass.

Schemes (``configuration_iiet.SCHEMES``) and correctors (``correctors.CORRECTORS``) are both read this way, so an
unknown name or parameter gives the same one-line error everywhere.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .errors import SchemeConfigError


def parse_named(value: str | dict[str, Any], registry: dict[str, type], kind: str):
    """Build ``registry[name](**parameters)`` from a name or a dict with a ``name`` key; ``kind`` names it in errors."""
    if isinstance(value, str):
        value = {"name": value}
    if not isinstance(value, dict):
        raise SchemeConfigError(f"{kind} must be a name or a dict with a 'name' key, got {value!r}.")
    params = dict(value)
    name = params.pop("name", None)
    if name not in registry:
        raise SchemeConfigError(f"unknown {kind} {name!r}; choose one of {sorted(registry)}.")
    cls = registry[name]
    known = {field.name for field in dataclasses.fields(cls)}
    unknown = sorted(set(params) - known)
    if unknown:
        raise SchemeConfigError(f"{kind} {name!r} has no parameter(s) {unknown}; its parameters are {sorted(known)}.")
    return cls(**params)
