"""Which attributes a response carries: `returned` (RFC 7643 §7) and the
`attributes` / `excludedAttributes` parameters (RFC 7644 §3.4.2.5, §3.9)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..schema import Resolved, ResourceType
from .errors import invalid_value


def check_attribute_list_size(text: str | None, parameter: str, limit: int) -> None:
    """Refuse an `attributes` / `excludedAttributes` value naming more than `limit` attributes (400 invalidValue)."""
    if not text:
        return
    count = sum(1 for name in text.split(",") if name.strip())
    if count > limit:
        raise invalid_value(f"{parameter} names {count} attributes, more than max_attribute_names {limit}")


def parse_attribute_list(text: str | None, rtype: ResourceType) -> list[Resolved] | None:
    """Parse an `attributes` or `excludedAttributes` value; None when absent or blank.

    Names the resource type does not have are ignored. A bare extension URN
    stands for all of that extension's attributes.
    """
    if text is None or not text.strip():
        return None
    out: list[Resolved] = []
    for name in text.split(","):
        name = name.strip()
        if not name:
            continue
        split = rtype.split_urn(name)
        if split is not None and split[0] is not None and not split[1]:
            schema = rtype.schema_for(split[0])
            assert schema is not None
            urn = None if schema is rtype.schema else schema.id
            found = [Resolved(urn, attribute) for attribute in schema.attributes]
        else:
            resolved = rtype.resolve_dotted(name)
            found = [] if resolved is None else [resolved]
        out.extend(r for r in found if r not in out)
    return out


@dataclass(frozen=True, slots=True)
class Projection:
    """A request's `attributes` / `excludedAttributes`, parsed for one resource type."""

    attributes: list[Resolved] | None = None
    excluded: list[Resolved] | None = None

    @classmethod
    def parse(cls, rtype: ResourceType, attributes: str | None, excluded: str | None) -> Projection:
        if not attributes and not excluded:
            return _DEFAULT  # the usual request: nothing to parse
        return cls(parse_attribute_list(attributes, rtype), parse_attribute_list(excluded, rtype))

    @property
    def shows_membership(self) -> bool:
        """Whether the answer shows members / groups, so that the store is not asked for them in vain."""
        if self.attributes is not None:
            return any(r.attribute.name in ("members", "groups") for r in self.attributes)
        return not any(r.attribute.name in ("members", "groups") and r.sub is None for r in self.excluded or [])

    def apply(self, resource: dict[str, Any], rtype: ResourceType) -> dict[str, Any]:
        return project(resource, rtype, self.attributes, self.excluded)


_DEFAULT = Projection()


def project(
    resource: dict[str, Any],
    rtype: ResourceType,
    attributes: list[Resolved] | None = None,
    excluded: list[Resolved] | None = None,
) -> dict[str, Any]:
    """The response form of `resource`: a new dict; values not projected away are shared, not copied."""
    plan = _plan(rtype)
    if attributes is None:
        out = _defaults(resource, plan)
    else:
        out = _requested(resource, plan, attributes)
    if excluded:
        _exclude(out, excluded)
    _drop_empty_extensions(out)
    return out


_Key = tuple[str | None, str]  # (extension URN or None for core, attribute name)


@dataclass(frozen=True, slots=True)
class _Plan:
    """What `returned` says for one resource type, worked out once."""

    rtype: ResourceType
    hidden: frozenset[_Key]  # returned only on request, or never
    never: frozenset[_Key]
    hidden_subs: dict[_Key, frozenset[str]]  # sub-attributes returned only on request, or never
    never_subs: dict[_Key, frozenset[str]]
    always: tuple[_Key, ...]


_plans: dict[int, _Plan] = {}
_MAX_PLANS = 256


def _plan(rtype: ResourceType) -> _Plan:
    # Keyed by identity: hashing a resource type walks every attribute.
    plan = _plans.get(id(rtype))
    if plan is not None and plan.rtype is rtype:
        return plan
    hidden: set[_Key] = set()
    never: set[_Key] = set()
    always: list[_Key] = [(None, "id")]
    hidden_subs: dict[_Key, frozenset[str]] = {}
    never_subs: dict[_Key, frozenset[str]] = {}
    for resolved in rtype.walk():
        if resolved.sub is not None:
            continue
        key = (resolved.urn, resolved.attribute.name)
        returned = resolved.attribute.returned
        if returned in ("never", "request"):
            hidden.add(key)
        if returned == "never":
            never.add(key)
        if returned == "always":
            always.append(key)
        subs = resolved.attribute.sub_attributes
        if hidden_sub := frozenset(s.name for s in subs if s.returned in ("never", "request")):
            hidden_subs[key] = hidden_sub
        if never_sub := frozenset(s.name for s in subs if s.returned == "never"):
            never_subs[key] = never_sub
    plan = _Plan(rtype, frozenset(hidden), frozenset(never), hidden_subs, never_subs, tuple(always))
    if len(_plans) >= _MAX_PLANS:
        _plans.clear()  # resource types are few and long-lived; this only bounds a misuse
    _plans[id(rtype)] = plan
    return plan


def _defaults(resource: dict[str, Any], plan: _Plan) -> dict[str, Any]:
    out = dict(resource)
    for urn, name in plan.hidden:
        container = _writable_container(out, urn)
        if container is not None:
            container.pop(name, None)
    for (urn, name), subs in plan.hidden_subs.items():
        container = _writable_container(out, urn)
        if container is not None and name in container:
            container[name] = _without_subs(container[name], subs)
    return out


def _requested(resource: dict[str, Any], plan: _Plan, attributes: list[Resolved]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "schemas" in resource:
        out["schemas"] = resource["schemas"]
    for urn, name in plan.always:
        _copy_attribute(resource, out, urn, name)
    # (urn, name) -> None for the whole attribute, else the sub-attribute names asked for.
    wanted: dict[_Key, set[str] | None] = {}
    for resolved in attributes:
        key = (resolved.urn, resolved.attribute.name)
        if key in plan.never:
            continue
        if resolved.sub is None:
            wanted[key] = None
        elif key not in wanted:
            wanted[key] = {resolved.sub.name}
        elif (subs := wanted[key]) is not None:
            subs.add(resolved.sub.name)
    for (urn, name), subs in wanted.items():
        value = _get(resource, urn, name)
        if value is None:
            continue
        never = plan.never_subs.get((urn, name), frozenset())
        if subs is None:
            projected = _without_subs(value, never) if never else value
        else:
            projected = _only_subs(value, subs - never)
        if projected not in ({}, []):
            _put(out, urn, name, projected)
    return out


def _exclude(out: dict[str, Any], excluded: list[Resolved]) -> None:
    for resolved in excluded:
        attribute = resolved.attribute
        if attribute.returned == "always" or (resolved.sub is not None and resolved.sub.returned == "always"):
            continue
        container = _writable_container(out, resolved.urn)
        if container is None or attribute.name not in container:
            continue
        if resolved.sub is None:
            del container[attribute.name]
            continue
        value = _without_subs(container[attribute.name], frozenset({resolved.sub.name}))
        if value in ({}, []):
            del container[attribute.name]
        else:
            container[attribute.name] = value


def _drop_empty_extensions(out: dict[str, Any]) -> None:
    for key in [k for k, v in out.items() if not v and isinstance(v, dict) and k[:4].lower() == "urn:"]:
        del out[key]


def _writable_container(out: dict[str, Any], urn: str | None) -> dict[str, Any] | None:
    """The dict holding an attribute, copied first so the input resource stays untouched."""
    if urn is None:
        return out
    extension = out.get(urn)
    if not isinstance(extension, dict):
        return None
    extension = out[urn] = dict(extension)
    return extension


def _get(resource: dict[str, Any], urn: str | None, name: str) -> Any:
    container = resource if urn is None else resource.get(urn)
    return container.get(name) if isinstance(container, dict) else None


def _put(out: dict[str, Any], urn: str | None, name: str, value: Any) -> None:
    if urn is None:
        out[name] = value
    else:
        out.setdefault(urn, {})[name] = value


def _copy_attribute(resource: dict[str, Any], out: dict[str, Any], urn: str | None, name: str) -> None:
    value = _get(resource, urn, name)
    if value is not None:
        _put(out, urn, name, value)


def _without_subs(value: Any, subs: frozenset[str]) -> Any:
    if isinstance(value, dict):
        return {k: v for k, v in value.items() if k not in subs}
    if isinstance(value, list):
        items = [_without_subs(item, subs) for item in value]
        return [item for item in items if item != {}]
    return value


def _only_subs(value: Any, subs: set[str] | frozenset[str]) -> Any:
    if isinstance(value, dict):
        return {k: v for k, v in value.items() if k in subs}
    if isinstance(value, list):
        items = [_only_subs(item, subs) for item in value]
        return [item for item in items if item != {}]
    return None
