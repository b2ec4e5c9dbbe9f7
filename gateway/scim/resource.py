"""Incoming resource bodies: validate and coerce them to canonical SCIM JSON (RFC 7643 §2, §7).

Strict about what would corrupt data (a wrong type, two primaries, a missing
userName), tolerant of what Entra ID and Okta are known to send: attribute names
in any case, unknown attributes and schema URNs, nulls, read-only attributes
echoed back, booleans as strings, `manager` as a plain id, extension attributes
flattened to URN-qualified top-level keys.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from ..schema import Attribute, Resolved, ResourceType
from .errors import invalid_syntax, invalid_value

# No SCIM attribute, index or count needs a longer integer (far past it, converting one is itself the cost).
MAX_INTEGER_DIGITS = 1000
_LITERAL = re.compile(r'"(?:[^"\\]|\\.)*"|\d+')


def long_integer_in(text: str) -> int | None:
    """The digits of the first integer literal of a filter or path longer than MAX_INTEGER_DIGITS (outside
    quoted strings), or None."""
    for token in _LITERAL.finditer(text):
        if token.group().isdigit() and len(token.group()) > MAX_INTEGER_DIGITS:
            return len(token.group())
    return None


def long_integer_detail(where: str, digits: int) -> str:
    """How every refusal of an over-long integer reads: what and where, never how the gateway is built."""
    return f"{where}: an integer of {digits} digits is more than the {MAX_INTEGER_DIGITS} any SCIM value may have"


# The caller owns these; a body may carry them but they are never taken from it.
_CALLER_OWNED = frozenset({"schemas", "id", "meta"})


def is_empty(value: Any) -> bool:
    """Unassigned in the sense of RFC 7643 §2.5: null, an empty string, list or object."""
    if value is None:
        return True
    if isinstance(value, str):
        return not value.strip()
    if isinstance(value, (list, dict)):
        return not value
    return False


def is_read_only(resolved: Resolved) -> bool:
    return resolved.attribute.mutability == "readOnly" or (resolved.sub is not None and resolved.sub.mutability == "readOnly")


def normalize_resource(body: Any, rtype: ResourceType) -> dict[str, Any]:
    """Validate a POST/PUT body; return its attributes in canonical form, without id, meta and schemas.

    Raises ScimError 400 (invalidSyntax when the body is not an object, else
    invalidValue naming the attribute).
    """
    if not isinstance(body, dict):
        raise invalid_syntax("the request body must be a JSON object")
    out: dict[str, Any] = {}
    for key, value in body.items():
        if value is None or key.lower() in _CALLER_OWNED:
            continue
        split = rtype.split_urn(key)
        if split is None:
            continue
        urn, rest = split
        if urn is not None and not rest:
            _put_schema_object(out, urn, value, rtype)
            continue
        attr, _, sub = rest.partition(".")
        resolved = rtype.resolve(attr, sub or None, urn)
        if resolved is not None:
            _put(out, resolved, value)
    check_required(out, rtype)
    return out


def check_string_lengths(value: Any, limit: int, where: str = "") -> None:
    """Every string in a request's value, at any depth, holds at most `limit` characters (max_string_chars);
    raises ScimError 400 invalidValue naming where the first longer one is. A value is never quoted (it may
    be a password)."""
    if isinstance(value, str):
        if len(value) > limit:
            raise invalid_value(
                f"{where or 'value'}: a string of {len(value)} characters is longer than max_string_chars {limit}"
            )
    elif isinstance(value, dict):
        for key, item in value.items():
            check_string_lengths(item, limit, f"{where}.{key}" if where else str(key))
    elif isinstance(value, list):
        for item in value:
            check_string_lengths(item, limit, where)


def normalize_value(value: Any, resolved: Resolved, *, element: bool = False) -> Any:
    """Coerce one value for `resolved` as normalize_resource would; None stays None.

    With `element`, `value` is one element of the multi-valued attribute rather
    than the whole list. Read-only sub-attributes inside a complex value are
    dropped, the attribute's own mutability is the caller's to check.
    """
    if value is None:
        return None
    if resolved.sub is not None:
        return _coerce(value, resolved.sub, resolved.dotted)
    return _coerce(value, resolved.attribute, resolved.dotted, element=element)


def check_required(resource: dict[str, Any], rtype: ResourceType) -> None:
    """Every required core attribute (userName, a group's displayName) is present and not empty."""
    for attribute in rtype.schema.attributes:
        if attribute.required and is_empty(resource.get(attribute.name)):
            raise invalid_value(f"{attribute.name} is required")


def _put_schema_object(out: dict[str, Any], urn: str, value: Any, rtype: ResourceType) -> None:
    if not isinstance(value, dict):
        raise invalid_value(f"{urn}: expected an object, got {value!r}")
    for key, item in value.items():
        if item is None:
            continue
        attr, _, sub = key.partition(".")
        resolved = rtype.resolve(attr, sub or None, urn)
        if resolved is not None:
            _put(out, resolved, item)


def _put(out: dict[str, Any], resolved: Resolved, value: Any) -> None:
    if is_read_only(resolved):
        return
    attribute = resolved.attribute
    if resolved.sub is not None and attribute.multi_valued:
        return  # `emails.value` names no single place to put a value
    coerced = normalize_value(value, resolved)
    if coerced is None or (isinstance(coerced, (list, dict)) and not coerced):
        return
    container = out if resolved.urn is None else out.setdefault(resolved.urn, {})
    existing = container.get(attribute.name)
    if resolved.sub is not None:
        if not isinstance(existing, dict):
            existing = container[attribute.name] = {}
        existing[resolved.sub.name] = coerced
    elif isinstance(existing, dict) and isinstance(coerced, dict):
        # The nested and the flattened spelling of one complex attribute add up.
        existing.update(coerced)
    else:
        container[attribute.name] = coerced


def _coerce(value: Any, attribute: Attribute, path: str, *, element: bool = False) -> Any:
    if attribute.multi_valued and not element:
        items = value if isinstance(value, list) else [value]
        out = []
        for item in items:
            if item is None:
                continue
            coerced = _coerce(item, attribute, path, element=True)
            if not (isinstance(coerced, dict) and not coerced):
                out.append(coerced)
        _check_one_primary(out, attribute, path)
        return out
    if attribute.type == "complex":
        return _coerce_complex(value, attribute, path)
    return _coerce_scalar(value, attribute, path)


def _coerce_complex(value: Any, attribute: Attribute, path: str) -> dict[str, Any]:
    if isinstance(value, str) and not attribute.multi_valued and attribute.sub("value") is not None:
        # Entra sends `manager` as the manager's id rather than {"value": id}.
        value = {"value": value}
    if not isinstance(value, dict):
        raise invalid_value(f"{path}: expected an object, got {_shown(value, attribute)}")
    out: dict[str, Any] = {}
    for key, item in value.items():
        sub = attribute.sub(key)
        if sub is None or item is None or sub.mutability == "readOnly":
            continue
        out[sub.name] = _coerce(item, sub, f"{path}.{sub.name}")
    return out


def _shown(value: Any, attribute: Attribute) -> str:
    """A refused value as a detail quotes it; never one of a write-only attribute (password): only its type."""
    return f"a {type(value).__name__}" if attribute.write_only else repr(value)


def _coerce_scalar(value: Any, attribute: Attribute, path: str) -> Any:
    kind = attribute.type
    if kind == "boolean":
        if isinstance(value, bool):
            return value
        # Entra sends "True" / "False".
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        raise invalid_value(f"{path}: expected a boolean, got {_shown(value, attribute)}")
    if kind == "integer":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise invalid_value(f"{path}: expected an integer, got {_shown(value, attribute)}")
    if kind == "decimal":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return value
        raise invalid_value(f"{path}: expected a number, got {_shown(value, attribute)}")
    if kind == "dateTime":
        if isinstance(value, str) and _is_datetime(value):
            return value
        raise invalid_value(f"{path}: expected an ISO 8601 dateTime, got {_shown(value, attribute)}")
    if isinstance(value, str):
        return value
    raise invalid_value(f"{path}: expected a string, got {_shown(value, attribute)}")


def _is_datetime(value: str) -> bool:
    try:
        datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return False
    return True


def _check_one_primary(items: list[Any], attribute: Attribute, path: str) -> None:
    if attribute.sub("primary") is None:
        return
    primaries = sum(1 for item in items if isinstance(item, dict) and item.get("primary") is True)
    if primaries > 1:
        raise invalid_value(f"{path}: at most one element may have primary true, got {primaries}")
