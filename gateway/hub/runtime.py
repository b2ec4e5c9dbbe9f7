"""The hub while the gateway serves it: its directory's runtime (served at /hub/scim/v2 by the same views as
every app's) and one delivery worker per app it feeds."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from .. import runtime as app_runtime
from ..runtime import AppRuntime
from ..schema import DISPLAY_ATTRIBUTES
from ..settings import GatewaySettings
from ..store import Store
from ..store.outbox import DeliveryState, HubStore
from .config import CompiledHub
from .delivery import Worker, create_workers
from .directory import HUB_APP

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Hub:
    compiled: CompiledHub
    store: HubStore
    runtime: AppRuntime
    workers: dict[str, Worker]
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


def create_hub_store(compiled: CompiledHub, store: Store) -> HubStore:
    """The hub directory's store, over the gateway store's database (opened and closed by it)."""
    return HubStore(store.dialect, hub=HUB_APP, router=compiled.rules.route, labels=DISPLAY_ATTRIBUTES)


def create_hub(compiled: CompiledHub, settings: GatewaySettings, store: Store, apps: dict[str, AppRuntime]) -> Hub:
    hub_store = create_hub_store(compiled, store)
    runtime = app_runtime.create_runtime(compiled.mapping, settings, hub_store, [])
    return Hub(compiled, hub_store, runtime, create_workers(compiled.rules.apps, hub_store, apps, compiled.config.delivery))


async def start_hub(hub: Hub, settings: GatewaySettings) -> None:
    await app_runtime.start(hub.runtime, settings)
    if settings.startup_recovery_age is None:
        # Alone on the store: leases still held were a crashed run's; its entries are due now, not in `lease` s.
        released = await hub.store.release_leases()
        if released:
            log.info("hub: %d delivery lease(s) of an earlier run released", released)
    for name, worker in hub.workers.items():
        hub.tasks.append(asyncio.create_task(worker.run(), name=f"hub-delivery:{name}"))


async def stop_hub(hub: Hub) -> None:
    for task in hub.tasks:
        task.cancel()
    for task in hub.tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await app_runtime.stop(hub.runtime)


_SHOWN = {"done": "delivered", "pending": "pending", "dead": "failed"}


def _when(epoch: float | None) -> str | None:
    return None if epoch is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def status_document(states: list[DeliveryState]) -> dict[str, Any]:
    """`hub status` and GET /hub/status: per resource, per app, delivered / pending / failed, with the last error."""
    resources: dict[tuple[str, str], dict[str, Any]] = {}
    totals = {"delivered": 0, "pending": 0, "failed": 0}
    for s in states:
        item = resources.setdefault(
            (s.type, s.resource_id), {"type": s.type, "id": s.resource_id, "name": s.name, "deleted": s.name is None, "apps": {}}
        )
        shown = _SHOWN.get(s.state, s.state)
        totals[shown] = totals.get(shown, 0) + 1
        item["apps"][s.app] = {
            "state": shown,
            "attempts": s.attempts,
            "lastError": s.last_error,
            "lastErrorAt": _when(s.last_at) if s.last_error else None,
            "deliveredAt": _when(s.delivered_at),
            "changedAt": _when(s.changed),
            "appId": s.app_id,
        }
    return {"totals": totals, "resources": list(resources.values())}


__all__ = ["Hub", "create_hub", "create_hub_store", "start_hub", "status_document", "stop_hub"]
