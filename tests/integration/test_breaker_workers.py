"""The circuit and the 429 pause shared by the workers of one gateway (`serve --workers N`): one worker finding
the app down or throttled stops the others calling it too, and they all resume together.

First two breakers of one process on one shared file and one fake clock (the rules), then real processes:
`serve --workers 2` on a PostgreSQL store in front of the hr fake, each answer's worker told by the audit log's `pid`.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.connectors.errors import AppThrottled, AppUnavailable
from gateway.mapping.model import BreakerConfig
from gateway.provisioning.breaker import Breaker, CircuitOpen
from gateway.provisioning.shared_circuit import SharedCircuit
from tests.conftest import LiveGateway
from tests.fakes.hr_app import HR_STATE, HrState, create_hr_app, serve
from tests.idp import entra_user
from tests.integration.test_app_faults import HR_API_KEY, hr_mapping
from tests.integration.test_breaker import Clock
from tests.services import pg_database, pg_url

__all__ = ["pg_database"]  # the fixture, for this module's tests

# ---------------------------------------------------------------- two breakers on one file (a fake clock)


def pair(tmp_path: Path, clock: Clock, failures: int = 3) -> tuple[Breaker, Breaker]:
    config = BreakerConfig(failures=failures, reset_after=10, max_reset_after=40)
    return tuple(Breaker("hr", config, clock, shared=SharedCircuit(tmp_path / "hr.circuit")) for _ in range(2))  # type: ignore[return-value]


def test_failures_are_counted_together_and_the_open_circuit_refuses_in_both(tmp_path: Path) -> None:
    clock = Clock()
    a, b = pair(tmp_path, clock)
    for breaker in (a, b, a):
        assert breaker.admit() is False
        breaker.answered(False, AppUnavailable("the app did not answer"))
    assert (a.state, b.state) == ("open", "open")
    with pytest.raises(CircuitOpen) as caught:
        b.admit()
    assert "circuit open after 3 consecutive failures (last: the app did not answer)" in caught.value.detail
    assert caught.value.retry_after == 10

    # A success in either resets the count for both (consecutive across the processes).
    clock.now += 10
    assert b.admit() is True  # the probe, in b
    with pytest.raises(CircuitOpen, match="half-open"):
        a.admit()  # one probe at a time, whichever process holds it
    b.answered(True, None)
    assert (a.state, a.failures, b.state) == ("closed", 0, "closed")
    assert a.admit() is False


def test_a_failed_probe_reopens_both_for_twice_as_long(tmp_path: Path) -> None:
    clock = Clock()
    a, b = pair(tmp_path, clock, failures=1)
    a.admit()
    a.answered(False, AppUnavailable("down"))
    clock.now += 10
    assert a.admit() is True
    a.answered(True, AppUnavailable("still down"))
    assert (b.state, b.cooldown) == ("open", 20)
    with pytest.raises(CircuitOpen) as caught:
        b.admit()
    assert caught.value.retry_after == 20


def test_a_429_in_one_pauses_the_other_for_its_retry_after(tmp_path: Path) -> None:
    clock = Clock()
    a, b = pair(tmp_path, clock)
    a.admit()
    a.answered(False, AppThrottled("HTTP 429 from POST /api/users", retry_after=30))
    with pytest.raises(CircuitOpen) as caught:
        b.admit()
    assert "asked the gateway to slow down (HTTP 429 from POST /api/users); calls resume in 30 s" in caught.value.detail
    assert (b.state, b.failures) == ("closed", 0)  # a pause, not an outage
    clock.now += 30
    assert b.admit() is False and a.admit() is False


def test_closed_and_answering_publishes_nothing(tmp_path: Path) -> None:
    """The hot path: while the app answers, admission and success change nothing shared (no lock, no write)."""
    clock = Clock()
    a, b = pair(tmp_path, clock)
    seen = (tmp_path / "hr.circuit").read_bytes()
    for _ in range(100):
        for breaker in (a, b):
            assert breaker.admit() is False
            breaker.answered(False, None)
    assert (tmp_path / "hr.circuit").read_bytes() == seen


_TAKE_PROBE = """
import os, sys
from gateway.mapping.model import BreakerConfig
from gateway.provisioning.breaker import Breaker
from gateway.provisioning.shared_circuit import SharedCircuit
b = Breaker("hr", BreakerConfig(failures=1, reset_after=10), lambda: float(sys.argv[2]), shared=SharedCircuit(sys.argv[1]))
assert b.admit() is True  # the probe, then this process dies with it in flight
os._exit(0)
"""


def test_a_probe_whose_process_died_is_taken_by_another(tmp_path: Path) -> None:
    clock = Clock()
    a, b = pair(tmp_path, clock, failures=1)
    a.admit()
    a.answered(False, AppUnavailable("down"))
    clock.now += 10
    subprocess.run([sys.executable, "-c", _TAKE_PROBE, str(tmp_path / "hr.circuit"), str(clock.now)], check=True)
    assert b.state == "half_open" and b.probing
    assert b.admit() is True  # not refused for ever: the probe's process is gone
    b.answered(True, None)
    assert a.state == "closed"


# ---------------------------------------------------------------- serve --workers 2 in front of the hr fake


@pytest.fixture
async def hr_app() -> AsyncIterator[tuple[HrState, str]]:
    app = create_hr_app(api_key=HR_API_KEY)
    async with serve(app) as url:
        yield app[HR_STATE], url


@pytest.fixture
async def two_workers(tmp_path: Path, hr_app: tuple[HrState, str], pg_database: str) -> AsyncIterator[LiveGateway]:
    """Two workers on a PostgreSQL store, as `--workers` is run (docs/operations.md "Scaling out")."""
    _, url = hr_app
    mapping = hr_mapping(tmp_path, url, breaker={"failures": 3, "reset_after": 2, "max_reset_after": 2})
    gateway = LiveGateway(tmp_path, app="hr", env={"HR_API_KEY": HR_API_KEY})
    try:
        await asyncio.to_thread(gateway.start, "--workers", "2", "--config", str(mapping), "--store", pg_url(pg_database))
        yield gateway
    finally:
        await asyncio.to_thread(gateway.stop)


def audit(tmp_path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (tmp_path / "data" / "audit.log").read_text().splitlines()]


async def post_users(gateway: LiveGateway, names: list[str]) -> list[tuple[int, dict[str, Any]]]:
    """One POST per name, one after the other, each on a new connection (the kernel picks the worker)."""
    out = []
    headers = {"Authorization": f"Bearer {gateway.token}", "Content-Type": "application/scim+json", "Connection": "close"}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        for name in names:
            async with session.post(f"{gateway.base_url}/Users", json=entra_user(name, "W", "Orker"), headers=headers) as resp:
                out.append((resp.status, await resp.json(content_type=None)))
    return out


async def until_both_workers_answer(gateway: LiveGateway, tmp_path: Path) -> set[int]:
    """Both workers serve (each has answered a write): the test needs the two, not whichever started first."""
    async with asyncio.timeout(60):
        for i in range(1000):
            await post_users(gateway, [f"warm{i}@contoso.com"])
            pids = {line["pid"] for line in audit(tmp_path) if line["status"] == 201}
            if len(pids) == 2:
                return pids
    raise AssertionError("unreachable")


async def test_an_app_down_is_refused_by_both_workers_after_the_threshold_and_both_resume(
    two_workers: LiveGateway, tmp_path: Path, hr_app: tuple[HrState, str]
) -> None:
    state, _ = hr_app
    pids = await until_both_workers_answer(two_workers, tmp_path)

    # The app goes down: three failures in all (whichever worker saw them) open the circuit for both.
    state.fault("POST", r"/users", status=503, times=10_000)
    calls, lines = len(state.calls), len(audit(tmp_path))
    answers = await post_users(two_workers, [f"down{i}@contoso.com" for i in range(3)])
    assert [status for status, _ in answers] == [503] * 3
    assert len(state.calls) - calls == 3
    calls = len(state.calls)
    answers = await post_users(two_workers, [f"refused{i}@contoso.com" for i in range(24)])
    assert all(status == 503 and "circuit open after 3 consecutive failures" in body["detail"] for status, body in answers), (
        answers
    )
    assert len(state.calls) == calls, "a worker called the app another had found down"
    refused = [line for line in audit(tmp_path)[lines:] if line.get("reason") == "circuit_open"]
    assert len(refused) == 24 and {line["pid"] for line in refused} == pids  # both refused, at once

    # Back: after the cool-down one probe closes the circuit, and both workers write again.
    state.faults.clear()
    await asyncio.sleep(2.1)
    lines = len(audit(tmp_path))
    async with asyncio.timeout(60):
        for i in range(1000):
            await post_users(two_workers, [f"back{i}@contoso.com"])
            served = {line["pid"] for line in audit(tmp_path)[lines:] if line["status"] == 201}
            if served == pids:
                break
    assert all(line["status"] == 201 for line in audit(tmp_path)[lines:]), audit(tmp_path)[lines:]


async def test_a_429_seen_by_one_worker_pauses_the_other(
    two_workers: LiveGateway, tmp_path: Path, hr_app: tuple[HrState, str]
) -> None:
    state, _ = hr_app
    pids = await until_both_workers_answer(two_workers, tmp_path)
    state.fault("POST", r"/users", status=429, headers={"Retry-After": "20"})
    calls, lines = len(state.calls), len(audit(tmp_path))
    [(status, body)] = await post_users(two_workers, ["throttled@contoso.com"])
    assert status == 503 and "slow down" in body["detail"], body
    assert len(state.calls) == calls + 1
    answers = await post_users(two_workers, [f"paused{i}@contoso.com" for i in range(24)])
    assert all(status == 503 and "asked the gateway to slow down" in body["detail"] for status, body in answers), answers
    assert len(state.calls) == calls + 1, "a worker called the app another was asked to leave alone"
    paused = [line for line in audit(tmp_path)[lines + 1 :] if line.get("reason") == "circuit_open"]
    assert len(paused) == 24 and {line["pid"] for line in paused} == pids
