"""What the parts of one app's provisioner share: its mapping, its connector behind the breaker, the store,
the write pipeline, and the steps between resources and app records that they all take.

A resource here is a dict of SCIM attributes (validated by the protocol layer); an app record is a dict of
the app's fields. Failures come out as provisioning errors (errors.py), never as an answer to a client.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from ..connectors.base import Connector, NativeId
from ..connectors.errors import AppError
from ..mapping.compile import CompiledMapping, CompiledResource, CompiledRule, TemplateError
from ..mapping.translate import UnresolvedReference, create_body, overlay, to_record, update_body, write_rule
from ..store import Member, Store
from .breaker import Breaker, guard
from .errors import AppFailed, BadAnswer, Invalid, NotFound
from .membership import Membership, UserFieldMembership, create_membership
from .notices import notice
from .pipeline import WritePipeline

log = logging.getLogger(__name__)
T = TypeVar("T")

WRITE_ONLY = ("password",)
# What the gateway's copy never keeps: write-only values, and what the store keeps in its own columns and tables.
_NOT_COPIED = frozenset({*WRITE_ONLY, "id", "meta", "members", "groups", "schemas"})


_write_only: dict[int, tuple[CompiledResource, list[tuple[str | None, frozenset[str]]]]] = {}


def _write_only_names(cres: CompiledResource) -> list[tuple[str | None, frozenset[str]]]:
    """The write-only attributes of the resource type (a password, a custom schema's writeOnly ones), by schema:
    (None, core names), (extension URN, its names). Worked out once per resource type (by identity)."""
    known = _write_only.get(id(cres))
    if known is not None and known[0] is cres:
        return known[1]
    if len(_write_only) >= 256:
        _write_only.clear()  # resource types are few and live as long as their mapping; this only bounds a misuse
    out = _write_only_names_of(cres)
    _write_only[id(cres)] = (cres, out)
    return out


def _write_only_names_of(cres: CompiledResource) -> list[tuple[str | None, frozenset[str]]]:
    core = frozenset({*WRITE_ONLY, *(a.name for a in cres.rtype.schema.attributes if a.write_only)})
    out: list[tuple[str | None, frozenset[str]]] = [(None, core)]
    for schema, _required in cres.rtype.extensions:
        names = frozenset(a.name for a in schema.attributes if a.write_only)
        if names:
            out.append((schema.id, names))
    return out


def copy_of(cres: CompiledResource, resource: dict[str, Any]) -> dict[str, Any]:
    """The attributes of a resource as the gateway's copy keeps them: never a write-only one."""
    out = {k: v for k, v in resource.items() if k not in _NOT_COPIED}
    for urn, names in _write_only_names(cres):
        container = out if urn is None else out.get(urn)
        if not isinstance(container, dict):
            continue
        kept = {k: v for k, v in container.items() if k not in names}
        if urn is None:
            out = kept
        elif kept:
            out[urn] = kept
        else:
            del out[urn]
    return out


def write_only_values(cres: CompiledResource, resource: dict[str, Any], record: dict[str, Any]) -> list[str]:
    """The password (and any write-only value) as the IdP sent it and as the app got it (after its to_app): never
    to be repeated from an app's message."""
    values: list[Any] = []
    for urn, names in _write_only_names(cres):
        container = resource if urn is None else resource.get(urn)
        if isinstance(container, dict):
            values += [container.get(name) for name in names]
    values += [record.get(field) for field in cres.write_only]
    return [v for v in values if isinstance(v, str) and v]


def member_refs(resource: dict[str, Any]) -> dict[str, str | None]:
    """Member id -> the display the client gave (None when it gave none), first mention wins."""
    out: dict[str, str | None] = {}
    for m in resource.get("members") or []:
        value = m.get("value") if isinstance(m, dict) else None
        if isinstance(value, str) and value and value not in out:
            display = m.get("display")
            out[value] = display if isinstance(display, str) else None
    return out


class StoreRefs:
    """SCIM ids <-> native ids for `ref:` rules, through the store."""

    def __init__(self, store: Store, app: str) -> None:
        self.store = store
        self.app = app

    async def to_native(self, kind: str, scim_ids: list[str]) -> dict[str, str]:
        found = await self.store.native_ids(self.app, kind, scim_ids)
        return {rid: native for rid, (_t, native) in found.items() if native is not None}

    async def to_scim(self, kind: str, native_ids: list[str]) -> dict[str, str]:
        return await self.store.scim_ids(self.app, kind, native_ids)

    async def waiting(self, kind: str, scim_ids: list[str]) -> set[str]:
        found = await self.store.native_ids(self.app, kind, scim_ids)
        waiting = {rid for rid, (_t, native) in found.items() if native is None}
        for rid in sorted(waiting):
            notice(self.app, f"{kind} {rid} has no record in the app now: the reference to it waits in the copy")
        return waiting


class Context:
    def __init__(self, mapping: CompiledMapping, connector: Connector, store: Store, breaker: Breaker | None) -> None:
        self.mapping = mapping
        self.app = mapping.app
        self.breaker = breaker
        # Every call to the app, from every path (membership and recovery too), passes the app's breaker.
        self.connector = guard(connector, breaker)
        self.store = store
        self.refs = StoreRefs(store, self.app)
        self.pipeline = WritePipeline(self.app, store, breaker)
        self.memberships: dict[str, Membership] = {
            kind: create_membership(self.connector, kind, cres.members, self.pipeline.user_claim)
            for kind, cres in mapping.resources.items()
        }

    def resource(self, kind: str) -> CompiledResource:
        try:
            return self.mapping.resources[kind]
        except KeyError:
            raise NotFound(f"this app has no {kind} resources") from None

    # ------------------------------------------------------------------ resources <-> records

    @staticmethod
    def unique_key(cres: CompiledResource, resource: dict[str, Any]) -> str:
        value = resource.get(cres.unique_attr)
        if not isinstance(value, str) or not value.strip():
            raise Invalid(f"{cres.unique_attr} is required")
        return value.lower()

    @staticmethod
    def unique_name(cres: CompiledResource, resource: dict[str, Any]) -> str:
        """How a message names the resource's unique name: `userName 'ann'`."""
        return f"{cres.unique_attr} {resource.get(cres.unique_attr)!r}"

    async def record(self, cres: CompiledResource, resource: dict[str, Any]) -> dict[str, Any]:
        """The app record for a resource (references translated to native ids)."""
        try:
            return await to_record(cres, resource, self.refs)
        except UnresolvedReference as exc:
            raise Invalid(str(exc)) from None
        except TemplateError as exc:
            raise Invalid(f"a transform of this app's mapping failed on the value: {exc}") from None

    async def create_record(self, cres: CompiledResource, resource: dict[str, Any]) -> dict[str, Any]:
        """What a create sends the app: the record without the fields the resource has no value for."""
        return create_body(cres, await self.record(cres, resource))

    async def update_record(self, cres: CompiledResource, before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
        """What an update sends the app: the fields the change gives a new value (every one with `updates: whole`)."""
        record = await self.record(cres, after)
        try:
            old = await self.record(cres, before)
        except Invalid:
            old = None  # the record before cannot be computed (a transform refuses it): send every field
        return update_body(cres, old, record)

    async def overlay(self, cres: CompiledResource, data: dict[str, Any], record: dict[str, Any]) -> dict[str, Any]:
        """`data` with every mapped attribute as the app's record has it."""
        try:
            return await overlay(cres, data, record, self.refs)
        except TemplateError as exc:
            raise BadAnswer(f"the app's record could not be translated: {exc}") from None

    async def call(self, what: str, fn: Callable[[], Awaitable[T]]) -> T:
        """An app call outside any write (a read, a search): its failure as AppFailed."""
        try:
            return await fn()
        except AppError as exc:
            raise AppFailed(what, exc) from None

    # ------------------------------------------------------------------ members

    async def members_for_write(self, resource: dict[str, Any]) -> list[Member]:
        """The members a request names that exist in this app.

        An id the gateway does not know is skipped with a warning, not refused: IdPs send members whose own
        provisioning failed or is still queued, and the conformance suite scim-sanity expects 200 for one.
        """
        refs = member_refs(resource)
        found = await self.store.native_ids(self.app, None, list(refs))
        missing = [i for i in refs if i not in found]
        if missing:
            log.warning("%s: ignoring %d unknown member id(s), e.g. %r", self.app, len(missing), missing[0])
            for rid in missing:
                notice(self.app, f"member {rid} is no resource of this app: not sent")
        return [Member(i, found[i][0], refs[i]) for i in refs if i in found]

    async def natives(self, members: list[Member]) -> list[tuple[str, NativeId]]:
        """The members' (kind, native id); one without an app record now (deactivated by deletion) is left out."""
        found = await self.store.native_ids(self.app, None, [m.id for m in members])
        out: list[tuple[str, NativeId]] = []
        for m in members:
            kind, native = found.get(m.id, (m.type, None))
            if native is not None:
                out.append((kind, native))
        return out

    async def members_from_app(self, native_id: NativeId) -> list[Member]:
        """The group's members as the app lists them, as SCIM ids (members the gateway has not linked left out)."""
        pairs = await self.memberships["Group"].members_of(native_id)
        out: list[Member] = []
        for kind in {k for k, _ in pairs}:
            ids = await self.store.scim_ids(self.app, kind, [n for k, n in pairs if k == kind])
            out.extend(Member(ids[n], kind) for k, n in pairs if k == kind and n in ids)
        return out

    async def recordless_members(self, group_id: str, add: Sequence[Member] = (), remove: Sequence[Member] = ()) -> list[Member]:
        """The group's members (in the copy, or added by `add`, less `remove`) that have no app record now: users
        deactivated by deleting their record (`deactivate: {via: delete}`). The app cannot list them; the copy keeps
        them, for their reactivation. Empty at no cost for any other mapping."""
        users = self.mapping.resources.get("User")
        if users is None or users.deactivate.via != "delete":
            return []
        candidates = {m.id: m for m in [*await self.store.members(self.app, group_id), *add]}
        found = await self.store.native_ids(self.app, None, list(candidates))
        gone = {m.id for m in remove}
        return [m for i, m in candidates.items() if i not in gone and i in found and found[i][1] is None]

    async def listed_groups(self, cres: CompiledResource, record: dict[str, Any] | None) -> list[Member] | None:
        """The groups a user's own record lists (membership kept on the user: `via: user_field`), those the
        gateway has linked; None where membership is kept elsewhere or there is no record."""
        membership = self.memberships.get("Group")
        if record is None or cres.name != "User" or not isinstance(membership, UserFieldMembership):
            return None
        natives = membership.ids.parse(record.get(membership.field))
        found = await self.store.scim_ids(self.app, "Group", natives)
        return [Member(found[n], "Group") for n in natives if n in found]

    # ------------------------------------------------------------------ the app's records by value

    async def find(
        self, cres: CompiledResource, rule: CompiledRule, scim_value: Any, op: str = "eq"
    ) -> list[tuple[NativeId, dict[str, Any]]]:
        """The app's records whose `rule` field matches a SCIM value, the value first put through the rule's to_app."""
        if scim_value is None:
            return []
        value = scim_value
        if rule.to_app is not None:
            probe: dict[str, Any] = {}
            write_rule(probe, rule, scim_value)
            try:
                value = rule.to_app(value=scim_value, resource=probe)
            except TemplateError:
                return []  # a value the app could not hold: no record of the app holds it
        found: list[tuple[NativeId, dict[str, Any]]] = await self.connector.find(cres.name, rule.field, value, op)
        return found

    async def find_by_match(self, cres: CompiledResource, scim_value: Any) -> list[tuple[NativeId, dict[str, Any]]] | None:
        """The app's records whose match field holds this SCIM value; None when the connector cannot search."""
        if not self.connector.caps.search:
            return None
        return await self.find(cres, cres.match_rule, scim_value)


__all__ = ["WRITE_ONLY", "Context", "StoreRefs", "copy_of", "member_refs", "write_only_values"]
