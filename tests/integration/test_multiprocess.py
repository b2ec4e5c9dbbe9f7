"""Several real gateway processes on one PostgreSQL store: uniqueness, membership and If-Match hold across them.

Two `scim-gateway serve` processes on two ports share one PostgreSQL store and
one data dir (so one demo app: its SQLite database lives there). Requests are
split between them; what the IdP sees and what the app holds must be as if
there were one gateway. Then `serve --workers 2`: two processes on one port.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import GROUP_URN, PATCH_URN, TOKEN, LiveGateway, user_body
from tests.services import pg_database, pg_url

__all__ = ["pg_database"]  # the fixture, for this module's tests


def headers(**extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/scim+json", **extra}


async def call(session: aiohttp.ClientSession, method: str, url: str, body: Any = None, **extra: str) -> tuple[int, Any, Any]:
    async with session.request(method, url, json=body, headers=headers(**extra)) as resp:
        text = await resp.text()
        import json

        return resp.status, (json.loads(text) if text else None), resp.headers


def app_rows(data_dir: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(data_dir / "demo.db")) as db:
        return db.execute(sql, args).fetchall()


@pytest.fixture
async def gateways(tmp_path: Path, pg_database: str) -> AsyncIterator[tuple[LiveGateway, LiveGateway]]:
    """Two gateway processes, two ports, one store, one data dir; started together (migrations race)."""
    url = pg_url(pg_database)
    a, b = LiveGateway(tmp_path), LiveGateway(tmp_path)
    try:
        await asyncio.gather(asyncio.to_thread(a.start, "--store", url), asyncio.to_thread(b.start, "--store", url))
        yield a, b
    finally:
        await asyncio.gather(asyncio.to_thread(a.stop), asyncio.to_thread(b.stop))


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as s:
        yield s


async def test_concurrent_creates_of_one_user_name_across_processes_yield_one(
    gateways: tuple[LiveGateway, LiveGateway], session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    bases = [g.base_url for g in gateways]
    results = await asyncio.gather(
        *(call(session, "POST", f"{bases[i % 2]}/Users", user_body("Same.Person" if i % 3 else "same.person")) for i in range(50))
    )
    statuses = [status for status, _, _ in results]
    assert statuses.count(201) == 1, statuses
    assert statuses.count(409) == 49, statuses
    assert all(body["scimType"] == "uniqueness" for status, body, _ in results if status == 409)
    assert app_rows(tmp_path / "data", "SELECT count(*) FROM employees WHERE lower(login) = 'same.person'") == [(1,)]
    for base in bases:
        _, listed, _ = await call(session, "GET", f'{base}/Users?filter=userName eq "SAME.PERSON"')
        assert listed["totalResults"] == 1


async def test_concurrent_member_adds_across_processes_lose_none(
    gateways: tuple[LiveGateway, LiveGateway], session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    bases = [g.base_url for g in gateways]
    created = await asyncio.gather(*(call(session, "POST", f"{bases[i % 2]}/Users", user_body(f"member{i}")) for i in range(100)))
    assert {status for status, _, _ in created} == {201}
    user_ids = [body["id"] for _, body, _ in created]
    status, group, _ = await call(session, "POST", f"{bases[0]}/Groups", {"schemas": [GROUP_URN], "displayName": "Crowd"})
    assert status == 201

    async def add(i: int) -> int:
        body = {"schemas": [PATCH_URN], "Operations": [{"op": "add", "path": "members", "value": [{"value": user_ids[i]}]}]}
        status, _, _ = await call(session, "PATCH", f"{bases[i % 2]}/Groups/{group['id']}", body)
        return status

    statuses = await asyncio.gather(*(add(i) for i in range(100)))
    assert statuses == [200] * 100
    for base in bases:
        _, seen, _ = await call(session, "GET", f"{base}/Groups/{group['id']}")
        assert sorted(m["value"] for m in seen["members"]) == sorted(user_ids)
    [(team_id,)] = app_rows(tmp_path / "data", "SELECT team_id FROM teams WHERE team_name = 'Crowd'")
    assert app_rows(tmp_path / "data", "SELECT count(*) FROM team_members WHERE team_id = ?", team_id) == [(100,)]


async def test_one_etag_sent_to_both_processes_lets_exactly_one_write_through(
    gateways: tuple[LiveGateway, LiveGateway], session: aiohttp.ClientSession
) -> None:
    a, b = (g.base_url for g in gateways)
    status, user, _ = await call(session, "POST", f"{a}/Users", user_body("etag.person"))
    assert status == 201
    for round_ in range(5):
        _, current, head = await call(session, "GET", f"{b}/Users/{user['id']}")
        etag = head["ETag"]

        def change(title: str) -> dict[str, Any]:
            return {"schemas": [PATCH_URN], "Operations": [{"op": "replace", "path": "title", "value": title}]}

        results = await asyncio.gather(
            call(session, "PATCH", f"{a}/Users/{user['id']}", change(f"from a {round_}"), **{"If-Match": etag}),
            call(session, "PATCH", f"{b}/Users/{user['id']}", change(f"from b {round_}"), **{"If-Match": etag}),
        )
        assert sorted(status for status, _, _ in results) == [200, 412], results
        winner = next(body for status, body, _ in results if status == 200)
        _, after, head = await call(session, "GET", f"{a}/Users/{user['id']}")
        assert after["title"] == winner["title"] and head["ETag"] != etag


# ---------------------------------------------------------------- serve --workers


def _worker_pids(gateway: LiveGateway, count: int, timeout: float = 30) -> list[int]:
    """The pids the workers log as they start."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = sorted(
            {
                int(line.split("(pid ")[1].split(")")[0])
                for line in gateway.log.read_text().splitlines()
                if ") starting on" in line
            }
        )
        if len(pids) == count:
            return pids
        time.sleep(0.1)
    raise AssertionError(f"{count} workers did not start:\n{gateway.log.read_text()}")


def _parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _listening_sockets(port: int) -> int:
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":  # 0A: LISTEN
                count += 1
    return count


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"


@pytest.fixture
async def workers_gateway(tmp_path: Path, pg_database: str) -> AsyncIterator[LiveGateway]:
    gateway = LiveGateway(tmp_path)
    try:
        await asyncio.to_thread(gateway.start, "--workers", "2", "--store", pg_url(pg_database))
        yield gateway
    finally:
        await asyncio.to_thread(gateway.stop)


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads the listening sockets from /proc (Linux)")
async def test_workers_share_one_port_and_stop_together(workers_gateway: LiveGateway, session: aiohttp.ClientSession) -> None:
    gateway = workers_gateway
    assert gateway.proc is not None
    pids = await asyncio.to_thread(_worker_pids, gateway, 2)
    assert gateway.proc.pid not in pids
    assert [_parent_of(pid) for pid in pids] == [gateway.proc.pid] * 2
    # One listening socket per worker on the one port (SO_REUSEPORT), once both have finished starting.
    deadline = time.monotonic() + 30
    while _listening_sockets(gateway.port) < 2 and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert _listening_sockets(gateway.port) == 2
    results = await asyncio.gather(
        *(call(session, "POST", f"{gateway.base_url}/Users", user_body(f"w{i}"), Connection="close") for i in range(40))
    )
    assert [status for status, _, _ in results] == [201] * 40
    _, listed, _ = await call(session, "GET", f"{gateway.base_url}/Users?count=0")
    assert listed["totalResults"] == 40

    proc = gateway.proc
    await asyncio.to_thread(gateway.stop)  # SIGTERM to the parent: it stops the workers and waits for them
    assert proc.returncode == 0, gateway.log.read_text()
    assert all(_gone(pid) for pid in pids)


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads the workers' pids from /proc (Linux)")
async def test_a_worker_that_dies_is_reported_and_the_rest_stop(workers_gateway: LiveGateway) -> None:
    gateway = workers_gateway
    assert gateway.proc is not None
    pids = await asyncio.to_thread(_worker_pids, gateway, 2)
    os.kill(pids[0], signal.SIGKILL)
    code = await asyncio.to_thread(gateway.proc.wait, 45)
    assert code == 1
    log = gateway.log.read_text()
    assert f"(pid {pids[0]}) exited with code -9: stopping the others" in log
    assert _gone(pids[1])


# ---------------------------------------------------------------- choosing the store


def _serve(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    import subprocess
    import sys

    from tests.conftest import free_port

    cmd = [sys.executable, "-m", "gateway.cli", "serve", "--port", str(free_port()), "--data-dir", str(tmp_path / "data"), *args]
    base_env = {k: v for k, v in os.environ.items() if k not in ("SCIM_GATEWAY_TOKEN", "SCIM_GATEWAY_STORE")}
    done = subprocess.run(cmd, env={**base_env, **(env or {})}, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    return done.returncode, done.stdout + done.stderr


def test_a_password_on_the_command_line_is_refused_unprinted(tmp_path: Path) -> None:
    code, out = _serve(tmp_path, "--store", "postgresql://gw:hunter2@127.0.0.1/scim")
    assert code == 2
    assert "SCIM_GATEWAY_STORE" in out and "hunter2" not in out


def test_a_store_that_is_not_postgresql_is_refused(tmp_path: Path) -> None:
    code, out = _serve(tmp_path, env={"SCIM_GATEWAY_STORE": "mysql://gw:hunter2@127.0.0.1/scim"})
    assert code == 2
    assert "postgresql://" in out and "hunter2" not in out


def test_an_unreachable_store_stops_the_start_with_a_masked_message(tmp_path: Path) -> None:
    from tests.conftest import free_port

    code, out = _serve(tmp_path, env={"SCIM_GATEWAY_STORE": f"postgresql://gw:hunter2@127.0.0.1:{free_port()}/scim"})
    assert code == 1
    assert "cannot open the correlation store" in out and "gw:***@127.0.0.1" in out and "hunter2" not in out


async def test_a_store_that_goes_away_answers_503_with_retry_after(aiohttp_client: Any, tmp_path: Path, pg_database: str) -> None:
    from pydantic import SecretStr

    from gateway.app import create_app
    from tests.conftest import BASE, demo_settings
    from tests.proxy import TcpProxy
    from tests.services import PG_HOST, PG_PORT, PG_USER

    proxy = TcpProxy((PG_HOST, PG_PORT))
    port = await proxy.start()
    try:
        url = SecretStr(f"postgresql://{PG_USER}@127.0.0.1:{port}/{pg_database}")
        client = await aiohttp_client(create_app(demo_settings(tmp_path / "data", store_url=url, store_pool_size=2)))
        resp = await client.post(f"{BASE}/Users", json=user_body("before.outage"), headers=headers())
        assert resp.status == 201
        await proxy.stop()
        resp = await client.get(f"{BASE}/Users", headers=headers())
        assert resp.status == 503 and resp.headers["Retry-After"]
        assert resp.content_type == "application/scim+json"
        await proxy.start()
        resp = await client.get(f"{BASE}/Users", headers=headers())
        assert resp.status == 200 and (await resp.json())["totalResults"] == 1
    finally:
        if proxy.serving:
            await proxy.stop()


async def test_group_lists_on_one_user_record_lose_no_edit_across_processes(
    tmp_path: Path, pg_database: str, session: aiohttp.ClientSession
) -> None:
    """membership via: user_field (the CRM keeps each person's roles on the person): groups created at once
    through two processes, all naming one person, leave every role on that person's record."""
    from tests.conformance.conftest import _start_fake
    from tests.fakes.crm_app import CLIENT_SECRET

    root = Path(__file__).resolve().parents[2]
    fake, port = _start_fake("crm", tmp_path / "fake.log")
    api = f"http://127.0.0.1:{port}"
    env = {
        "CRM_API_URL": f"{api}/api/v1",
        "CRM_TOKEN_URL": f"{api}/oauth/token",
        "CRM_CLIENT_SECRET": CLIENT_SECRET,
        "CRM_SCIM_TOKEN": TOKEN,
    }
    a, b = (LiveGateway(tmp_path / name, token="", app="crm", env=env) for name in ("a", "b"))
    args = ("--config", str(root / "mappings" / "crm_rest.yaml"), "--store", pg_url(pg_database))
    try:
        await asyncio.gather(asyncio.to_thread(a.start, *args), asyncio.to_thread(b.start, *args))
        status, person, _ = await call(session, "POST", f"{a.base_url}/Users", user_body("shared@crm.example"))
        assert status == 201, person
        results = await asyncio.gather(
            *(
                call(
                    session,
                    "POST",
                    f"{(a, b)[i % 2].base_url}/Groups",
                    {"schemas": [GROUP_URN], "displayName": f"Role {i}", "members": [{"value": person["id"]}]},
                )
                for i in range(12)
            )
        )
        assert [s for s, _, _ in results] == [201] * 12, results
        for gateway in (a, b):
            _, got, _ = await call(session, "GET", f"{gateway.base_url}/Users/{person['id']}")
            assert sorted(g["display"] for g in got["groups"]) == sorted(f"Role {i}" for i in range(12))
        # ...and the app itself, asked directly with a token of its own
        form = {"grant_type": "client_credentials", "client_id": "gateway", "client_secret": CLIENT_SECRET}
        async with session.post(f"{api}/oauth/token", data=form) as resp:
            token = (await resp.json())["access_token"]
        async with session.get(
            f"{api}/api/v1/people", params={"username": "shared@crm.example"}, headers={"Authorization": f"Bearer {token}"}
        ) as resp:
            [record] = (await resp.json())["items"]
        async with session.get(f"{api}/api/v1/roles", headers={"Authorization": f"Bearer {token}"}) as resp:
            roles = (await resp.json())["items"]
        assert sorted(record["roles"]) == sorted(r["id"] for r in roles) and len(roles) == 12, (record, roles)
    finally:
        await asyncio.gather(asyncio.to_thread(a.stop), asyncio.to_thread(b.stop))
        fake.terminate()
        fake.wait(timeout=10)
