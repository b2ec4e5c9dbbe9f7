"""Run a compiled mapping: SCIM resource -> app record (writes), app record -> SCIM (reads).

The only place where SCIM attribute names meet app field names. References
(`ref: User`) are translated through the correlation store by the caller's
resolver, so a connector only ever sees native ids.
"""

from __future__ import annotations

from typing import Any, Protocol

from ..connectors.base import Record
from ..schema import json_copy
from .compile import CompiledResource, CompiledRule


class RefResolver(Protocol):
    async def to_native(self, kind: str, scim_ids: list[str]) -> dict[str, str]: ...
    async def to_scim(self, kind: str, native_ids: list[str]) -> dict[str, str]: ...

    async def waiting(self, kind: str, scim_ids: list[str]) -> set[str]:
        """Those of `scim_ids` that name a resource with no app record now (deactivated by deleting it): a
        reference to one waits in the gateway's copy and reaches the app when the record is back."""
        ...


class UnresolvedReference(Exception):
    def __init__(self, rule: CompiledRule, value: str) -> None:
        super().__init__(f"{rule.resolved.dotted}: no {rule.rule.ref} with id {value!r}")
        self.rule = rule
        self.value = value


def read_rule(resource: dict[str, Any], rule: CompiledRule) -> Any:
    """The SCIM value a rule maps, or None."""
    return rule.get(resource)


def write_rule(resource: dict[str, Any], rule: CompiledRule, value: Any) -> None:
    """Set (or, for None, clear) the SCIM value a rule maps, in place."""
    rule.put(resource, value)


async def to_record(cres: CompiledResource, resource: dict[str, Any], refs: RefResolver) -> Record:
    """The full app record for a SCIM resource (every mapped field; None where SCIM has no value)."""
    record: Record = {}
    for rule in cres.rules:
        if not rule.writes:
            continue
        value = rule.get(resource)
        ref = rule.rule.ref
        if ref is not None:
            if value == "":
                value = None  # Entra clears a manager by sending "" (or {"value": ""}): no reference
            if value is not None:
                native = (await refs.to_native(ref, [str(value)])).get(str(value))
                if native is None and str(value) not in await refs.waiting(ref, [str(value)]):
                    raise UnresolvedReference(rule, str(value))
                value = native  # None while the referenced resource has no app record: the app is sent none
        if rule.to_app is not None:
            value = rule.to_app(value=value, resource=resource)
        record[rule.rule.field] = value
    for computed in cres.computed:
        record[computed.field] = computed.to_app(resource=resource)
    return record


def create_body(cres: CompiledResource, record: Record) -> Record:
    """What a create sends: the record without the fields the resource has no value for (unless a rule says null;
    never for a write-only field such as a password)."""
    return {
        field: value
        for field, value in record.items()
        if value is not None or (field in cres.null_when_absent and field not in cres.write_only)
    }


def update_body(cres: CompiledResource, before: Record | None, after: Record) -> Record:
    """What an update sends: the fields whose value changed (all of them with `updates: whole`, or when the record
    before is unknown), a cleared one as its rule's `cleared` value. A write-only field (a password) is never
    read back, so it goes whenever the request gives it, and only then: the gateway keeps no copy of it, so
    its none means "not given", never "clear the app's password" (an update of `active` alone sends none)."""
    if before is None or cres.whole_updates:
        body = dict(after)
    else:
        body = {field: value for field, value in after.items() if before.get(field) != value}
    return {
        field: (cres.cleared.get(field) if value is None else value)
        for field, value in body.items()
        if value is not None or field not in cres.write_only
    }


async def overlay(cres: CompiledResource, resource: dict[str, Any], record: Record, refs: RefResolver) -> dict[str, Any]:
    """The SCIM resource with every mapped attribute taken from the app's record (a new dict)."""
    out = json_copy(resource)
    for rule in cres.rules:
        name = rule.rule.field
        if name not in record or not rule.reads:
            continue
        value = record[name]
        if rule.to_scim is not None:
            value = rule.to_scim(value=value, record=record)
        ref = rule.rule.ref
        if ref is not None and value not in (None, ""):
            value = (await refs.to_scim(ref, [str(value)])).get(str(value))
        if value == "":
            value = None
        if value is None and ref is not None:
            kept = rule.get(resource)  # a reference waiting for its resource's app record stays in the copy
            if kept not in (None, "") and str(kept) in await refs.waiting(ref, [str(kept)]):
                continue
        rule.put(out, value)
    return out
