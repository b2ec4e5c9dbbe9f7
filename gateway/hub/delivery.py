"""Delivery: one worker per app fed by the hub brings each outbox entry's resource to its current hub state in
that app, through the app's own SCIM service and provisioner (the same path as a request to its endpoint).

State-based and idempotent: the worker reads the hub's resource as it is now, so several changes made while
the app was down arrive once, as the latest state, and a retry repeats nothing (an update that changes
nothing calls no app). References (a manager, group members) are translated to the app's ids through the
links; one whose target is not in the app yet is left out, and the holders are queued again when it arrives.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from typing import Any

from ..connectors.errors import AppConflict
from ..provisioning.breaker import CircuitOpen
from ..provisioning.errors import AppFailed, NotFound, ProvisioningError, Taken, Unavailable
from ..runtime import AppRuntime
from ..schema import CORE_GROUP, CORE_USER, ENTERPRISE_USER, PATCH_OP, ResourceType
from ..scim.errors import ScimError
from ..store import Query, Row
from ..store import query as q
from ..store.outbox import HubStore, OutboxEntry
from .config import DeliveryConfig
from .directory import HUB_APP
from .rules import AppRule

log = logging.getLogger(__name__)


def _why(exc: BaseException) -> str:
    if isinstance(exc, ProvisioningError):
        return f"{type(exc).__name__}: {exc.detail}"
    if isinstance(exc, ScimError):
        return f"{exc.status} {exc.scim_type or ''}: {exc.detail}".replace("  ", " ")
    return f"{type(exc).__name__}: {exc}"


class Worker:
    """Delivers the outbox entries of one app."""

    def __init__(self, app: str, rule: AppRule, store: HubStore, apps: dict[str, AppRuntime], config: DeliveryConfig) -> None:
        self.app = app
        self.rule = rule
        self.store = store
        self.apps = apps
        self.config = config
        self.wake = asyncio.Event()
        self.delivered = 0  # entries delivered by this worker (tests and logs)

    @property
    def runtime(self) -> AppRuntime | None:
        return self.apps.get(self.app)

    async def run(self) -> None:
        """Deliver until cancelled: up to `concurrency` entries at once, a slot taken again as soon as it frees.
        The leases of entries in flight are renewed every third of `lease`, so a dead process's lapse soon."""
        inflight: dict[asyncio.Task[None], OutboxEntry] = {}
        loop = asyncio.get_running_loop()
        renew_every = self.config.lease / 3
        renewed = loop.time()
        try:
            while True:
                taken = 0
                try:
                    if inflight and loop.time() - renewed >= renew_every:
                        await self.store.renew(list(inflight.values()), self.config.lease)
                        renewed = loop.time()
                    taken = await self.fill(inflight)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("hub: delivery to %s failed; it runs again in %g s", self.app, self.config.poll_interval)
                if taken:
                    continue  # more may be due: look again while there are free slots
                self.wake.clear()
                waits: set[asyncio.Future[Any]] = {asyncio.ensure_future(self.wake.wait()), *inflight}
                timeout = min(self.config.poll_interval, renew_every)
                await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                for future in waits - set(inflight):
                    if not future.done():
                        future.cancel()
        finally:
            for task in inflight:
                task.cancel()
            await asyncio.gather(*inflight, return_exceptions=True)

    async def fill(self, inflight: dict[asyncio.Task[None], OutboxEntry]) -> int:
        """Take due entries for the free slots and start delivering them; how many were taken."""
        free = self.config.concurrency - len(inflight)
        if free <= 0 or self._not_now() is not None:
            return 0  # no slot; or the app cannot be called: the entries wait, due as they are, no attempt spent
        entries = await self.store.take(self.app, free, self.config.lease)
        for entry in entries:
            task = asyncio.create_task(self._one(entry), name=f"hub-deliver:{self.app}:{entry.resource_id}")
            inflight[task] = entry
            task.add_done_callback(lambda t: inflight.pop(t, None))
        return len(entries)

    def _not_now(self) -> tuple[float, str] | None:
        """(seconds, why) while the app cannot be called: its connector not open, its circuit open."""
        runtime = self.runtime
        if runtime is None:
            return self.config.poll_interval, f"app {self.app} is not started"
        refusal = runtime.refusal()
        if refusal is not None:
            return max(1.0, float(refusal.headers.get("Retry-After", 1))), refusal.detail
        breaker = runtime.provisioner.breaker
        wait = breaker.retry_in() if breaker is not None else None
        if wait is not None:
            return max(0.5, wait), f"app {self.app}'s circuit is open"
        return None

    async def _one(self, entry: OutboxEntry) -> None:
        try:
            await self.deliver(entry.type, entry.resource_id, entry)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            why = _why(exc)
            not_now = self._not_now()
            if not_now is not None and isinstance(exc, AppFailed) and isinstance(exc.cause, CircuitOpen):
                await self.store.postpone_delivery(entry, not_now[0], not_now[1])
                return
            if not isinstance(exc, ProvisioningError | ScimError):
                log.exception("hub: delivering %s %s to %s", entry.type, entry.resource_id, self.app)
            cfg = self.config
            dead = await self.store.failed(
                entry, why, max_attempts=cfg.max_attempts, backoff=cfg.backoff, max_backoff=cfg.max_backoff
            )
            level = logging.ERROR if dead else logging.WARNING
            log.log(
                level, "hub: %s %s -> %s: %s%s", entry.type, entry.resource_id, self.app, why, " (dead-lettered)" if dead else ""
            )
            return
        if await self.store.delivered(entry):
            self.delivered += 1
            log.debug("hub: %s %s delivered to %s (generation %d)", entry.type, entry.resource_id, self.app, entry.generation)

    # ------------------------------------------------------------------ one resource

    async def deliver(self, kind: str, hub_id: str, entry: OutboxEntry | None = None, *, depth: int = 0) -> None:
        """Make app `self.app` hold `hub_id` as the hub holds it now (or not at all). `depth`: > 0 when delivered
        on the way of another resource's (a name it held was needed), so that the moving aside stops there."""
        runtime = self.runtime
        assert runtime is not None
        service = runtime.service
        rtype = service.rtypes.get(kind)
        if rtype is None:
            return
        row = await self.store.get(HUB_APP, kind, hub_id)
        assigned = row is not None and await self._assigned(kind, row)
        app_id = await self.store.link_of(self.app, kind, hub_id)
        adopted = False
        if app_id is None:
            app_id = await self._in_doubt(runtime, rtype, hub_id)
            adopted = app_id is not None
        if not assigned:
            if app_id is not None:
                await self._leave(runtime, rtype, hub_id, app_id, gone=row is None)
            return
        assert row is not None
        body = await self._body(rtype, row)
        if app_id is not None:
            try:
                await self._write(runtime, rtype, "PUT", app_id, body, row, depth)
                if adopted:  # its create was cut short before what refers to it was queued again
                    await self._arrived(kind, hub_id)
                return
            except NotFound:
                await self.store.drop_link(self.app, kind, hub_id)  # deleted in the app (or its endpoint): again
        name = row.data.get(runtime.provisioner.resource(kind).unique_attr)
        # Durable before the app is called: a kill between the app's answer and the link leaves the name, by
        # which the next delivery finds the record (even once the hub resource is renamed or deleted).
        await self.store.set_creating(self.app, kind, hub_id, name if isinstance(name, str) else None)
        try:
            created = await self._write(runtime, rtype, "POST", None, body, row, depth)
            assert created is not None
            new_id = created.id
        except (Taken, AppFailed) as exc:
            if isinstance(exc, AppFailed) and not isinstance(exc.cause, AppConflict):
                raise
            # The name is held by an account the app already had (not linked to any hub resource): look it up as
            # an IdP would (the app's own search, which adopts an app record the gateway has not linked yet), take it.
            held = await self._lookup(runtime, rtype, name)
            if held is None:
                raise
            owner = await self.store.hub_id_of(self.app, kind, held)
            if owner is not None and owner != hub_id:
                raise Taken(f"{name!r} is held in app {self.app} by the record of hub resource {owner}") from exc
            await self.store.set_link(self.app, kind, hub_id, held)
            await service.write("PUT", rtype, held, body)
        else:
            await self.store.set_link(self.app, kind, hub_id, new_id)
        await self._arrived(kind, hub_id)

    async def _in_doubt(self, runtime: AppRuntime, rtype: ResourceType, hub_id: str) -> str | None:
        """A create sent and not linked (cut short by a kill, a timeout): the app record it made, now linked, or None
        once the app has no record of that name that is not another hub resource's. Waits (Unavailable) while the
        app's own journal holds that create unsettled (its recovery settles or rolls it back)."""
        kind = rtype.name
        name = await self.store.creating_of(self.app, kind, hub_id)
        if name is None:
            return None
        # The journal first, then the app: recovery settling the create between the two would otherwise be missed
        # (not found while unsettled, settled by the time the journal is read: the record forgotten in the app).
        if await self.store.unsettled(self.app, kind, name):
            raise Unavailable(f"{kind} {name!r} has an unsettled write in app {self.app}; waiting for its recovery", 5)
        held = await self._lookup(runtime, rtype, name)
        if held is not None and await self.store.hub_id_of(self.app, kind, held) is None:
            await self.store.set_link(self.app, kind, hub_id, held)
            return held
        await self.store.set_creating(self.app, kind, hub_id, None)
        return None

    async def _write(
        self,
        runtime: AppRuntime,
        rtype: ResourceType,
        method: str,
        app_id: str | None,
        body: dict[str, Any],
        row: Row,
        depth: int,
    ) -> Any:
        """The app's PUT or POST. Refused as taken by the record of another hub resource whose own hub state no
        longer holds the name (a swap, a rename or delete not delivered yet): that record is moved aside to a
        temporary name, this write is made, and the other resource is delivered at once (its own entry, pending
        since its change, finishes it if that fails). Any other refusal is raised as it is."""
        service = runtime.service
        try:
            return await service.write(method, rtype, app_id, body)
        except (Taken, AppFailed) as exc:
            if isinstance(exc, AppFailed) and not isinstance(exc.cause, AppConflict):
                raise
            other = await self._holder(runtime, rtype, row, app_id)
            if other is None or depth > 0:
                raise
            other_hub_id, holder = other
        attr = runtime.provisioner.resource(rtype.name).unique_attr
        aside = f"{row.data.get(attr)}.moving-{uuid.uuid4().hex[:12]}"
        patch = {"schemas": [PATCH_OP], "Operations": [{"op": "replace", "path": attr, "value": aside}]}
        await service.write("PATCH", rtype, holder, patch)
        log.info("hub: %s %s moved aside in %s as %r (its name is %s's now)", rtype.name, other_hub_id, self.app, aside, row.id)
        written = await service.write(method, rtype, app_id, body)
        try:
            await self.deliver(rtype.name, other_hub_id, depth=depth + 1)
        except (ProvisioningError, ScimError) as exc:
            log.info(
                "hub: %s %s, moved aside in %s, waits for its own delivery: %s", rtype.name, other_hub_id, self.app, _why(exc)
            )
        return written

    async def _holder(self, runtime: AppRuntime, rtype: ResourceType, row: Row, app_id: str | None) -> tuple[str, str] | None:
        """(hub id, app id) of the app record holding `row`'s name, when another hub resource is linked to it and
        that resource's hub state no longer holds the name; None for a genuine conflict (an app record the hub does
        not manage, or one whose hub resource still has the name)."""
        kind = rtype.name
        holder = await self._lookup(runtime, rtype, row.data.get(runtime.provisioner.resource(kind).unique_attr))
        if holder is None or holder == app_id:
            return None
        owner = await self.store.hub_id_of(self.app, kind, holder)
        if owner is None or owner == row.id:
            return None
        theirs = await self.store.get(HUB_APP, kind, owner)
        if theirs is not None and theirs.unique_key == row.unique_key:
            return None
        if theirs is not None and kind == "User" and self.rule.leave != "delete" and not await self._assigned(kind, theirs):
            return None  # it leaves by deactivation, keeping the name it has: a temporary one would stay
        return owner, holder

    async def _assigned(self, kind: str, row: Row) -> bool:
        if kind == "Group":
            return self.rule.group_pushed(row.data)
        keys: set[str] = set()
        if self.rule.member_of:
            keys = await self._group_keys([g.id for g in await self.store.groups_of(HUB_APP, row.id)])
        return self.rule.user_assigned(row.data, keys)

    async def _group_keys(self, ids: list[str]) -> set[str]:
        keys: set[str] = set()
        for gid in ids:
            group = await self.store.get(HUB_APP, "Group", gid)
            if group is not None:
                keys.add(group.unique_key)
        return keys

    async def _lookup(self, runtime: AppRuntime, rtype: ResourceType, value: Any) -> str | None:
        """The app's resource holding a unique name (userName, displayName), found by the app's own filter search."""
        attr = runtime.provisioner.resource(rtype.name).unique_attr
        if not isinstance(value, str):
            return None
        reply = await runtime.service.search("", rtype, {"filter": f"{attr} eq {json.dumps(value)}", "attributes": "id"})
        found = [r.get("id") for r in reply.body.get("Resources", [])] if isinstance(reply.body, dict) else []
        return found[0] if len(found) == 1 and isinstance(found[0], str) else None

    async def _leave(self, runtime: AppRuntime, rtype: ResourceType, hub_id: str, app_id: str, *, gone: bool) -> None:
        """Not assigned any more (or deleted in the hub): the app's deactivate, or its delete, per the hub file."""
        service = runtime.service
        if gone or rtype.name == "Group" or self.rule.leave == "delete":
            try:
                await service.write("DELETE", rtype, app_id, None)
            except NotFound:
                pass
            await self.store.drop_link(self.app, rtype.name, hub_id)
            return
        patch = {"schemas": [PATCH_OP], "Operations": [{"op": "replace", "path": "active", "value": False}]}
        try:
            await service.write("PATCH", rtype, app_id, patch)
        except NotFound:
            await self.store.drop_link(self.app, rtype.name, hub_id)

    async def _body(self, rtype: ResourceType, row: Row) -> dict[str, Any]:
        """The hub resource as a SCIM body for the app, its references translated to the app's ids."""
        data = {k: v for k, v in row.data.items() if k not in ("groups", "members")}
        if rtype.name == "Group":
            members = await self.store.members(HUB_APP, row.id)
            links = await self.store.links_of(self.app, "User", [m.id for m in members if m.type == "User"])
            body = {
                "schemas": [CORE_GROUP],
                **data,
                "members": [{"value": links[m.id], "type": "User"} for m in members if m.id in links],
            }
            return body
        ext = data.get(ENTERPRISE_USER)
        if isinstance(ext, dict) and isinstance(ext.get("manager"), dict):
            manager = ext["manager"].get("value")
            target = await self.store.link_of(self.app, "User", manager) if isinstance(manager, str) else None
            ext = {k: v for k, v in ext.items() if k != "manager"}
            if target is not None:
                ext["manager"] = {"value": target}
            data[ENTERPRISE_USER] = ext
        schemas = [CORE_USER, *([ENTERPRISE_USER] if ENTERPRISE_USER in data else [])]
        return {"schemas": schemas, **data}

    async def _arrived(self, kind: str, hub_id: str) -> None:
        """A resource newly in the app: what refers to it (its groups, the users it manages) is delivered again."""
        if kind != "User":
            return
        items = [("Group", g.id) for g in await self.store.groups_of(HUB_APP, hub_id)]
        _n, reports = await self.store.query(
            HUB_APP, "User", Query(where=q.Compare(q.Field((ENTERPRISE_USER, "manager", "value")), "eq", hub_id))
        )
        items += [("User", r.id) for r in reports]
        await self.store.enqueue(self.app, items)


def create_workers(
    rules: dict[str, AppRule], store: HubStore, apps: dict[str, AppRuntime], config: DeliveryConfig
) -> dict[str, Worker]:
    workers = {name: Worker(name, rule, store, apps, config) for name, rule in rules.items()}

    def wake_all() -> None:
        for worker in workers.values():
            worker.wake.set()

    store.listeners.append(wake_all)
    return workers


__all__ = ["Worker", "create_workers"]
