"""SCIM values as the gateway holds them: JSON trees (dicts, lists, strings, numbers, booleans, None)."""

from __future__ import annotations

import copy
from typing import Any

_ATOMS = frozenset({str, int, float, bool, type(None)})


def json_copy(value: Any) -> Any:
    """A deep copy of a JSON tree: new dicts and lists, the immutable leaves shared. Several times faster than
    copy.deepcopy, which keeps a memo for cycles and shared parts a JSON tree cannot have; anything else in the
    tree is copied by copy.deepcopy."""
    kind = type(value)
    if kind is dict:
        return {key: json_copy(item) for key, item in value.items()}
    if kind is list:
        return [json_copy(item) for item in value]
    if kind in _ATOMS:
        return value
    return copy.deepcopy(value)


__all__ = ["json_copy"]
