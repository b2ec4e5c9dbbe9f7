"""Recovery that cannot read the app back: it settles by the journal's intent, or postpones, names and counts, never stalls.

Found by an independent crash run (issue 16): against a REST app whose group member list the connector
could not read, every Group write cut short by a kill stayed pending long after restart, the group answered
503 and its copy disagreed with the app. Here the hr fake refuses to list members (405) and performs every
write at once but answers it late; a live gateway is SIGKILLed with one write of each kind performed by the
app and unanswered, and a new one starts on the same files.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import GROUP_URN, PATCH_URN, USER_URN
from tests.fakes.serve import HR_API_KEY, TEST_READER
from tests.integration.crash_loop import (
    ROOT,
    TOKEN,
    Closers,
    GatewayProcess,
    HrFake,
    cleanup_fixture,  # noqa: F401 (the fixture `cleanup`)
    journal,
    posix_processes,
    store_rows,
)

HR_MAPPING = str(ROOT / "mappings" / "hr_rest.yaml")
HEADERS = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/scim+json"}
READER = {"X-API-Key": HR_API_KEY, TEST_READER: "1"}


async def _send(session: aiohttp.ClientSession, base: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    async with session.request(method, base + path, json=body, headers=HEADERS) as resp:
        text = await resp.text()
        return resp.status, json.loads(text) if text else None


async def _app_members(session: aiohttp.ClientSession, api: str, group_native: str) -> set[str]:
    async with session.get(f"{api}/groups/{group_native}/members", params={"per_page": 100}, headers=READER) as resp:
        assert resp.status == 200, await resp.text()
        return {str(m["user_id"]) for m in (await resp.json())["data"]}


def _patch(*ops: dict[str, Any]) -> dict[str, Any]:
    return {"schemas": [PATCH_URN], "Operations": list(ops)}


def _user(name: str) -> dict[str, Any]:
    return {"schemas": [USER_URN], "userName": name, "title": "before", "name": {"givenName": "U", "familyName": name}}


def _audit(data: Path) -> list[dict[str, Any]]:
    path = data / "audit.log"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@posix_processes
@pytest.mark.parametrize("refusal", [403, 405], ids=["forbidden", "not-allowed"])
async def test_group_writes_killed_against_an_app_that_cannot_list_members_are_settled(
    refusal: int, tmp_path: Path, cleanup: Closers
) -> None:
    """403: the gateway's credentials lack the scope to list members (the app answers 503 through the gateway);
    405: the app offers no member list. Either way recovery cannot read a group's members back."""
    fake = HrFake(tmp_path, "--members-unlisted", str(refusal), "--late-writes", "1.5")
    cleanup.append(fake.close)
    await fake.started()
    gateway = GatewayProcess(tmp_path, "--config", HR_MAPPING, env=fake.gateway_env, app="hr")
    cleanup.append(gateway.close)
    base = gateway.base_url
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        await gateway.start()
        users = await asyncio.gather(*(_send(session, base, "POST", "/Users", _user(f"u{i}")) for i in range(1, 5)))
        assert [s for s, _ in users] == [201] * 4, users
        u1, u2, u3, u4 = (body["id"] for _, body in users)
        groups = await asyncio.gather(
            _send(
                session, base, "POST", "/Groups", {"schemas": [GROUP_URN], "displayName": "Leavers", "members": [{"value": u1}]}
            ),
            _send(session, base, "POST", "/Groups", {"schemas": [GROUP_URN], "displayName": "Joiners"}),
            _send(session, base, "POST", "/Groups", {"schemas": [GROUP_URN], "displayName": "Old Name"}),
            _send(session, base, "POST", "/Groups", {"schemas": [GROUP_URN], "displayName": "Doomed"}),
        )
        assert [s for s, _ in groups] == [201] * 4, groups
        leavers, joiners, renamed, doomed = (body["id"] for _, body in groups)

        # One write of each kind, each performed by the app at once and answered 1.5 s later: killed before that.
        writes = [
            ("PATCH", f"/Groups/{leavers}", _patch({"op": "remove", "path": f'members[value eq "{u1}"]'})),
            ("PATCH", f"/Groups/{joiners}", _patch({"op": "add", "path": "members", "value": [{"value": u2}]})),
            ("PATCH", f"/Groups/{renamed}", _patch({"op": "replace", "path": "displayName", "value": "New Name"})),
            ("DELETE", f"/Groups/{doomed}", None),
            ("POST", "/Groups", {"schemas": [GROUP_URN], "displayName": "Born", "members": [{"value": u3}]}),
            # An attribute the app does not store (nickName), changed with one it does: the intent keeps both.
            ("PATCH", f"/Users/{u4}", _patch({"op": "replace", "value": {"nickName": "four", "title": "after"}})),
        ]
        tasks = [asyncio.create_task(_send(session, base, m, p, b)) for m, p, b in writes]
        deadline = time.monotonic() + 10
        while len(journal(gateway.store_file)) < len(writes) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.4)  # the app has done them (the group create's member add is a second call)
        assert len(journal(gateway.store_file)) == len(writes), "the writes were not all in flight"
        gateway.kill()
        for task in tasks:
            with pytest.raises((aiohttp.ClientError, OSError)):
                await task
        pending = [seq for seq, _ in journal(gateway.store_file)]
        await asyncio.sleep(1.5)  # the app answers the dead gateway's calls, and finishes the create's member add

        await gateway.start()
        assert journal(gateway.store_file) == [], "start-up recovery left entries pending"
        outcome = journal(gateway.store_file, f"seq IN ({','.join('?' * len(pending))})", tuple(pending))
        assert [state for _, state in outcome] == ["done"] * len(writes), outcome

        rows = store_rows(gateway.store_file, "hr")
        assert rows.unsettled == []
        natives = {rid: native for rid, (native, _data) in (rows.users | rows.groups).items()}
        for gid in (leavers, joiners, renamed):
            status, body = await _send(session, base, "GET", f"/Groups/{gid}")
            assert status == 200, body  # it answered 503 while its member list could not be read
            copy = {m for g, m in rows.members if g == gid}
            in_app = await _app_members(session, fake.api, natives[gid])
            assert {natives[m] for m in copy} == in_app, f"group {body['displayName']}: copy {copy}, app {in_app}"
        assert {m for g, m in rows.members if g == leavers} == set()
        assert {m for g, m in rows.members if g == joiners} == {u2}
        assert rows.groups[renamed][1]["displayName"] == "New Name"
        status, _ = await _send(session, base, "GET", f"/Groups/{doomed}")
        assert status == 404
        born = [gid for gid, (_n, data) in rows.groups.items() if data.get("displayName") == "Born"]
        assert len(born) == 1, "the unanswered group create was not linked"
        assert {m for g, m in rows.members if g == born[0]} == {u3}
        assert await _app_members(session, fake.api, natives[born[0]]) == {natives[u3]}
        status, user = await _send(session, base, "GET", f"/Users/{u4}")
        assert status == 200 and user["title"] == "after"
        assert user.get("nickName") == "four", "recovery rebuilt the copy from the app's record and lost nickName"

    # Each write the app performed has an audit line saying recovery settled it.
    settled = [r for r in _audit(gateway.data) if r.get("actor") == "recovery"]
    by_seq = {r["journal_seq"]: r for r in settled}
    assert sorted(by_seq) == sorted(pending), settled
    assert all(r["outcome"].startswith("settled by recovery") for r in settled), settled
    assert {(r["op"], r["resource_type"]) for r in settled} == {
        ("update", "Group"),
        ("delete", "Group"),
        ("create", "Group"),
        ("update", "User"),
    }


BULK_URN = "urn:ietf:params:scim:api:messages:2.0:BulkRequest"


@posix_processes
@pytest.mark.parametrize("shape", ["post", "bulk"])
async def test_a_create_killed_before_the_app_performed_it_is_made_once_by_its_idempotency_key(
    tmp_path: Path, cleanup: Closers, shape: str
) -> None:
    """The gateway dies while its POST waits in the app (performed 2 s later); the new one starts at once. Its
    recovery finds no record yet: rolling the create back would leave the late record an orphan. The shipped
    mapping declares the app's Idempotency-Key header, so recovery sends the create again with the same key: the
    app makes one record, whichever of the two calls it performs first, and the resource is linked to it. A Bulk
    request's creates carry one key each (its second create was never sent: recovery sends it, once)."""
    fake = HrFake(tmp_path, "--slow-writes", "2")
    cleanup.append(fake.close)
    await fake.started()
    assert "path: /users, idempotency_header: Idempotency-Key}" in Path(HR_MAPPING).read_text()
    gateway = GatewayProcess(tmp_path, "--config", HR_MAPPING, env=fake.gateway_env, app="hr")
    cleanup.append(gateway.close)
    names = ["once"] if shape == "post" else ["once", "twice"]
    bulk = {
        "schemas": [BULK_URN],
        "Operations": [{"method": "POST", "path": "/Users", "bulkId": n, "data": _user(n)} for n in names],
    }
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        await gateway.start()
        request = ("POST", "/Users", _user("once")) if shape == "post" else ("POST", "/Bulk", bulk)
        task = asyncio.create_task(_send(session, gateway.base_url, *request))
        deadline = time.monotonic() + 10
        while len(journal(gateway.store_file)) < len(names) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)  # the (first) POST is in the app, not performed yet
        gateway.kill()
        with pytest.raises((aiohttp.ClientError, OSError)):
            await task
        seqs = [seq for seq, _ in journal(gateway.store_file)]
        assert len(seqs) == len(names)
        await gateway.start()  # start-up recovery: the app has no record yet
        for seq in seqs:
            assert journal(gateway.store_file, "seq = ?", (seq,)) == [(seq, "done")]
        await asyncio.sleep(2.5)  # the dead gateway's call is performed by now
        rows = store_rows(gateway.store_file, "hr")
        for name in names:
            async with session.get(f"{fake.api}/users", params={"login": name}, headers=READER) as resp:
                records = (await resp.json())["data"]
            assert len(records) == 1, f"the app made {len(records)} records for one create of {name}"
            [(rid, (native, _data))] = [(rid, v) for rid, v in rows.users.items() if v[1].get("userName") == name]
            assert native == str(records[0]["id"])
            status, body = await _send(session, gateway.base_url, "GET", f"/Users/{rid}")
            assert status == 200 and body["userName"] == name
    outcomes = {r.get("journal_seq"): r["outcome"] for r in _audit(gateway.data) if r.get("actor") == "recovery"}
    assert all(outcomes.get(seq) == "settled by recovery: sent again with its idempotency key" for seq in seqs), outcomes
