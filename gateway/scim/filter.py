"""SCIM filters (RFC 7644 §3.4.2.2): parse, validate against a resource type, match in memory.

The grammar is scim2-models' (lark); this module only checks the parsed tree
against *our* resource types (so an attribute the app does not have is a 400
invalidFilter, never silently dropped) and evaluates it on plain dict resources
with the schema's case rules. scim/search.py compiles the same validated tree,
once, into what the store and the provisioner need of it.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from scim2_models.path import (
    AttrPath,
    CompareOperator,
    Comparison,
    FilterNode,
    LogicalExpr,
    LogicalOperator,
    Not,
    Present,
    ScimFilter,
    ValuePath,
)

from ..schema import Attribute, Resolved, ResourceType
from .errors import invalid_filter
from .resource import long_integer_detail, long_integer_in

MAX_FILTER_LENGTH = 4096
MAX_FILTER_DEPTH = 32

Op = CompareOperator
# `attr[.sub] op "text"` with no escapes or control characters in the text (RFC 7644 ATTRNAME; operators in any case, as the grammar takes them).
_SIMPLE_COMPARISON = re.compile(
    r'\s*([A-Za-z][A-Za-z0-9_-]*)(?:\.([A-Za-z][A-Za-z0-9_-]*))?\s+(eq|ne|co|sw|ew|gt|ge|lt|le)\s+"([^"\\\x00-\x1f]*)"\s*', re.I
)


@lru_cache(maxsize=2048)
def parse_filter_syntax(text: str) -> FilterNode:
    """Parse filter text to an AST (cached: IdPs send the same shapes again and again)."""
    if len(text) > MAX_FILTER_LENGTH:
        raise invalid_filter(f"the filter is {len(text)} characters long, more than the limit of {MAX_FILTER_LENGTH}")
    digits = long_integer_in(text)
    if digits is not None:
        raise invalid_filter(long_integer_detail("filter", digits))
    simple = _SIMPLE_COMPARISON.fullmatch(text)
    if simple is not None:
        # The IdPs' lookup (`userName eq "x"`), each with a new value: the grammar's answer, without its parser.
        attr, sub, op, value = simple.groups()
        return Comparison(AttrPath(attr, sub, None), CompareOperator(op.lower()), value)
    try:
        node = ScimFilter(text).ast
    except Exception as exc:  # scim2-models raises its own exception types per failure
        raise invalid_filter(f"invalid filter {text!r}: {exc}") from None
    depth = _depth(node)
    if depth > MAX_FILTER_DEPTH:
        raise invalid_filter(f"the filter nests {depth} levels deep, more than the limit of {MAX_FILTER_DEPTH}")
    return node


def _depth(node: FilterNode) -> int:
    if isinstance(node, LogicalExpr):
        return 1 + max(_depth(t) for t in node.terms)
    if isinstance(node, Not):
        return 1 + _depth(node.expr)
    if isinstance(node, ValuePath):
        return 1 + _depth(node.val_filter)
    return 1


def resolve_attr_path(rtype: ResourceType, path: AttrPath, where: str = "filter") -> Resolved:
    resolved = rtype.resolve(path.attr, path.sub_attr, path.uri)
    if resolved is None:
        raise invalid_filter(f"{where}: {rtype.name} has no attribute {str(path)!r}")
    return resolved


def parse_filter(text: str, rtype: ResourceType) -> FilterNode:
    """Parse and validate a filter for one resource type; raises ScimError 400 invalidFilter."""
    node = parse_filter_syntax(text)
    _validate(node, rtype, None)
    return node


def _validate(node: FilterNode, rtype: ResourceType, parent: Attribute | None) -> None:
    if isinstance(node, LogicalExpr):
        for term in node.terms:
            _validate(term, rtype, parent)
    elif isinstance(node, Not):
        _validate(node.expr, rtype, parent)
    elif isinstance(node, ValuePath):
        if parent is not None:
            raise invalid_filter("a value filter cannot nest inside another value filter")
        resolved = resolve_attr_path(rtype, node.attr_path)
        if resolved.sub is not None or resolved.attribute.type != "complex":
            raise invalid_filter(f"{node.attr_path} is not a complex attribute; it takes no [value filter]")
        _validate(node.val_filter, rtype, resolved.attribute)
    elif isinstance(node, (Comparison, Present)):
        target = _target(node.attr_path, rtype, parent)
        if target.write_only:
            # Not even `pr`: which users have a password is itself what a write-only attribute must not tell.
            raise invalid_filter(f"{node.attr_path} is write-only: it cannot be filtered on")
        if isinstance(node, Comparison):
            _check_comparison(node, target)


def _target(path: AttrPath, rtype: ResourceType, parent: Attribute | None) -> Attribute:
    if parent is not None:
        if path.uri is not None or path.sub_attr is not None:
            raise invalid_filter(f"{path} is not a sub-attribute of {parent.name}")
        sub = parent.sub(path.attr)
        if sub is None:
            raise invalid_filter(f"{parent.name} has no sub-attribute {path.attr!r}")
        return sub
    resolved = resolve_attr_path(rtype, path)
    target = resolved.target
    if target.type == "complex" and target.sub_attributes:
        # `emails eq "x"` means emails.value (RFC 7644 §3.4.2.2) when there is one.
        value = target.sub("value")
        if value is None:
            raise invalid_filter(f"{path} is complex; name one of its sub-attributes")
        return value
    return target


def _check_comparison(node: Comparison, target: Attribute) -> None:
    value = node.value
    if isinstance(value, str) and "\x00" in value:
        # A "\u0000" escape in the filter's string: PostgreSQL cannot even compare text with it (was a 500).
        raise invalid_filter(f"{node.attr_path}: the value holds a NUL character (\\u0000), which no store or app keeps as text")
    if node.op in (Op.co, Op.sw, Op.ew) and not isinstance(value, str):
        raise invalid_filter(f"{node.op.value} needs a string operand, got {value!r}")
    if target.type == "boolean":
        if node.op not in (Op.eq, Op.ne):
            raise invalid_filter(f"{node.attr_path} is boolean; only eq and ne apply")
        if not isinstance(value, bool):
            raise invalid_filter(f"{node.attr_path} is boolean; compare it with true or false, not {value!r}")
    elif target.type in ("integer", "decimal"):
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            if value is not None:
                raise invalid_filter(f"{node.attr_path} is a number; {value!r} is not")
    elif target.type == "dateTime":
        if node.op in (Op.co, Op.sw, Op.ew):
            raise invalid_filter(
                f"{node.attr_path} is a dateTime; {node.op.value} applies to strings only (use eq, ne, gt, ge, lt, le)"
            )
        if not isinstance(value, str) or _parse_datetime(value) is None:
            raise invalid_filter(f"{node.attr_path} is a dateTime; {value!r} is not an ISO 8601 date-time that converts to UTC")
    elif target.type in ("string", "reference", "binary"):
        if value is not None and not isinstance(value, str):
            # Tolerated where harmless: a number compared with a string attribute compares as text.
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise invalid_filter(f"{node.attr_path} is a string; compare it with a quoted string, not {value!r}")


def _parse_datetime(value: str) -> datetime | None:
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        if parsed.tzinfo is not None:
            # In range here but not in UTC (0001-01-01T00:00:00+01:00, 9999-12-31T23:59:59-14:00): not comparable.
            parsed.astimezone(UTC)
    except (ValueError, OverflowError):
        return None
    return parsed


# ---------------------------------------------------------------- in-memory matching


def matches(node: FilterNode, resource: dict[str, Any], rtype: ResourceType) -> bool:
    """Evaluate a validated filter on a SCIM resource held as a dict."""
    return _eval(node, resource, rtype, None)


def matches_value(node: FilterNode, item: Any, parent: Attribute) -> bool:
    """Evaluate a value filter (the part inside `emails[...]`) on one element of a multi-valued attribute."""
    return _eval(node, item, None, parent)


def _eval(node: FilterNode, obj: Any, rtype: ResourceType | None, parent: Attribute | None) -> bool:
    if isinstance(node, LogicalExpr):
        if node.op == LogicalOperator.and_:
            return all(_eval(t, obj, rtype, parent) for t in node.terms)
        return any(_eval(t, obj, rtype, parent) for t in node.terms)
    if isinstance(node, Not):
        return not _eval(node.expr, obj, rtype, parent)
    if isinstance(node, ValuePath):
        assert rtype is not None
        resolved = resolve_attr_path(rtype, node.attr_path)
        items = _lookup(obj, resolved.urn, resolved.attribute.name)
        if items is None:
            return False
        if not isinstance(items, list):
            items = [items]
        return any(isinstance(i, dict) and _eval(node.val_filter, i, None, resolved.attribute) for i in items)
    assert isinstance(node, (Comparison, Present))
    values, target = _values(node.attr_path, obj, rtype, parent)
    if isinstance(node, Present):
        return any(v not in (None, "", [], {}) for v in values)
    return any(compare(target, node.op, v, node.value) for v in values)


def _lookup(obj: Any, urn: str | None, name: str) -> Any:
    if not isinstance(obj, dict):
        return None
    if urn is not None:
        obj = obj.get(urn)
        if not isinstance(obj, dict):
            return None
    return obj.get(name)


def _values(path: AttrPath, obj: Any, rtype: ResourceType | None, parent: Attribute | None) -> tuple[list[Any], Attribute]:
    """All values a path designates: a multi-valued attribute yields each element's."""
    if parent is not None:
        sub = parent.sub(path.attr)
        assert sub is not None
        value = obj.get(sub.name) if isinstance(obj, dict) else None
        return ([] if value is None else value if isinstance(value, list) else [value]), sub
    assert rtype is not None
    resolved = resolve_attr_path(rtype, path)
    attribute = resolved.attribute
    value = _lookup(obj, resolved.urn, attribute.name)
    items = value if isinstance(value, list) else ([] if value is None else [value])
    sub = resolved.sub
    if sub is None and attribute.type == "complex" and attribute.sub("value") is not None:
        sub = attribute.sub("value")
    if sub is None:
        return items, attribute
    out = []
    for item in items:
        if isinstance(item, dict) and item.get(sub.name) is not None:
            out.append(item[sub.name])
    return out, sub


def compare(target: Attribute, op: CompareOperator, actual: Any, expected: Any) -> bool:
    """One comparison with the attribute's type and case rules; a type mismatch is simply false."""
    if actual is None:
        return False
    if target.type == "boolean":
        if not isinstance(actual, bool):
            return False
        return (actual == expected) if op == Op.eq else (actual != expected)
    if target.type == "dateTime":
        a = _parse_datetime(actual) if isinstance(actual, str) else None
        e = _parse_datetime(expected) if isinstance(expected, str) else None
        if a is None or e is None:
            return False
        return _ordered(op, a, e)
    if target.type in ("integer", "decimal"):
        if isinstance(actual, bool) or not isinstance(actual, (int, float)):
            return False
        return _ordered(op, actual, expected)
    if not isinstance(actual, str):
        actual = str(actual)
    if not isinstance(expected, str):
        expected = "" if expected is None else str(expected)
    if not target.case_exact:
        actual, expected = actual.casefold(), expected.casefold()
    if op == Op.co:
        return expected in actual
    if op == Op.sw:
        return actual.startswith(expected)
    if op == Op.ew:
        return actual.endswith(expected)
    return _ordered(op, actual, expected)


def _ordered(op: CompareOperator, a: Any, e: Any) -> bool:
    try:
        if op == Op.eq:
            return a == e
        if op == Op.ne:
            return a != e
        if op == Op.gt:
            return a > e
        if op == Op.ge:
            return a >= e
        if op == Op.lt:
            return a < e
        if op == Op.le:
            return a <= e
    except TypeError:
        return False
    return False  # co / sw / ew on non-strings
