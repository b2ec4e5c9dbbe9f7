"""The circuit breaker per app: it opens after repeated failures, fails fast without calling the app, lets one probe
through after the cool-down, closes on its success, opens again for longer on its failure; one app's outage never
slows another.

The breaker's own rules run on a fake clock; through the gateway, the assertions count the calls the app (or a black
hole) received, never wall-clock times.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from pydantic import SecretStr

from gateway.app import create_app
from gateway.connectors.base import Connector
from gateway.connectors.errors import (
    AppBadResponse,
    AppConflict,
    AppCredentialsRefused,
    AppInvalid,
    AppNotFound,
    AppThrottled,
    AppUnavailable,
)
from gateway.demo import demo_mapping_path, ensure_demo_database
from gateway.http.keys import APPS
from gateway.mapping.model import BreakerConfig
from gateway.provisioning.breaker import Breaker, CircuitOpen, GuardedConnector
from gateway.settings import GatewaySettings
from tests.conftest import BASE, TOKEN, Scim, user_body
from tests.conftest import PATCH_URN as PATCH
from tests.demo_rows import q
from tests.fakes.black_hole import BlackHole
from tests.fakes.hr_app import HR_STATE, HrState, create_hr_app, serve
from tests.idp import entra_user
from tests.integration.test_app_faults import (
    HR_API_KEY,
    HR_BASE,
    assert_scim_error,
    hr_mapping,
    store_rows,
)

# ---------------------------------------------------------------- the breaker's rules (a fake clock)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def breaker(clock: Clock, failures: int = 3, reset_after: float = 10, max_reset_after: float = 25) -> Breaker:
    return Breaker("hr", BreakerConfig(failures=failures, reset_after=reset_after, max_reset_after=max_reset_after), clock)


class Recorded(Connector):
    """A connector that counts its calls and answers what the test sets (an error to raise, or records)."""

    Config = BreakerConfig  # any model: never validated here

    def __init__(self) -> None:
        super().__init__(BreakerConfig(), None)  # type: ignore[arg-type]
        self.calls: list[str] = []
        self.error: Exception | None = None

    async def _answer(self, name: str) -> Any:
        self.calls.append(name)
        if self.error is not None:
            raise self.error
        return None

    async def create(self, kind: str, record: dict[str, Any]) -> str:
        await self._answer("create")
        return "1"

    async def get(self, kind: str, native_id: str) -> dict[str, Any] | None:
        return await self._answer("get")  # type: ignore[no-any-return]

    async def update(self, kind: str, native_id: str, changes: dict[str, Any]) -> None:
        await self._answer("update")

    async def delete(self, kind: str, native_id: str) -> None:
        await self._answer("delete")

    async def action(self, kind: str, native_id: str, name: str) -> None:
        await self._answer(f"action:{name}")

    async def list_all(self, kind: str) -> AsyncIterator[tuple[str, dict[str, Any]]]:  # type: ignore[override]
        await self._answer("list_all")
        for i in range(3):
            yield str(i), {}


def test_only_consecutive_outage_failures_open_the_circuit() -> None:
    clock = Clock()
    b = breaker(clock)
    b.failed(False, "HTTP 500")
    b.failed(False, "HTTP 500")
    b.succeeded(False)  # the app answered (a 409, a 404, a 200): the count starts again
    b.failed(False, "HTTP 500")
    b.failed(False, "HTTP 500")
    assert b.admit() is False and b.state == "closed"
    b.failed(False, "cannot connect to the app (connection refused)")
    with pytest.raises(CircuitOpen) as caught:
        b.admit()
    assert caught.value.detail == (
        "app hr is unavailable: circuit open after 3 consecutive failures (last: cannot connect to the app (connection refused));"
        " next probe in 10 s"
    )
    assert caught.value.retry_after == 10
    clock.now += 7.5
    with pytest.raises(CircuitOpen) as caught:
        b.admit()
    assert caught.value.retry_after == 3 and caught.value.detail.endswith("next probe in 3 s")


async def test_which_app_errors_count_as_the_app_being_unavailable() -> None:
    clock = Clock()
    inner = Recorded()
    guarded = GuardedConnector(inner, breaker(clock, failures=2))
    for refusal in (AppConflict("taken"), AppNotFound("gone"), AppInvalid("bad"), AppConflict("taken")):
        inner.error = refusal
        with pytest.raises(type(refusal)):
            await guarded.get("User", "1")
    assert guarded.breaker.state == "closed"  # 4 refusals: the app is up
    for outage in (AppBadResponse("HTML"), AppUnavailable("HTTP 503")):
        inner.error = outage
        with pytest.raises(type(outage)):
            await guarded.get("User", "1")
    assert guarded.breaker.state == "open"


async def test_an_open_circuit_calls_nothing_reads_writes_or_lists() -> None:
    clock = Clock()
    inner = Recorded()
    guarded = GuardedConnector(inner, breaker(clock, failures=1))
    inner.error = AppUnavailable("the app did not answer GET /users/1 within 10 s")
    with pytest.raises(AppUnavailable):
        await guarded.get("User", "1")
    assert inner.calls == ["get"]
    for call in (
        guarded.get("User", "1"),
        guarded.create("User", {}),
        guarded.update("User", "1", {}),
        guarded.delete("User", "1"),
        guarded.action("User", "1", "disable"),
        guarded.create_with_members("Group", {}, []),
    ):
        with pytest.raises(CircuitOpen):
            await call
    with pytest.raises(CircuitOpen):
        [item async for item in guarded.list_all("User")]
    assert inner.calls == ["get"]


async def test_half_open_lets_one_probe_through_and_its_success_closes() -> None:
    clock = Clock()
    b = breaker(clock, failures=1)
    b.failed(False, "HTTP 502")
    clock.now += 10
    assert b.admit() is True  # the probe
    with pytest.raises(CircuitOpen) as caught:
        b.admit()  # meanwhile, the others fail fast
    assert "half-open" in caught.value.detail and caught.value.retry_after == 1
    b.succeeded(False)  # a call admitted before the circuit opened: it says nothing about now
    assert b.state == "half_open"
    b.succeeded(True)
    assert b.state == "closed" and b.admit() is False and b.failures == 0


def test_a_failed_probe_reopens_for_twice_as_long_up_to_the_cap_and_success_resets_it() -> None:
    clock = Clock()
    b = breaker(clock, failures=1, reset_after=10, max_reset_after=25)
    b.failed(False, "HTTP 500")
    cooldowns = []
    for _ in range(3):
        clock.now += b.cooldown
        assert b.admit() is True
        b.failed(True, "HTTP 500")
        cooldowns.append(b.cooldown)
        with pytest.raises(CircuitOpen) as caught:
            b.admit()
        assert caught.value.retry_after == b.cooldown
    assert cooldowns == [20, 25, 25]
    assert b.failures == 4
    clock.now += 25
    assert b.admit() is True
    b.succeeded(True)
    b.failed(False, "HTTP 500")
    assert b.cooldown == 10  # a new outage starts from reset_after again


def test_a_late_failure_of_a_call_admitted_before_the_circuit_opened_does_not_extend_it() -> None:
    clock = Clock()
    b = breaker(clock, failures=1)
    b.failed(False, "timeout")
    until = b.probe_at
    clock.now += 5
    b.failed(False, "timeout")  # a second call that hung as long, ending now
    assert (b.probe_at, b.failures) == (until, 1)


async def test_a_cancelled_probe_lets_the_next_call_probe() -> None:
    clock = Clock()
    b = breaker(clock, failures=1)
    b.failed(False, "timeout")
    clock.now += 10
    inner = Recorded()
    guarded = GuardedConnector(inner, b)

    async def hang(*_args: Any) -> None:
        await asyncio.Event().wait()

    inner.get = hang  # type: ignore[method-assign]
    probe = asyncio.create_task(guarded.get("User", "1"))
    await asyncio.sleep(0)
    assert b.probing
    probe.cancel()
    with pytest.raises(asyncio.CancelledError):
        await probe
    assert b.admit() is True  # not stuck half-open with a dead probe


async def test_a_write_admitted_is_never_cut_between_its_calls() -> None:
    """A write of two calls (update, then disable): the circuit opening between them must not leave it half-applied."""
    clock = Clock()
    b = breaker(clock, failures=1)
    inner = Recorded()
    guarded = GuardedConnector(inner, b)
    async with b.admission():
        await guarded.update("User", "1", {"title": "x"})
        b.failed(False, "HTTP 500")  # another request's failure opens the circuit now
        assert b.state == "open"
        await guarded.action("User", "1", "disable")
    assert inner.calls == ["update", "action:disable"]
    with pytest.raises(CircuitOpen):
        async with b.admission():
            await guarded.update("User", "1", {})
    assert inner.calls == ["update", "action:disable"]


async def test_a_probe_write_that_calls_nothing_neither_closes_nor_keeps_the_probe() -> None:
    clock = Clock()
    b = breaker(clock, failures=1)
    inner = Recorded()
    guarded = GuardedConnector(inner, b)
    b.failed(False, "HTTP 500")
    clock.now += 10
    async with b.admission():
        pass  # e.g. deleting a resource that has no app record: nothing to ask the app
    assert (b.state, b.probing) == ("half_open", False)
    async with b.admission():
        await guarded.delete("User", "1")
    assert b.state == "closed" and inner.calls == ["delete"]


def test_the_cool_downs_must_be_ordered() -> None:
    with pytest.raises(ValueError, match=r"max_reset_after \(5\) must be at least reset_after \(10\)"):
        BreakerConfig(reset_after=10, max_reset_after=5)


# ---------------------------------------------------------------- through the gateway, against the HR app


@pytest.fixture
async def hr_app() -> AsyncIterator[tuple[HrState, str]]:
    app = create_hr_app(api_key=HR_API_KEY)
    async with serve(app) as url:
        yield app[HR_STATE], url


async def hr_gateway(
    aiohttp_client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str, breaker: dict[str, Any]
) -> TestClient:
    monkeypatch.setenv("HR_API_KEY", HR_API_KEY)
    settings = GatewaySettings(
        mappings=[hr_mapping(tmp_path, url, breaker=breaker)], data_dir=tmp_path / "data", extra_tokens={"hr": [SecretStr(TOKEN)]}
    )
    return await aiohttp_client(create_app(settings))


async def until_probe_due(client: TestClient) -> None:
    """Until the open circuit would let a probe through (a guard against a hang, not a timing assertion)."""
    b = client.app[APPS]["hr"].provisioner.breaker
    async with asyncio.timeout(20):
        while b.retry_in() is not None:
            await asyncio.sleep(0.02)


def app_calls(state: HrState) -> int:
    return len(state.calls)


async def test_the_circuit_opens_fails_fast_probes_once_and_closes(
    aiohttp_client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hr_app: tuple[HrState, str]
) -> None:
    state, url = hr_app
    client = await hr_gateway(aiohttp_client, tmp_path, monkeypatch, url, {"failures": 2, "reset_after": 0.2})
    scim = Scim(client, TOKEN, HR_BASE)
    resp, kept = await scim.post("/Users", entra_user("kept@contoso.com", "Kept", "Safe"))
    assert resp.status == 201, kept
    rid = kept["id"]

    # Two consecutive 500s (the app's answer to two reads) open the circuit.
    state.fault("GET", r"/users/\d+", status=500, times=2)
    for _ in range(2):
        resp, data = await scim.get(f"/Users/{rid}")
        assert_scim_error(resp, data, 503, "the app's 500")
        assert "HTTP 500" in data["detail"]

    # Open: every kind of request that needs the app fails fast, naming the app and why; the app sees none of them.
    calls, before = app_calls(state), store_rows(tmp_path / "data")
    for method, path, body in (
        ("GET", f"/Users/{rid}", None),
        (
            "PATCH",
            f"/Users/{rid}",
            {
                "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                "Operations": [{"op": "replace", "path": "title", "value": "X"}],
            },
        ),
        ("DELETE", f"/Users/{rid}", None),
        ("POST", "/Users", entra_user("new@contoso.com", "New", "Comer")),
        ("GET", "/Users?filter=" + q('userName eq "someone.else@contoso.com"'), None),  # a lookup the app must answer
    ):
        resp, data = await scim.request(method, path, body)
        assert_scim_error(resp, data, 503, f"{method} {path}")
        assert re.fullmatch(
            r"[a-z ]+ User.*: app hr is unavailable: circuit open after 2 consecutive failures "
            r"\(last: the app failed \(HTTP 500 on GET /api/users/\d+\)\); next probe in 1 s",
            data["detail"],
        ), data["detail"]
        assert resp.headers["Retry-After"] == "1"
    assert app_calls(state) == calls
    # The refused writes never touched the app, and left the store as it was: refused before their claim, they
    # left no journal entry at all (each used to leave an aborted one).
    assert store_rows(tmp_path / "data") == before, "writes refused by the open circuit"
    # What the gateway answers from its own copy needs no app call and still works.
    resp, data = await scim.get("/Users")
    assert (resp.status, data["totalResults"]) == (200, 1)

    # Half-open: after the cool-down one request goes through as the probe; the others still fail fast meanwhile.
    await until_probe_due(client)
    release = asyncio.Event()
    state.fault("GET", r"/users/\d+", status=None, hold=release)  # the probe is held in flight until released
    calls = app_calls(state)
    probe = asyncio.create_task(scim.get(f"/Users/{rid}"))
    async with asyncio.timeout(20):
        while app_calls(state) == calls:
            await asyncio.sleep(0.01)
    others = await asyncio.gather(*(scim.get(f"/Users/{rid}") for _ in range(3)))
    for resp, data in others:
        assert_scim_error(resp, data, 503, "during the probe")
        assert "a probe call is testing it" in data["detail"]
    assert app_calls(state) == calls + 1
    release.set()
    resp, data = await probe
    assert (resp.status, data["title"]) == (200, "Engineer"), data

    # Closed: everything reaches the app again.
    resp, data = await scim.patch(f"/Users/{rid}", [{"op": "replace", "path": "title", "value": "Lead"}])
    assert resp.status == 200, data
    assert state.user_by_login("kept@contoso.com")["title"] == "Lead"  # type: ignore[index]
    assert client.app[APPS]["hr"].provisioner.breaker.state == "closed"


async def test_a_failed_probe_reopens_the_circuit_for_longer(
    aiohttp_client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hr_app: tuple[HrState, str]
) -> None:
    state, url = hr_app
    client = await hr_gateway(
        aiohttp_client, tmp_path, monkeypatch, url, {"failures": 1, "reset_after": 0.1, "max_reset_after": 0.3}
    )
    b = client.app[APPS]["hr"].provisioner.breaker
    scim = Scim(client, TOKEN, HR_BASE)
    state.fault("POST", "/users", status=503, times=100)
    probes = []
    for _ in range(4):
        calls = app_calls(state)
        resp, data = await scim.post("/Users", entra_user("a@contoso.com", "A", "B"))
        assert_scim_error(resp, data, 503, "the app's 503")
        assert app_calls(state) == calls + 1  # the first failure, then each probe: one call each
        probes.append(b.cooldown)
        resp, data = await scim.post("/Users", entra_user("a@contoso.com", "A", "B"))
        assert "circuit open after" in data["detail"] and app_calls(state) == calls + 1
        await until_probe_due(client)
    assert probes == [0.1, 0.2, 0.3, 0.3]
    state.faults.clear()
    resp, data = await scim.post("/Users", entra_user("a@contoso.com", "A", "B"))
    assert resp.status == 201, data
    assert (b.state, b.cooldown) == ("closed", 0.1)
    assert await client.app[APPS]["hr"].provisioner.store.pending("hr") == []


async def test_recovery_asks_nothing_of_an_app_whose_circuit_is_open(
    aiohttp_client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hr_app: tuple[HrState, str]
) -> None:
    state, url = hr_app
    client = await hr_gateway(aiohttp_client, tmp_path, monkeypatch, url, {"failures": 1, "reset_after": 0.1})
    provisioner = client.app[APPS]["hr"].provisioner
    scim = Scim(client, TOKEN, HR_BASE)
    resp, kept = await scim.post("/Users", entra_user("kept@contoso.com", "Kept", "Safe"))
    assert resp.status == 201, kept
    await provisioner.store.begin_write("hr", "User", kept["id"], "delete")  # a delete a crash cut short
    state.fault("GET", r"/users/\d+", status=500)
    resp, _ = await scim.get(f"/Users/{kept['id']}")
    assert resp.status == 503 and provisioner.breaker.state == "open"
    calls = app_calls(state)
    assert await provisioner.recover() == 0
    assert app_calls(state) == calls and len(await provisioner.store.pending("hr")) == 1
    await until_probe_due(client)
    assert await provisioner.recover() == 1  # the app still has the record: the delete is undone
    assert app_calls(state) == calls + 1 and await provisioner.store.pending("hr") == []


# ---------------------------------------------------------------- one app's outage never slows another


async def test_an_app_that_hangs_never_slows_another_and_its_open_circuit_stops_calling_it(
    aiohttp_client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The demo app (SQLite) and the HR app pointed at a black hole, in one gateway."""
    hole = BlackHole()
    await hole.start()
    try:
        data_dir = tmp_path / "data"
        ensure_demo_database(data_dir)
        monkeypatch.setenv("HR_API_KEY", HR_API_KEY)
        # A long timeout: the HR calls hang until the test lets the black hole answer, so no timing decides anything below.
        mapping = hr_mapping(
            tmp_path, f"http://127.0.0.1:{hole.port}/api", timeout=60, breaker={"failures": 3, "reset_after": 60}
        )
        settings = GatewaySettings(
            mappings=[demo_mapping_path(), mapping],
            data_dir=data_dir,
            extra_tokens={"demo": [SecretStr(TOKEN)], "hr": [SecretStr(TOKEN)]},
        )
        client = await aiohttp_client(create_app(settings))
        demo, hr = Scim(client, TOKEN, BASE), Scim(client, TOKEN, HR_BASE)

        # HR requests that need the app hang: three lookups, a create.
        hanging = [asyncio.create_task(hr.get("/Users?filter=" + q(f'userName eq "u{i}@contoso.com"'))) for i in range(3)]
        hanging.append(asyncio.create_task(hr.post("/Users", entra_user("hangs@contoso.com", "Hangs", "On"))))
        await hole.wait_for(4)

        # Meanwhile the demo app answers, write and read, while every HR request is still waiting.
        resp, created = await demo.post("/Users", user_body("while.hr.hangs"))
        assert resp.status == 201, created
        resp, got = await demo.get(f"/Users/{created['id']}")
        assert resp.status == 200, got
        resp, data = await demo.patch(f"/Users/{created['id']}", [{"op": "replace", "path": "title", "value": "Still here"}])
        assert resp.status == 200, data
        resp, listed = await demo.get("/Users")
        assert (resp.status, listed["totalResults"]) == (200, 1)
        assert not any(task.done() for task in hanging)

        # At last the app answers them, with its 503: the HR requests fail (503), and those failures open HR's circuit.
        await hole.answer(503)
        for resp, data in await asyncio.gather(*hanging):
            assert_scim_error(resp, data, 503, "the hanging HR request")
            assert "HTTP 503" in data["detail"], data
        assert client.app[APPS]["hr"].provisioner.breaker.state == "open"

        # Now HR requests fail fast, and no new connection reaches the black hole.
        accepted = hole.accepted
        for _ in range(5):
            resp, data = await hr.get("/Users?filter=" + q('userName eq "later@contoso.com"'))
            assert_scim_error(resp, data, 503, "HR with its circuit open")
            assert "app hr is unavailable: circuit open after 3 consecutive failures" in data["detail"], data
        resp, data = await hr.post("/Users", entra_user("later@contoso.com", "Later", "On"))
        assert_scim_error(resp, data, 503, "an HR create with its circuit open")
        assert hole.accepted == accepted
        resp, data = await demo.get(f"/Users/{created['id']}")
        assert (resp.status, data["title"]) == (200, "Still here")
        assert await client.app[APPS]["hr"].provisioner.store.pending("hr") == []
    finally:
        await hole.stop()


# ---------------------------------------------------------------- 429 and 401/403 are no outage (issue 16)


async def test_a_429_pauses_calls_for_its_retry_after_and_never_opens_the_circuit() -> None:
    clock = Clock()
    inner = Recorded()
    guarded = GuardedConnector(inner, breaker(clock, failures=2))
    for _ in range(3):  # more than `failures`: none of them counts as the app being down
        inner.error = AppThrottled("the app is rate limiting the gateway (HTTP 429 on GET /api/users/1)", retry_after=7)
        clock.now += 8
        with pytest.raises(AppThrottled):
            await guarded.get("User", "1")
    assert guarded.breaker.state == "closed" and guarded.breaker.failures == 0
    clock.now += 2
    calls = len(inner.calls)
    with pytest.raises(CircuitOpen) as caught:  # the app asked for 7 s: refused at once, the app not called
        await guarded.update("User", "1", {})
    assert caught.value.retry_after == 5 and "asked the gateway to slow down" in caught.value.detail, caught.value.detail
    assert len(inner.calls) == calls and guarded.breaker.retry_in() == 5
    clock.now += 5
    inner.error = None
    await guarded.update("User", "1", {})
    assert len(inner.calls) == calls + 1 and guarded.breaker.retry_in() is None


async def test_refused_credentials_are_reported_not_counted_as_an_outage(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    inner = Recorded()
    guarded = GuardedConnector(inner, breaker(clock, failures=2))
    inner.error = AppCredentialsRefused("the app refused the gateway's credentials (HTTP 401 on GET /api/users/1)")
    with caplog.at_level("INFO", logger="gateway.provisioning.breaker"):
        for _ in range(4):
            with pytest.raises(AppCredentialsRefused):
                await guarded.get("User", "1")
        assert guarded.breaker.state == "closed" and len(inner.calls) == 4
        errors = [r for r in caplog.records if r.levelname == "ERROR"]
        assert len(errors) == 1 and "refused the gateway's credentials" in errors[0].getMessage()  # once, not per call
        inner.error = None
        await guarded.get("User", "1")
    assert "accepts the gateway's credentials again" in caplog.text


async def test_the_app_asking_to_slow_down_or_refusing_credentials_through_the_gateway(
    aiohttp_client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hr_app: tuple[HrState, str]
) -> None:
    state, url = hr_app
    client = await hr_gateway(aiohttp_client, tmp_path, monkeypatch, url, {"failures": 2, "reset_after": 30})
    scim = Scim(client, TOKEN, HR_BASE)
    resp, kept = await scim.post("/Users", entra_user("kept@contoso.com", "Kept", "Safe"))
    assert resp.status == 201, kept
    rid = kept["id"]
    b = client.app[APPS]["hr"].provisioner.breaker

    # 401 three times (more than `failures`): 503 naming the credentials each time, and the circuit stays closed.
    state.fault("GET", r"/users/\d+", status=401, times=3)
    for _ in range(3):
        resp, data = await scim.get(f"/Users/{rid}")
        assert_scim_error(resp, data, 503, "the app's 401")
        assert "refused the gateway's credentials (HTTP 401" in data["detail"] and "operator" in data["detail"], data
    assert b.state == "closed"
    resp, data = await scim.get(f"/Users/{rid}")
    assert resp.status == 200, data

    # A 429 asking for 30 s: 503 with its Retry-After, not an outage; the next writes are refused at once, the app
    # not called and nothing journaled, a Bulk too.
    state.fault("PATCH", r"/users/\d+", status=429, headers={"Retry-After": "30"})
    resp, data = await scim.patch(f"/Users/{rid}", [{"op": "replace", "path": "title", "value": "X"}])
    assert_scim_error(resp, data, 503, "the app's 429")
    assert resp.headers["Retry-After"] == "30" and "slow down" in data["detail"], data
    assert b.state == "closed" and b.failures == 0
    calls, before = app_calls(state), store_rows(tmp_path / "data")
    bulk = {"schemas": ["urn:ietf:params:scim:api:messages:2.0:BulkRequest"],
            "Operations": [{"method": "POST", "path": "/Users", "bulkId": "a", "data": entra_user("b1@contoso.com", "B", "One")},
                           {"method": "POST", "path": "/Users", "bulkId": "b", "data": entra_user("b2@contoso.com", "B", "Two")}]}  # fmt: skip
    for method, path, body in (
        ("PATCH", f"/Users/{rid}", {"schemas": [PATCH], "Operations": [{"op": "replace", "path": "title", "value": "Y"}]}),
        ("POST", "/Users", entra_user("new@contoso.com", "New", "Comer")),
        ("DELETE", f"/Users/{rid}", None),
    ):
        resp, data = await scim.request(method, path, body)
        assert_scim_error(resp, data, 503, f"{method} while paused")
        assert "asked the gateway to slow down" in data["detail"] and 28 <= int(resp.headers["Retry-After"]) <= 30, data
    resp, data = await scim.post("/Bulk", bulk)
    assert resp.status == 200 and [op["status"] for op in data["Operations"]] == ["503", "503"], data
    assert app_calls(state) == calls
    assert store_rows(tmp_path / "data") == before, "a write the breaker refused left a journal entry"
