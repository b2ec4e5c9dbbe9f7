"""What the reconcile tests against the REST fakes share (crm, desk, fresh, each with its shipped mapping): after
Entra-shaped provisioning (users, a group with a member) reconcile finds nothing, whatever the app's own quirks
(what its lists and records hold and leave out); a user then removed from the app itself is the one finding,
vanished."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from gateway.cli import main
from gateway.http.keys import APPS
from tests.conftest import Scim
from tests.idp import entra_group, entra_user


async def nothing_found_then_one_vanished(
    app: str, mapping: Path, scim: Scim, records: dict[Any, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`records`: the fake's own user records by id, from which one is removed behind the gateway's back."""
    ids = []
    for who in ("ann", "bob"):
        resp, body = await scim.post("/Users", entra_user(f"{who}@contoso.com", who.title(), "Lee"))
        assert resp.status == 201, body
        ids.append(body["id"])
    resp, body = await scim.post("/Groups", entra_group("Support", ids[:1]))
    assert resp.status == 201, body
    args = ["--config", str(mapping), "--data-dir", str(tmp_path / "data"), "--format", "json"]
    status = await asyncio.to_thread(main, ["reconcile", app, *args])
    report = json.loads(capsys.readouterr().out)
    assert status == 0, report
    assert report["counts"]["User"]["linked"] == 2 and report["counts"]["User"]["in_app"] >= 2

    row = await scim.client.app[APPS][app].provisioner.store.get(app, "User", ids[1])
    assert row is not None and row.native_id is not None
    records.pop(next(k for k in records if str(k) == row.native_id))  # gone from the app, past the gateway
    status = await asyncio.to_thread(main, ["reconcile", app, *args])
    report = json.loads(capsys.readouterr().out)
    assert status == 1 and report["found"] == 1 and [v["id"] for v in report["vanished"]] == [ids[1]], report
