"""`scim-gateway backup`: an online copy of the SQLite data directory taken while a live gateway keeps writing
(issue 16), restored into a new data directory and served again."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import aiohttp

from tests.conftest import TOKEN, LiveGateway, user_body

HEADERS = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/scim+json"}


async def _writer(
    http: aiohttp.ClientSession, base: str, n: int, acknowledged: list[tuple[float, str]], stop: asyncio.Event
) -> None:
    """Creates users until stopped, recording the loop time at which each was acknowledged."""
    loop = asyncio.get_running_loop()
    i = 0
    while not stop.is_set():
        async with http.post(f"{base}/Users", json=user_body(f"w{n}.{i}@backup.test", title="t" * 100)) as resp:
            assert resp.status == 201, await resp.text()
            acknowledged.append((loop.time(), (await resp.json(content_type=None))["id"]))
        i += 1


def _ids(db: Path) -> set[str]:
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return {rid for (rid,) in conn.execute("SELECT id FROM resources WHERE app = 'demo' AND state = 'active'")}
    finally:
        conn.close()


async def test_a_backup_taken_while_serving_restores_every_write_acknowledged_before_it(tmp_path: Path) -> None:
    gateway = LiveGateway(tmp_path / "live")
    gateway.start()
    data, copy = tmp_path / "live" / "data", tmp_path / "backup"
    acknowledged: list[tuple[float, str]] = []
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    try:
        async with aiohttp.ClientSession(headers=HEADERS) as http:
            writers = [asyncio.create_task(_writer(http, gateway.base_url, n, acknowledged, stop)) for n in range(3)]
            while len(acknowledged) < 60:
                await asyncio.sleep(0.05)
            started = loop.time()
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "gateway.cli", "backup", "--data-dir", str(data), str(copy),
                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            )  # fmt: skip
            out, err = await proc.communicate()
            finished = loop.time()
            await asyncio.sleep(0.3)  # writes go on after the backup
            stop.set()
            await asyncio.gather(*writers)
    finally:
        gateway.stop()
    assert proc.returncode == 0, err.decode()
    assert "gateway.db" in out.decode() and "integrity ok" in out.decode()
    before = {rid for at, rid in acknowledged if at < started}
    during = {rid for at, rid in acknowledged if started <= at <= finished}
    after = {rid for at, rid in acknowledged if at > finished}
    assert before and after, (len(before), len(during), len(after))  # the writers really ran across the backup
    in_backup = _ids(copy / "gateway.db")
    assert before <= in_backup  # everything acknowledged before the backup began is in it
    assert not (after & in_backup)  # and it is a snapshot, not the live file copied later
    assert not list(copy.glob("*-wal")) and not list(copy.glob("*.partial"))

    # Restore: the backup's files as a new data directory; the gateway serves every user the backup holds.
    restored = tmp_path / "restored"
    (restored / "data").mkdir(parents=True)
    for name in ("gateway.db", "demo.db"):
        shutil.copy(copy / name, restored / "data" / name)
    again = LiveGateway(restored)
    again.start()
    try:
        async with aiohttp.ClientSession(headers=HEADERS) as http:
            for rid in sorted(before):
                async with http.get(f"{again.base_url}/Users/{rid}") as resp:
                    assert resp.status == 200, rid
            async with http.post(f"{again.base_url}/Users", json=user_body("new@backup.test")) as resp:
                assert resp.status == 201
    finally:
        again.stop()


def test_backup_refuses_what_it_cannot_copy(tmp_path: Path) -> None:
    def backup(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "gateway.cli", "backup", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60)

    empty = backup("--data-dir", str(tmp_path / "none"), str(tmp_path / "out"))
    assert empty.returncode == 1 and "no correlation store" in empty.stderr
    assert not (tmp_path / "none").exists()  # a backup never creates a database
    pg = backup("--store", "postgresql://localhost/x", str(tmp_path / "out"))
    assert pg.returncode == 2 and "pg_dump" in pg.stderr
    (tmp_path / "d").mkdir()
    same = backup("--data-dir", str(tmp_path / "d"), str(tmp_path / "d"))
    assert same.returncode == 2 and "elsewhere" in same.stderr
