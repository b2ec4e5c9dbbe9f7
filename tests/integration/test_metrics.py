"""/metrics in the Prometheus text format: what one process counts (in-process, create_app), the instruments'
own rules (the breaker's gauge, each app call timed once), and live gateways with `serve --workers 2`, whose
counts, scraped from whichever worker answers, are the sums of what both served."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from prometheus_client import Metric
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from gateway.app import create_app
from gateway.connectors.errors import AppConflict, AppUnavailable
from gateway.http.keys import APPS, METRIC_SOURCES
from gateway.mapping.model import BreakerConfig
from gateway.metrics import REGISTRY
from gateway.provisioning.breaker import Breaker, GuardedConnector
from gateway.store import StoreUnavailable
from tests.conftest import BASE, TOKEN, demo_settings, user_body
from tests.integration.test_breaker import Clock, Recorded

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    """Every sample of a scrape, by name and labels, as the Prometheus text-format parser reads it."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def scrape(client: TestClient, **headers: str) -> Samples:
    resp = await client.get("/metrics", headers=headers)
    assert resp.status == 200, await resp.text()
    assert resp.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    return parse(await resp.text())


# ---------------------------------------------------------------- one process (create_app)


@pytest.fixture
async def demo(aiohttp_client: Any, tmp_path: Path) -> TestClient:
    client: TestClient = await aiohttp_client(create_app(demo_settings(tmp_path / "data")))
    await client.app[APPS]["demo"].serving.wait()
    return client


async def test_one_process_counts_requests_calls_and_refusals(demo: TestClient) -> None:
    """The process's instruments are global (other tests in this process count too): compare before and after."""
    before = await scrape(demo)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    created = await demo.post(f"{BASE}/Users", json=user_body("metrics.one"), headers=auth)
    assert created.status == 201
    uid = (await created.json())["id"]
    for path, status in ((f"/Users/{uid}", 200), ("/Users", 200), ("/Users/no-such-id", 404), ("/ServiceProviderConfig", 200)):
        assert (await demo.get(BASE + path, headers=auth)).status == status
    assert (await demo.get(f"{BASE}/Users")).status == 401
    assert (await demo.get(f"{BASE}/Users", headers={"Authorization": "Bearer wrong-token-0123"})).status == 401
    after = await scrape(demo)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    requests = "scim_gateway_requests_total"
    assert delta(requests, app="demo", operation="create", status="201") == 1
    assert delta(requests, app="demo", operation="read", status="200") == 1
    assert delta(requests, app="demo", operation="read", status="404") == 1
    assert delta(requests, app="demo", operation="search", status="200") == 1
    assert delta(requests, app="demo", operation="discovery", status="200") == 1
    assert delta(requests, app="demo", operation="auth", status="401") == 2
    assert delta("scim_gateway_request_duration_seconds_count", app="demo", operation="create") == 1
    assert delta("scim_gateway_request_duration_seconds_sum", app="demo", operation="create") > 0
    inf = delta("scim_gateway_request_duration_seconds_bucket", app="demo", operation="auth", le="+Inf")
    assert inf == 2
    assert delta("scim_gateway_auth_refused_total", app="demo", reason="no_token") == 1
    assert delta("scim_gateway_auth_refused_total", app="demo", reason="unknown_token") == 1
    # The demo's create: the app's insert and its read-back; the live read by id one more get; the 404 and the
    # list (answered from the gateway's copy) call nothing.
    calls = "scim_gateway_app_call_duration_seconds_count"
    assert delta(calls, app="demo", call="create_with_members", outcome="ok") == 1
    assert delta(calls, app="demo", call="get", outcome="ok") == 2
    assert value(after, "scim_gateway_breaker_state", app="demo") == 0
    assert value(after, "scim_gateway_journal_pending", app="demo") == 0
    text = await (await demo.get("/metrics")).text()
    assert "metrics.one" not in text and uid not in text and TOKEN not in text  # no user, no id, no secret
    assert "_created" not in text


async def test_the_journal_gauge_counts_pending_entries_from_the_store(demo: TestClient, tmp_path: Path) -> None:
    """An entry left pending (as a crash leaves one) is counted from the store itself, whichever process asks."""
    with closing(sqlite3.connect(tmp_path / "data" / "gateway.db")) as db:
        for rid in ("a", "b"):
            db.execute(
                "INSERT INTO journal (at, app, type, resource_id, op, state) VALUES (?, 'demo', 'User', ?, 'create', 'pending')",
                (time.time(), rid),
            )
        db.execute(
            "INSERT INTO journal (at, app, type, resource_id, op, state) VALUES (0, 'demo', 'User', 'c', 'create', 'done')"
        )
        db.execute(
            "INSERT INTO journal (at, app, type, resource_id, op, state) VALUES (0, 'other', 'User', 'd', 'create', 'pending')"
        )
        db.commit()
    samples = await scrape(demo)
    assert value(samples, "scim_gateway_journal_pending", app="demo") == 2
    assert ("scim_gateway_journal_pending", (("app", "other"),)) not in samples  # no app of this gateway


async def test_a_scrape_source_that_fails_leaves_out_only_its_own_gauges(demo: TestClient) -> None:
    """A source computed at scrape time (the journal's; the hub's later) that fails costs the scrape nothing else."""

    async def store_down(app: Any) -> list[Metric]:
        raise StoreUnavailable("the store did not answer")

    async def extra(app: Any) -> list[Metric]:
        family = GaugeMetricFamily("scim_gateway_test_extra", "a source added later", labels=["app"])
        family.add_metric(["demo"], 7)
        return [family]

    demo.app[METRIC_SOURCES][:] = [store_down, extra]
    samples = await scrape(demo)
    assert value(samples, "scim_gateway_test_extra", app="demo") == 7
    assert ("scim_gateway_breaker_state", (("app", "demo"),)) in samples
    assert not any(name == "scim_gateway_journal_pending" for name, _ in samples)


async def test_a_metrics_token_when_one_is_set(aiohttp_client: Any, tmp_path: Path) -> None:
    settings = demo_settings(tmp_path / "data", metrics_token=SecretStr("scrape-token-0123456789"))
    client = await aiohttp_client(create_app(settings))
    resp = await client.get("/metrics")
    assert resp.status == 401 and resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert (await client.get("/metrics", headers={"Authorization": "Bearer not-it"})).status == 401
    samples = await scrape(client, Authorization="Bearer scrape-token-0123456789")
    assert ("scim_gateway_breaker_state", (("app", "demo"),)) in samples


# ---------------------------------------------------------------- the instruments' rules


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_the_breaker_gauge_follows_every_transition_and_counts_openings() -> None:
    clock = Clock()
    b = Breaker("gauge-app", BreakerConfig(failures=2, reset_after=10, max_reset_after=25), clock)  # a name of its own
    assert sample("scim_gateway_breaker_state", app="gauge-app") == 0
    assert sample("scim_gateway_breaker_opened_total", app="gauge-app") == 0
    b.failed(False, "HTTP 500")
    assert sample("scim_gateway_breaker_state", app="gauge-app") == 0  # one failure: still closed
    b.failed(False, "HTTP 500")
    assert sample("scim_gateway_breaker_state", app="gauge-app") == 2
    assert sample("scim_gateway_breaker_opened_total", app="gauge-app") == 1
    clock.now += 10
    assert b.admit() is True  # the probe
    assert sample("scim_gateway_breaker_state", app="gauge-app") == 1
    b.failed(True, "HTTP 500")  # the probe failed: open again, a second opening
    assert sample("scim_gateway_breaker_state", app="gauge-app") == 2
    assert sample("scim_gateway_breaker_opened_total", app="gauge-app") == 2
    clock.now += 20
    assert b.admit() is True
    b.succeeded(True)
    assert sample("scim_gateway_breaker_state", app="gauge-app") == 0
    assert sample("scim_gateway_breaker_opened_total", app="gauge-app") == 2


async def test_every_app_call_is_timed_once_with_its_outcome() -> None:
    clock = Clock()
    inner = Recorded()
    guarded = GuardedConnector(inner, Breaker("timed-app", BreakerConfig(failures=1), clock))
    count = "scim_gateway_app_call_duration_seconds_count"
    await guarded.get("User", "1")
    inner.error = AppConflict("taken")
    with pytest.raises(AppConflict):
        await guarded.create("User", {})
    inner.error = AppUnavailable("HTTP 503")
    with pytest.raises(AppUnavailable):
        await guarded.update("User", "1", {})
    with pytest.raises(AppUnavailable):  # the open circuit refuses it: the app is not called, nothing is timed
        await guarded.delete("User", "1")
    assert inner.calls == ["get", "create", "update"]
    assert sample(count, app="timed-app", call="get", outcome="ok") == 1
    assert sample(count, app="timed-app", call="create", outcome="conflict") == 1
    assert sample(count, app="timed-app", call="update", outcome="unavailable") == 1
    assert sample(count, app="timed-app", call="delete", outcome="unavailable") == 0


async def test_a_listing_is_timed_while_the_app_answers_not_while_its_reader_works() -> None:
    clock = Clock()
    guarded = GuardedConnector(Recorded(), Breaker("list-app", BreakerConfig(), clock))
    seen = []
    async for item in guarded.list_all("User"):
        seen.append(item)
        await asyncio.sleep(0.2)  # the reader's own work between items: not the app's time
    assert len(seen) == 3
    assert sample("scim_gateway_app_call_duration_seconds_count", app="list-app", call="list", outcome="ok") == 1
    assert sample("scim_gateway_app_call_duration_seconds_sum", app="list-app", call="list", outcome="ok") < 0.2
