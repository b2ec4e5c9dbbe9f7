"""The gateway's Prometheus instruments, in one place, low enough that every layer recording them may import it.

Names start with `scim_gateway_`; labels hold nothing a client chooses freely (an app that exists, an operation,
a status code, a call, an outcome, a reason code): never a user's id or name.

Across processes (`serve --workers N`): `serve` gives every worker one private directory in
PROMETHEUS_MULTIPROC_DIR (`shared_between_processes`), prometheus_client then keeps each value in a file there,
and a scrape answered by any worker sums counters and histograms over all of them (`collect`). Gauges say how
they combine (`multiprocess_mode`). One process (no such directory: `--workers 1`, create_app in tests) keeps
values in memory.

Two kinds of metrics, for whoever adds more (the hub: outbox depth, delivery lag per app):
- what happens while serving (a count, a duration, a state a process holds): an instrument here, recorded where it
  happens; a gauge gives its `multiprocess_mode`;
- what the store holds (a backlog, an age), the same whichever process is asked: computed when scraped, by an
  async source added to the application's `METRIC_SOURCES` (gateway/http/metrics.py), returning
  `prometheus_client.Metric` families (e.g. `GaugeMetricFamily`) such as `journal_pending` below. Not an
  instrument: each process would report the same value and the sum would multiply it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Metric, disable_created_metrics, generate_latest
from prometheus_client.core import GaugeMetricFamily

from .settings import METRICS_DIR_ENV as MULTIPROC_ENV

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # the text format generate_latest writes

# Seconds. A request or an app call: from a millisecond (a cached read) to the 30 s an app may take.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

# No `_created` series: the multiprocess mode has none, so one process answers as several do.
disable_created_metrics()
REGISTRY = CollectorRegistry()  # the gateway's own: nothing of the library's default collectors or of other code

REQUESTS = Counter(
    "scim_gateway_requests",
    "Requests under an app's SCIM base URL, by app, operation and the status answered",
    ["app", "operation", "status"],
    registry=REGISTRY,
)
REQUEST_SECONDS = Histogram(
    "scim_gateway_request_duration_seconds",
    "Time to answer a request under an app's SCIM base URL, by app and operation",
    ["app", "operation"],
    buckets=BUCKETS,
    registry=REGISTRY,
)
APP_CALL_SECONDS = Histogram(
    "scim_gateway_app_call_duration_seconds",
    "Time of each call to an app (its connector), by app, call and outcome (ok, or the app error's kind)",
    ["app", "call", "outcome"],
    buckets=BUCKETS,
    registry=REGISTRY,
)
# Each process has its own circuit per app: the worst (highest) state among the live processes.
BREAKER_STATE = Gauge(
    "scim_gateway_breaker_state",
    "Circuit breaker state per app: 0 closed, 1 half-open, 2 open (with several processes: the highest of the live ones)",
    ["app"],
    multiprocess_mode="livemax",
    registry=REGISTRY,
)
BREAKER_OPENED = Counter(
    "scim_gateway_breaker_opened",
    "Times an app's circuit opened (after consecutive failures, or a failed half-open probe)",
    ["app"],
    registry=REGISTRY,
)
AUTH_REFUSED = Counter(
    "scim_gateway_auth_refused",
    "Requests refused authentication, by app and reason (no_token, unknown_token, expired, signature, ...)",
    ["app", "reason"],
    registry=REGISTRY,
)

BREAKER_STATES = {"closed": 0, "half_open": 1, "open": 2}

_requests: dict[tuple[str, str, str], tuple[Counter, Histogram]] = {}  # label children, looked up once each


def observe_request(app: str, operation: str, status: int | None, seconds: float) -> None:
    """One request answered (status None: the client went away before an answer)."""
    key = (app, operation, "none" if status is None else str(status))
    children = _requests.get(key)
    if children is None:
        children = _requests[key] = (REQUESTS.labels(*key), REQUEST_SECONDS.labels(app, operation))
    children[0].inc()
    children[1].observe(seconds)


def journal_pending(counts: Mapping[str, int]) -> GaugeMetricFamily:
    """The scrape-time gauge of journal entries not settled yet, per app (from the store, shared by every process)."""
    family = GaugeMetricFamily(
        "scim_gateway_journal_pending",
        "Journal entries not settled yet per app: writes in flight, or left by a crash for recovery to settle",
        labels=["app"],
    )
    for app, count in sorted(counts.items()):
        family.add_metric([app], count)
    return family


def hub_outbox(backlog: Mapping[str, tuple[int, int, float]]) -> list[Metric]:
    """The scrape-time gauges of the hub's outbox per app it feeds: (pending, dead, lag in seconds)."""
    entries = GaugeMetricFamily(
        "scim_gateway_hub_outbox_entries",
        "Hub deliveries not done yet per app: pending (to be delivered or retried) and dead (dead-lettered)",
        labels=["app", "state"],
    )
    lag = GaugeMetricFamily(
        "scim_gateway_hub_delivery_lag_seconds",
        "Seconds since the oldest pending hub delivery's resource last changed in the hub (0: nothing pending)",
        labels=["app"],
    )
    for app, (pending, dead, seconds) in sorted(backlog.items()):
        entries.add_metric([app, "pending"], pending)
        entries.add_metric([app, "dead"], dead)
        lag.add_metric([app], round(seconds, 3))
    return [entries, lag]


class _Families:
    """A collector answering families computed before the scrape (the store's, asked asynchronously)."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self.families = list(families)

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


class _Delegate:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterator[Metric]:
        return iter(self.registry.collect())


def multiprocess() -> bool:
    return bool(os.environ.get(MULTIPROC_ENV))


def exposition(extra: Iterable[Metric] = ()) -> bytes:
    """The text format of every instrument (summed over the processes sharing the directory) and `extra`."""
    registry = CollectorRegistry(auto_describe=False)
    if multiprocess():
        from prometheus_client.multiprocess import MultiProcessCollector

        MultiProcessCollector(registry)
    else:
        registry.register(_Delegate(REGISTRY))
    registry.register(_Families(extra))
    return generate_latest(registry)


@contextmanager
def shared_between_processes() -> Iterator[str]:
    """A fresh private directory for the metric files of the processes started inside (they inherit the environment).

    Replaces any PROMETHEUS_MULTIPROC_DIR already set (a directory the gateway does not own could hold files
    of an earlier run, which would count again); removed afterwards.
    """
    previous = os.environ.get(MULTIPROC_ENV)
    path = tempfile.mkdtemp(prefix="scim-gateway-metrics-")  # mode 0700, empty
    os.environ[MULTIPROC_ENV] = path
    try:
        yield path
    finally:
        if previous is None:
            os.environ.pop(MULTIPROC_ENV, None)
        else:
            os.environ[MULTIPROC_ENV] = previous
        shutil.rmtree(path, ignore_errors=True)


def process_exited(pid: int) -> None:
    """Forget a dead worker's live gauges (its breaker states); its counts stay in the sums."""
    path = os.environ.get(MULTIPROC_ENV)
    if path:
        from prometheus_client.multiprocess import mark_process_dead

        mark_process_dead(pid, path)


__all__ = [
    "APP_CALL_SECONDS",
    "AUTH_REFUSED",
    "BREAKER_OPENED",
    "BREAKER_STATE",
    "BREAKER_STATES",
    "CONTENT_TYPE",
    "MULTIPROC_ENV",
    "REGISTRY",
    "REQUESTS",
    "REQUEST_SECONDS",
    "exposition",
    "journal_pending",
    "multiprocess",
    "observe_request",
    "process_exited",
    "shared_between_processes",
]
