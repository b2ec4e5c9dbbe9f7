"""Reconcile against the shipped legacy SQL apps on real PostgreSQL and MariaDB: a row inserted, a title updated
and a row deleted in the app's own tables (past the gateway), then reconcile, --fix --apply (legacy_pg's delete
marks the row deleted_at; legacy_mariadb's deletes it), and a second run that finds nothing."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from gateway.cli import main
from tests.conftest import USER_URN
from tests.integration.test_sql_legacy import ROOT, Legacy, legacy

__all__ = ["legacy"]

EDITS = {
    "legacy_pg": (
        "INSERT INTO hr_person (person_id, account_name, given_name) VALUES (nextval('hr_person_seq'), 'eve', 'Eve')",
        "UPDATE hr_person SET job_title = 'Admin' WHERE account_name = 'bob'",
        "DELETE FROM hr_person WHERE account_name = 'cy'",
        "SELECT count(*) FROM hr_person WHERE account_name = 'eve' AND deleted_at IS NULL",
    ),
    "legacy_mariadb": (
        "INSERT INTO usr (usr_login, usr_fname) VALUES ('eve', 'Eve')",
        "UPDATE usr SET usr_title = 'Admin' WHERE usr_login = 'bob'",
        "DELETE FROM usr WHERE usr_login = 'cy'",
        "SELECT count(*) FROM usr WHERE usr_login = 'eve'",
    ),
}


async def execute(dsn: str, sql: str) -> None:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine
    from sqlalchemy.pool import NullPool

    engine = create_async_engine(dsn, poolclass=NullPool)
    try:
        async with engine.begin() as conn:
            await conn.execute(text(sql))
    finally:
        await engine.dispose()


async def test_reconcile_legacy_sql(legacy: Legacy, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    made: dict[str, Any] = {}
    for name in ("ann", "bob", "cy"):
        resp, body = await legacy.scim.post("/Users", {"schemas": [USER_URN], "userName": name, "title": "Clerk"})
        assert resp.status == 201, body
        made[name] = body
    args = ["--config", str(ROOT / "mappings" / f"{legacy.app}.yaml"), "--data-dir", str(tmp_path), "--format", "json"]
    assert await asyncio.to_thread(main, ["reconcile", legacy.app, *args]) == 0, capsys.readouterr().out
    capsys.readouterr()

    insert, update, delete, count = EDITS[legacy.app]
    for sql in (insert, update, delete):
        await execute(legacy.dsn, sql)
    assert await asyncio.to_thread(main, ["reconcile", legacy.app, *args]) == 1
    report = json.loads(capsys.readouterr().out)
    assert [(o["name"], o["plan"]) for o in report["orphans"]] == [("eve", "delete")]
    assert [v["id"] for v in report["vanished"]] == [made["cy"]["id"]]
    assert [(d["id"], d["attribute"], d["app"]) for d in report["drift"]] == [(made["bob"]["id"], "title", "Admin")]

    assert await asyncio.to_thread(main, ["reconcile", legacy.app, *args, "--fix", "--apply"]) == 1
    fixes = sorted((f["fix"], f["name"], f["outcome"]) for f in json.loads(capsys.readouterr().out)["fixes"])
    assert fixes == [("delete", "eve", "done"), ("forget", "cy", "done"), ("revert", "bob", "done")]
    assert (await legacy.rows(count)) == [(0,)]
    assert (await legacy.user("bob") or {}).get("title") == "Clerk"
    assert await asyncio.to_thread(main, ["reconcile", legacy.app, *args]) == 0, capsys.readouterr().out
