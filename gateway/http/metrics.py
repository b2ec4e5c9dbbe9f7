"""`GET /metrics`: the Prometheus text format, outside every app's SCIM base URL.

What every process recorded (gateway/metrics.py: summed over `serve --workers N` processes), and the gauges
computed when scraped from the store, which every process shares: `METRIC_SOURCES`, each an async function of
the application answering Prometheus families (the journal's pending entries; the hub adds its outbox there).

No credentials by default, as Prometheus scrapes on an internal network: the metrics hold no personal data
(apps, operations, status codes, counts). With SCIM_GATEWAY_METRICS_TOKEN set (`settings.metrics_token`), a
scrape must send it as a bearer token.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import Metric
from pydantic import SecretStr

from .. import metrics
from ..auth import AppAuth, Refused, StaticToken, token_digest
from ..store import StoreUnavailable
from ..store.backlog import journal_pending, outbox_backlog
from .health import STORE_TIMEOUT
from .keys import APPS, HUB, METRIC_SOURCES, SETTINGS, STORE, MetricSource

log = logging.getLogger(__name__)


async def journal_source(app: web.Application) -> list[Metric]:
    apps = app[APPS]
    counts = await journal_pending(app[STORE], sorted(apps))
    return [metrics.journal_pending(counts)]


async def hub_source(app: web.Application) -> list[Metric]:
    """The hub's outbox per app it feeds (nothing when no hub is served)."""
    if HUB not in app:
        return []
    backlog = await outbox_backlog(app[STORE], sorted(app[HUB].workers))
    return metrics.hub_outbox({name: (b.pending, b.dead, b.lag) for name, b in backlog.items()})


def create_metrics_view(token: SecretStr | None) -> Callable[[web.Request], Awaitable[web.Response]]:
    """The view; with a token, a scrape must send it (checked as an app's static bearer tokens are, in auth.py)."""
    auth = None if token is None else AppAuth("/metrics", [StaticToken(token_digest(token.get_secret_value()), "metrics")])

    async def metrics_view(request: web.Request) -> web.Response:
        if auth is not None:
            try:
                await auth.authenticate(request.headers.get("Authorization", ""))
            except Refused as exc:
                return web.Response(status=401, text=f"/metrics: {exc.detail}\n", headers={"WWW-Authenticate": exc.challenge})
        return await answer(request)

    return metrics_view


async def answer(request: web.Request) -> web.Response:
    extra: list[Metric] = []
    for source in request.app[METRIC_SOURCES]:
        try:
            extra.extend(await asyncio.wait_for(source(request.app), STORE_TIMEOUT))
        except (StoreUnavailable, TimeoutError, OSError) as exc:
            # The scrape still answers what the processes recorded; the store's gauges are missing from it.
            log.warning("/metrics: %s failed: %s", getattr(source, "__name__", source), exc or type(exc).__name__)
        except Exception:
            log.exception("/metrics: %s failed", getattr(source, "__name__", source))
    return web.Response(body=metrics.exposition(extra), headers={"Content-Type": metrics.CONTENT_TYPE})


def setup_metrics(app: web.Application) -> None:
    sources: list[MetricSource] = [journal_source, hub_source]
    app[METRIC_SOURCES] = sources
    app.router.add_get("/metrics", create_metrics_view(app[SETTINGS].metrics_token))


__all__ = ["create_metrics_view", "hub_source", "journal_source", "setup_metrics"]
