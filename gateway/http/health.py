"""Probes for load balancers and Kubernetes, outside every app's SCIM base URL.

- `GET /healthz`: the process answers (liveness); nothing else is asked.
- `GET /readyz`: the correlation store answers and every app is open with its circuit not open (readiness);
  503 otherwise, with each app's state, so a probe's log says which app is down and why.

Plain JSON (application/json), no credentials: they say whether the gateway serves, never what it holds.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from ..runtime import AppRuntime
from ..store import StoreUnavailable
from .keys import APPS, STORE

STORE_TIMEOUT = 2.0  # seconds the store may take to answer a readiness probe


def app_health(runtime: AppRuntime) -> dict[str, Any]:
    """One app's state as the probes (and the admin page) tell it: open, its breaker, why not when it is not."""
    breaker = runtime.provisioner.breaker
    state: dict[str, Any] = {
        "open": runtime.connector_open and runtime.serving.is_set(),
        "breaker": breaker.state if breaker is not None else "none",
    }
    if runtime.not_connected:
        state["reason"] = runtime.not_connected
    elif breaker is not None and breaker.state != "closed" and breaker.last:
        state["reason"] = breaker.last
    return state


async def healthz(_request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    store = "ok"
    try:
        await asyncio.wait_for(request.app[STORE].get_any("readyz-probe"), STORE_TIMEOUT)
    except (StoreUnavailable, TimeoutError, OSError) as exc:
        store = f"unavailable: {type(exc).__name__}"
    apps = {name: app_health(runtime) for name, runtime in sorted(request.app[APPS].items())}
    ready = store == "ok" and all(a["open"] and a["breaker"] != "open" for a in apps.values())
    body = {"status": "ready" if ready else "not ready", "store": store, "apps": apps}
    return web.json_response(body, status=200 if ready else 503)


def setup_health(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)


__all__ = ["app_health", "healthz", "readyz", "setup_health"]
