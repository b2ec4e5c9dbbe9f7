"""PATCH (RFC 7644 §3.5.2) on canonical resource dicts, in the dialects Entra ID and Okta speak.

All or nothing: the operations run in order on a deep copy, and the copy is
returned only when every one succeeded and the result is still a valid
resource. Where Entra or Okta deviate from the RFC they win:

- `op` in any case (`Replace`); booleans as strings (coerced by resource.py);
- add/replace on a value path that matches nothing creates the element from
  the filter's `eq` terms (Entra: `emails[type eq "work"].value`);
- `Remove` of `members` with a value list removes only those members (Entra);
- path-less values with dotted, URN-qualified and value-path keys (Entra) and
  read-only attributes echoed back, such as a group's `id` (Okta).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from scim2_models.path import (
    AttrPath,
    CompareOperator,
    Comparison,
    FilterNode,
    LogicalExpr,
    LogicalOperator,
    Not,
    Path,
    Present,
    ValuePath,
)

from ..schema import Attribute, Resolved, ResourceType, json_copy
from .errors import invalid_path, invalid_syntax, invalid_value, mutability, no_target
from .filter import compare, matches_value
from .patchop import json_type, patch_operations
from .resource import check_required, is_read_only, long_integer_detail, long_integer_in, normalize_value

_OPS = ("add", "remove", "replace")


@dataclass(frozen=True, slots=True)
class _Target:
    """Where an operation applies: an attribute, a sub-attribute, or the elements a filter selects."""

    resolved: Resolved
    text: str
    value_filter: FilterNode | None = None


def apply_patch(resource: dict[str, Any], body: Any, rtype: ResourceType, rid: str | None = None) -> dict[str, Any]:
    """Apply a PatchOp request body to `resource` (whose id is `rid`, default its own `id`); return the patched copy.

    `resource` is never modified. Raises ScimError 400 on the first failing
    operation, and when the result lacks a required attribute.
    """
    operations = patch_operations(body)
    result = json_copy(resource)
    own_id = rid if rid is not None else resource.get("id")
    extensions_before = {urn for urn in rtype.schema_ids[1:] if urn in result}
    for operation in operations:
        _apply_operation(result, operation, rtype, own_id)
    _prune_resource(result, rtype)
    check_required(result, rtype)
    _sync_schemas(result, rtype, extensions_before)
    return result


def _apply_operation(resource: dict[str, Any], operation: dict[str, Any], rtype: ResourceType, own_id: Any) -> None:
    fields = {key.lower(): value for key, value in operation.items()}
    op = fields.get("op")
    if not isinstance(op, str) or op.lower() not in _OPS:
        raise invalid_syntax(f"unsupported op {op!r}: expected add, remove or replace")
    op = op.lower()
    path = fields.get("path")
    if path is not None and not isinstance(path, str):
        raise invalid_path(f"path must be a string, got {path!r}")
    path = (path or "").strip()
    if op != "remove" and "value" not in fields:
        raise invalid_syntax(f"{op} {path or 'without a path'}: the operation has no value")
    value = fields.get("value")

    if not path:
        if op == "remove":
            raise no_target("remove needs a path")
        _apply_without_path(resource, op, value, rtype, own_id)
        return

    split = rtype.split_urn(path)
    if split is None:
        raise invalid_path(f"{path}: {rtype.name} has no such schema")
    urn, rest = split
    if urn is not None and not rest:
        _apply_to_schema(resource, op, urn, value, rtype, path, own_id)
        return
    target = _parse_target(path, urn, rest, rtype)
    if target is None:
        raise invalid_path(f"{path}: {rtype.name} has no such attribute")
    if not _read_only_echo(target, op, value, own_id):
        _apply(resource, op, target, value)


def _read_only_echo(target: _Target, op: str, value: Any, own_id: Any) -> bool:
    """Whether an operation on `target` is the echo of the resource's own id, to be ignored; any other
    change of a readOnly attribute is refused. One rule for `path: id` and a path-less value's `id` key."""
    if not is_read_only(target.resolved):
        return False
    resolved = target.resolved
    is_id = resolved.urn is None and resolved.attribute.name == "id" and resolved.sub is None
    if is_id and op != "remove" and own_id is not None and value == own_id:
        return True  # clients echo the id they address (Okta renames a group with {"id": ..., "displayName": ...})
    raise mutability(f"{target.text}: the attribute is readOnly and cannot be modified")


def _apply_to_schema(
    resource: dict[str, Any], op: str, urn: str, value: Any, rtype: ResourceType, path: str, own_id: Any
) -> None:
    """A path that is a bare schema URN: the extension object as a whole."""
    if op == "remove":
        if urn == rtype.schema.id:
            raise invalid_path(f"{path}: the core schema cannot be removed")
        resource.pop(urn, None)
        return
    _apply_without_path(resource, op, {urn: value}, rtype, own_id)


def _apply_without_path(resource: dict[str, Any], op: str, value: Any, rtype: ResourceType, own_id: Any) -> None:
    if not isinstance(value, dict):
        # The value's type only: a path-less value may be anything the IdP sends, a password too.
        raise invalid_value(f"{op} without a path needs an object value, got a {json_type(value)}")
    for key, item in value.items():
        split = rtype.split_urn(key)
        if split is None:
            continue  # a schema this resource type does not have, as in POST bodies
        urn, rest = split
        if urn is not None and not rest:
            _apply_schema_object(resource, op, urn, item, rtype, own_id)
        else:
            _apply_key(resource, op, key, urn, rest, item, rtype, own_id)


def _apply_schema_object(resource: dict[str, Any], op: str, urn: str, value: Any, rtype: ResourceType, own_id: Any) -> None:
    if value is None:
        if op == "replace" and urn != rtype.schema.id:
            resource.pop(urn, None)
        return
    if not isinstance(value, dict):
        raise invalid_value(f"{urn}: expected an object, got a {json_type(value)}")
    for key, item in value.items():
        _apply_key(resource, op, f"{urn}:{key}", urn, key, item, rtype, own_id)


def _apply_key(
    resource: dict[str, Any], op: str, key: str, urn: str | None, rest: str, value: Any, rtype: ResourceType, own_id: Any
) -> None:
    target = _parse_target(key, urn, rest, rtype)
    # Unknown keys are skipped, as in POST bodies; a read-only one is answered as its path would be.
    if target is not None and not _read_only_echo(target, op, value, own_id):
        _apply(resource, op, target, value)


def _parse_target(text: str, urn: str | None, rest: str, rtype: ResourceType) -> _Target | None:
    """Parse the part of a path after its schema URN; None when the attribute is unknown."""
    digits = long_integer_in(rest)
    if digits is not None:
        raise invalid_path(long_integer_detail("path", digits))
    try:
        node = Path(rest).ast
    except Exception as exc:  # scim2-models raises its own exception types per failure
        raise invalid_path(f"{text}: invalid path: {exc}") from None
    if isinstance(node, (Comparison, Present)):
        node = _as_value_path(node, text)
    if isinstance(node, AttrPath):
        resolved = rtype.resolve(node.attr, node.sub_attr, node.uri or urn)
        return None if resolved is None else _Target(resolved, text)
    if not isinstance(node, ValuePath):
        raise invalid_path(f"{text}: invalid path")
    attr_path = node.attr_path
    resolved = rtype.resolve(attr_path.attr, attr_path.sub_attr, attr_path.uri or urn)
    if resolved is None:
        return None
    attribute = resolved.attribute
    if resolved.sub is not None or not attribute.multi_valued or attribute.type != "complex":
        raise invalid_path(f"{text}: {resolved.dotted} is not a multi-valued complex attribute; it takes no [filter]")
    _check_value_filter(node.val_filter, attribute, text)
    sub = None
    if node.sub_attr is not None:
        sub = attribute.sub(node.sub_attr)
        if sub is None:
            return None
    return _Target(Resolved(resolved.urn, attribute, sub), text, node.val_filter)


def _as_value_path(node: Comparison | Present, text: str) -> ValuePath:
    """`emails.type eq "work"` as a path (RFC errata 7122) means `emails[type eq "work"]`."""
    attr_path = node.attr_path
    if attr_path.sub_attr is None:
        raise invalid_path(f"{text}: a comparison as a path must name a sub-attribute")
    inner = AttrPath(attr_path.sub_attr)
    val_filter: FilterNode = Comparison(inner, node.op, node.value) if isinstance(node, Comparison) else Present(inner)
    return ValuePath(AttrPath(attr_path.attr, None, attr_path.uri), val_filter)


def _check_value_filter(node: FilterNode, attribute: Attribute, text: str) -> None:
    if isinstance(node, LogicalExpr):
        for term in node.terms:
            _check_value_filter(term, attribute, text)
    elif isinstance(node, Not):
        _check_value_filter(node.expr, attribute, text)
    elif isinstance(node, (Comparison, Present)):
        path = node.attr_path
        if path.uri is not None or path.sub_attr is not None or attribute.sub(path.attr) is None:
            raise invalid_path(f"{text}: {attribute.name} has no sub-attribute {str(path)!r}")
    else:
        raise invalid_path(f"{text}: a value filter cannot nest inside another")


# ---------------------------------------------------------------- applying one target


def _apply(resource: dict[str, Any], op: str, target: _Target, value: Any) -> None:
    if op == "remove" or (op == "replace" and value is None):
        _remove(resource, target, value if op == "remove" else None)
        return
    if value is None:
        return  # add null adds nothing
    urn = target.resolved.urn
    container = resource if urn is None else _child_dict(resource, urn)
    if target.value_filter is not None:
        _set_selected(container, op, target, value)
    elif target.resolved.sub is not None:
        _set_sub_attribute(container, target.resolved, value)
    else:
        _set_attribute(container, op, target.resolved, value)


def _set_attribute(container: dict[str, Any], op: str, resolved: Resolved, value: Any) -> None:
    attribute = resolved.attribute
    name = attribute.name
    new = normalize_value(value, resolved)
    if attribute.multi_valued:
        if op == "replace":
            container[name] = new  # normalize_value let through at most one primary
            return
        items = _child_list(container, name)
        touched = []
        for element in new:
            duplicate = _find_duplicate(items, element, resolved)
            if duplicate is None:
                items.append(element)
                touched.append(element)
            else:
                if isinstance(duplicate, dict):
                    duplicate.update(element)
                touched.append(duplicate)
        _settle_primary(items, _primaries(touched))
    elif attribute.type == "complex":
        existing = container.get(name)
        if isinstance(existing, dict):
            # RFC 7644 §3.5.2.1 and §3.5.2.3: sub-attributes not given are left unchanged.
            existing.update(new)
        else:
            container[name] = new
    else:
        container[name] = new


def _set_sub_attribute(container: dict[str, Any], resolved: Resolved, value: Any) -> None:
    attribute = resolved.attribute
    assert resolved.sub is not None
    sub_name = resolved.sub.name
    new = normalize_value(value, resolved)
    if attribute.multi_valued:
        # `emails.display` without a filter: every element, or a new one if there is none.
        items = _child_list(container, attribute.name)
        if not items:
            items.append({})
        for item in items:
            if isinstance(item, dict):
                item[sub_name] = new
        if sub_name == "primary" and new is True:
            _settle_primary(items, items)
        return
    _child_dict(container, attribute.name)[sub_name] = new


def _set_selected(container: dict[str, Any], op: str, target: _Target, value: Any) -> None:
    resolved = target.resolved
    attribute = resolved.attribute
    assert target.value_filter is not None
    items = _child_list(container, attribute.name)
    selected = [item for item in items if _selects(target.value_filter, item, attribute)]
    whole = Resolved(resolved.urn, attribute)
    if resolved.sub is not None:
        new = normalize_value(value, resolved)
        if not selected:
            # Entra adds `emails[type eq "work"].value` to a user with no work email.
            element = _element_from_filter(target, whole)
            element[resolved.sub.name] = new
            items.append(element)
            selected = [element]
        else:
            for item in selected:
                item[resolved.sub.name] = new
    else:
        new = normalize_value(value, whole, element=True)
        if not selected:
            element = {**_element_from_filter(target, whole), **new}
            items.append(element)
            selected = [element]
        else:
            # A replaced element keeps what the filter pinned down (the `type` of `emails[type eq "work"]`).
            pinned = normalize_value(_eq_terms(target.value_filter, attribute) or {}, whole, element=True)
            for item in selected:
                if op == "replace":
                    item.clear()
                    item.update(pinned)
                item.update(new)
    _settle_primary(items, _primaries(selected))


def _remove(resource: dict[str, Any], target: _Target, value: Any) -> None:
    resolved = target.resolved
    attribute = resolved.attribute
    container = resource if resolved.urn is None else resource.get(resolved.urn)
    if not isinstance(container, dict) or container.get(attribute.name) is None:
        return
    current = container[attribute.name]
    sub_name = resolved.sub.name if resolved.sub is not None else None
    if target.value_filter is not None:
        items = current if isinstance(current, list) else [current]
        selected = [item for item in items if _selects(target.value_filter, item, attribute)]
        # Removing what is not there succeeds: IdPs retry removals.
        if sub_name is None:
            container[attribute.name] = [item for item in items if not _contains(selected, item)]
        else:
            for item in selected:
                item.pop(sub_name, None)
    elif sub_name is not None:
        for item in current if isinstance(current, list) else [current]:
            if isinstance(item, dict):
                item.pop(sub_name, None)
    elif attribute.multi_valued and value is not None:
        # Entra: {"op": "Remove", "path": "members", "value": [{"value": id}]} removes those members only.
        patterns = normalize_value(value, resolved)
        items = current if isinstance(current, list) else [current]
        container[attribute.name] = [item for item in items if not any(_like(pattern, item, attribute) for pattern in patterns)]
    else:
        del container[attribute.name]


# ---------------------------------------------------------------- helpers


def _child_dict(container: dict[str, Any], key: str) -> dict[str, Any]:
    child = container.get(key)
    if not isinstance(child, dict):
        child = container[key] = {}
    return child


def _child_list(container: dict[str, Any], key: str) -> list[Any]:
    child = container.get(key)
    if not isinstance(child, list):
        child = container[key] = [] if child is None else [child]
    return child


def _selects(value_filter: FilterNode, item: Any, attribute: Attribute) -> bool:
    return isinstance(item, dict) and matches_value(value_filter, item, attribute)


def _contains(items: list[Any], item: Any) -> bool:
    return any(candidate is item for candidate in items)


def _find_duplicate(items: list[Any], element: Any, resolved: Resolved) -> Any:
    if resolved.urn is None and resolved.attribute.name == "members" and isinstance(element, dict):
        # A member is who it is, whatever display name came along.
        for item in items:
            if isinstance(item, dict) and item.get("value") == element.get("value"):
                return item
        return None
    for item in items:
        if item == element:
            return item
    return None


def _like(pattern: Any, item: Any, attribute: Attribute) -> bool:
    """Whether `item` has every sub-attribute value `pattern` gives (with the schema's case rules)."""
    if not isinstance(pattern, dict):
        return bool(pattern == item)
    if not pattern or not isinstance(item, dict):
        return False
    for key, expected in pattern.items():
        sub = attribute.sub(key)
        if sub is None or not compare(sub, CompareOperator.eq, item.get(sub.name), expected):
            return False
    return True


def _primaries(items: list[Any]) -> list[Any]:
    return [item for item in items if isinstance(item, dict) and item.get("primary") is True]


def _settle_primary(items: list[Any], winners: list[Any]) -> None:
    """The element most recently made primary stays primary (RFC 7643 §2.4: at most one)."""
    if not winners:
        return
    winner = winners[-1]
    for item in items:
        if item is not winner and isinstance(item, dict) and item.get("primary") is True:
            item["primary"] = False


def _eq_terms(node: FilterNode, attribute: Attribute) -> dict[str, Any] | None:
    """The element a filter of `eq` terms joined by `and` describes; None for any other filter."""
    if isinstance(node, Comparison) and node.op == CompareOperator.eq:
        sub = attribute.sub(node.attr_path.attr)
        return None if sub is None else {sub.name: node.value}
    if isinstance(node, LogicalExpr) and node.op == LogicalOperator.and_:
        out: dict[str, Any] = {}
        for term in node.terms:
            part = _eq_terms(term, attribute)
            if part is None:
                return None
            out.update(part)
        return out
    return None


def _element_from_filter(target: _Target, whole: Resolved) -> dict[str, Any]:
    assert target.value_filter is not None
    terms = _eq_terms(target.value_filter, whole.attribute)
    if terms is None:
        raise no_target(f"{target.text}: no element matches, and only eq terms joined by and say how to create one")
    return dict(normalize_value(terms, whole, element=True))


def _prune(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: v for k, v in ((k, _prune(v)) for k, v in value.items()) if not _unassigned(v)}
    if isinstance(value, list):
        return [v for v in (_prune(v) for v in value) if not _unassigned(v)]
    return value


def _unassigned(value: Any) -> bool:
    return value is None or (isinstance(value, (dict, list)) and not value)


def _prune_container(container: dict[str, Any], attributes: tuple[Attribute, ...]) -> None:
    for attribute in attributes:
        if attribute.name not in container:
            continue
        value = _prune(container[attribute.name])
        if _unassigned(value):
            del container[attribute.name]
        else:
            container[attribute.name] = value


def _prune_resource(resource: dict[str, Any], rtype: ResourceType) -> None:
    """Drop what the operations left empty: RFC 7643 §2.5 treats it as unassigned."""
    _prune_container(resource, rtype.schema.attributes)
    if resource.get("externalId") is None:
        resource.pop("externalId", None)
    for schema, _required in rtype.extensions:
        extension = resource.get(schema.id)
        if isinstance(extension, dict):
            _prune_container(extension, schema.attributes)
            if not extension:
                del resource[schema.id]


def _sync_schemas(resource: dict[str, Any], rtype: ResourceType, before: set[str]) -> None:
    """Keep `schemas` listing the extensions the patch added, and not those it removed."""
    schemas = resource.get("schemas")
    if not isinstance(schemas, list):
        return
    for urn in rtype.schema_ids[1:]:
        present = urn in resource
        if present and urn not in schemas:
            schemas.append(urn)
        elif not present and urn in before and urn in schemas:
            schemas.remove(urn)
