"""Records <-> the target's SCIM resources.

A record is the target's resource with its attribute paths as field names, as SCIM writes them:
`userName`, `name.givenName` (sub-attributes of a complex attribute, dotted), `emails` (a multi-valued
attribute, its list as is), `emails[type eq "work"].value` (a sub-attribute of the first element of that
type), and extension attributes under their schema URN, `urn:...:enterprise:2.0:User:department`,
`urn:...:enterprise:2.0:User:manager.value`. `id`, `schemas` and `meta` are not fields: the id is the
native id, the others are the target's.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway.connectors.base import Record
from gateway.connectors.errors import AppInvalid

NOT_FIELDS = frozenset({"id", "schemas", "meta"})
# `attr[type eq "work"].sub`: the one selector a field may hold (the one SCIM's multi-valued attributes share).
_ELEMENT = re.compile(r'^(?P<path>[^\[\]"]+)\[type eq "(?P<type>[^"\\]*)"\]\.(?P<sub>[^\[\]".:]+)$')


@dataclass(frozen=True, slots=True)
class Field:
    """One field parsed: its extension URN (None for the core schema), the attribute path, and an element's type and sub-attribute."""

    urn: str | None
    parts: tuple[str, ...]  # attribute, sub-attribute
    element: tuple[str, str] | None  # (type, sub-attribute) of an element of a multi-valued attribute

    @property
    def attribute(self) -> str:
        """The SCIM path of the attribute holding the value (the whole list, for an element field)."""
        path = ".".join(self.parts)
        return f"{self.urn}:{path}" if self.urn else path

    @property
    def top(self) -> str:
        """The resource's key holding it: the attribute, or the extension's URN."""
        return self.urn or self.parts[0]


def parse_field(name: str) -> Field:
    head = name.split("[", 1)[0]
    urn = None
    rest = name
    if head.lower().startswith("urn:"):
        cut = head.rfind(":")
        urn, rest = name[:cut], name[cut + 1 :]
    element = None
    match = _ELEMENT.match(rest)
    if match is not None:
        path, element = match.group("path"), (match.group("type"), match.group("sub"))
    elif "[" in rest or "]" in rest:
        raise AppInvalid(f'field {name!r}: the one selector a field may hold is [type eq "..."] before a sub-attribute')
    else:
        path = rest
    parts = tuple(path.split("."))
    if not all(parts) or len(parts) > 2:
        raise AppInvalid(f"field {name!r} is no attribute path (attribute, or attribute.subAttribute)")
    return Field(urn, parts, element)


def element_field(path: str, kind: str, sub: str) -> str:
    return f'{path}[type eq "{kind}"].{sub}'


def to_record(resource: Mapping[str, Any], skip: frozenset[str] = frozenset()) -> Record:
    """The target's resource as a record (see the module docstring); `skip`: more top-level keys left out."""
    record: Record = {}
    for key, value in resource.items():
        if key in NOT_FIELDS or key in skip:
            continue
        if key.lower().startswith("urn:") and isinstance(value, Mapping):
            _flatten(record, value, f"{key}:")
        else:
            _flatten(record, {key: value}, "")
    return record


def _flatten(record: Record, obj: Mapping[str, Any], prefix: str) -> None:
    for key, value in obj.items():
        name = prefix + key
        if isinstance(value, Mapping) and value and "." not in prefix.rsplit(":", 1)[-1]:
            _flatten(record, value, name + ".")
            continue
        record[name] = value
        if isinstance(value, list):
            for element in value:
                kind = element.get("type") if isinstance(element, Mapping) else None
                if not isinstance(kind, str) or '"' in kind or "\\" in kind:
                    continue
                for sub, sub_value in element.items():
                    if sub != "type":
                        record.setdefault(element_field(name, kind, sub), sub_value)  # the first of that type


def apply(resource: dict[str, Any], name: str, value: Any) -> None:
    """Set one field in a resource (None clears it), creating what holds it: an object, a list element of that type."""
    field = parse_field(name)
    node: dict[str, Any] = resource
    if field.urn is not None:
        holder = resource.get(field.urn)
        if not isinstance(holder, dict):
            if value is None:
                return
            holder = resource[field.urn] = {}
        node = holder
    *parents, leaf = field.parts
    for part in parents:
        child = node.get(part)
        if not isinstance(child, dict):
            if value is None:
                return
            if child is not None:
                raise AppInvalid(f"field {name!r}: {part} is a value, so nothing can be inside it")
            child = node[part] = {}
        node = child
    if field.element is None:
        if value is None:
            node.pop(leaf, None)
        elif isinstance(node.get(leaf), dict) and not isinstance(value, dict):
            raise AppInvalid(f"field {name!r} is an object, so it cannot also be a value")
        else:
            node[leaf] = value
        return
    kind, sub = field.element
    elements = node.get(leaf)
    if elements is None:
        elements = []
    if not isinstance(elements, list):
        raise AppInvalid(f"field {name!r}: {leaf} is not multi-valued")
    found = next((e for e in elements if isinstance(e, dict) and str(e.get("type", "")).casefold() == kind.casefold()), None)
    if found is None:
        if value is None:
            return
        found = {"type": kind}
        elements.append(found)
    if value is None:
        found.pop(sub, None)
        if not set(found) - {"type", "primary"}:
            elements.remove(found)  # nothing left of it but its type
    else:
        found[sub] = value
    if elements:
        node[leaf] = elements
    else:
        node.pop(leaf, None)


def to_resource(record: Record, schemas: list[str]) -> dict[str, Any]:
    """A new resource from a record (a field without value left out), its `schemas` the core one and each extension used."""
    resource: dict[str, Any] = {}
    for name, value in record.items():
        if value is not None:
            apply(resource, name, value)
    return with_schemas(resource, schemas)


def merged(current: Mapping[str, Any], changes: Record) -> dict[str, Any]:
    """The whole resource for a PUT: the current one with the changes applied, without `meta`."""
    resource = {key: copy.deepcopy(value) for key, value in current.items() if key != "meta"}
    for name, value in changes.items():
        apply(resource, name, value)
    schemas = resource.get("schemas")
    return with_schemas(resource, list(schemas) if isinstance(schemas, list) else [])


def with_schemas(resource: dict[str, Any], schemas: list[str]) -> dict[str, Any]:
    urns = [key for key in resource if key.lower().startswith("urn:") and isinstance(resource[key], dict) and resource[key]]
    listed = list(dict.fromkeys([*schemas, *urns]))
    return {"schemas": listed, **{key: value for key, value in resource.items() if key != "schemas"}}


def patch_ops(changes: Record, current: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """PATCH operations for the changes: replace or remove each field by its path; an element field replaces its
    attribute's whole list (a filtered path that matches nothing is an error on many targets), from `current`."""
    ops: list[dict[str, Any]] = []
    lists: dict[str, Field] = {}
    for name, value in changes.items():
        field = parse_field(name)
        if field.element is not None:
            lists.setdefault(field.attribute, field)
        elif value is None:
            ops.append({"op": "remove", "path": field.attribute})
        else:
            ops.append({"op": "replace", "path": field.attribute, "value": value})
    if lists and current is None:  # a dry run: what will be read is not known yet
        for path in lists:
            fields = {name: value for name, value in changes.items() if parse_field(name).attribute == path}
            ops.append({"op": "replace", "path": path, "value": f"<{path} as read, with {fields}>"})
    elif lists:
        assert current is not None
        after = merged(current, {name: value for name, value in changes.items() if parse_field(name).element is not None})
        for path, field in lists.items():
            value = _at(after, field)
            ops.append({"op": "replace", "path": path, "value": value} if value else {"op": "remove", "path": path})
    return ops


def needs_current(changes: Record) -> bool:
    return any(parse_field(name).element is not None for name in changes)


def _at(resource: Mapping[str, Any], field: Field) -> Any:
    node: Any = resource.get(field.urn) if field.urn else resource
    for part in field.parts:
        node = node.get(part) if isinstance(node, Mapping) else None
    return node


def filter_expression(name: str, op: str, value: Any) -> str:
    """A SCIM filter asking for records whose field matches (values quoted as JSON strings, as RFC 7644 says)."""
    field = parse_field(name)
    literal = json.dumps(value, ensure_ascii=False) if isinstance(value, str) else json.dumps(value)
    if field.element is not None:
        kind, sub = field.element
        term = f"{sub} pr" if op == "pr" else f"{sub} {op} {literal}"
        return f"{field.attribute}[type eq {json.dumps(kind, ensure_ascii=False)} and {term}]"
    return f"{field.attribute} pr" if op == "pr" else f"{field.attribute} {op} {literal}"


def matches(record: Record, name: str, op: str, wanted: Any) -> bool:
    """Whether the record's field matches as find() promises: strings case-insensitively, a list when any value does."""
    stored = record.get(name)
    values = stored if isinstance(stored, list) else [stored]
    if op == "pr":
        return any(v not in (None, "", [], {}) for v in values)
    for value in values:
        if isinstance(value, Mapping):
            value = value.get("value")
        if value is None or isinstance(value, Mapping | list):
            continue
        if isinstance(value, bool) or isinstance(wanted, bool):
            text, probe = str(value).lower(), str(wanted).lower()
        else:
            text, probe = str(value).casefold(), str(wanted).casefold()
        if (
            (op == "eq" and text == probe)
            or (op == "co" and probe in text)
            or (op == "sw" and text.startswith(probe))
            or (op == "ew" and text.endswith(probe))
        ):
            return True
    return False


__all__ = [
    "Field",
    "apply",
    "filter_expression",
    "matches",
    "merged",
    "needs_current",
    "parse_field",
    "patch_ops",
    "to_record",
    "to_resource",
]
