"""Shared fixtures: the demo app on real SQLite files in tmp_path, over real loopback HTTP."""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient
from pydantic import SecretStr

from gateway.app import create_app
from gateway.demo import demo_mapping_path, ensure_demo_database
from gateway.settings import GatewaySettings

# The shipped connector conformance class asserts as a test module does: pytest shows the values when one fails.
pytest.register_assert_rewrite("gateway.connectors.conformance")

TOKEN = "test-token-0123456789"
BASE = "/apps/demo/scim/v2"
USER_URN = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP_URN = "urn:ietf:params:scim:schemas:core:2.0:Group"
ENTERPRISE_URN = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
PATCH_URN = "urn:ietf:params:scim:api:messages:2.0:PatchOp"


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def need_service(reason: str) -> None:
    """Skip outside CI, fail in CI: a test that cannot reach what it needs must not pass silently there."""
    if in_ci():
        pytest.fail(f"CI=true and {reason}")
    pytest.skip(reason)


def demo_settings(data_dir: Path, **overrides: Any) -> GatewaySettings:
    ensure_demo_database(data_dir)
    return GatewaySettings(
        mappings=[demo_mapping_path()],
        data_dir=data_dir,
        extra_tokens={"demo": [SecretStr(TOKEN)]},
        **overrides,
    )


class Scim:
    """A thin SCIM client over aiohttp's TestClient (real HTTP on loopback)."""

    def __init__(self, client: TestClient, token: str = TOKEN, base: str = BASE) -> None:
        self.client = client
        self.base = base
        self.headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/scim+json"}

    async def request(self, method: str, path: str, body: Any = None, **kwargs: Any) -> tuple[ClientResponse, Any]:
        headers = {**self.headers, **kwargs.pop("headers", {})}
        resp = await self.client.request(method, self.base + path, json=body, headers=headers, **kwargs)
        text = await resp.text()
        data = None
        if text:
            import json

            data = json.loads(text)
        return resp, data

    async def get(self, path: str, **kw: Any) -> tuple[ClientResponse, Any]:
        return await self.request("GET", path, **kw)

    async def post(self, path: str, body: Any, **kw: Any) -> tuple[ClientResponse, Any]:
        return await self.request("POST", path, body, **kw)

    async def put(self, path: str, body: Any, **kw: Any) -> tuple[ClientResponse, Any]:
        return await self.request("PUT", path, body, **kw)

    async def patch(self, path: str, operations: list[dict[str, Any]], **kw: Any) -> tuple[ClientResponse, Any]:
        return await self.request("PATCH", path, {"schemas": [PATCH_URN], "Operations": operations}, **kw)

    async def delete(self, path: str, **kw: Any) -> tuple[ClientResponse, Any]:
        return await self.request("DELETE", path, **kw)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Modules marked `both_stores` run every gateway test on SQLite and on PostgreSQL: one contract, two stores."""
    if "store_kind" in metafunc.fixturenames:
        both = metafunc.definition.get_closest_marker("both_stores") is not None
        metafunc.parametrize("store_kind", ["sqlite", "postgresql"] if both else ["sqlite"])


@pytest.fixture(scope="session")
def shared_pg_store() -> Iterator[str]:
    """One PostgreSQL database for the store tests of a session, emptied before each test that uses it."""
    import asyncio

    from tests.services import create_pg_database, drop_pg_database, pg_url

    name = asyncio.run(create_pg_database())
    yield pg_url(name)
    asyncio.run(drop_pg_database(name))


def _empty_pg_store(url: str) -> None:
    import asyncio

    import asyncpg

    async def run() -> None:
        conn = await asyncpg.connect(url)
        try:
            exists = await conn.fetchval("SELECT to_regclass('resources') IS NOT NULL")
            if exists:
                await conn.execute("TRUNCATE resources, members, journal RESTART IDENTITY")
                if await conn.fetchval("SELECT to_regclass('reconcile_reports') IS NOT NULL"):  # issue 15's tables
                    await conn.execute("TRUNCATE reconcile_reports, leases RESTART IDENTITY")
                if await conn.fetchval("SELECT to_regclass('hub_outbox') IS NOT NULL"):  # the hub's (issue 14)
                    await conn.execute("TRUNCATE hub_outbox, hub_links")
        finally:
            await conn.close()

    asyncio.run(run())


@pytest.fixture
def store_overrides(store_kind: str, request: pytest.FixtureRequest) -> dict[str, Any]:
    if store_kind == "sqlite":
        return {}
    url = request.getfixturevalue("shared_pg_store")
    _empty_pg_store(url)
    return {"store_url": SecretStr(url)}


@pytest.fixture
async def client(aiohttp_client: Any, data_dir: Path, store_overrides: dict[str, Any]) -> AsyncIterator[TestClient]:
    yield await aiohttp_client(create_app(demo_settings(data_dir, **store_overrides)))


@pytest.fixture
def scim(client: TestClient) -> Scim:
    return Scim(client)


@pytest.fixture
def demo_db(data_dir: Path) -> Iterator[sqlite3.Connection]:
    """The demo legacy app's own database, for asserting its rows."""
    db = sqlite3.connect(data_dir / "demo.db")
    db.row_factory = sqlite3.Row
    yield db
    db.close()


def user_body(user_name: str, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"schemas": [USER_URN], "userName": user_name, "active": True}
    body.update(extra)
    return body


# ---------------------------------------------------------------- a real gateway process


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LiveGateway:
    def __init__(self, root: Path, token: str = TOKEN, app: str = "demo", env: dict[str, str] | None = None) -> None:
        self.root = root
        self.port = free_port()
        self.token = token
        self.url = f"http://127.0.0.1:{self.port}"
        self.base_url = f"{self.url}/apps/{app}/scim/v2"
        self.log = root / "gateway.log"
        self.env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *extra: str) -> None:
        """Start the process; a port another test took between free_port() and the bind is chosen again."""
        for attempt in range(3):
            try:
                self._start(*extra)
                return
            except RuntimeError as exc:
                if "address already in use" not in str(exc) or attempt == 2:
                    raise
                self.port = free_port()
                self.url = f"http://127.0.0.1:{self.port}"
                self.base_url = f"{self.url}/{self.base_url.split('/', 3)[3]}"

    def _start(self, *extra: str) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "gateway.cli", "serve", "--port", str(self.port), "--data-dir", str(self.root / "data")]
        if self.token:
            cmd += ["--token", self.token]
        env = {k: v for k, v in os.environ.items() if k != "SCIM_GATEWAY_TOKEN"} | self.env
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([*cmd, *extra], cwd=self.root, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"gateway did not start:\n{self.log.read_text()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


@pytest.fixture(scope="module")
def live_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveGateway]:
    gateway = LiveGateway(tmp_path_factory.mktemp("live"))
    gateway.start()
    yield gateway
    gateway.stop()


@pytest.fixture(scope="session")
def slapd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """An OpenLDAP server for the whole run (of this xdist worker); tests take subtrees of their own (`Slapd.subtree`)."""
    from tests.directories import Slapd

    server = Slapd(tmp_path_factory.mktemp("slapd"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def samba_dc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """An Active Directory domain (Samba) for the whole run of this xdist worker: provisioned once, a few seconds."""
    from tests.directories import SambaDc, dc_address

    dc = SambaDc(tmp_path_factory.mktemp("samba"), dc_address())
    dc.provision()
    dc.start()
    yield dc
    dc.stop()
