"""Where one rule's SCIM value sits in a resource held as a dict, compiled once per rule at load: a getter and a
setter specialised to the rule's path (core or extension, sub-attribute or not, a value filter or not), so a
request does not work out the path again for every attribute (translate.py calls them)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..schema import Resolved

Getter = Callable[[dict[str, Any]], Any]
Setter = Callable[[dict[str, Any], Any], None]


def selects(element: Any, selector: dict[str, Any]) -> bool:
    """Whether a multi-valued attribute's element matches a value filter's `{"type": "work"}` (strings in any case)."""
    if not isinstance(element, dict):
        return False
    for key, expected in selector.items():
        actual = element.get(key)
        if isinstance(expected, str) and isinstance(actual, str):
            if actual.casefold() != expected.casefold():
                return False
        elif actual != expected:
            return False
    return True


def getter(resolved: Resolved, selector: dict[str, Any] | None) -> Getter:
    """The SCIM value at `resolved` (`emails[type eq "work"].value`: the selected element's), or None."""
    urn, name = resolved.urn, resolved.attribute.name
    sub = resolved.sub.name if resolved.sub is not None else None
    multi = resolved.attribute.multi_valued

    def value_of(container: dict[str, Any]) -> Any:
        value = container.get(name)
        if sub is None:
            return value
        if multi:
            if not isinstance(value, list):
                return None
            if selector is not None:
                element = next((e for e in value if selects(e, selector)), None)
            else:
                element = next((e for e in value if isinstance(e, dict) and e.get("primary") is True), None)
                element = element or next((e for e in value if isinstance(e, dict)), None)
            return element.get(sub) if isinstance(element, dict) else None
        return value.get(sub) if isinstance(value, dict) else None

    if urn is None:
        if sub is None:
            return lambda resource: resource.get(name)
        return value_of

    def in_extension(resource: dict[str, Any]) -> Any:
        container = resource.get(urn)
        return value_of(container) if isinstance(container, dict) else None

    return in_extension


def setter(resolved: Resolved, selector: dict[str, Any] | None) -> Setter:
    """Set (or, for None, clear) the SCIM value at `resolved`, in place; dicts and lists below the top level are
    replaced, never changed, so a resource sharing them with another (a shallow copy) leaves that one as it was."""
    urn, name = resolved.urn, resolved.attribute.name
    sub = resolved.sub.name if resolved.sub is not None else None
    multi = resolved.attribute.multi_valued
    chosen = selector or {}

    def put_top(resource: dict[str, Any], value: Any) -> None:
        if value is None:
            resource.pop(name, None)
        else:
            resource[name] = value

    if urn is None and sub is None:
        return put_top

    def put_element(container: dict[str, Any], value: Any) -> None:
        found = container.get(name)
        elements = list(found) if isinstance(found, list) else []
        index = next((i for i, e in enumerate(elements) if selects(e, chosen)), None)
        if value is None:
            if index is not None:
                element = dict(elements[index])
                element.pop(sub, None)
                if set(element) - set(chosen) - {"primary"}:
                    elements[index] = element
                else:
                    del elements[index]
        elif index is None:
            elements.append({**chosen, sub: value})
        else:
            elements[index] = {**elements[index], sub: value}
        if elements:
            container[name] = elements
        else:
            container.pop(name, None)

    def put_sub(container: dict[str, Any], value: Any) -> None:
        parent = container.get(name)
        parent = dict(parent) if isinstance(parent, dict) else {}
        if value is None:
            parent.pop(sub, None)
        else:
            parent[sub] = value
        if parent:
            container[name] = parent
        else:
            container.pop(name, None)

    put = put_top if sub is None else put_element if multi else put_sub
    if urn is None:
        return put

    def in_extension(resource: dict[str, Any], value: Any) -> None:
        found = resource.get(urn)
        if isinstance(found, dict):
            container = resource[urn] = dict(found)
        elif value is None:
            return
        else:
            container = resource[urn] = {}
        put(container, value)
        if not container:
            resource.pop(urn, None)

    return in_extension


__all__ = ["Getter", "Setter", "getter", "selects", "setter"]
