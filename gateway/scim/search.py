"""A validated filter and sortBy, analysed once for the two below that need them.

- The store gets a `Query` in its own terms (gateway/store/query.py): which stored attributes, columns or
  membership rows each term compares, with SCIM's rules applied here (case folding by `caseExact`, a complex
  attribute meaning its `value`, a multi-valued one meaning any element, dateTimes in UTC, the unique name
  by the indexed key). An attribute without a rule is a 400 invalidFilter, never a dropped condition.
- The provisioner gets a `Lookup` (gateway/provisioning/lookup.py): the string comparisons it may ask the app.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from scim2_models.path import (
    AttrPath,
    CompareOperator,
    Comparison,
    FilterNode,
    LogicalExpr,
    LogicalOperator,
    Not,
    Present,
    ValuePath,
)

from ..provisioning.lookup import Both, Either, Lookup, Probe
from ..schema import UNIQUE_ATTRIBUTES, Attribute, Resolved, ResourceType
from ..store import query as q
from .errors import invalid_filter
from .filter import resolve_attr_path

_META_COLUMNS: dict[str, q.Column] = {
    "created": q.Column("created"),
    "lastModified": q.Column("last_modified"),
    "resourceType": q.Column("type"),
}


def to_utc_iso(value: str) -> str:
    """A dateTime as the store keeps it, so that comparing text orders correctly."""
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _kind(attribute: Attribute) -> q.Kind:
    if attribute.type == "boolean":
        return "boolean"
    return "number" if attribute.type in ("integer", "decimal") else "text"


def _is_membership(rtype: ResourceType, attribute: Attribute) -> bool:
    return (rtype.name == "Group" and attribute.name == "members") or (rtype.name == "User" and attribute.name == "groups")


# ---------------------------------------------------------------- the store's condition


def store_condition(node: FilterNode, rtype: ResourceType) -> q.Condition:
    """The store's condition for a filter validated against `rtype` (scim.filter.parse_filter)."""
    if isinstance(node, LogicalExpr):
        terms = tuple(store_condition(t, rtype) for t in node.terms)
        return q.All(terms) if node.op == LogicalOperator.and_ else q.AnyOf(terms)
    if isinstance(node, Not):
        return q.Not(store_condition(node.expr, rtype))
    if isinstance(node, ValuePath):
        return _any_element(rtype, resolve_attr_path(rtype, node.attr_path), node.val_filter)
    assert isinstance(node, (Comparison, Present))
    resolved = resolve_attr_path(rtype, node.attr_path)
    attribute = resolved.attribute
    if (
        isinstance(node, Comparison)
        and node.op == CompareOperator.eq
        and isinstance(node.value, str)
        and resolved.urn is None
        and resolved.sub is None
        and attribute.name == UNIQUE_ATTRIBUTES.get(rtype.name)
    ):
        # The IdP's lookup before every create (`userName eq "x"`): the indexed unique key, not a scan of every
        # resource's attributes. The same answer: the key is the name lower-cased, as the fold compares it.
        return q.Compare(q.Column("unique_key"), "eq", node.value.lower())
    if _is_membership(rtype, attribute) or attribute.multi_valued:
        # `emails.value eq "x"` / `emails eq "x"`: some element matches.
        sub = resolved.sub or attribute.sub("value")
        if sub is None:
            raise invalid_filter(f"{node.attr_path} is complex; name one of its sub-attributes")
        inner = (
            Comparison(AttrPath(sub.name), node.op, node.value) if isinstance(node, Comparison) else Present(AttrPath(sub.name))
        )
        return _any_element(rtype, Resolved(resolved.urn, attribute), inner)
    if attribute.type == "complex" and resolved.sub is None:
        value_sub = attribute.sub("value")
        if value_sub is None and isinstance(node, Comparison):
            raise invalid_filter(f"{node.attr_path} is complex; name one of its sub-attributes")
        if value_sub is not None:
            resolved = Resolved(resolved.urn, attribute, value_sub)
    return _term(node, _operand(resolved), resolved.target)


def _operand(resolved: Resolved) -> q.Column | q.Field:
    attribute, sub = resolved.attribute, resolved.sub
    if resolved.urn is None:
        if attribute.name == "id":
            return q.Column("id")
        if attribute.name == "meta":
            assert sub is not None
            if sub.name not in _META_COLUMNS:
                raise invalid_filter(f"meta.{sub.name} cannot be filtered on")
            return _META_COLUMNS[sub.name]
    return q.Field(resolved.keys, _kind(resolved.target))


def _term(node: Comparison | Present, operand: q.Operand, target: Attribute) -> q.Condition:
    if isinstance(node, Present):
        return q.Present(operand, nonempty=target.type in ("string", "reference", "binary"))
    value = node.value
    op: q.Operator = node.op.value.lower()  # type: ignore[assignment]
    if value is None:
        return q.Compare(operand, op, None)
    if target.type == "boolean" or target.type in ("integer", "decimal"):
        return q.Compare(operand, op, value)
    if target.type == "dateTime":
        return q.Compare(operand, op, to_utc_iso(value))
    text = value if isinstance(value, str) else str(value)
    if target.case_exact:
        return q.Compare(operand, op, text)
    return q.Compare(operand, op, text.lower(), fold=True)


def _any_element(rtype: ResourceType, resolved: Resolved, val_filter: FilterNode) -> q.Condition:
    attribute = resolved.attribute
    if _is_membership(rtype, attribute):
        links = {"value": q.Link("id"), "type": q.Link("type")} if attribute.name == "members" else {"value": q.Link("id")}
        side: Literal["members", "groups"] = "members" if attribute.name == "members" else "groups"
        return q.Related(side, _element_condition(val_filter, attribute, links))
    return q.AnyElement(Resolved(resolved.urn, attribute).keys, _element_condition(val_filter, attribute, None))


def _element_condition(node: FilterNode, attribute: Attribute, links: dict[str, q.Link] | None) -> q.Condition:
    """The condition inside `attr[...]`, over one element (or, for membership, one membership row)."""
    if isinstance(node, LogicalExpr):
        terms = tuple(_element_condition(t, attribute, links) for t in node.terms)
        return q.All(terms) if node.op == LogicalOperator.and_ else q.AnyOf(terms)
    if isinstance(node, Not):
        return q.Not(_element_condition(node.expr, attribute, links))
    if isinstance(node, ValuePath):
        raise invalid_filter("a value filter cannot nest inside another value filter")
    assert isinstance(node, (Comparison, Present))
    sub = attribute.sub(node.attr_path.attr)
    if sub is None:
        raise invalid_filter(f"{attribute.name} has no sub-attribute {node.attr_path.attr!r}")
    operand: q.Operand
    if links is not None:
        if sub.name not in links:
            raise invalid_filter(f"{attribute.name}.{sub.name} cannot be filtered on")
        operand = links[sub.name]
    elif attribute.type == "complex":
        operand = q.Element((sub.name,), _kind(sub))
    else:
        operand = q.Element((), _kind(sub))
    return _term(node, operand, sub)


# ---------------------------------------------------------------- sortBy


def store_sort(dotted: str, rtype: ResourceType, descending: bool) -> q.Sort:
    """The store's order for sortBy; a multi-valued attribute sorts by its primary (else first) value."""
    resolved = rtype.resolve_dotted(dotted)
    if resolved is None:
        raise invalid_filter(f"sortBy: {rtype.name} has no attribute {dotted!r}")
    attribute = resolved.attribute
    if _is_membership(rtype, attribute):
        raise invalid_filter(f"sortBy: cannot sort by {dotted}")
    if resolved.target.write_only:
        raise invalid_filter(f"sortBy: {dotted} is write-only: it cannot be sorted by")
    operand: q.Column | q.Field | q.FirstElement
    if attribute.multi_valued:
        sub = resolved.sub or attribute.sub("value")
        if sub is None:
            raise invalid_filter(f"sortBy: cannot sort by {dotted}")
        operand, target = q.FirstElement(Resolved(resolved.urn, attribute).keys, sub.name, _kind(sub)), sub
    else:
        if attribute.type == "complex" and resolved.sub is None:
            sub = attribute.sub("value")
            if sub is None:
                raise invalid_filter(f"sortBy: {dotted} is complex; name one of its sub-attributes")
            resolved = Resolved(resolved.urn, attribute, sub)
        operand, target = _operand(resolved), resolved.target
    fold = target.type in ("string", "reference") and not target.case_exact
    return q.Sort(operand, descending, fold)


# ---------------------------------------------------------------- what the provisioner may ask the app


def app_lookup(node: FilterNode, rtype: ResourceType) -> Lookup | None:
    """The string comparisons of a validated filter, joined as the filter joins them; None when there are none to ask."""
    if isinstance(node, Comparison):
        path = node.attr_path
        resolved = rtype.resolve(path.attr, path.sub_attr, path.uri)
        if resolved is None or not isinstance(node.value, str):
            return None
        return Probe(resolved, node.op.value.lower(), node.value)
    if isinstance(node, Present):
        resolved = rtype.resolve(node.attr_path.attr, node.attr_path.sub_attr, node.attr_path.uri)
        return None if resolved is None else Probe(resolved, "pr", "")
    if isinstance(node, LogicalExpr):
        found = [app_lookup(t, rtype) for t in node.terms]
        if node.op == LogicalOperator.and_:
            # A match satisfies every term: any one of them that is a lookup finds a superset of the matches.
            parts = tuple(f for f in found if f is not None)
            return Both(parts) if parts else None
        if any(f is None for f in found):
            return None  # a match of that term could not be found by asking
        return Either(tuple(f for f in found if f is not None))
    return None


__all__ = ["app_lookup", "store_condition", "store_sort", "to_utc_iso"]
