"""A PatchOp message (RFC 7644 §3.5.2) before it is applied: its operations, its size, and the shape IdPs
send for membership changes (only adds and removes of members by id), which the provisioner applies to
just those members."""

from __future__ import annotations

import json
import re
from typing import Any

from ..schema import PATCH_OP
from .errors import ScimError, invalid_syntax
from .resource import check_string_lengths


def patch_operations(body: Any) -> list[dict[str, Any]]:
    """The operations of a PatchOp body; 400 invalidSyntax when it is not one."""
    if not isinstance(body, dict):
        raise invalid_syntax("the PATCH body must be a JSON object")
    fields = {key.lower(): value for key, value in body.items()}
    schemas = fields.get("schemas")
    if not isinstance(schemas, list) or not any(isinstance(s, str) and s.lower() == PATCH_OP.lower() for s in schemas):
        raise invalid_syntax(f"schemas must contain {PATCH_OP}")
    operations = fields.get("operations")
    if not isinstance(operations, list) or not operations:
        raise invalid_syntax("Operations must be a non-empty list")
    for operation in operations:
        if not isinstance(operation, dict):
            raise invalid_syntax(f"each operation must be a JSON object, got a {json_type(operation)}")
    return operations


def json_type(value: Any) -> str:
    """A JSON value's type as a message names it."""
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(type(value), "number")


def check_patch_limits(body: Any, *, max_operations: int, max_values: int, max_chars: int) -> None:
    """Refuse, before anything is read or written, a PATCH too large to apply (413, as Bulk's maxOperations).

    Values count the entries of every list an operation carries (members, emails, ...),
    also inside a path-less value object; any other value counts one. A string value longer than
    `max_chars` is 400 invalidValue naming the attribute, as in a POST or PUT.
    """
    operations = patch_operations(body)
    if len(operations) > max_operations:
        raise ScimError(
            413, f"the PATCH request has {len(operations)} operations, more than max_patch_operations {max_operations}"
        )
    values = 0
    for operation in operations:
        value = next((v for k, v in operation.items() if isinstance(k, str) and k.lower() == "value"), None)
        path = next((p for k, p in operation.items() if isinstance(k, str) and k.lower() == "path"), None)
        check_string_lengths(value, max_chars, path if isinstance(path, str) else "")
        if isinstance(value, list):
            values += len(value)
        elif isinstance(value, dict):
            values += sum(len(v) if isinstance(v, list) else 1 for v in value.values())
        else:
            values += 1
    if values > max_values:
        raise ScimError(
            413, f"the PATCH request carries {values} values across its operations, more than max_patch_values {max_values}"
        )


# `members[value eq "id"]`, optionally URN-qualified: the path Entra and Okta use to remove one member.
_MEMBER_VALUE_PATH = re.compile(
    r'^\s*(?:urn:ietf:params:scim:schemas:core:2\.0:group:)?members\s*\[\s*value\s+eq\s+"((?:[^"\\]|\\.)*)"\s*\]\s*$', re.I
)
_MEMBERS_PATH = re.compile(r"^\s*(?:urn:ietf:params:scim:schemas:core:2\.0:group:)?members\s*$", re.I)


def member_changes(body: Any) -> dict[str, dict[str, Any] | None] | None:
    """A Group PATCH that only adds or removes members by id, as {id: member object to add, or None to remove}.

    This is what IdPs send for every membership change (Entra in parallel, one
    member each). It lets the provisioner touch just those members, whatever
    the group's size, instead of applying the PATCH to the whole member list.
    Anything else (replace, a remove of all members, another attribute, an
    element that is not a plain `{"value": id}`) answers None: the general path.
    The last operation naming an id wins, as applying them in order would.
    """
    try:
        operations = patch_operations(body)
    except ScimError:
        return None
    changes: dict[str, dict[str, Any] | None] = {}
    for operation in operations:
        fields = {key.lower(): value for key, value in operation.items() if isinstance(key, str)}
        op, path, value = fields.get("op"), fields.get("path"), fields.get("value")
        if not isinstance(op, str) or not isinstance(path, str) or set(fields) - {"op", "path", "value"}:
            return None
        op = op.lower()
        single = _MEMBER_VALUE_PATH.match(path)
        if op == "remove" and single is not None and value is None:
            try:
                member_id = json.loads(f'"{single.group(1)}"')
            except ValueError:
                return None
            changes.pop(member_id, None)
            changes[member_id] = None
            continue
        if op not in ("add", "remove") or not _MEMBERS_PATH.match(path) or not isinstance(value, list) or not value:
            return None
        for item in value:
            if (
                not isinstance(item, dict)
                or not isinstance(item.get("value"), str)
                or set(item) - {"value", "display", "type", "$ref"}
            ):
                return None
            if item.get("type") not in (None, "User", "Group") or not all(isinstance(v, str) for v in item.values()):
                return None
            changes.pop(item["value"], None)  # re-inserted last: the order of the last mention is the order applied
            changes[item["value"]] = item if op == "add" else None
    return changes
