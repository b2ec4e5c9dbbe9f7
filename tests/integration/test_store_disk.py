"""The SQLite store's data directory on a real, small filesystem that fills up or turns read-only (issue 16).

The data directory is a tmpfs of a few MiB mounted for the test (root only: the test skips elsewhere, fails in
CI). While the disk is full or read-only, writes answer 503 with Retry-After and a SCIM body, reads go on,
nothing acknowledged is lost and neither database is damaged; once space is back, writes succeed again and the
recovery sweep settles what the failure left pending.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.app import create_app
from gateway.http.keys import STORE
from tests.conftest import Scim, demo_settings, need_service, user_body


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0:
        need_service("mounting a small tmpfs for the data directory needs root")
    run = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mount)], capture_output=True, text=True)
    if run.returncode != 0:
        need_service(f"cannot mount a tmpfs: {run.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(disk: Path) -> Path:
    """A file that takes every free block of the disk (unbuffered writes, down to single blocks)."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for size in (65536, 4096, 512, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError:
                pass
    finally:
        os.close(fd)
    return filler


def _check(db: Path) -> None:
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok", db
    finally:
        conn.close()


async def _write_burst(scim: Scim, prefix: str, count: int) -> tuple[list[str], list[int]]:
    """`count` creates; the ids acknowledged (201) and every status seen (each a 201 or a SCIM 503)."""
    acknowledged: list[str] = []
    statuses: list[int] = []
    for i in range(count):
        resp, body = await scim.post("/Users", user_body(f"{prefix}{i}@disk.test", title="x" * 200))
        statuses.append(resp.status)
        if resp.status == 201:
            acknowledged.append(body["id"])
        else:
            assert resp.status == 503, (resp.status, body)
            assert resp.headers["Content-Type"] == "application/scim+json"
            assert body["status"] == "503" and body["detail"]
            assert int(resp.headers["Retry-After"]) >= 1
    return acknowledged, statuses


async def _settled(scim: Scim, store: Any, timeout: float = 10.0) -> None:
    """Wait for the recovery sweep to leave no journal entry pending."""
    deadline = asyncio.get_running_loop().time() + timeout
    while await store.pending("demo"):
        assert asyncio.get_running_loop().time() < deadline, await store.pending("demo")
        await asyncio.sleep(0.1)


async def _assert_consistent(scim: Scim, data: Path, acknowledged: list[str]) -> None:
    for rid in acknowledged:
        resp, _ = await scim.get(f"/Users/{rid}")
        assert resp.status == 200, rid
    store = sqlite3.connect(data / "gateway.db")
    demo = sqlite3.connect(data / "demo.db")
    try:
        linked = {n for (n,) in store.execute("SELECT native_id FROM resources WHERE app='demo' AND type='User'")}
        in_app = {str(n) for (n,) in demo.execute("SELECT emp_no FROM employees")}
        assert linked == in_app, linked ^ in_app  # no orphan in the app, no dangling link
    finally:
        store.close()
        demo.close()


async def test_a_full_disk_answers_503_and_recovers(small_disk: Path, aiohttp_client: Any) -> None:
    data = small_disk / "data"
    client = await aiohttp_client(create_app(demo_settings(data, recovery_interval=0.2)))
    scim = Scim(client)
    store = client.app[STORE]
    before, statuses = await _write_burst(scim, "before", 10)
    assert statuses == [201] * 10

    filler = _fill(small_disk)
    during, statuses = await _write_burst(scim, "full", 30)
    assert 503 in statuses, statuses  # the disk being full is seen, and answered as the store's unavailability
    resp, body = await scim.get(f"/Users/{before[0]}")  # reads go on
    assert resp.status == 200 and body["userName"] == "before0@disk.test"
    patch, _ = await scim.patch(f"/Users/{before[1]}", [{"op": "replace", "path": "title", "value": "y" * 500}])
    assert patch.status in (200, 503)

    filler.unlink()
    after, statuses = await _write_burst(scim, "after", 10)
    assert statuses == [201] * 10, statuses  # space is back: writes succeed at once, no stuck transaction
    await _settled(scim, store)
    await _assert_consistent(scim, data, before + during + after)
    resp, body = await scim.get(f"/Users/{before[1]}")
    assert resp.status == 200 and body["title"] in ("x" * 200, "y" * 500)
    await client.close()
    _check(data / "gateway.db")
    _check(data / "demo.db")


async def test_a_read_only_data_directory_stops_start_up_with_its_reason(small_disk: Path) -> None:
    """A data directory that is read-only when the gateway starts: it refuses to start, naming the file and why (no
    traceback), and starts on the same files with everything in them once the directory is writable again.

    (A filesystem cannot be remounted read-only under a process that has files open for writing, so the live case
    is the full disk above: both are the same SQLite failure, which the store answers as unavailable.)"""
    import aiohttp

    from tests.conftest import TOKEN, LiveGateway

    gateway = LiveGateway(small_disk.parent / "live")
    gateway.start("--data-dir", str(small_disk / "data"))
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/scim+json"}
    async with aiohttp.ClientSession(headers=headers) as http:
        async with http.post(f"{gateway.base_url}/Users", json=user_body("kept@disk.test")) as resp:
            assert resp.status == 201
            rid = (await resp.json(content_type=None))["id"]
    gateway.stop()

    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    try:
        run = subprocess.run(
            [sys.executable, "-m", "gateway.cli", "serve", "--port", "0", "--data-dir", str(small_disk / "data")],
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(small_disk)], check=True)
    assert run.returncode == 1, run.stderr
    assert "Traceback" not in run.stderr
    assert f"{small_disk / 'data'}" in run.stderr and "(is the directory writable?)" in run.stderr, run.stderr

    gateway.start("--data-dir", str(small_disk / "data"))
    try:
        async with aiohttp.ClientSession(headers=headers) as http:
            async with http.get(f"{gateway.base_url}/Users/{rid}") as resp:
                assert resp.status == 200
                assert (await resp.json(content_type=None))["userName"] == "kept@disk.test"
    finally:
        gateway.stop()
    _check(small_disk / "data" / "gateway.db")
    _check(small_disk / "data" / "demo.db")
