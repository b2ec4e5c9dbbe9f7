"""Journal entries recovery cannot decide at once: postponed with backoff, named, listed, settled by an operator;
names held crosswise settled together; a create the app performs after recovery rolled it back linked late.

Real journal entries are left pending (through the store and the pipeline, as a dead process leaves them)
in front of the hr REST fake on loopback, and a new gateway starts on the same files.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from pydantic import SecretStr

from gateway.app import create_app
from gateway.cli import main
from gateway.http.keys import APPS
from gateway.provisioning.recovery import RETRY_FIRST
from gateway.settings import GatewaySettings
from gateway.store import Member
from tests.conftest import USER_URN, Scim, demo_settings, user_body
from tests.fakes.hr_app import HR_STATE, HrState, create_hr_app, serve

ROOT = Path(__file__).resolve().parents[2]
MAPPING = ROOT / "mappings" / "hr_rest.yaml"
API_KEY = "hr-api-key-for-tests-0123"
TOKEN = "hr-scim-token-0123456789"
BASE = "/apps/hr/scim/v2"


@pytest.fixture
async def hr(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[HrState, str]]:
    app = create_hr_app(api_key=API_KEY)
    async with serve(app) as url:
        monkeypatch.setenv("HR_API_URL", url)
        monkeypatch.setenv("HR_API_KEY", API_KEY)
        monkeypatch.setenv("HR_SCIM_TOKEN", TOKEN)
        yield app[HR_STATE], url


def _settings(data: Path, **overrides: Any) -> GatewaySettings:
    return GatewaySettings(mappings=[MAPPING], data_dir=data, extra_tokens={"hr": [SecretStr(TOKEN)]}, **overrides)


async def _gateway(aiohttp_client: Any, data: Path, **overrides: Any) -> TestClient:
    return await aiohttp_client(create_app(_settings(data, **overrides)))


def _rows(data: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(data / "gateway.db")
    try:
        return list(db.execute(sql, args))
    finally:
        db.close()


def _audit(data: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (data / "audit.log").read_text().splitlines()]


async def _leave_pending_create(client: TestClient, name: str, rid: str) -> int:
    """A create journaled and claimed as the write pipeline does it, the process dying before the app call."""
    ctx = client.app[APPS]["hr"].provisioner.ctx
    data = {"userName": name, "title": "never answered"}
    seq: int = await ctx.pipeline.claim_create("User", rid, name.lower(), data, name=name)
    return seq


async def test_an_entry_recovery_cannot_decide_is_postponed_named_listed_and_settled_by_an_operator(
    hr: tuple[HrState, str], aiohttp_client: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: Any
) -> None:
    state, _url = hr
    data = tmp_path / "data"
    client = await _gateway(aiohttp_client, data)
    seq = await _leave_pending_create(client, "ghost", "44444444-4444-4444-8444-444444444444")
    await client.close()

    # The app's user search fails (the gateway cannot tell whether the create reached it) at the restart.
    state.fault("GET", "/users", status=500, times=10_000)
    caplog.set_level(logging.WARNING, logger="gateway.provisioning.recovery")
    client = await _gateway(aiohttp_client, data, recovery_interval=0.05)
    store = client.app[APPS]["hr"].provisioner.store
    [entry] = await store.undecided("hr")
    assert (entry.seq, entry.op, entry.type, entry.attempts) == (seq, "create", "User", 1)
    assert entry.reason is not None and "HTTP 500 on GET /api/users" in entry.reason
    assert entry.next_in is not None and RETRY_FIRST - 2 < entry.next_in <= RETRY_FIRST
    named = [r.getMessage() for r in caplog.records if f"journal entry {seq} " in r.getMessage()]
    assert named and "create User 44444444-4444-4444-8444-444444444444" in named[0] and "HTTP 500" in named[0], named
    # The sweep (every 0.05 s) leaves it until it is due: the backoff holds.
    await asyncio.sleep(0.5)
    assert _rows(data, "SELECT attempts FROM journal WHERE seq = ?", seq) == [(1,)]

    # The operator sees it,
    args = ["--config", str(MAPPING), "--data-dir", str(data)]
    assert await asyncio.to_thread(main, ["pending", "list", *args]) == 0
    listing = capsys.readouterr().out
    line = next(x for x in listing.splitlines() if x.strip().startswith(str(seq)))
    assert "hr" in line and "User" in line and "create" in line and "44444444-4444-4444-8444-444444444444" in line
    assert "HTTP 500" in line and line.split()[6] == "1"  # attempts
    # and settles it: rolled back, noted on the entry, audited in the log the gateway serves with (`--audit-log`).
    elsewhere = tmp_path / "ops" / "audit.log"
    settle = ["pending", "settle", str(seq), "--rollback", "--audit-log", str(elsewhere), *args]
    assert await asyncio.to_thread(main, settle) == 0
    assert "rolled back by the operator" in capsys.readouterr().out
    assert _rows(data, "SELECT state, detail FROM journal WHERE seq = ?", seq) == [
        ("aborted", "operator: rolled back by the operator")
    ]
    assert await store.undecided("hr") == []
    assert not [r for r in _audit(data) if r.get("actor") == "operator"]
    [line_] = [r for r in _audit(elsewhere.parent) if r.get("actor") == "operator"]
    assert line_["op"] == "pending settle --rollback" and line_["journal_seq"] == seq and line_["id"] == entry.resource_id
    resp, body = await Scim(client, TOKEN, BASE).get("/Users/44444444-4444-4444-8444-444444444444")
    assert resp.status == 404
    assert await asyncio.to_thread(main, ["pending", "list", *args]) == 0
    assert "no pending journal entries" in capsys.readouterr().out
    # Settling an entry that is no longer pending is refused.
    assert await asyncio.to_thread(main, ["pending", "settle", str(seq), "--rollback", *args]) == 1


async def test_a_postponed_entry_is_settled_by_the_sweep_once_due(
    hr: tuple[HrState, str], aiohttp_client: Any, tmp_path: Path
) -> None:
    state, _url = hr
    data = tmp_path / "data"
    client = await _gateway(aiohttp_client, data)
    seq = await _leave_pending_create(client, "later", "55555555-5555-4555-8555-555555555555")
    await client.close()
    fault = state.fault("GET", "/users", status=503, times=10_000)
    client = await _gateway(aiohttp_client, data, recovery_interval=0.05)
    assert _rows(data, "SELECT state, attempts FROM journal WHERE seq = ?", seq) == [("pending", 1)]
    fault.times = 0  # the app is back; the entry's time comes (made due now rather than in 15 s)
    db = sqlite3.connect(data / "gateway.db")
    with db:
        db.execute("UPDATE journal SET next_at = 0 WHERE seq = ?", (seq,))
    db.close()
    for _ in range(100):
        if _rows(data, "SELECT state FROM journal WHERE seq = ?", seq) == [("aborted",)]:
            break
        await asyncio.sleep(0.05)
    assert _rows(data, "SELECT state, detail FROM journal WHERE seq = ?", seq) == [
        ("aborted", "recovery: the app has no such record")
    ]


async def test_a_create_the_app_performs_after_recovery_rolled_it_back_is_linked_by_the_sweep(
    hr: tuple[HrState, str], aiohttp_client: Any, tmp_path: Path
) -> None:
    state, url = hr
    data = tmp_path / "data"
    rid = "77777777-7777-4777-8777-777777777777"
    client = await _gateway(aiohttp_client, data)
    seq = await _leave_pending_create(client, "latecomer", rid)
    await client.close()
    client = await _gateway(aiohttp_client, data, recovery_interval=0.05)
    assert _rows(data, "SELECT state FROM journal WHERE seq = ?", seq) == [("aborted",)]  # rolled back at start-up

    # The dead process's create, held up somewhere, reaches the app now.
    async with aiohttp.ClientSession() as session:
        body = {"login": "latecomer", "title": "never answered"}
        async with session.post(f"{url}/users", json=body, headers={"X-API-Key": API_KEY}) as resp:
            assert resp.status == 201
            native = str((await resp.json())["id"])
    scim = Scim(client, TOKEN, BASE)
    for _ in range(100):
        resp, user = await scim.get(f"/Users/{rid}")
        if resp.status == 200:
            break
        await asyncio.sleep(0.05)
    assert resp.status == 200 and user["userName"] == "latecomer", user
    assert _rows(data, "SELECT native_id FROM resources WHERE id = ?", rid) == [(native,)]
    assert "linked by recovery" in _rows(data, "SELECT detail FROM journal WHERE seq = ?", seq)[0][0]
    assert any(r.get("outcome") == "settled by recovery: created late by the app" for r in _audit(data))
    # Linked, not duplicated: the name answers with that one resource.
    _, listed = await scim.get('/Users?filter=userName eq "latecomer"')
    assert [r["id"] for r in listed["Resources"]] == [rid]
    assert len([u for u in state.users.values() if u["login"] == "latecomer"]) == 1


async def test_entries_that_hold_each_others_names_are_settled_together(
    aiohttp_client: Any, client: TestClient, data_dir: Path
) -> None:
    """Two renames cut short whose targets are each other's claimed names (journaled without an intent, as an
    earlier release did, so recovery takes the app's names): each waited for the other, both answered 503."""
    scim = Scim(client)
    _, a = await scim.post("/Users", user_body("alpha"))
    _, b = await scim.post("/Users", user_body("beta"))
    runtime = client.app[APPS]["demo"]
    store, connector = runtime.provisioner.store, runtime.connector
    sa, ra = await store.begin_write("demo", "User", a["id"], "update", new_unique_key="beta.next")
    sb, rb = await store.begin_write("demo", "User", b["id"], "update", new_unique_key="alpha.next")
    # The app holds the names crosswise: alpha's record is named as beta claimed, and beta's as alpha claimed.
    await connector.update("User", ra.native_id, {"login": "alpha.next"})
    await connector.update("User", rb.native_id, {"login": "beta.next"})
    await client.close()

    scim = Scim(await aiohttp_client(create_app(demo_settings(data_dir))))
    assert await scim.client.app[APPS]["demo"].provisioner.store.pending("demo") == []
    resp, body = await scim.get(f"/Users/{a['id']}")
    assert resp.status == 200 and body["userName"] == "alpha.next"
    resp, body = await scim.get(f"/Users/{b['id']}")
    assert resp.status == 200 and body["userName"] == "beta.next"
    for rid in (a["id"], b["id"]):
        resp, _ = await scim.patch(f"/Users/{rid}", [{"op": "replace", "path": "title", "value": "writable"}])
        assert resp.status == 200


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX paths")
def test_pending_settle_needs_a_way(tmp_path: Path, capsys: Any) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(["pending", "settle", "1", "--data-dir", str(tmp_path)])
    assert stopped.value.code == 2
    assert "one of the arguments --link --rollback --take-app is required" in capsys.readouterr().err


def test_an_app_named_settle_or_list_is_listed_not_taken_for_the_subcommand(tmp_path: Path, capsys: Any) -> None:
    for name in ("settle", "list"):
        assert main(["pending", "list", name, "--data-dir", str(tmp_path)]) == 0
        assert capsys.readouterr().out == f"no pending journal entries for {name}\n"
    # The old form, an app name where the subcommand goes, is refused naming the subcommands; so is no subcommand.
    for argv, says in ((["pending", "hr"], "invalid choice: 'hr'"), (["pending"], "required"), (["pending", "settle"], "SEQ")):
        with pytest.raises(SystemExit) as stopped:
            main(argv)
        assert stopped.value.code == 2
        assert says in capsys.readouterr().err


async def test_an_update_that_never_reached_the_app_is_sent_again_with_what_it_meant(
    hr: tuple[HrState, str], aiohttp_client: Any, tmp_path: Path
) -> None:
    """The process dies while the app call of a PATCH is on its way (held here, never performed): recovery finds
    the app's record without the change and sends it again, so the attribute the app does not store (nickName)
    is kept as the PATCH meant, not rebuilt away from the app's record."""
    state, _url = hr
    data = tmp_path / "data"
    client = await _gateway(aiohttp_client, data)
    scim = Scim(client, TOKEN, BASE)
    resp, user = await scim.post("/Users", {"schemas": [USER_URN], "userName": "resent", "title": "before"})
    assert resp.status == 201
    held = state.fault("PATCH", r"/users/\d+", status=None, hold=asyncio.Event())
    ops = [{"op": "replace", "value": {"title": "after", "nickName": "resent-nick"}}]
    patch = asyncio.create_task(scim.patch(f"/Users/{user['id']}", ops))
    for _ in range(200):
        if _rows(data, "SELECT count(*) FROM journal WHERE state = 'pending'") == [(1,)] and held.times == 0:
            break
        await asyncio.sleep(0.01)
    await client.close()  # the process goes away with the write in flight
    with pytest.raises(Exception):  # noqa: B017 - the connection is gone: whichever error the client library raises
        await patch
    assert state.user_by_login("resent")["title"] == "before"  # the app never got it

    client = await _gateway(aiohttp_client, data)
    assert _rows(data, "SELECT state FROM journal WHERE state = 'pending'") == []
    resp, body = await Scim(client, TOKEN, BASE).get(f"/Users/{user['id']}")
    assert resp.status == 200 and body["title"] == "after" and body.get("nickName") == "resent-nick", body
    assert state.user_by_login("resent")["title"] == "after"
    assert any(r.get("outcome") == "settled by recovery: sent again by recovery" for r in _audit(data))


async def test_an_operator_links_a_create_and_takes_the_apps_record_for_an_update(
    hr: tuple[HrState, str], aiohttp_client: Any, tmp_path: Path, capsys: Any
) -> None:
    state, url = hr
    data = tmp_path / "data"
    client = await _gateway(aiohttp_client, data)
    scim = Scim(client, TOKEN, BASE)
    resp, kept = await scim.post("/Users", {"schemas": [USER_URN], "userName": "kept", "title": "copy"})
    assert resp.status == 201
    created = "88888888-8888-4888-8888-888888888888"
    create_seq = await _leave_pending_create(client, "linkme", created)
    store = client.app[APPS]["hr"].provisioner.store
    update_seq, row = await store.begin_write("hr", "User", kept["id"], "update", new_unique_key="kept")
    await client.close()
    # The app holds a record the operator knows is the create's (under a login the match cannot find), and
    # the update's record as someone changed it there.
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{url}/users", json={"login": "linkme.renamed"}, headers={"X-API-Key": API_KEY}) as r:
            native = str((await r.json())["id"])
    assert row.native_id is not None
    state.users[int(row.native_id)]["title"] = "app"

    args = ["--config", str(MAPPING), "--data-dir", str(data)]
    assert await asyncio.to_thread(main, ["pending", "settle", str(create_seq), "--link", native, *args]) == 0
    assert await asyncio.to_thread(main, ["pending", "settle", str(update_seq), "--take-app", *args]) == 0
    out = capsys.readouterr().out
    assert f"linked to the app's record {native} by the operator" in out and "the copy takes the app's record" in out
    assert await asyncio.to_thread(main, ["pending", "settle", str(update_seq), "--link", native, *args]) == 1

    client = await _gateway(aiohttp_client, data)
    scim = Scim(client, TOKEN, BASE)
    resp, body = await scim.get(f"/Users/{created}")
    assert resp.status == 200 and body["userName"] == "linkme.renamed"
    _, body = await scim.get('/Users?filter=title eq "app"')
    assert [r["id"] for r in body["Resources"]] == [kept["id"]]  # the copy (lists answer from it) took the app's
    operator = [r for r in _audit(data) if r.get("actor") == "operator"]
    assert [(r["op"], r["journal_seq"]) for r in operator] == [
        ("pending settle --link", create_seq),
        ("pending settle --take-app", update_seq),
    ]


async def test_an_operator_links_a_group_create_whose_members_the_app_cannot_list(
    hr: tuple[HrState, str], aiohttp_client: Any, tmp_path: Path, capsys: Any
) -> None:
    state, url = hr
    data = tmp_path / "data"
    client = await _gateway(aiohttp_client, data)
    scim = Scim(client, TOKEN, BASE)
    resp, member = await scim.post("/Users", {"schemas": [USER_URN], "userName": "member"})
    assert resp.status == 201
    ctx = client.app[APPS]["hr"].provisioner.ctx
    gid = "99999999-9999-4999-8999-999999999999"
    seq = await ctx.pipeline.claim_create(
        "Group", gid, "crew", {"displayName": "crew"}, name="crew", members=[Member(member["id"], "User")]
    )
    await client.close()
    state.fault("GET", r"/groups/[^/]+/members", status=405, times=10_000)
    async with aiohttp.ClientSession() as session:  # the app made the group, under a name the match cannot find
        async with session.post(f"{url}/groups", json={"name": "crew (hr)"}, headers={"X-API-Key": API_KEY}) as r:
            native = str((await r.json())["id"])

    args = ["--config", str(MAPPING), "--data-dir", str(data)]
    assert await asyncio.to_thread(main, ["pending", "settle", str(seq), "--link", native, *args]) == 0
    assert state.members[int(native)] == [int(state.user_by_login("member")["id"])]  # type: ignore[index]
    client = await _gateway(aiohttp_client, data)
    resp, group = await Scim(client, TOKEN, BASE).get(f"/Groups/{gid}")
    assert resp.status == 200 and [m["value"] for m in group["members"]] == [member["id"]], group
