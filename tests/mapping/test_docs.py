"""docs/mapping.md and docs/connectors/*.md document every key of the mapping schema, and nothing else."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from gateway.connectors.registry import load_registry
from gateway.mapping.model import mapping_json_schema

DOCS = Path(__file__).resolve().parents[2] / "docs"
# writing.md is the guide to writing a connector: it documents no key of the schema.
DOC_FILES = [DOCS / "mapping.md", *sorted(p for p in (DOCS / "connectors").glob("*.md") if p.name != "writing.md")]


def schema_keys() -> set[str]:
    # The built-in connectors' keys: a third-party plugin (the tests' example) documents its own.
    builtin = [cls.Config for cls in load_registry().types.values() if cls.__module__.startswith("scim_gateway_plugins.")]
    schema = mapping_json_schema(builtin)
    keys: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            keys.update(node.get("properties", {}))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return keys


def documented_keys() -> set[str]:
    keys: set[str] = set()
    for doc in DOC_FILES:
        keys.update(re.findall(r"^\| `([A-Za-z0-9_]+)` \|", doc.read_text(), re.M))
    return keys


def test_every_schema_key_is_documented() -> None:
    assert schema_keys() - documented_keys() == set()


def test_every_documented_key_exists() -> None:
    assert documented_keys() - schema_keys() == set()
