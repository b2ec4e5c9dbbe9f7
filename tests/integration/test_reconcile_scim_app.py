"""Reconcile against an app that speaks SCIM itself (scim2-server, a real process on loopback, behind the scim
connector with the shipped mappings/scim_app.yaml): a user made on the server directly, another's title
changed there and a third deleted there; then reconcile, --fix --apply, and a run that finds nothing."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from gateway.cli import main
from tests.conftest import USER_URN, Scim
from tests.integration.test_scim_app import MAPPING, client, create, scim, target, tenant
from tests.scim_target import TargetTenant

__all__ = ["client", "scim", "target", "tenant"]


async def test_reconcile_a_scim_app(scim: Scim, tenant: TargetTenant, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    made = {
        n: await create(scim, "/Users", {"schemas": [USER_URN], "userName": n, "title": "Clerk"}) for n in ("ann", "bob", "cy")
    }
    args = ["--config", str(MAPPING), "--data-dir", str(tmp_path / "data"), "--format", "json"]
    assert await asyncio.to_thread(main, ["reconcile", "scim_app", *args]) == 0, capsys.readouterr().out
    capsys.readouterr()

    status, body = tenant.request("POST", "/Users", {"schemas": [USER_URN], "userName": "eve", "active": True})
    assert status == 201, body
    bob = tenant.user("bob")
    status, _ = tenant.request("PUT", f"/Users/{bob['id']}", {**bob, "title": "Admin"})
    assert status == 200
    status, _ = tenant.request("DELETE", f"/Users/{tenant.user('cy')['id']}")
    assert status == 204

    assert await asyncio.to_thread(main, ["reconcile", "scim_app", *args]) == 1
    report = json.loads(capsys.readouterr().out)
    assert [(o["name"], o["plan"]) for o in report["orphans"]] == [("eve", "delete")]
    assert [v["id"] for v in report["vanished"]] == [made["cy"]["id"]]
    assert [(d["id"], d["attribute"], d["app"]) for d in report["drift"]] == [(made["bob"]["id"], "title", "Admin")]

    assert await asyncio.to_thread(main, ["reconcile", "scim_app", *args, "--fix", "--apply"]) == 1
    fixes = sorted((f["fix"], f["name"], f["outcome"]) for f in json.loads(capsys.readouterr().out)["fixes"])
    assert fixes == [("delete", "eve", "done"), ("forget", "cy", "done"), ("revert", "bob", "done")]
    assert sorted(u["userName"] for u in tenant.all("/Users")) == ["ann", "bob"]
    assert tenant.user("bob")["title"] == "Clerk"
    assert await asyncio.to_thread(main, ["reconcile", "scim_app", *args]) == 0, capsys.readouterr().out
