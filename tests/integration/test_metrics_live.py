"""/metrics and `scim-gateway status` against live gateways with `serve --workers 2`: whichever worker answers a
scrape, its counts are the sums of what both served; the journal gauge comes from the shared store; a breaker
open in any worker shows; `status` reads it all over HTTP."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import TOKEN, LiveGateway, free_port, user_body
from tests.fakes.serve import HR_API_KEY
from tests.integration.test_app_faults import hr_mapping
from tests.integration.test_metrics import Samples, parse, value
from tests.integration.test_multiprocess import _listening_sockets, _worker_pids

pytestmark = pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="waits for both workers' sockets in /proc (Linux)")

ROOT = Path(__file__).resolve().parents[2]
SCRAPE_TOKEN = "scrape-token-live-0123456789"


def start_workers(gateway: LiveGateway, *extra: str) -> None:
    """Start `--workers 2` and wait until both listen: connections then reach either one."""
    gateway.start("--workers", "2", *extra)
    _worker_pids(gateway, 2)
    deadline = time.monotonic() + 30
    while _listening_sockets(gateway.port) < 2:
        if time.monotonic() > deadline:
            raise AssertionError(f"the second worker never listened:\n{gateway.log.read_text()}")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def demo_workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveGateway]:
    gateway = LiveGateway(tmp_path_factory.mktemp("metrics-demo"))
    try:
        start_workers(gateway)
        yield gateway
    finally:
        gateway.stop()


@pytest.fixture
async def fresh() -> AsyncIterator[aiohttp.ClientSession]:
    """A session opening a new connection for every request, so the kernel spreads them over the workers."""
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(force_close=True), timeout=aiohttp.ClientTimeout(total=60)
    ) as session:
        yield session


async def send(session: aiohttp.ClientSession, method: str, url: str, body: Any = None, token: str | None = TOKEN) -> int:
    headers = {"Content-Type": "application/scim+json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    async with session.request(method, url, json=body, headers=headers) as resp:
        await resp.read()
        return resp.status


async def scrape(session: aiohttp.ClientSession, url: str, token: str | None = None) -> Samples:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with session.get(f"{url}/metrics", headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        return parse(await resp.text())


def status_command(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k != "SCIM_GATEWAY_METRICS_TOKEN"}
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "status", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**base, **(env or {})},
    )


async def test_counts_scraped_from_either_worker_are_the_sums(demo_workers: LiveGateway, fresh: aiohttp.ClientSession) -> None:
    gateway = demo_workers
    base = gateway.base_url
    creates = await asyncio.gather(*(send(fresh, "POST", f"{base}/Users", user_body(f"counted{i}")) for i in range(12)))
    assert creates == [201] * 12
    async with fresh.get(f"{base}/Users?count=10", headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
        ids = [r["id"] for r in (await resp.json(content_type=None))["Resources"]]
    reads = await asyncio.gather(*(send(fresh, "GET", f"{base}/Users/{uid}") for uid in ids))
    missing = await asyncio.gather(*(send(fresh, "GET", f"{base}/Users/no-such-{i}") for i in range(8)))
    no_token = await asyncio.gather(*(send(fresh, "GET", f"{base}/Users", token=None) for _ in range(5)))
    wrong = await asyncio.gather(*(send(fresh, "GET", f"{base}/Users", token="not-the-token-0123") for _ in range(4)))
    assert (reads, missing, no_token, wrong) == ([200] * 10, [404] * 8, [401] * 5, [401] * 4)

    # Both workers served: every write and refusal is audited with its process's pid.
    audit = [json.loads(line) for line in (gateway.root / "data" / "audit.log").read_text().splitlines()]
    assert len({line["pid"] for line in audit if line["op"] in ("create", "auth")}) == 2, audit

    # Several scrapes, each a new connection (so both workers answer some): each sees every worker's counts.
    for _ in range(6):
        samples = await scrape(fresh, gateway.url)
        requests = "scim_gateway_requests_total"
        assert value(samples, requests, app="demo", operation="create", status="201") == 12
        assert value(samples, requests, app="demo", operation="search", status="200") == 1
        assert value(samples, requests, app="demo", operation="read", status="200") == 10
        assert value(samples, requests, app="demo", operation="read", status="404") == 8
        assert value(samples, requests, app="demo", operation="auth", status="401") == 9
        assert value(samples, "scim_gateway_auth_refused_total", app="demo", reason="no_token") == 5
        assert value(samples, "scim_gateway_auth_refused_total", app="demo", reason="unknown_token") == 4
        assert value(samples, "scim_gateway_request_duration_seconds_count", app="demo", operation="read") == 18
        inf = value(samples, "scim_gateway_request_duration_seconds_bucket", app="demo", operation="create", le="+Inf")
        assert inf == 12
        count = "scim_gateway_app_call_duration_seconds_count"
        assert value(samples, count, app="demo", call="create_with_members", outcome="ok") == 12
        assert value(samples, count, app="demo", call="get", outcome="ok") == 12 + 10  # each create's read-back, each read
        assert value(samples, "scim_gateway_breaker_state", app="demo") == 0
        assert value(samples, "scim_gateway_breaker_opened_total", app="demo") == 0
        assert value(samples, "scim_gateway_journal_pending", app="demo") == 0


def test_the_workers_metric_files_live_in_a_private_directory_removed_at_the_end(tmp_path: Path) -> None:
    gateway = LiveGateway(tmp_path)
    start_workers(gateway)
    try:
        pids = _worker_pids(gateway, 2)
        dirs = set()
        for pid in pids:
            environ = dict(item.split("=", 1) for item in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in item)
            dirs.add(environ["PROMETHEUS_MULTIPROC_DIR"])
        assert len(dirs) == 1
        path = Path(dirs.pop())
        assert path.is_dir() and (path.stat().st_mode & 0o777) == 0o700
        assert list(path.glob("*.db"))  # the workers' values (their breakers' gauges at least)
    finally:
        gateway.stop()
    assert gateway.proc is None and not path.exists()


def test_status_of_a_ready_gateway(demo_workers: LiveGateway) -> None:
    table = status_command("--url", demo_workers.url)
    assert table.returncode == 0, table.stderr
    assert f"Gateway {demo_workers.url}: ready (store: ok)" in table.stdout
    row = next(line.split() for line in table.stdout.splitlines() if line.startswith("demo "))
    assert row == ["demo", "yes", "closed", "0", "0", "-"]  # "-": no hub feeds it
    as_json = status_command("--url", demo_workers.url + "/", "--json")
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout) == {
        "url": demo_workers.url,
        "store": "ok",
        "metrics": "ok",
        "status": "ready",
        "apps": {"demo": {"open": True, "breaker": "closed", "backlog": 0, "breaker_opened": 0}},
    }


def test_status_of_no_gateway_says_where_it_asked() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    done = status_command("--url", url, "--json")
    assert done.returncode == 2 and done.stdout == ""
    assert f"cannot reach the gateway at {url}/readyz" in done.stderr and "--url" in done.stderr


# ---------------------------------------------------------------- a REST app: a write in flight, then its app stopped


@pytest.fixture
def hr_fake() -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """The hr fake as a process of its own, each write answered after 2 s (a write stays in flight that long)."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tests.fakes.serve", "hr", str(port), "--slow-writes", "2"], cwd=ROOT)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise AssertionError("the hr fake did not start") from None
                time.sleep(0.05)
        yield port, proc
    finally:
        proc.terminate()
        proc.wait(10)


async def test_a_write_in_flight_then_an_open_breaker(
    tmp_path: Path, hr_fake: tuple[int, subprocess.Popen[bytes]], fresh: aiohttp.ClientSession
) -> None:
    port, fake = hr_fake
    breaker = {"failures": 2, "reset_after": 600, "max_reset_after": 600}  # stays open for the whole test
    mapping = hr_mapping(tmp_path, f"http://127.0.0.1:{port}/api", breaker=breaker)
    gateway = LiveGateway(tmp_path, app="hr", env={"HR_API_KEY": HR_API_KEY, "SCIM_GATEWAY_METRICS_TOKEN": SCRAPE_TOKEN})
    await asyncio.to_thread(start_workers, gateway, "--config", str(mapping))
    try:
        async with fresh.get(f"{gateway.url}/metrics") as resp:
            assert resp.status == 401  # the token is set: scrapes must send it
        # A create the app answers after 2 s: journaled before the call, so pending meanwhile, in the store.
        write = asyncio.ensure_future(send(fresh, "POST", f"{gateway.base_url}/Users", user_body("slow.one")))
        pending: list[float] = []
        while not write.done():
            pending.append(value(await scrape(fresh, gateway.url, SCRAPE_TOKEN), "scim_gateway_journal_pending", app="hr"))
            await asyncio.sleep(0.1)
        assert await write == 201
        assert 1.0 in pending and set(pending) <= {0.0, 1.0}, pending
        assert value(await scrape(fresh, gateway.url, SCRAPE_TOKEN), "scim_gateway_journal_pending", app="hr") == 0

        fake.terminate()  # the app goes away
        fake.wait(10)
        # One at a time: a worker calls the app until its circuit opens (2 failures), then refuses without calling.
        failed = [await send(fresh, "POST", f"{gateway.base_url}/Users", user_body(f"down{i}")) for i in range(12)]
        assert failed == [503] * 12
        for _ in range(4):
            samples = await scrape(fresh, gateway.url, SCRAPE_TOKEN)
            assert value(samples, "scim_gateway_breaker_state", app="hr") == 2  # open in at least one worker
            assert 1 <= value(samples, "scim_gateway_breaker_opened_total", app="hr") <= 2
            assert value(samples, "scim_gateway_requests_total", app="hr", operation="create", status="201") == 1
            assert value(samples, "scim_gateway_requests_total", app="hr", operation="create", status="503") == 12
            unavailable = sum(
                v
                for (name, labels), v in samples.items()
                if name == "scim_gateway_app_call_duration_seconds_count" and ("outcome", "unavailable") in labels
            )
            assert 2 <= unavailable <= 4, samples  # each worker's failures until its circuit opened, no more

        done = status_command("--url", gateway.url, "--json", env={"SCIM_GATEWAY_METRICS_TOKEN": SCRAPE_TOKEN})
        assert done.returncode == 1, done.stdout + done.stderr
        reported = json.loads(done.stdout)
        assert reported["status"] == "not ready" and reported["metrics"] == "ok"
        assert reported["apps"]["hr"]["breaker"] == "open" and reported["apps"]["hr"]["backlog"] == 0
        no_token = status_command("--url", gateway.url)
        assert no_token.returncode == 1 and "SCIM_GATEWAY_METRICS_TOKEN" in no_token.stdout
        assert SCRAPE_TOKEN not in gateway.log.read_text()
    finally:
        await asyncio.to_thread(gateway.stop)


async def test_one_process_keeps_its_metrics_in_memory_whatever_the_environment_says(
    tmp_path: Path, fresh: aiohttp.ClientSession
) -> None:
    """A PROMETHEUS_MULTIPROC_DIR left in the environment (files of another run there would count again) is not used."""
    stale = tmp_path / "someone-elses-dir"
    stale.mkdir()
    gateway = LiveGateway(tmp_path / "gw", env={"PROMETHEUS_MULTIPROC_DIR": str(stale)})
    await asyncio.to_thread(gateway.start)
    try:
        statuses = [await send(fresh, "GET", f"{gateway.base_url}/Users/none-{i}") for i in range(3)]
        assert statuses == [404] * 3
        samples = await scrape(fresh, gateway.url)
        assert value(samples, "scim_gateway_requests_total", app="demo", operation="read", status="404") == 3
        assert list(stale.iterdir()) == []
    finally:
        await asyncio.to_thread(gateway.stop)
