"""The audit log's one reader (gateway/audit_search.py) on real files, and `scim-gateway audit` over it: newest
first across blocks and rotated siblings, a torn last line skipped, every filter, the time forms, and --user
resolved through the store of a gateway that provisioned the user."""

from __future__ import annotations

import asyncio
import gzip
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from gateway import audit_search
from gateway.audit import AuditLog
from gateway.audit_search import AuditQuery, BadTime, Reader, log_files, parse_when, search
from gateway.cli import main
from tests.conftest import Scim, user_body

NOW = datetime(2026, 5, 4, 12, 0, tzinfo=UTC)


def record(n: int, **fields: Any) -> dict[str, Any]:
    """Record n, n minutes after 10:00 on NOW's day; fields as the gateway writes them."""
    base = {
        "ts": (NOW.replace(hour=10) + timedelta(minutes=n)).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "app": "hr" if n % 2 else "crm",
        "credential": "token-1",
        "client": "127.0.0.1",
        "method": "POST",
        "op": "create",
        "resource_type": "User",
        "id": f"id-{n}",
        "status": 201,
        "request_id": f"req-{n}",
        "pid": 1,
    }
    return base | fields


def write(path: Path, records: list[dict[str, Any]], tail: str = "") -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail)


def ids(records: list[dict[str, Any]]) -> list[str]:
    return [r["id"] for r in records]


def test_newest_first_across_block_boundaries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "audit.log"
    records = [record(n, detail="x" * (n % 37)) for n in range(400)]
    write(path, records)
    monkeypatch.setattr(audit_search, "BLOCK", 97)  # lines straddle every block edge
    reader = Reader(path)
    assert ids(list(reader.records(AuditQuery()))) == [f"id-{n}" for n in reversed(range(400))]
    assert reader.skipped == 0


def test_a_torn_last_line_and_garbage_are_skipped_and_counted(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    write(path, [record(1), record(2)], tail='{"ts":"2026-05-04T10:03:00.000Z","app":"hr","op":"cre')
    with open(path, "r+") as file:  # a line that is JSON but no record, and one that is not JSON, in the middle
        lines = file.read().splitlines(keepends=True)
        file.seek(0)
        file.write(lines[0] + "[1, 2]\n\nnot json\n" + "".join(lines[1:]))
    page = search(path, AuditQuery())
    assert ids(page.records) == ["id-2", "id-1"]
    assert page.skipped == 3 and page.more is False


def test_rotated_siblings_follow_newest_first(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    write(path, [record(5), record(6)])
    write(path.with_name("audit.log.1"), [record(3), record(4)])
    with gzip.open(path.with_name("audit.log.2.gz"), "wt") as packed:
        packed.write("".join(json.dumps(r) + "\n" for r in [record(1), record(2)]))
    write(path.with_name("audit.log.4"), [record(0)])  # after a gap: not a sibling logrotate would leave
    assert [p.name for p in log_files(path)] == ["audit.log", "audit.log.1", "audit.log.2.gz"]
    assert ids(list(Reader(path).records(AuditQuery()))) == ["id-6", "id-5", "id-4", "id-3", "id-2", "id-1"]


def test_filters_and_pages(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    records = [record(n) for n in range(10)]
    records[3] |= {"status": 409, "scim_type": "uniqueness"}
    records[4] |= {"op": "auth", "status": 401, "reason": "unknown_token", "id": None, "resource_type": None}
    records[7] |= {"status": None}  # cut short by a shutdown
    records[8] |= {"op": "reconcile-fix", "status": None, "outcome": "done", "method": None}
    records[9] |= {"op": "reconcile-fix", "status": None, "outcome": "failed", "method": None}
    write(path, records)

    def found(**query: Any) -> list[str | None]:
        return [r["id"] for r in search(path, AuditQuery(**query), limit=100).records]

    assert found(apps={"hr"}) == ["id-9", "id-7", "id-5", "id-3", "id-1"]
    assert found(ops={"auth"}) == [None]
    assert found(only_failed=True) == ["id-9", "id-7", None, "id-3"]
    assert found(statuses={409}) == ["id-3"]
    assert found(ids={"id-2", "id-6"}, user_given=True) == ["id-6", "id-2"]
    assert found(ids=set(), user_given=True) == []  # a user the store does not know: nothing, not everything
    at = NOW.replace(hour=10)
    assert found(since=at + timedelta(minutes=6), until=at + timedelta(minutes=8)) == ["id-8", "id-7", "id-6"]
    assert found(apps={"crm"}, since=at + timedelta(minutes=5)) == ["id-8", "id-6"]

    first = search(path, AuditQuery(), 0, 4)
    second = search(path, AuditQuery(), 4, 4)
    last = search(path, AuditQuery(), 8, 4)
    assert (ids(first.records), first.more) == (["id-9", "id-8", "id-7", "id-6"], True)
    assert ids(second.records)[0] == "id-5" and second.more
    assert (ids(last.records), last.more) == (["id-1", "id-0"], False)


def test_a_backwards_scan_stops_well_before_since(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    old = [record(n) for n in range(50)]
    garbage_before = "not json\n" * 5  # skipped lines older than the stop: never read
    path.write_text(garbage_before + "".join(json.dumps(r) + "\n" for r in old))
    reader = Reader(path)
    since = NOW.replace(hour=10) + timedelta(minutes=45)
    assert ids(list(reader.records(AuditQuery(since=since)))) == [f"id-{n}" for n in range(49, 44, -1)]
    assert reader.skipped == 0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1h", NOW - timedelta(hours=1)),
        ("90s", NOW - timedelta(seconds=90)),
        ("15m", NOW - timedelta(minutes=15)),
        ("2d", NOW - timedelta(days=2)),
        ("1w", NOW - timedelta(weeks=1)),
        ("2026-05-04T09:30:00Z", datetime(2026, 5, 4, 9, 30, tzinfo=UTC)),
        ("2026-05-04T11:30:00+02:00", datetime(2026, 5, 4, 9, 30, tzinfo=UTC)),
        ("2026-05-04T09:30", datetime(2026, 5, 4, 9, 30, tzinfo=UTC)),
        ("2026-05-03", datetime(2026, 5, 3, tzinfo=UTC)),
    ],
)
def test_times_iso_and_relative(text: str, expected: datetime) -> None:
    assert parse_when(text, NOW) == expected


@pytest.mark.parametrize("text", ["yesterday", "1 fortnight", "-1h", "2026-13-01"])
def test_times_that_are_none(text: str) -> None:
    with pytest.raises(BadTime, match="is not a time"):
        parse_when(text, NOW)


# ---------------------------------------------------------------- the command


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(["audit", *argv])
    out = capsys.readouterr()
    return status, out.out, out.err


def test_cli_json_lines_table_and_filters(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "audit.log"
    records = [record(n) for n in range(6)]
    records[5] |= {"status": 503, "scim_type": None, "reason": "app_unavailable"}
    write(path, records, tail='{"ts": "torn')
    status, out, err = run(capsys, "--audit-log", str(path), "--json")
    assert status == 0
    assert [json.loads(line) for line in out.splitlines()] == list(reversed(records))
    assert "1 line(s) were not records" in err

    status, out, _ = run(capsys, "--audit-log", str(path), "--json", "--app", "hr", "--limit", "2")
    assert [json.loads(line)["id"] for line in out.splitlines()] == ["id-5", "id-3"]

    status, out, _ = run(capsys, "--audit-log", str(path), "--failed")
    header, row = out.splitlines()
    assert header.split() == ["ts", "app", "op", "resource", "status", "scim_type", "reason", "credential"]
    assert row.split() == [records[5]["ts"], "hr", "create", "User", "id-5", "503", "app_unavailable", "token-1"]

    status, out, _ = run(capsys, "--audit-log", str(path), "--op", "delete")
    assert (status, out.strip()) == (0, "no record matches")
    # The records are from 2026-05-04: nothing in the last hour, all of them since that morning.
    assert run(capsys, "--audit-log", str(path), "--since", "1h")[1].strip() == "no record matches"
    status, out, _ = run(
        capsys, "--audit-log", str(path), "--json", "--since", "2026-05-04T10:03Z", "--until", "2026-05-04T10:04Z"
    )
    assert [json.loads(line)["id"] for line in out.splitlines()] == ["id-4", "id-3"]


def test_cli_refuses_bad_arguments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "audit.log"
    write(path, [record(1)])
    status, _, err = run(capsys, "--audit-log", str(path), "--since", "last tuesday")
    assert status == 2 and "'last tuesday' is not a time" in err
    status, _, err = run(capsys, "--audit-log", str(tmp_path / "none.log"))
    assert status == 1 and "no audit log at" in err
    assert run(capsys, "--audit-log", str(path), "--limit", "0")[0] == 2


async def test_cli_user_by_username_resolved_through_the_store(
    scim: Scim, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, ann = await scim.post("/Users", user_body("ann@example.com", externalId="E-17"))
    _, bob = await scim.post("/Users", user_body("bob@example.com"))
    await scim.patch(f"/Users/{ann['id']}", [{"op": "replace", "path": "active", "value": False}])
    await scim.post("/Users", user_body("ANN@example.com"))  # 409: no id, not hers in the log

    async def run_async(*argv: str) -> tuple[int, str, str]:  # the command runs its own event loop: in a thread
        return await asyncio.to_thread(run, capsys, *argv)

    for who in ("ann@example.com", "Ann@Example.com", "E-17", ann["id"]):
        status, out, _ = await run_async("--data-dir", str(data_dir), "--user", who, "--json")
        assert status == 0
        assert [(r["op"], r["id"]) for r in map(json.loads, out.splitlines())] == [("patch", ann["id"]), ("create", ann["id"])]
    status, out, _ = await run_async("--data-dir", str(data_dir), "--user", bob["id"], "--json")
    assert [json.loads(line)["id"] for line in out.splitlines()] == [bob["id"]]
    status, out, _ = await run_async("--data-dir", str(data_dir), "--user", "nobody@example.com")
    assert out.strip() == "no record matches"


def test_the_gateways_own_writer_and_the_reader_agree(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.log")
    log.open()
    for n in range(5):
        log.write({"app": "hr", "op": "delete", "id": f"x{n}", "status": 204})
    log.close()
    assert ids(list(Reader(tmp_path / "audit.log").records(AuditQuery(ops={"delete"})))) == ["x4", "x3", "x2", "x1", "x0"]
