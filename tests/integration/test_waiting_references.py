"""A reference to a resource that has no app record now (deactivated by deleting it, `deactivate: {via: delete}`):
it waits in the gateway's copy, the app is sent none, and it reaches the app when the record is back."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from pydantic import SecretStr

from gateway.app import create_app
from gateway.demo import demo_mapping_path, ensure_demo_database
from gateway.settings import GatewaySettings
from tests.conftest import ENTERPRISE_URN, TOKEN, Scim
from tests.idp import entra_user


@pytest.fixture
async def scim(aiohttp_client: Any, tmp_path: Path) -> Scim:
    text = demo_mapping_path().read_text()
    assert "    delete: delete\n  Group:" in text
    mapping = tmp_path / "demo.yaml"
    mapping.write_text(
        text.replace("    delete: delete\n  Group:", "    deactivate: {via: delete}\n    delete: delete\n  Group:")
    )
    data = tmp_path / "data"
    ensure_demo_database(data)
    settings = GatewaySettings(mappings=[mapping], data_dir=data, extra_tokens={"demo": [SecretStr(TOKEN)]})
    client: TestClient = await aiohttp_client(create_app(settings))
    return Scim(client, TOKEN)


def manager_of(data_dir: Path, login: str) -> Any:
    db = sqlite3.connect(data_dir / "demo.db")
    try:
        row = db.execute(
            "SELECT m.login FROM employees e LEFT JOIN employees m ON m.emp_no = e.mgr_emp_no WHERE e.login = ?", (login,)
        ).fetchone()
        return None if row is None else row[0]
    finally:
        db.close()


async def test_a_manager_without_an_app_record_waits_and_comes_back(scim: Scim, tmp_path: Path) -> None:
    data = tmp_path / "data"
    boss = (await scim.post("/Users", entra_user("boss@contoso.com", "B", "Oss")))[1]
    worker = (await scim.post("/Users", entra_user("worker@contoso.com", "W", "Orker", manager=boss["id"])))[1]
    assert manager_of(data, "worker@contoso.com") == "boss@contoso.com"

    resp, data_ = await scim.patch(f"/Users/{boss['id']}", [{"op": "replace", "path": "active", "value": False}])
    assert resp.status == 200, data_
    assert manager_of(data, "worker@contoso.com") is None  # the app deleted the boss (ON DELETE SET NULL)

    # The worker is written while its manager has no record: a 200, the app gets no manager, the copy keeps it.
    resp, got = await scim.patch(f"/Users/{worker['id']}", [{"op": "replace", "path": "title", "value": "Lead"}])
    assert resp.status == 200, got
    assert got[ENTERPRISE_URN]["manager"]["value"] == boss["id"], got
    other = await scim.post("/Users", entra_user("other@contoso.com", "O", "Ther", manager=boss["id"]))
    assert other[0].status == 201, other[1]
    assert manager_of(data, "other@contoso.com") is None
    resp, got = await scim.get(f"/Users/{other[1]['id']}")
    assert got[ENTERPRISE_URN]["manager"]["value"] == boss["id"], got
    # The audit line of each such write says the reference waits.
    lines = [json.loads(line) for line in (data / "audit.log").read_text().splitlines()]
    [line] = [x for x in lines if x.get("op") == "create" and x.get("id") == other[1]["id"]]
    assert line["notices"] == [f"User {boss['id']} has no record in the app now: the reference to it waits in the copy"]

    # The boss is back: both reports name it in the app again.
    resp, data_ = await scim.patch(f"/Users/{boss['id']}", [{"op": "replace", "path": "active", "value": True}])
    assert resp.status == 200, data_
    assert manager_of(data, "worker@contoso.com") == "boss@contoso.com"
    assert manager_of(data, "other@contoso.com") == "boss@contoso.com"


async def test_an_unknown_member_is_not_sent_and_the_audit_line_says_so(scim: Scim, tmp_path: Path) -> None:
    from tests.conftest import GROUP_URN

    user = (await scim.post("/Users", entra_user("member@contoso.com", "M", "Ember")))[1]
    ghost = "00000000-0000-0000-0000-00000000beef"
    resp, group = await scim.post(
        "/Groups", {"schemas": [GROUP_URN], "displayName": "G", "members": [{"value": user["id"]}, {"value": ghost}]}
    )
    assert resp.status == 201, group
    assert [m["value"] for m in group["members"]] == [user["id"]]
    lines = [json.loads(line) for line in (tmp_path / "data" / "audit.log").read_text().splitlines()]
    [line] = [x for x in lines if x.get("op") == "create" and x.get("resource_type") == "Group"]
    assert line["notices"] == [f"member {ghost} is no resource of this app: not sent"]


async def test_an_id_no_resource_has_is_still_refused(scim: Scim) -> None:
    resp, data = await scim.post(
        "/Users", entra_user("lost@contoso.com", "L", "Ost", manager="00000000-0000-0000-0000-000000000000")
    )
    assert (resp.status, data["scimType"]) == (400, "invalidValue"), data
