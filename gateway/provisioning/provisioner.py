"""The provisioner: one SCIM operation on one app, in order, with recovery.

The only place that calls the correlation store and the connector. Every write
is: validate and translate (nothing touched yet) -> journal + claim in the
store -> the app's call -> read back -> settle. A failure before the app
answered aborts the claim; a crash leaves the claim pending and `recover()`
repairs it on the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import uuid
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

from scim2_models.path import AttrPath, CompareOperator, Comparison, FilterNode, LogicalExpr, LogicalOperator

from ..connectors.base import Connector
from ..connectors.errors import AppBadResponse, AppConflict, AppError, AppInvalid, AppNotFound, AppUnavailable
from ..mapping.compile import CompiledMapping, CompiledResource, CompiledRule, TemplateError
from ..mapping.translate import UnresolvedReference, overlay, read_rule, to_record, write_rule
from ..scim.errors import ScimError, invalid_value, not_found, unavailable, uniqueness
from ..store.base import Busy, Gone, Member, NativeConflict, Pending, Query, Row, Store, UniqueConflict, VersionMismatch
from .breaker import Breaker, CircuitOpen, guard
from .membership import Membership, UserFieldMembership, create_membership

log = logging.getLogger(__name__)

WRITE_ONLY = ("password",)
BUSY_RETRY_SECONDS = 10.0
PUSHDOWN_LIMIT = 1000  # app records one pushed-down filter may sync; more is an import, not a lookup
VERSION_RETRIES = 20


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def translate_app_error(exc: AppError, what: str) -> ScimError:
    """The app's failure as the IdP should see it; the detail never carries the app's raw body or secrets."""
    if isinstance(exc, AppConflict):
        return uniqueness(f"{what}: the app already has a record with that value ({exc.detail})")
    if isinstance(exc, AppNotFound):
        return not_found(f"{what}: the app has no such record")
    if isinstance(exc, AppInvalid):
        return invalid_value(f"{what}: the app rejected the values ({exc.detail})")
    if isinstance(exc, AppBadResponse):
        return ScimError(502, f"{what}: the app answered something unreadable ({exc.detail})")
    if isinstance(exc, AppUnavailable):
        return unavailable(f"{what}: the app is unavailable ({exc.detail})", exc.retry_after or 5)
    return ScimError(502, f"{what}: the app failed ({exc.detail})")


class _Refs:
    """Translates SCIM ids <-> native ids for `ref:` rules through the store."""

    def __init__(self, store: Store, app: str) -> None:
        self.store = store
        self.app = app

    async def to_native(self, kind: str, scim_ids: list[str]) -> dict[str, str]:
        found = await self.store.native_ids(self.app, kind, scim_ids)
        return {rid: native for rid, (_t, native) in found.items()}

    async def to_scim(self, kind: str, native_ids: list[str]) -> dict[str, str]:
        return await self.store.scim_ids(self.app, kind, native_ids)


def _write_only_values(cres: CompiledResource, resource: dict[str, Any], record: dict[str, Any]) -> list[str]:
    """The password as the IdP sent it and as the app got it (after its to_app): never to be repeated from an app's message."""
    values = [resource.get(name) for name in WRITE_ONLY]
    values += [record.get(rule.field) for rule in cres.rules if rule.resolved.attribute.name in WRITE_ONLY]
    return [v for v in values if isinstance(v, str) and v]


def _hide(exc: AppError, values: list[str]) -> AppError:
    """An app that echoes what it refused (a password it found too weak) must not get it into the journal or the answer."""
    for value in values:
        exc.detail = exc.detail.replace(value, "***")
    return exc


def _strip_write_only(resource: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in resource.items() if k not in WRITE_ONLY and k not in ("id", "meta", "members", "groups", "schemas")}


def _member_refs(resource: dict[str, Any]) -> dict[str, str | None]:
    """Member id -> the display the client gave (None when it gave none), first mention wins."""
    out: dict[str, str | None] = {}
    for m in resource.get("members") or []:
        value = m.get("value") if isinstance(m, dict) else None
        if isinstance(value, str) and value and value not in out:
            display = m.get("display")
            out[value] = display if isinstance(display, str) else None
    return out


class Provisioner:
    def __init__(self, mapping: CompiledMapping, connector: Connector, store: Store, breaker: Breaker | None = None) -> None:
        self.mapping = mapping
        self.app = mapping.app
        self.breaker = breaker
        # Every call to the app, from every path (membership and recovery too), passes the app's breaker.
        self.connector = guard(connector, breaker)
        self.store = store
        self.refs = _Refs(store, self.app)
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        self._inflight: set[int] = set()  # journal entries this process is working on right now
        self.memberships: dict[str, Membership] = {
            kind: create_membership(self.connector, kind, cres.members, self._user_claim) for kind, cres in mapping.resources.items()
        }

    def resource(self, kind: str) -> CompiledResource:
        try:
            return self.mapping.resources[kind]
        except KeyError:
            raise not_found(f"this app has no {kind} resources") from None

    def _lock(self, rid: str) -> asyncio.Lock:
        lock = self._locks.get(rid)
        if lock is None:
            lock = asyncio.Lock()
            self._locks[rid] = lock
        return lock

    # ------------------------------------------------------------------ helpers

    def _unique_key(self, cres: CompiledResource, resource: dict[str, Any]) -> str:
        value = resource.get(cres.unique_attr)
        if not isinstance(value, str) or not value.strip():
            raise invalid_value(f"{cres.unique_attr} is required")
        return value.lower()

    async def _record(self, cres: CompiledResource, resource: dict[str, Any]) -> dict[str, Any]:
        try:
            return await to_record(cres, resource, self.refs)
        except UnresolvedReference as exc:
            raise invalid_value(str(exc)) from None
        except TemplateError as exc:
            raise invalid_value(f"a transform of this app's mapping failed on the value: {exc}") from None

    async def _overlay(self, cres: CompiledResource, data: dict[str, Any], record: dict[str, Any]) -> dict[str, Any]:
        try:
            return await overlay(cres, data, record, self.refs)
        except TemplateError as exc:
            raise ScimError(502, f"the app's record could not be translated: {exc}") from None

    async def _members_for_write(self, resource: dict[str, Any]) -> list[Member]:
        """The members a request names that exist in this app.

        An id the gateway does not know is skipped with a warning, not refused:
        IdPs send members whose own provisioning failed or is still queued, and
        the conformance suite scim-sanity expects 200 for an unknown member id.
        """
        refs = _member_refs(resource)
        found = await self.store.native_ids(self.app, None, list(refs))
        missing = [i for i in refs if i not in found]
        if missing:
            log.warning("%s: ignoring %d unknown member id(s), e.g. %r", self.app, len(missing), missing[0])
        return [Member(i, found[i][0], refs[i]) for i in refs if i in found]

    async def _natives(self, members: list[Member]) -> list[tuple[str, str]]:
        """The members' (kind, native id); one without an app record now (deactivated by deletion) is left out."""
        found = await self.store.native_ids(self.app, None, [m.id for m in members])
        return [(found[m.id][0], found[m.id][1]) for m in members if m.id in found and found[m.id][1] is not None]

    async def _call(self, what: str, fn: Callable[[], Awaitable[Any]]) -> Any:
        try:
            return await fn()
        except CircuitOpen as exc:
            raise unavailable(f"{what}: {exc.detail}", exc.retry_after or 1) from None
        except AppError as exc:
            raise translate_app_error(exc, what) from None

    async def _under_claim(self, seq: int, what: str, call: Callable[[], Awaitable[Any]], hide: list[str] | None = None) -> Any:
        """Run the app's call for a claimed write; any failure aborts the claim (nothing changed in the store).

        A crash (the process dying here) leaves the claim pending for `recover()`.
        """
        try:
            # One admission for the write's calls: the breaker refuses it before the first, never between two.
            async with self.breaker.admission() if self.breaker is not None else contextlib.nullcontext():
                return await call()
        except CircuitOpen as exc:  # the app was not called: the write did not happen
            await self.store.abort(seq, f"not sent: {exc.detail}")
            raise unavailable(f"{what}: {exc.detail}", exc.retry_after or 1) from None
        except AppError as exc:
            _hide(exc, hide or [])
            await self.store.abort(seq, f"app refused: {exc.detail}")
            raise translate_app_error(exc, what) from None
        except Exception as exc:
            await self.store.abort(seq, f"gateway error: {type(exc).__name__}")
            raise

    async def _run_claimed(
        self, seq: int, what: str, call: Callable[[], Awaitable[Any]], settle: Callable[[Any], Awaitable[Any]],
        hide: list[str] | None = None,
    ) -> Any:
        """The app's call, then settling the journal entry; the entry counts as in flight (not for recovery) meanwhile."""
        self._inflight.add(seq)
        try:
            return await settle(await self._under_claim(seq, what, call, hide))
        finally:
            self._inflight.discard(seq)

    async def _claim(self, kind: str, rid: str, op: str, **kwargs: Any) -> tuple[int, Row]:
        """Claim a resource for a write, waiting (bounded) while another request, maybe in another process, holds it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + BUSY_RETRY_SECONDS
        delay = 0.01
        while True:
            try:
                return await self.store.begin_write(self.app, kind, rid, op, **kwargs)
            except Gone:
                raise not_found(f"{kind} {rid} not found") from None
            except Busy:
                if loop.time() > deadline:
                    raise unavailable(f"{kind} {rid} is being changed by another request; retry", 2) from None
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.25)

    async def _live_data(self, cres: CompiledResource, row: Row) -> dict[str, Any]:
        """The gateway copy with every mapped attribute as the app has it now (the copy itself for `reads: cached`)."""
        if row.native_id is None or not cres.reads_live:
            return row.data
        native_id = row.native_id
        record = await self._call(f"reading {cres.name} {row.id}", lambda: self.connector.get(cres.name, native_id))
        if record is None:
            await self._forget_vanished(cres, row)
            raise not_found(f"{cres.name} {row.id} no longer exists in the app")
        return await self._overlay(cres, row.data, record)

    async def _forget_vanished(self, cres: CompiledResource, row: Row) -> None:
        """The app deleted the record itself: the resource is gone, so its id and unique name are released."""
        try:
            seq, _ = await self.store.begin_write(self.app, cres.name, row.id, "delete")
        except (Busy, Gone):
            return  # another request is settling it
        await self.store.settle_delete(seq)
        log.info("%s: %s %s was deleted in the app; the gateway forgot it", self.app, cres.name, row.id)
        await self._forget_references(cres.name, row.id)

    async def _sync_copy(self, cres: CompiledResource, row: Row, live: dict[str, Any]) -> Row:
        """Bring our copy (what lists and filters answer from) up to what the app holds; a change is a new version."""
        if live == row.data:
            return row
        name = live.get(cres.unique_attr)
        key = name.lower() if isinstance(name, str) and name.strip() else None
        refreshed = await self.store.refresh(self.app, cres.name, row.id, live, utc_now(), key)
        return refreshed or row

    async def _read_back(self, cres: CompiledResource, native_id: str, data: dict[str, Any]) -> dict[str, Any]:
        """What the app now holds, over what we sent (the app may normalise or default values)."""
        if not cres.reads_live:
            return data
        try:
            record = await self.connector.get(cres.name, native_id)
        except AppError as exc:
            log.warning("%s: reading back %s %s failed: %s", self.app, cres.name, native_id, exc.detail)
            return data
        if record is None:
            return data
        try:
            return await overlay(cres, data, record, self.refs)
        except TemplateError:
            return data

    async def materialize(
        self, cres: CompiledResource, row: Row, data: dict[str, Any] | None = None, *, members: bool = True,
        related: dict[str, list[Member]] | None = None,
    ) -> dict[str, Any]:
        """The SCIM resource; `related` (a page's members or groups, fetched at once by `query`) saves a query per row."""
        out: dict[str, Any] = {"id": row.id, **(row.data if data is None else data)}
        if cres.name == "Group" and members:
            found = related.get(row.id, []) if related is not None else await self.store.members(self.app, row.id)
            if found:
                out["members"] = [{"value": m.id, "type": m.type, **({"display": m.display} if m.display else {})} for m in found]
        elif cres.name == "User" and members:
            groups = related.get(row.id, []) if related is not None else await self.store.groups_of(self.app, row.id)
            if groups:
                out["groups"] = [{"value": g.id, "type": "direct", **({"display": g.display} if g.display else {})} for g in groups]
        out["meta"] = {
            "resourceType": cres.name,
            "created": row.created,
            "lastModified": row.last_modified,
            "version": f'W/"{row.version}"',
        }
        return out

    # ------------------------------------------------------------------ reads

    async def get(self, kind: str, rid: str, *, live: bool = True, members: bool = True) -> tuple[Row, dict[str, Any]]:
        cres = self.resource(kind)
        row = await self.store.get(self.app, kind, rid)
        if row is None:
            raise not_found(f"{kind} {rid} not found")
        if not live:
            return row, await self.materialize(cres, row, members=members)
        data = await self._live_data(cres, row)
        row = await self._sync_copy(cres, row, data)
        return row, await self.materialize(cres, row, data, members=members)

    async def query(self, kind: str, query: Query, *, members: bool = True) -> tuple[int, list[dict[str, Any]]]:
        cres = self.resource(kind)
        if query.filter is not None and cres.pushdown:
            await self._pushdown(cres, query.filter)
        total, rows = await self.store.query(self.app, cres.rtype, query)
        if total == 0 and query.filter is not None:
            adopted = await self._adopt_on_lookup(cres, query.filter)
            if adopted is not None:
                total, rows = 1, ([adopted] if query.start_index <= 1 and query.count != 0 else [])
        related: dict[str, list[Member]] | None = None
        if members and rows:
            ids = [row.id for row in rows]
            related = await (self.store.members_of_many if kind == "Group" else self.store.groups_of_many)(self.app, ids)
        return total, [await self.materialize(cres, row, members=members, related=related) for row in rows]

    async def _adopt_on_lookup(self, cres: CompiledResource, node: FilterNode) -> Row | None:
        """Link an account the app already has when an IdP looks it up by its unique name.

        Entra and Okta ask `userName eq "x"` (groups: `displayName eq "x"`) before
        creating; an app record with that name the gateway has never linked is
        adopted, so the IdP takes it over instead of failing on a duplicate.
        """
        if not (isinstance(node, Comparison) and node.op == CompareOperator.eq and isinstance(node.value, str)):
            return None
        path = node.attr_path
        if cres.rtype.resolve(path.attr, path.sub_attr, path.uri) != cres.match_rule.resolved:
            return None
        found = await self._call(f"looking up {cres.name}", lambda: self._find_by_match(cres, node.value))
        if found is None or len(found) != 1:
            return None
        native_id, record = found[0]
        if await self.store.by_native(self.app, cres.name, native_id) is not None:
            return None
        return await self._link_app_record(cres, native_id, record)

    async def _link_app_record(self, cres: CompiledResource, native_id: str, record: dict[str, Any]) -> Row | None:
        """Adopt an app record the gateway has never linked: a new SCIM id, its data read from the record."""
        data = await self._overlay(cres, {}, record)
        name = data.get(cres.unique_attr)
        if not isinstance(name, str) or not name.strip():
            return None
        members: list[Member] = []
        if cres.name == "Group" and cres.members:
            members = await self._call(f"reading the members of the app's group {native_id}", lambda: self._members_from_app(native_id))
        try:
            row = await self.store.link(self.app, cres.name, str(uuid.uuid4()), native_id, name.lower(), data, utc_now(), members)
        except UniqueConflict:
            return None  # linked meanwhile by another request, or the name belongs to another resource
        log.info("%s: adopted the app's existing %s %s as %s", self.app, cres.name, native_id, row.id)
        return row

    def _pushable(self, cres: CompiledResource, node: FilterNode) -> list[tuple[CompiledRule, str, Any]] | None:
        """The (rule, op, value) questions to ask the app so that its answers cover every match of `node`; None if it cannot."""
        if isinstance(node, Comparison):
            path = node.attr_path
            resolved = cres.rtype.resolve(path.attr, path.sub_attr, path.uri)
            rule = next((r for r in cres.pushdown if r.resolved == resolved), None)
            op = node.op.value.lower()
            if rule is None or not isinstance(node.value, str) or op not in self.connector.caps.search_ops:
                return None
            if op != "eq" and (rule.to_app is not None or rule.rule.ref is not None):
                return None  # a transform of part of a value means nothing
            return [(rule, op, node.value)]
        if isinstance(node, LogicalExpr) and node.op == LogicalOperator.and_:
            for term in node.terms:  # one pushable conjunct finds a superset of the matches
                found = self._pushable(cres, term)
                if found is not None:
                    return found
            return None
        if isinstance(node, LogicalExpr) and node.op == LogicalOperator.or_:
            out: list[tuple[CompiledRule, str, Any]] = []
            for term in node.terms:
                found = self._pushable(cres, term)
                if found is None:
                    return None
                out += found
            return out
        return None

    async def _pushdown(self, cres: CompiledResource, node: FilterNode) -> None:
        """Ask the app for the records a filter names, so the answer is as current as the app.

        Records the gateway knows have its copy brought up to date; records it
        has never linked are adopted. The store then answers the whole filter,
        with SCIM's own comparison rules, over those fresh copies.
        """
        questions = self._pushable(cres, node)
        if not questions:
            return
        for rule, op, value in questions:
            found = await self._call(f"searching {cres.name}", lambda r=rule, o=op, v=value: self._find(cres, r, v, o))
            for native_id, record in found[:PUSHDOWN_LIMIT]:
                row = await self.store.by_native(self.app, cres.name, native_id)
                if row is None:
                    await self._link_app_record(cres, native_id, record)
                elif row.state == "active":
                    await self._sync_copy(cres, row, await self._overlay(cres, row.data, record))

    # ------------------------------------------------------------------ writes

    async def create(self, kind: str, resource: dict[str, Any]) -> tuple[Row, dict[str, Any]]:
        cres = self.resource(kind)
        unique_key = self._unique_key(cres, resource)
        members = await self._members_for_write(resource) if cres.name == "Group" else []
        if members and not cres.members:
            raise invalid_value("members: this app's mapping does not manage group membership")
        record = await self._record(cres, resource)
        data = _strip_write_only(resource)
        rid = str(uuid.uuid4())
        now = utc_now()
        try:
            seq = await self.store.begin_create(self.app, kind, rid, unique_key, data, now)
        except UniqueConflict:
            raise uniqueness(f"{cres.unique_attr} {resource[cres.unique_attr]!r} is already taken") from None

        async def call() -> str | None:
            if resource.get("active") is False and cres.deactivate.via == "delete":
                return None  # an inactive account has no record in this app until it is activated
            native_id: str = await self.memberships[kind].create(record, await self._natives(members))
            if resource.get("active") is False:
                await self._set_active(cres, native_id, False)
            return native_id

        async def settle(native_id: str | None) -> Row:
            settled = data if native_id is None else await self._read_back(cres, native_id, data)
            try:
                return await self.store.settle_create(seq, native_id, settled, members)
            except NativeConflict:
                # The app answered with an id another resource already has: it did not create a new record.
                await self.store.abort(seq, "app returned a native id that is already linked")
                raise ScimError(502, f"creating {kind}: the app returned the id of an existing record") from None

        row = await self._run_claimed(seq, f"creating {kind}", call, settle, _write_only_values(cres, resource, record))
        return row, await self.materialize(cres, row)

    async def create_many(self, kind: str, resources: list[dict[str, Any]]) -> list[Row | ScimError]:
        """Create several resources (a Bulk import), in order, each answered as `create` would answer it alone.

        Users are claimed in one store transaction, created in the app in one call
        (one transaction for SQL), read back at once and settled in one transaction:
        the same journal entries and recovery as single creates, without a commit and
        a round trip each. Groups, and users created inactive, go one by one. Each answer is the settled row (a
        Bulk answer names the location and version only) or the error.
        """
        out: list[Row | ScimError | None] = [None] * len(resources)
        run: list[int] = []
        for i, resource in enumerate(resources):
            if kind == "User" and resource.get("active") is not False:
                run.append(i)
                continue
            await self._create_run(kind, resources, run, out)
            run = []
            try:
                out[i] = (await self.create(kind, resource))[0]
            except ScimError as exc:
                out[i] = exc
        await self._create_run(kind, resources, run, out)
        assert all(o is not None for o in out)
        return out  # type: ignore[return-value]

    async def _create_run(
        self, kind: str, resources: list[dict[str, Any]], run: list[int], out: list[Row | ScimError | None]
    ) -> None:
        if not run:
            return
        cres = self.resource(kind)
        what = f"creating {kind}"
        now = utc_now()
        claimed: list[tuple[int, int, dict[str, Any], dict[str, Any]]] = []  # (index, seq, record, data)
        prepared: list[tuple[int, str, dict[str, Any], dict[str, Any]]] = []
        for i in run:
            try:
                prepared.append((i, self._unique_key(cres, resources[i]), await self._record(cres, resources[i]), _strip_write_only(resources[i])))
            except ScimError as exc:
                out[i] = exc
        async with self.store.batch():
            for i, unique_key, record, data in prepared:
                try:
                    seq = await self.store.begin_create(self.app, kind, str(uuid.uuid4()), unique_key, data, now)
                except UniqueConflict:
                    out[i] = uniqueness(f"{cres.unique_attr} {resources[i][cres.unique_attr]!r} is already taken")
                    continue
                claimed.append((i, seq, record, data))
        if not claimed:
            return
        seqs = [seq for _, seq, _, _ in claimed]
        self._inflight.update(seqs)
        try:
            try:
                async with self.breaker.admission() if self.breaker is not None else contextlib.nullcontext():
                    answers = await self.connector.create_many(kind, [record for _, _, record, _ in claimed])
            except Exception as exc:  # raised, not answered per record: nothing was created, every claim is given up
                if isinstance(exc, AppError):
                    _hide(exc, [v for i, _, record, _ in claimed for v in _write_only_values(cres, resources[i], record)])
                for _i, seq, _, _ in claimed:
                    await self.store.abort(seq, f"not created: {exc.detail if isinstance(exc, AppError) else type(exc).__name__}")
                if not isinstance(exc, AppError):
                    raise
                if isinstance(exc, CircuitOpen):
                    scim_error = unavailable(f"{what}: {exc.detail}", exc.retry_after or 1)
                else:
                    scim_error = translate_app_error(exc, what)
                for i, _, _, _ in claimed:
                    out[i] = scim_error
                return
            created: list[tuple[int, int, str, dict[str, Any]]] = []
            for (i, seq, record, data), answer in zip(claimed, answers, strict=True):
                if isinstance(answer, AppError):
                    _hide(answer, _write_only_values(cres, resources[i], record))
                    await self.store.abort(seq, f"app refused: {answer.detail}")
                    out[i] = translate_app_error(answer, what)
                else:
                    created.append((i, seq, str(answer), data))
            settled = await self._read_back_many(cres, [(native_id, data) for _, _, native_id, data in created])
            async with self.store.batch():
                for (i, seq, native_id, _), data in zip(created, settled, strict=True):
                    try:
                        out[i] = await self.store.settle_create(seq, native_id, data, [])
                    except NativeConflict:
                        await self.store.abort(seq, "app returned a native id that is already linked")
                        out[i] = ScimError(502, f"{what}: the app returned the id of an existing record")
        finally:
            self._inflight.difference_update(seqs)

    async def _read_back_many(self, cres: CompiledResource, written: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
        """`_read_back` for several records in one read."""
        if not cres.reads_live or not written:
            return [data for _, data in written]
        try:
            records = await self.connector.get_many(cres.name, [native_id for native_id, _ in written])
        except AppError as exc:
            log.warning("%s: reading back %d new %s records failed: %s", self.app, len(written), cres.name, exc.detail)
            return [data for _, data in written]
        out = []
        for native_id, data in written:
            record = records.get(native_id)
            try:
                out.append(data if record is None else await overlay(cres, data, record, self.refs))
            except TemplateError:
                out.append(data)
        return out

    async def replace(
        self, kind: str, rid: str, resource: dict[str, Any], if_match: int | None = None, *, with_members: bool = True
    ) -> tuple[Row, dict[str, Any]]:
        """PUT: the resource becomes `resource`; membership is replaced only when the body names `members`."""

        def compute(current: dict[str, Any]) -> dict[str, Any]:
            return resource

        return await self._update(kind, rid, compute, if_match, replace_members=with_members)

    async def patch(
        self, kind: str, rid: str, apply: Callable[[dict[str, Any]], dict[str, Any]], if_match: int | None = None,
        *, member_changes: dict[str, dict[str, Any] | None] | None = None, with_members: bool = True,
    ) -> tuple[Row, dict[str, Any]]:
        """PATCH by `apply` on the whole resource, or, for a Group PATCH that only adds or removes members
        (`member_changes`, from scim.patch.member_changes), on just those members: same result, whatever the
        group's size. `with_members=False`: the answer will not show members, so they are not read."""
        if member_changes is not None and kind == "Group" and self.resource(kind).members is not None:
            return await self._patch_members(kind, rid, member_changes, if_match, with_members)
        row, resource = await self._update(kind, rid, apply, if_match, replace_members=True)
        return row, resource

    async def _current(self, kind: str, rid: str, if_match: int | None) -> Row:
        """The resource to update: 404 when it does not exist, 412 when If-Match names another version."""
        row = await self.store.get(self.app, kind, rid)
        if row is None:
            raise not_found(f"{kind} {rid} not found")
        if if_match is not None and row.version != if_match:
            raise ScimError(412, f"{kind} {rid} has changed: its version is W/\"{row.version}\"")
        return row

    async def _patch_members(
        self, kind: str, rid: str, changes: dict[str, dict[str, Any] | None], if_match: int | None, with_members: bool
    ) -> tuple[Row, dict[str, Any]]:
        cres = self.resource(kind)
        async with self._lock(rid):
            for _attempt in range(VERSION_RETRIES):
                row = await self._current(kind, rid, if_match)
                present = await self.store.member_ids_among(self.app, rid, list(changes))
                wanted = await self._members_for_write({"members": [item for item in changes.values() if item is not None]})
                add = [m for m in wanted if m.id not in present]
                remove = [Member(i, "User", None) for i, item in changes.items() if item is None and i in present]
                if not add and not remove:
                    return row, await self.materialize(cres, row, members=with_members)
                try:
                    seq, claimed = await self._claim(
                        kind, rid, "update", if_match=row.version, new_unique_key=row.unique_key,
                        payload={"add": [m.id for m in add], "remove": [m.id for m in remove]},
                    )
                except VersionMismatch:
                    if if_match is not None:
                        raise ScimError(412, f"{kind} {rid} has changed") from None
                    continue
                # No record change: the app is asked only to add and remove these members.
                return await self._apply_update(cres, seq, claimed, {}, row.data, row.unique_key, add, remove, with_members=with_members)
            raise unavailable(f"{kind} {rid} is changing too often to update; retry", 2)

    async def _update(
        self,
        kind: str,
        rid: str,
        compute: Callable[[dict[str, Any]], dict[str, Any]],
        if_match: int | None,
        *,
        replace_members: bool,
    ) -> tuple[Row, dict[str, Any]]:
        cres = self.resource(kind)
        async with self._lock(rid):
            for _attempt in range(VERSION_RETRIES):
                row = await self._current(kind, rid, if_match)
                # Start from what the app holds now, not only our copy: a change made in the app
                # (or a reference it cleared) must not be reverted by a PATCH about something else.
                live = await self._live_data(cres, row)
                current = {"id": row.id, **copy.deepcopy(live)}
                old_members: list[Member] = []
                if cres.name == "Group":
                    old_members = await self.store.members(self.app, rid)
                    if old_members:
                        current["members"] = [{"value": m.id, "type": m.type} for m in old_members]
                new = compute(current)
                unique_key = self._unique_key(cres, new)
                add: list[Member] = []
                remove: list[Member] = []
                if cres.name == "Group" and replace_members:
                    wanted = await self._members_for_write(new)
                    if wanted and not cres.members:
                        raise invalid_value("members: this app's mapping does not manage group membership")
                    old_ids = {m.id for m in old_members}
                    new_ids = {m.id for m in wanted}
                    add = [m for m in wanted if m.id not in old_ids]
                    remove = [m for m in old_members if m.id not in new_ids]
                record = await self._record(cres, new)
                data = _strip_write_only(new)
                if not add and not remove and "password" not in new and data == _strip_write_only(current):
                    # Nothing to change: no app call and no new version (beyond catching up with the app).
                    row = await self._sync_copy(cres, row, live)
                    return row, await self.materialize(cres, row)
                switch = None if current.get("active") is new.get("active") or new.get("active") is None else bool(new.get("active"))
                relink = self._relink(cres, row, switch)
                try:
                    seq, claimed = await self._claim(
                        kind, rid, "update", if_match=row.version, new_unique_key=unique_key,
                        payload={"add": [m.id for m in add], "remove": [m.id for m in remove], **({"relink": relink} if relink else {})},
                    )
                except UniqueConflict:
                    raise uniqueness(f"{cres.unique_attr} {new.get(cres.unique_attr)!r} is already taken") from None
                except VersionMismatch:
                    if if_match is not None:
                        raise ScimError(412, f"{kind} {rid} has changed") from None
                    continue  # another writer got in between: recompute on the new version
                return await self._apply_update(cres, seq, claimed, record, data, unique_key, add, remove, switch, relink)
            raise unavailable(f"{kind} {rid} is changing too often to update; retry", 2)

    @staticmethod
    def _relink(cres: CompiledResource, row: Row, switch: bool | None) -> str | None:
        """`deactivate: {via: delete}`: "drop" the app's record on deactivation, "create" it again on reactivation."""
        if cres.deactivate.via != "delete":
            return None
        if switch is False and row.native_id is not None:
            return "drop"
        if switch is True and row.native_id is None:
            return "create"
        return None

    async def _apply_update(
        self, cres: CompiledResource, seq: int, row: Row, record: dict[str, Any], data: dict[str, Any],
        unique_key: str, add: list[Member], remove: list[Member], switch: bool | None = None, relink: str | None = None,
        *, with_members: bool = True,
    ) -> tuple[Row, dict[str, Any]]:
        native_id = row.native_id
        rid = row.id

        async def call() -> str | None:
            if relink == "drop":
                assert native_id is not None
                try:
                    await self.connector.delete(cres.name, native_id)
                except AppNotFound:
                    pass
                return None
            if relink == "create":
                created: str = await self.memberships[cres.name].create(record, [])
                await self._rejoin_groups(rid, created)
                return created
            if native_id is None:
                return None  # deactivated by deleting it in the app: only the gateway's copy changes
            await self.memberships[cres.name].write(native_id, record, await self._natives(add), await self._natives(remove))
            if switch is not None:
                await self._set_active(cres, native_id, switch)
            return native_id

        async def settle(current_native: str | None) -> Row:
            settled = data if current_native is None else await self._read_back(cres, current_native, data)
            try:
                return await self.store.settle_update(
                    seq, settled, utc_now(), unique_key, add_members=add, remove_members=[m.id for m in remove],
                    relink=relink is not None, native_id=current_native,
                )
            except NativeConflict:
                await self.store.abort(seq, "app returned a native id that is already linked")
                raise ScimError(502, f"re-creating {cres.name} {rid}: the app returned the id of an existing record") from None

        row = await self._run_claimed(seq, f"updating {cres.name} {row.id}", call, settle, _write_only_values(cres, {}, record))
        return row, await self.materialize(cres, row, members=with_members)

    async def delete(self, kind: str, rid: str, if_match: int | None = None) -> None:
        cres = self.resource(kind)
        async with self._lock(rid):
            try:
                seq, row = await self._claim(kind, rid, "delete", if_match=if_match)
            except VersionMismatch:
                raise ScimError(412, f"{kind} {rid} has changed") from None
            native_id = row.native_id

            async def call() -> None:
                if native_id is None:
                    return  # deactivated by deleting it in the app: nothing left there
                try:
                    if cres.delete_mode == "deactivate" and cres.deactivate.via == "delete":
                        await self.connector.delete(kind, native_id)
                    elif cres.delete_mode == "deactivate" and cres.deactivate.via == "action":
                        await self._set_active(cres, native_id, False)
                    elif cres.delete_mode == "deactivate":
                        await self.connector.update(kind, native_id, await self._record(cres, {**row.data, "active": False}))
                    else:
                        await self.connector.delete(kind, native_id)
                except AppNotFound:
                    pass  # already gone in the app: the delete's goal holds

            async def settle(_: None) -> None:
                await self.store.settle_delete(seq)

            await self._run_claimed(seq, f"deleting {kind} {rid}", call, settle)
        await self._forget_references(kind, rid)

    @asynccontextmanager
    async def _user_claim(self, native_id: str) -> AsyncIterator[None]:
        """Hold a user while its group list (membership via: user_field) is edited: one edit at a time, in every process.

        Its groups change, so settling makes a new version of the user.
        """
        row = await self.store.by_native(self.app, "User", native_id)
        if row is None:  # a user the gateway does not know: nothing to serialize against
            yield
            return
        seq, claimed = await self._claim("User", row.id, "update", payload={"membership": True})
        try:
            yield
        except BaseException:
            await self.store.abort(seq, "membership edit failed")
            raise
        await self.store.settle_update(seq, claimed.data, utc_now(), claimed.unique_key)

    async def _rejoin_groups(self, rid: str, native_id: str) -> None:
        """A user created again in the app (reactivation) rejoins the groups the gateway still lists it in."""
        groups = self.memberships.get("Group")
        if groups is None:
            return
        listed = [g.id for g in await self.store.groups_of(self.app, rid)]
        found = await self.store.native_ids(self.app, "Group", listed)
        natives = [found[g][1] for g in listed if g in found and found[g][1] is not None]
        if isinstance(groups, UserFieldMembership):
            # The list lives on the re-created record itself: one update sets it, not one edit per group.
            if natives:
                await self.connector.update("User", native_id, {groups.field: groups.ids.render(natives)})
            return
        for group_native in natives:
            await groups.write(group_native, {}, [("User", native_id)], [])

    async def _set_active(self, cres: CompiledResource, native_id: str, active: bool) -> None:
        """`deactivate: {via: action}`: the app's own disable / enable call (a field rule needs nothing more)."""
        if cres.deactivate.via != "action":
            return
        action = cres.deactivate.enable if active else cres.deactivate.disable
        assert action is not None
        await self.connector.action(cres.name, native_id, action)

    async def _forget_references(self, kind: str, rid: str) -> None:
        """Drop a deleted resource's id from every `ref:` attribute of our copies (e.g. the reports' manager)."""
        for cres in self.mapping.resources.values():
            for rule in cres.rules:
                if rule.rule.ref != kind or rule.selector is not None:
                    continue
                resolved = rule.resolved
                path = AttrPath(resolved.attribute.name, resolved.sub.name if resolved.sub else None, resolved.urn)
                query = Query(filter=Comparison(path, CompareOperator.eq, rid))
                _total, rows = await self.store.query(self.app, cres.rtype, query)
                for row in rows:
                    data = copy.deepcopy(row.data)
                    write_rule(data, rule, None)
                    await self.store.refresh(self.app, cres.name, row.id, data, utc_now())

    # ------------------------------------------------------------------ import

    async def import_existing(self, kind: str, progress: Callable[[dict[str, int]], None] | None = None) -> dict[str, int]:
        """Link every record the app already has that no SCIM resource is linked to (`scim-gateway import`).

        Idempotent: a record already linked is counted and left alone. A record whose
        unique name another resource already holds is a conflict, reported, not linked.
        """
        cres = self.resource(kind)
        if not self.connector.caps.list_all:
            raise ScimError(501, f"the {self.mapping.config.connector['type']} connector of {self.app} cannot list records")
        counts = {"read": 0, "linked": 0, "already": 0, "conflicts": 0, "unnamed": 0}
        async for native_id, record in self.connector.list_all(kind):
            counts["read"] += 1
            if await self.store.by_native(self.app, kind, native_id) is not None:
                counts["already"] += 1
            else:
                data = await self._overlay(cres, {}, record)
                name = data.get(cres.unique_attr)
                if not isinstance(name, str) or not name.strip():
                    counts["unnamed"] += 1
                    log.warning("%s: %s %s has no %s: not imported", self.app, kind, native_id, cres.unique_attr)
                elif await self._link_app_record(cres, native_id, record) is None:
                    counts["conflicts"] += 1
                    log.warning("%s: %s %s: %s %r is already taken by another resource", self.app, kind, native_id, cres.unique_attr, name)
                else:
                    counts["linked"] += 1
            if progress is not None:
                progress(counts)
        return counts

    # ------------------------------------------------------------------ recovery

    async def recover(self, older_than: float | None = None) -> int:
        """Settle every write a crash left pending: link what the app has, roll back what it has not.

        At start-up every pending entry is stale. While serving, only entries older
        than `older_than` seconds that this process is not working on are taken (a
        write whose settle failed, say, or a process that died while others live).
        An entry that settles to a unique name another pending entry still holds (a
        rename cut short, and a create of the name it was giving up) is tried again
        once the others are settled.
        """
        todo = [e for e in await self.store.pending(self.app, older_than) if e.seq not in self._inflight]
        repaired = 0
        while todo:
            waiting: list[Pending] = []
            for entry in todo:
                try:
                    if await self._recover_entry(entry):
                        repaired += 1
                except UniqueConflict:
                    waiting.append(entry)
                except AppError as exc:
                    log.warning("%s: recovery of journal entry %s postponed, the app failed: %s", self.app, entry.seq, exc.detail)
                except Exception:
                    # One entry that cannot be repaired must not stop the others, nor the gateway from starting.
                    log.exception("%s: recovery of journal entry %s failed; it is retried by the next sweep", self.app, entry.seq)
            if len(waiting) == len(todo):
                for entry in waiting:  # held by a write of another process, or names swapped crosswise: the next sweep
                    log.warning("%s: recovery of journal entry %s waits: the unique name of %s %s is held by another write",
                                self.app, entry.seq, entry.type, entry.resource_id)
                break
            todo = waiting
        return repaired

    async def _recover_entry(self, entry: Pending) -> bool:
        """Settle or roll back one pending entry; False when it cannot tell yet. UniqueConflict: wait for the others."""
        cres = self.mapping.resources.get(entry.type)
        row = await self.store.get_any(entry.resource_id)
        try:
            if cres is None or row is None:
                await self.store.abort(entry.seq, "recovery: resource type or row no longer exists")
            elif entry.op == "create":
                return await self._recover_create(cres, entry.seq, row)
            elif entry.op == "update":
                await self._recover_update(cres, entry.seq, row, entry.payload.get("relink"))
            elif entry.op == "delete":
                if row.native_id is None:
                    await self.store.settle_delete(entry.seq)  # nothing of it is left in the app
                elif not cres.reads_live and cres.delete_mode == "delete":
                    await self.connector.delete(cres.name, row.native_id)  # cannot look: finish it (idempotent)
                    await self.store.settle_delete(entry.seq)
                elif cres.delete_mode == "deactivate" or await self.connector.get(cres.name, row.native_id) is None:
                    await self.store.settle_delete(entry.seq)
                else:
                    await self.store.abort(entry.seq, "recovery: the app still has the record")
        except NativeConflict:
            # The record the match found is already linked to another resource: not ours to take.
            await self.store.abort(entry.seq, "recovery: the matching app record belongs to another resource")
        return True

    async def _find_by_match(self, cres: CompiledResource, scim_value: Any) -> list[tuple[str, dict[str, Any]]] | None:
        """The app's records whose match field holds this SCIM value; None when the connector cannot search."""
        if not self.connector.caps.search:
            return None
        return await self._find(cres, cres.match_rule, scim_value)

    async def _find(self, cres: CompiledResource, rule: CompiledRule, scim_value: Any, op: str = "eq") -> list[tuple[str, dict[str, Any]]]:
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
        found: list[tuple[str, dict[str, Any]]] = await self.connector.find(cres.name, rule.field, value, op)
        return found

    async def _recover_create(self, cres: CompiledResource, seq: int, row: Row) -> bool:
        matches = await self._find_by_match(cres, read_rule(row.data, cres.match_rule))
        if matches is None:
            log.warning("%s: cannot tell whether %s %s reached the app (its connector cannot search)", self.app, cres.name, row.id)
            return False
        if len(matches) == 1:
            native_id, app_record = matches[0]
            data = await overlay(cres, row.data, app_record, self.refs)
            members: list[Member] = []
            if cres.name == "Group" and cres.members:
                members = await self._members_from_app(native_id)
            await self.store.settle_create(seq, native_id, data, members)
            log.info("%s: recovery linked %s %s to the app's record %s", self.app, cres.name, row.id, native_id)
        else:
            await self.store.abort(seq, "recovery: the app has no such record")
            log.info("%s: recovery rolled back the unfinished create of %s %s", self.app, cres.name, row.id)
        return True

    async def _recover_update(self, cres: CompiledResource, seq: int, row: Row, relink: str | None = None) -> None:
        if relink is not None:
            await self._recover_relink(cres, seq, row, relink)
            return
        if row.native_id is None:
            await self.store.abort(seq, "recovery: only the gateway's copy was to change; the IdP retries the write")
            return
        if not cres.reads_live:
            # The app cannot be read back: the copy keeps what was acknowledged before; the IdP retries the write.
            await self.store.abort(seq, "recovery: the app cannot be read back; the unacknowledged update is dropped")
            return
        record = await self.connector.get(cres.name, row.native_id)
        if record is None:
            await self.store.abort(seq, "recovery: the app no longer has the record")
            return
        data = await overlay(cres, row.data, record, self.refs)
        unique_value = data.get(cres.unique_attr)
        unique_key = unique_value.lower() if isinstance(unique_value, str) else row.unique_key
        if cres.name == "Group" and cres.members:
            members = await self._members_from_app(row.native_id)
            await self.store.settle_update(seq, data, utc_now(), unique_key, replace_members=members)
        else:
            await self.store.settle_update(seq, data, utc_now(), unique_key)

    async def _recover_relink(self, cres: CompiledResource, seq: int, row: Row, relink: str) -> None:
        """A deactivation by deletion, or a reactivation by re-creation, cut short: finish it if the app shows it happened."""
        if relink == "drop":
            assert row.native_id is not None
            if await self.connector.get(cres.name, row.native_id) is None:
                await self.store.settle_update(seq, {**row.data, "active": False}, utc_now(), row.unique_key, relink=True, native_id=None)
            else:
                await self.store.abort(seq, "recovery: the app still has the record; the deactivation did not happen")
            return
        matches = await self._find_by_match(cres, read_rule(row.data, cres.match_rule))
        if matches and len(matches) == 1 and await self.store.by_native(self.app, cres.name, matches[0][0]) is None:
            native_id, record = matches[0]
            await self._rejoin_groups(row.id, native_id)
            data = await overlay(cres, {**row.data, "active": True}, record, self.refs)
            await self.store.settle_update(seq, data, utc_now(), row.unique_key, relink=True, native_id=native_id)
        else:
            await self.store.abort(seq, "recovery: the app has no re-created record; the reactivation did not happen")

    async def _members_from_app(self, native_id: str) -> list[Member]:
        pairs = await self.memberships["Group"].members_of(native_id)
        out: list[Member] = []
        for kind in {k for k, _ in pairs}:
            ids = await self.store.scim_ids(self.app, kind, [n for k, n in pairs if k == kind])
            out.extend(Member(ids[n], kind) for k, n in pairs if k == kind and n in ids)
        return out
