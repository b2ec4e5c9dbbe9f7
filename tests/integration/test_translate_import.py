"""`scim-gateway translate` (a dry run that calls nothing) and `scim-gateway import` (linking existing accounts)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from gateway.app import create_app
from gateway.cli import main
from gateway.demo import demo_mapping_path, ensure_demo_database
from gateway.settings import GatewaySettings
from tests.conftest import TOKEN, USER_URN, Scim
from tests.demo_rows import count, q

PASSWORD_MAPPING = """
app: pw
connector:
  type: sql
  dsn: "sqlite:///{data_dir}/pw.db"
  tables:
    User: {table: accounts, key: id}
resources:
  User:
    attributes:
      - {scim: userName, field: login}
      - {scim: password, field: pw_hash, direction: to_app}
"""


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any, str]:
    status = main(list(argv))
    out = capsys.readouterr()
    return status, (json.loads(out.out) if status == 0 else None), out.err


def test_translate_shows_the_record_and_calls_and_touches_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ensure_demo_database(tmp_path)
    request = tmp_path / "req.json"
    request.write_text(
        json.dumps(
            {
                "schemas": [USER_URN],
                "userName": "Jane",
                "active": False,
                "emails": [{"type": "work", "value": "Jane@Example.org"}],
                "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User": {"manager": {"value": "mgr-1"}},
            }
        )
    )
    before = sqlite3.connect(tmp_path / "demo.db")
    status, plan, _ = run_json(capsys, "translate", "demo", str(request), "--data-dir", str(tmp_path))
    assert status == 0
    assert plan["operation"] == "create User"
    assert plan["record"]["login"] == "Jane" and plan["record"]["mail"] == "jane@example.org" and plan["record"]["status"] == "I"
    assert plan["record"]["mgr_emp_no"] == "<native id of User mgr-1>"
    assert plan["calls"] and plan["calls"][0]["statement"].startswith("INSERT INTO employees")
    assert count(before, "employees") == 0, "a dry run writes nothing"
    assert not (tmp_path / "gateway.db").exists(), "a dry run opens no store"


def test_translate_applies_patch_dialects_and_refuses_bad_requests(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ensure_demo_database(tmp_path)
    request = tmp_path / "patch.json"
    request.write_text(
        json.dumps(
            {
                "method": "PATCH",
                "path": "/Users/abc",
                "current": {"schemas": [USER_URN], "userName": "jo", "active": True, "title": "Clerk"},
                "body": {
                    "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                    "Operations": [{"op": "Replace", "path": "active", "value": "False"}],
                },
            }
        )
    )
    status, plan, _ = run_json(capsys, "translate", "demo", str(request), "--data-dir", str(tmp_path))
    # The update sends what the PATCH changes, given the resource as it is now: the status, not the title.
    assert status == 0 and plan["record"] == {"status": "I"}, plan
    [update] = plan["calls"]
    assert update["statement"].startswith("UPDATE employees SET status = :status") and "job_title" not in update["statement"]
    request.write_text(json.dumps({"method": "POST", "path": "/Users", "body": {"schemas": [USER_URN]}}))
    status, _, err = run_json(capsys, "translate", "demo", str(request), "--data-dir", str(tmp_path))
    assert status == 1 and "400" in err and "userName" in err
    status, _, err = run_json(capsys, "translate", "nope", str(request), "--data-dir", str(tmp_path))
    assert status == 2 and "no app 'nope'" in err and "valid: demo" in err


def test_translate_masks_the_password(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mapping = tmp_path / "pw.yaml"
    mapping.write_text(PASSWORD_MAPPING)
    request = tmp_path / "req.json"
    request.write_text(json.dumps({"schemas": [USER_URN], "userName": "x", "password": "Hunter2-very-secret"}))
    status = main(["translate", "pw", str(request), "--config", str(mapping), "--data-dir", str(tmp_path)])
    out = capsys.readouterr()
    assert status == 0
    assert "Hunter2-very-secret" not in out.out + out.err
    assert json.loads(out.out)["record"]["pw_hash"] == "***"


def seed_employees(data_dir: Path, n: int) -> None:
    ensure_demo_database(data_dir)
    db = sqlite3.connect(data_dir / "demo.db")
    db.executemany(
        "INSERT INTO employees (login, first_nm, status) VALUES (?, ?, 'A')", [(f"old{i}", f"Old{i}") for i in range(n)]
    )
    db.execute("INSERT INTO teams (team_name) VALUES ('Veterans')")
    db.executemany("INSERT INTO team_members (team_id, emp_no) SELECT team_id, ? FROM teams", [(1,), (2,)])
    db.commit()
    db.close()


async def test_import_links_existing_accounts_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], aiohttp_client: Any
) -> None:
    seed_employees(tmp_path, 25)
    assert await asyncio.to_thread(main, ["import", "demo", "--data-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "User: 25 in the app, 25 linked now, 0 already linked" in out
    assert "Group: 1 in the app, 1 linked now" in out
    assert await asyncio.to_thread(main, ["import", "demo", "--data-dir", str(tmp_path)]) == 0, "idempotent"
    assert "User: 25 in the app, 0 linked now, 25 already linked" in capsys.readouterr().out

    settings = GatewaySettings(mappings=[demo_mapping_path()], data_dir=tmp_path, extra_tokens={"demo": [SecretStr(TOKEN)]})
    scim = Scim(await aiohttp_client(create_app(settings)))
    _, listed = await scim.get("/Users?count=100")
    assert listed["totalResults"] == 25
    _, found = await scim.get("/Users?filter=" + q('userName eq "old7"'))
    assert found["Resources"][0]["name"]["givenName"] == "Old7"
    _, groups = await scim.get("/Groups")
    [veterans] = groups["Resources"]
    assert len(veterans["members"]) == 2
    resp, _ = await scim.post("/Users", {"schemas": [USER_URN], "userName": "OLD3"})
    assert resp.status == 409, "an imported account's name is taken"


def test_translate_shows_sql_statements_with_bound_parameters(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ensure_demo_database(tmp_path)
    request = tmp_path / "req.json"
    request.write_text(json.dumps({"schemas": [USER_URN], "userName": "x'; DROP TABLE employees; --"}))
    status, plan, _ = run_json(capsys, "translate", "demo", str(request), "--data-dir", str(tmp_path))
    assert status == 0
    [insert] = plan["calls"]
    # A create sends the fields the resource has values for: here only the login.
    assert insert["statement"] == "INSERT INTO employees (login) VALUES (:login)", insert
    assert "DROP" not in insert["statement"] and insert["parameters"]["login"] == "x'; DROP TABLE employees; --"
    request.write_text(json.dumps({"method": "DELETE", "path": "/Groups/g1"}))
    status, plan, _ = run_json(capsys, "translate", "demo", str(request), "--data-dir", str(tmp_path))
    assert [c["statement"] for c in plan["calls"]] == [
        "DELETE FROM team_members WHERE team_id = :key",
        "DELETE FROM teams WHERE team_id = :key",
    ]


def test_import_reports_a_name_taken_twice_as_a_conflict_and_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An app without a unique login can hold two accounts the gateway would give one userName: one is linked, one reported."""
    db = sqlite3.connect(tmp_path / "loose.db")
    db.executescript(
        "CREATE TABLE users (id INTEGER PRIMARY KEY, login TEXT); INSERT INTO users (login) VALUES ('dup'), ('DUP'), ('solo');"
    )
    db.close()
    mapping = tmp_path / "loose.yaml"
    mapping.write_text(
        'app: loose\nconnector:\n  type: sql\n  dsn: "sqlite:///{data_dir}/loose.db"\n  tables:\n    User: {table: users, key: id}\n'
        "resources:\n  User:\n    attributes:\n      - {scim: userName, field: login}\n"
    )
    assert main(["import", "loose", "--config", str(mapping), "--data-dir", str(tmp_path)]) == 1
    assert "User: 3 in the app, 2 linked now, 0 already linked, 1 conflicts" in capsys.readouterr().out
