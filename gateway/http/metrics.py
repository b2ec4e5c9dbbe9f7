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
import hmac
import logging

from aiohttp import web
from prometheus_client import Metric

from .. import metrics
from ..store import StoreUnavailable
from ..store.backlog import journal_pending
from .health import STORE_TIMEOUT
from .keys import APPS, METRIC_SOURCES, SETTINGS, STORE, MetricSource

log = logging.getLogger(__name__)


async def journal_source(app: web.Application) -> list[Metric]:
    apps = app[APPS]
    counts = await journal_pending(app[STORE], sorted(apps))
    return [metrics.journal_pending(counts)]


async def metrics_view(request: web.Request) -> web.Response:
    token = request.app[SETTINGS].metrics_token
    if token is not None:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        expected = token.get_secret_value().encode()
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected):
            return web.Response(
                status=401,
                text="a bearer token is required for /metrics\n",
                headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
            )
    extra: list[Metric] = []
    for source in request.app[METRIC_SOURCES]:
        try:
            extra.extend(await asyncio.wait_for(source(request.app), STORE_TIMEOUT))
        except (StoreUnavailable, TimeoutError, OSError) as exc:
            # The scrape still answers what the processes recorded; the store's gauges are missing from it.
            log.warning("/metrics: %s failed: %s", getattr(source, "__name__", source), exc or type(exc).__name__)
    return web.Response(body=metrics.exposition(extra), headers={"Content-Type": metrics.CONTENT_TYPE})


def setup_metrics(app: web.Application) -> None:
    sources: list[MetricSource] = [journal_source]
    app[METRIC_SOURCES] = sources
    app.router.add_get("/metrics", metrics_view)


__all__ = ["journal_source", "metrics_view", "setup_metrics"]
