"""The PostgreSQL store restarted under load (issue 16): while it is away, requests answer 503 with Retry-After
(never a 500, never a hang); nothing acknowledged is lost; the pool heals by itself once it is back.

The test runs its own PostgreSQL cluster (initdb as the postgres user into a private directory, on a free port), so
restarting it disturbs no other test using the machine's server.
"""

from __future__ import annotations

import asyncio
import glob
import os
import shutil
import sqlite3
import subprocess
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from tests.conftest import TOKEN, LiveGateway, free_port, need_service, user_body

HEADERS = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/scim+json"}


class PrivatePostgres:
    """A PostgreSQL cluster of the test's own: initdb, pg_ctl start / stop / restart, as the postgres user."""

    def __init__(self) -> None:
        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
        if not bins or shutil.which("runuser") is None or os.geteuid() != 0:
            need_service("a private PostgreSQL cluster needs PostgreSQL's binaries and root (to run them as postgres)")
        self.bin = Path(bins[-1]).parent
        self.root = Path(tempfile.mkdtemp(prefix="gw-pg-"))
        shutil.chown(self.root, "postgres", "postgres")
        self.data = self.root / "data"
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str, timeout: float = 60) -> None:
        cmd = ["runuser", "-u", "postgres", "--", *args]
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if run.returncode != 0:
            raise RuntimeError(f"{' '.join(args)}: {run.stdout}{run.stderr}")

    def init(self) -> None:
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")

    def _ctl(self, action: str) -> None:
        opts = f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.root} -c fsync=off"
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "log"), "-w", "-m", "fast",
                  "-o", opts, action)  # fmt: skip

    def start(self) -> None:
        self._ctl("start")

    def stop(self) -> None:
        self._ctl("stop")

    def destroy(self) -> None:
        try:
            self.stop()
        except RuntimeError:
            pass
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def private_pg() -> Iterator[PrivatePostgres]:
    pg = PrivatePostgres()
    pg.init()
    pg.start()
    yield pg
    pg.destroy()


async def _load(
    http: aiohttp.ClientSession, base: str, n: int, seen: Counter[int], acknowledged: list[str], stop: asyncio.Event
) -> None:
    """Creates and reads until stopped; every answer is a 2xx or a SCIM 503 with Retry-After."""
    i = 0
    while not stop.is_set():
        async with http.post(f"{base}/Users", json=user_body(f"pg{n}.{i}@restart.test")) as resp:
            body = await resp.json(content_type=None)
            seen[resp.status] += 1
            if resp.status == 201:
                acknowledged.append(body["id"])
            else:
                assert resp.status == 503, (resp.status, body)
                assert body["status"] == "503" and int(resp.headers["Retry-After"]) >= 1
                assert resp.headers["Content-Type"] == "application/scim+json"
                await asyncio.sleep(0.05)
        if acknowledged:
            async with http.get(f"{base}/Users/{acknowledged[-1]}") as resp:
                seen[resp.status] += 1
                assert resp.status in (200, 503), await resp.text()
        i += 1


async def test_requests_answer_503_while_the_store_restarts_and_nothing_acknowledged_is_lost(
    private_pg: PrivatePostgres, tmp_path: Path
) -> None:
    gateway = LiveGateway(tmp_path / "live", env={"SCIM_GATEWAY_STORE": private_pg.url})
    gateway.start("--workers", "2", "--recovery-interval", "0.5")
    seen: Counter[int] = Counter()
    acknowledged: list[str] = []
    stop = asyncio.Event()
    try:
        async with aiohttp.ClientSession(headers=HEADERS, timeout=aiohttp.ClientTimeout(total=30)) as http:
            load = [asyncio.create_task(_load(http, gateway.base_url, n, seen, acknowledged, stop)) for n in range(4)]
            while len(acknowledged) < 40:
                await asyncio.sleep(0.05)
            await asyncio.to_thread(private_pg.stop)
            away = dict(seen)
            await asyncio.sleep(2.0)  # the store is away: the load goes on
            during = Counter(seen) - Counter(away)
            await asyncio.to_thread(private_pg.start)
            healed = len(acknowledged)
            deadline = asyncio.get_running_loop().time() + 30
            while len(acknowledged) < healed + 40:  # the pool heals: writes are acknowledged again
                assert asyncio.get_running_loop().time() < deadline, dict(seen)
                await asyncio.sleep(0.05)
            stop.set()
            await asyncio.gather(*load)
            assert during[503] > 0, dict(seen)  # the outage was seen, as 503s
            for rid in acknowledged:
                async with http.get(f"{gateway.base_url}/Users/{rid}") as resp:
                    assert resp.status == 200, rid
            # What the outage left pending (a settle that could not be written) the sweep settles.
            await _no_pending(private_pg.url)
    finally:
        gateway.stop()
    assert set(seen) <= {200, 201, 503}, dict(seen)
    conn = await asyncpg.connect(private_pg.url)
    try:
        rows = await conn.fetch("SELECT id, native_id FROM resources WHERE app = 'demo' AND type = 'User'")
    finally:
        await conn.close()
    assert set(acknowledged) <= {r["id"] for r in rows}  # nothing acknowledged is lost
    demo = sqlite3.connect(tmp_path / "live" / "data" / "demo.db")
    try:
        in_app = {str(n) for (n,) in demo.execute("SELECT emp_no FROM employees")}
    finally:
        demo.close()
    assert {r["native_id"] for r in rows} == in_app  # no orphan in the app, no dangling link


async def _no_pending(url: str, timeout: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        conn = await asyncpg.connect(url)
        try:
            pending = await conn.fetch("SELECT seq, op, detail FROM journal WHERE state = 'pending'")
        finally:
            await conn.close()
        if not pending:
            return
        assert loop.time() < deadline, [dict(r) for r in pending]
        await asyncio.sleep(0.2)
