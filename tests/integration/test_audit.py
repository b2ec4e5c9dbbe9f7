"""The audit log: one JSON line per provisioning operation (Bulk: per operation) and per refused authentication,
with who / what / how it ended and nothing secret; append-only, shared whole-line by several processes."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sqlite3
import stat
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway import audit as audit_module
from gateway.app import create_app
from gateway.audit import AuditLog
from gateway.auth import default_token_name, token_digest
from tests.conftest import GROUP_URN, PATCH_URN, TOKEN, LiveGateway, Scim, demo_settings, user_body

CLI_CREDENTIAL = default_token_name(token_digest(TOKEN), "cli")
BULK_REQUEST = "urn:ietf:params:scim:api:messages:2.0:BulkRequest"


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def brief(record: dict[str, Any]) -> tuple[Any, ...]:
    return (record["op"], record["resource_type"], record["status"], record.get("scim_type"))


@pytest.fixture
def audit_file(data_dir: Path) -> Path:
    return data_dir / "audit.log"


async def test_every_operation_writes_one_line_with_its_fields(scim: Scim, audit_file: Path) -> None:
    _, user = await scim.post("/Users", user_body("ann@example.com"))
    _, group = await scim.post("/Groups", {"schemas": [GROUP_URN], "displayName": "Team A"})
    await scim.get("/Users")  # reads are not provisioning operations: not recorded
    await scim.get(f"/Users/{user['id']}")
    await scim.post("/Users/.search", {"schemas": ["urn:ietf:params:scim:api:messages:2.0:SearchRequest"]})
    await scim.put(f"/Users/{user['id']}", user_body("ann@example.com", title="Boss"))
    await scim.patch(f"/Groups/{group['id']}", [{"op": "add", "path": "members", "value": [{"value": user["id"]}]}])
    await scim.put(f"/Groups/{group['id']}", {"schemas": [GROUP_URN], "displayName": "Team B"})
    await scim.patch(f"/Users/{user['id']}", [{"op": "replace", "path": "active", "value": False}])
    resp, _ = await scim.delete(f"/Groups/{group['id']}")
    assert resp.status == 204
    await scim.delete(f"/Users/{user['id']}")

    records = lines(audit_file)
    assert [(r["op"], r["resource_type"], r["id"], r["status"], r["method"]) for r in records] == [
        ("create", "User", user["id"], 201, "POST"),
        ("create", "Group", group["id"], 201, "POST"),
        ("replace", "User", user["id"], 200, "PUT"),
        ("patch", "Group", group["id"], 200, "PATCH"),
        ("replace", "Group", group["id"], 200, "PUT"),
        ("patch", "User", user["id"], 200, "PATCH"),
        ("delete", "Group", group["id"], 204, "DELETE"),
        ("delete", "User", user["id"], 204, "DELETE"),
    ]
    for record in records:
        assert list(record) == [
            "ts",
            "app",
            "credential",
            "client",
            "method",
            "op",
            "resource_type",
            "id",
            "status",
            "request_id",
            "duration_ms",
            "pid",
        ]
        assert record["app"] == "demo" and record["credential"] == CLI_CREDENTIAL and record["client"] == "127.0.0.1"
        stamp = datetime.fromisoformat(record["ts"])
        assert record["ts"].endswith("Z") and stamp.utcoffset() is not None and stamp.utcoffset().total_seconds() == 0
        assert abs(time.time() - stamp.timestamp()) < 60
        assert re.fullmatch(r"[0-9a-f]{32}", record["request_id"]) and record["pid"] == os.getpid()
        assert isinstance(record["duration_ms"], float) and 0 <= record["duration_ms"] < 10_000
    assert len({r["request_id"] for r in records}) == len(records)


async def test_failed_writes_are_recorded_with_their_status(
    scim: Scim, audit_file: Path, data_dir: Path, monkeypatch: Any
) -> None:
    _, user = await scim.post("/Users", user_body("bob@example.com"))
    await scim.post("/Users", user_body("BOB@example.com"))  # 409 uniqueness
    await scim.patch("/Users/no-such-id", [{"op": "replace", "path": "title", "value": "x"}])  # 404
    await scim.request("POST", "/Users", None, data=b"{not json")  # 400 invalidSyntax
    await scim.put(f"/Users/{user['id']}", user_body("bob@example.com"), headers={"If-Match": 'W/"999"'})  # 412
    await scim.request("PATCH", "/Users", None, data=b"{}")  # 405: no id
    # The app's own database fails under the gateway (a table renamed away): 503, recorded all the same.
    with sqlite3.connect(data_dir / "demo.db") as db:
        db.execute("ALTER TABLE employees RENAME TO employees_moved")
    resp, body = await scim.post("/Users", user_body("carl@example.com"))
    assert resp.status == 503, body
    with sqlite3.connect(data_dir / "demo.db") as db:
        db.execute("ALTER TABLE employees_moved RENAME TO employees")
    # And an unexpected failure inside the gateway: the status the client finally gets, 500.
    from gateway.provisioning.provisioner import Provisioner

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(Provisioner, "delete", broken)
    resp, _ = await scim.delete(f"/Users/{user['id']}")
    assert resp.status == 500

    assert [(brief(r), r["id"]) for r in lines(audit_file)] == [
        (("create", "User", 201, None), user["id"]),
        (("create", "User", 409, "uniqueness"), None),
        (("patch", "User", 404, None), "no-such-id"),
        (("create", "User", 400, "invalidSyntax"), None),
        (("replace", "User", 412, None), user["id"]),
        (("patch", "User", 405, None), None),
        (("create", "User", 503, None), None),
        (("delete", "User", 500, None), user["id"]),
    ]


async def test_refused_authentications_are_recorded(client: Any, audit_file: Path) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong-token"}, {"Authorization": "Basic dXNlcjpwdw=="}):
        resp = await client.get("/apps/demo/scim/v2/Users", headers=headers)  # reads too: a refusal is always recorded
        assert resp.status == 401
    records = lines(audit_file)
    assert [(r["op"], r["status"], r["reason"], r["credential"], r["method"]) for r in records] == [
        ("auth", 401, "no_token", None, "GET"),
        ("auth", 401, "unknown_token", None, "GET"),
        ("auth", 401, "no_token", None, "GET"),
    ]


async def test_bulk_records_each_operation_with_its_bulk_id(scim: Scim, audit_file: Path) -> None:
    _, existing = await scim.post("/Users", user_body("dora@example.com"))
    body = {
        "schemas": [BULK_REQUEST],
        "Operations": [
            {
                "method": "PATCH",
                "path": "/Groups/bulkId:g1",
                "data": {
                    "schemas": [PATCH_URN],
                    "Operations": [{"op": "add", "path": "members", "value": [{"value": "bulkId:u1"}]}],
                },
            },
            {"method": "POST", "path": "/Users", "bulkId": "u1", "data": user_body("erik@example.com")},
            {"method": "POST", "path": "/Groups", "bulkId": "g1", "data": {"schemas": [GROUP_URN], "displayName": "Bulk team"}},
            {"method": "POST", "path": "/Users", "bulkId": "dup", "data": user_body("DORA@example.com")},  # 409
            {
                "method": "PATCH",
                "path": "/Users/bulkId:dup",
                "data": {"schemas": [PATCH_URN], "Operations": []},
            },  # its dependency failed
            {"method": "POST", "path": "/Users", "data": user_body("no.bulk.id@example.com")},  # 400: POST needs a bulkId
            {"method": "DELETE", "path": f"/Users/{existing['id']}", "version": 'W/"1"'},
        ],
    }
    resp, answer = await scim.post("/Bulk", body)
    assert resp.status == 200, answer
    # The response is what it would be without the audit log: no bulkId where the client gave none.
    assert [o.get("bulkId") for o in answer["Operations"]] == [None, "u1", "g1", "dup", None, None, None]
    user_id, group_id = (o["location"].rsplit("/", 1)[1] for o in answer["Operations"][1:3])

    records = lines(audit_file)[1:]
    operations, request = records[:-1], records[-1]
    assert [(brief(r), r["id"], r.get("bulk_id"), r["method"]) for r in operations] == [
        (("patch", "Group", 200, None), group_id, None, "PATCH"),
        (("create", "User", 201, None), user_id, "u1", "POST"),
        (("create", "Group", 201, None), group_id, "g1", "POST"),
        (("create", "User", 409, "uniqueness"), None, "dup", "POST"),
        (("patch", "User", 409, "invalidValue"), "bulkId:dup", None, "PATCH"),
        (("create", "User", 400, "invalidValue"), None, None, "POST"),
        (("delete", "User", 204, None), existing["id"], None, "DELETE"),
    ]
    assert (request["op"], request["status"], request["operations"], request["method"]) == ("bulk", 200, 7, "POST")
    assert "duration_ms" in request and "duration_ms" not in operations[0]
    assert {r["request_id"] for r in records} == {request["request_id"]}
    assert all(r["credential"] == CLI_CREDENTIAL for r in records)


async def test_a_bulk_request_failing_as_a_whole_still_records_what_ran(scim: Scim, audit_file: Path, monkeypatch: Any) -> None:
    from gateway.provisioning.provisioner import Provisioner

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(Provisioner, "delete", broken)
    body = {
        "schemas": [BULK_REQUEST],
        "Operations": [
            {"method": "POST", "path": "/Users", "bulkId": "u1", "data": user_body("fay@example.com")},
            {"method": "DELETE", "path": "/Users/anything"},
            {"method": "POST", "path": "/Users", "bulkId": "u2", "data": user_body("gus@example.com")},
        ],
    }
    resp, _ = await scim.post("/Bulk", body)
    assert resp.status == 500
    created, deleting, request = lines(audit_file)
    assert (brief(created), created["id"] is not None) == (("create", "User", 201, None), True)
    assert (brief(deleting), deleting["id"]) == (("delete", "User", None, None), "anything")  # it never finished
    assert (request["op"], request["status"], request["operations"]) == ("bulk", 500, 2)


async def test_a_bulk_request_refused_as_a_whole_is_one_line(scim: Scim, audit_file: Path) -> None:
    resp, _ = await scim.post("/Bulk", {"schemas": ["wrong"], "Operations": []})
    assert resp.status == 400
    assert [(r["op"], r["status"], r.get("scim_type")) for r in lines(audit_file)] == [("bulk", 400, "invalidSyntax")]


async def test_nothing_secret_is_recorded(aiohttp_client: Any, data_dir: Path, audit_file: Path) -> None:
    client = await aiohttp_client(create_app(demo_settings(data_dir)))
    scim = Scim(client)
    password, secret_title = "Pa55word-Never-Logged", "Secret Project Title"
    await scim.post("/Users", user_body("hans@example.com", password=password, title=secret_title, name={"givenName": "Hansel"}))
    await scim.post(
        "/Bulk",
        {
            "schemas": [BULK_REQUEST],
            "Operations": [
                {"method": "POST", "path": "/Users", "bulkId": "b", "data": user_body("ida@example.com", password=password)}
            ],
        },
    )
    wrong = "Bearer some-other-apps-token-value"
    await client.get("/apps/demo/scim/v2/Users", headers={"Authorization": wrong})
    text = audit_file.read_text()
    assert len(text.splitlines()) == 4
    for secret in (TOKEN, wrong.split()[1], password, secret_title, "hans@example.com", "ida@example.com", "Hansel", "Bearer"):
        assert secret not in text, secret


async def test_the_log_is_appended_to_never_truncated(aiohttp_client: Any, data_dir: Path, audit_file: Path) -> None:
    data_dir.mkdir(parents=True)
    audit_file.write_text('{"earlier":"kept"}\n')
    os.chmod(audit_file, 0o640)  # an operator's choice of mode is not changed either
    for name in ("first@example.com", "second@example.com"):  # two gateway lifetimes, as two restarts
        app = create_app(demo_settings(data_dir))
        client = await aiohttp_client(app)
        resp, _ = await Scim(client).post("/Users", user_body(name))
        assert resp.status == 201
        await client.close()
    text = audit_file.read_text()
    assert text.startswith('{"earlier":"kept"}\n') and len(text.splitlines()) == 3
    assert stat.S_IMODE(audit_file.stat().st_mode) == 0o640


async def test_a_new_log_is_readable_by_its_owner_only_and_can_be_turned_off(aiohttp_client: Any, tmp_path: Path) -> None:
    own = tmp_path / "logs" / "scim-audit.jsonl"
    client = await aiohttp_client(create_app(demo_settings(tmp_path / "a", audit_log=own)))
    await Scim(client).post("/Users", user_body("jo@example.com"))
    assert stat.S_IMODE(own.stat().st_mode) == 0o600 and len(lines(own)) == 1
    assert not (tmp_path / "a" / "audit.log").exists()
    client = await aiohttp_client(create_app(demo_settings(tmp_path / "b", audit_log=None)))
    resp, _ = await Scim(client).post("/Users", user_body("jo@example.com"))
    assert resp.status == 201
    assert sorted(p.name for p in (tmp_path / "b").iterdir() if "audit" in p.name) == []


def test_a_rotated_log_is_followed(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setattr(audit_module, "_ROTATION_CHECK_SECONDS", 0.0)
    path = tmp_path / "audit.log"
    log = AuditLog(path)
    log.open()
    log.write({"n": 1})
    path.rename(tmp_path / "audit.log.1")  # logrotate's default: rename, and the program writes on to a new file
    log.write({"n": 2})
    log.close()
    assert [r["n"] for r in lines(tmp_path / "audit.log.1")] == [1] and [r["n"] for r in lines(path)] == [2]


# ---------------------------------------------------------------- several processes, one file

_WRITER = """
import sys
from pathlib import Path
from gateway.audit import AuditLog

log = AuditLog(Path(sys.argv[1]))
log.open()
for i in range(int(sys.argv[3])):
    # Long lines (~3.5 KiB): interleaving, if writes were not whole, would show at once.
    log.write({"writer": sys.argv[2], "i": i, "pad": sys.argv[2] * 3500})
log.close()
"""


def test_two_processes_appending_to_one_file_never_interleave(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    path.write_text('{"before":true}\n')
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(path), name, "3000"]) for name in ("a", "b")]
    assert [p.wait(timeout=60) for p in procs] == [0, 0]
    records = lines(path)  # every line parses: none was cut or mixed with another
    assert records[0] == {"before": True} and len(records) == 6001
    for name in ("a", "b"):
        mine = [r for r in records[1:] if r["writer"] == name]
        assert [r["i"] for r in mine] == list(range(3000)) and all(r["pad"] == name * 3500 for r in mine)


def _listening(port: int) -> int:
    found = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if os.path.exists(table):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                found += int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A"
    return found


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="waits for both workers' sockets in /proc (Linux)")
async def test_serve_workers_share_the_log_line_by_line(tmp_path: Path) -> None:
    gateway = LiveGateway(tmp_path)
    log_path = tmp_path / "logs" / "audit.log"
    await asyncio.to_thread(gateway.start, "--workers", "2", "--audit-log", "logs/audit.log")  # relative to the cwd
    try:
        deadline = time.monotonic() + 30
        while _listening(gateway.port) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert _listening(gateway.port) == 2, gateway.log.read_text()
        # A new connection each: the kernel spreads them over both workers.
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True, limit=16)) as session:

            async def send(i: int) -> int:
                token = TOKEN if i % 4 == 0 else f"wrong-{i}"
                body = user_body(f"w{i}@example.com")
                async with session.post(
                    f"{gateway.base_url}/Users", json=body, headers={"Authorization": f"Bearer {token}"}
                ) as resp:
                    return resp.status

            statuses = await asyncio.gather(*(send(i) for i in range(160)))
        assert sorted(set(statuses)) == [201, 401]
    finally:
        await asyncio.to_thread(gateway.stop)
    records = lines(log_path)
    assert len(records) == 160
    assert sorted((r["op"], r["status"]) for r in records) == sorted(("create" if s == 201 else "auth", s) for s in statuses)
    assert len({r["pid"] for r in records}) == 2  # both workers wrote, to one file
    assert stat.S_IMODE(log_path.stat().st_mode) == 0o600
