"""The probes: /healthz (the process answers) and /readyz (the store and every app), as load balancers use them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gateway.app import create_app
from gateway.http.keys import APPS
from tests.conftest import demo_settings


async def test_healthz_and_readyz_of_a_serving_gateway(aiohttp_client: Any, tmp_path: Path) -> None:
    client = await aiohttp_client(create_app(demo_settings(tmp_path / "data")))
    await client.app[APPS]["demo"].serving.wait()
    resp = await client.get("/healthz")
    assert (resp.status, resp.content_type, await resp.json()) == (200, "application/json", {"status": "ok"})
    resp = await client.get("/readyz")
    body = await resp.json()
    assert resp.status == 200, body
    assert body == {"status": "ready", "store": "ok", "apps": {"demo": {"open": True, "breaker": "closed"}}}


async def test_readyz_names_an_app_that_is_not_open(aiohttp_client: Any, tmp_path: Path, monkeypatch: Any) -> None:
    """An app whose connector cannot open (its database unreachable) makes the gateway not ready, and says why."""
    from tests.conftest import free_port

    root = Path(__file__).resolve().parents[2]
    mapping = root / "mappings" / "legacy_pg.yaml"  # its database: a port nothing listens on
    monkeypatch.setenv("LEGACY_PG_DSN", f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/nothing")
    monkeypatch.setenv("LEGACY_PG_SCIM_TOKEN", "down-token-0123456789")
    settings = demo_settings(tmp_path / "data")
    settings = settings.model_copy(update={"mappings": [*settings.mappings, mapping]})
    client = await aiohttp_client(create_app(settings))
    await client.app[APPS]["demo"].serving.wait()
    resp = await client.get("/readyz")
    body = await resp.json()
    assert resp.status == 503, body
    assert body["status"] == "not ready" and body["apps"]["demo"]["open"] is True
    assert body["apps"]["legacy_pg"]["open"] is False and "reason" in body["apps"]["legacy_pg"], body
    resp = await client.get("/healthz")
    assert resp.status == 200  # the process itself is alive
