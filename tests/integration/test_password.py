"""The password is write-only everywhere (RFC 7643: mutability writeOnly, returned never), with a mapping that
maps it to an app column, as an app's initial password is: it reaches the app only when a request carries it,
is never in the gateway's copy, never filterable or sortable, masked in the dry run, and `check` refuses a
rule that would read it back."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from pydantic import SecretStr

from gateway.app import create_app
from gateway.cli import main
from gateway.settings import GatewaySettings
from tests.conftest import TOKEN, USER_URN, Scim
from tests.demo_rows import q

SECRET = "S3cret-Initial-Pass!"
NEW_SECRET = "N3w-Pass-Word!"
MAPPING = """app: pw
connector:
  type: sql
  dsn: "sqlite:///{data_dir}/pw.db"
  tables:
    User: {table: accounts, key: id}
resources:
  User:
    updates: whole
    attributes:
      - {scim: userName, field: login}
      - {scim: title, field: title}
      - {scim: active, field: enabled}
      - {scim: password, field: pwd, direction: to_app, absent: "null"}
"""


@pytest.fixture
def mapping(tmp_path: Path) -> Path:
    path = tmp_path / "pw.yaml"
    path.write_text(MAPPING)
    return path


@pytest.fixture
async def client(aiohttp_client: Any, tmp_path: Path, mapping: Path) -> AsyncIterator[TestClient]:
    data = tmp_path / "data"
    data.mkdir()
    with sqlite3.connect(data / "pw.db") as db:
        db.execute(
            "CREATE TABLE accounts (id INTEGER PRIMARY KEY, login TEXT NOT NULL UNIQUE, title TEXT, enabled INTEGER, pwd TEXT)"
        )
    settings = GatewaySettings(mappings=[mapping], data_dir=data, extra_tokens={"pw": [SecretStr(TOKEN)]})
    yield await aiohttp_client(create_app(settings))


def pwd(tmp_path: Path) -> list[Any]:
    with sqlite3.connect(tmp_path / "data" / "pw.db") as db:
        return [r[0] for r in db.execute("SELECT pwd FROM accounts ORDER BY id")]


def store_bytes(tmp_path: Path) -> bytes:
    return b"".join(p.read_bytes() for p in (tmp_path / "data").iterdir() if p.name.startswith("gateway.db"))


async def test_password_reaches_the_app_only_when_a_request_carries_it(client: TestClient, tmp_path: Path) -> None:
    scim = Scim(client, base="/apps/pw/scim/v2")
    resp, user = await scim.post("/Users", {"schemas": [USER_URN], "userName": "ann", "active": True, "password": SECRET})
    assert resp.status == 201, user
    assert "password" not in user and pwd(tmp_path) == [SECRET]
    # `updates: whole` sends every field: a PATCH of `active` alone must not send the password as null.
    resp, data = await scim.patch(f"/Users/{user['id']}", [{"op": "replace", "value": {"active": False}}])
    assert resp.status == 200, data
    resp, data = await scim.patch(f"/Users/{user['id']}", [{"op": "replace", "path": "title", "value": "Boss"}])
    assert resp.status == 200, data
    body = {"schemas": [USER_URN], "userName": "ann", "active": True, "title": "Chief"}
    resp, data = await scim.put(f"/Users/{user['id']}", body)
    assert resp.status == 200, data
    assert pwd(tmp_path) == [SECRET]
    # ...and one that carries it sets it.
    resp, data = await scim.patch(f"/Users/{user['id']}", [{"op": "replace", "path": "password", "value": NEW_SECRET}])
    assert resp.status == 200 and "password" not in data, data
    assert pwd(tmp_path) == [NEW_SECRET]
    # A create without one, with `absent: null`, sends no null password either.
    resp, other = await scim.post("/Users", {"schemas": [USER_URN], "userName": "bob"})
    assert resp.status == 201, other
    assert pwd(tmp_path) == [NEW_SECRET, None]
    stored = store_bytes(tmp_path)
    assert SECRET.encode() not in stored and NEW_SECRET.encode() not in stored


@pytest.mark.parametrize(
    "query",
    [
        "filter=" + q("password pr"),
        "filter=" + q(f'password eq "{SECRET}"'),
        "filter=" + q("not (password pr)"),
        "filter=" + q('userName eq "ann" or password sw "S"'),
        "sortBy=password",
    ],  # fmt: skip
)
async def test_password_cannot_be_filtered_or_sorted_on(client: TestClient, query: str) -> None:
    scim = Scim(client, base="/apps/pw/scim/v2")
    resp, user = await scim.post("/Users", {"schemas": [USER_URN], "userName": "ann", "password": SECRET})
    assert resp.status == 201, user
    resp, data = await scim.get(f"/Users?{query}")
    assert resp.status == 400 and data["scimType"] == "invalidFilter", data
    assert "password is write-only" in data["detail"], data


def test_translate_masks_the_password_of_an_update(mapping: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    request = tmp_path / "req.json"
    patch = {"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
             "Operations": [{"op": "replace", "value": {"password": SECRET, "active": False}}]}  # fmt: skip
    request.write_text(json.dumps({"method": "PATCH", "path": "/Users/x", "body": patch}))
    assert main(["translate", "pw", str(request), "--config", str(mapping)]) == 0
    out = capsys.readouterr().out
    assert SECRET not in out and '"pwd"' in out, out


def test_check_refuses_reading_the_password_back(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "both.yaml"
    path.write_text(MAPPING.replace("direction: to_app, ", ""))
    assert main(["check", str(path)]) == 1
    line = MAPPING.splitlines().index(next(x for x in MAPPING.splitlines() if "scim: password" in x)) + 1
    out = capsys.readouterr().out
    assert f"{path}:{line}:" in out and "password is write-only" in out and "direction: to_app" in out, out


PIN_URN = "urn:example:params:scim:schemas:extension:pw:2.0:User"
PIN_MAPPING = MAPPING.replace(
    "resources:\n  User:\n",
    f"schemas:\n  - id: {PIN_URN}\n    name: PinUser\n    attributes:\n"
    "      - {name: pin, type: string, mutability: writeOnly, returned: never}\n"
    f"resources:\n  User:\n    extensions: [{PIN_URN}]\n",
).replace("      - {scim: title, field: title}\n", f"      - {{scim: '{PIN_URN}:pin', field: title, direction: to_app}}\n")


async def test_a_custom_write_only_attribute_is_kept_out_of_the_copy_too(aiohttp_client: Any, tmp_path: Path) -> None:
    path = tmp_path / "pin.yaml"
    path.write_text(PIN_MAPPING)
    data = tmp_path / "data"
    data.mkdir()
    with sqlite3.connect(data / "pw.db") as db:
        db.execute(
            "CREATE TABLE accounts (id INTEGER PRIMARY KEY, login TEXT NOT NULL UNIQUE, title TEXT, enabled INTEGER, pwd TEXT)"
        )
    settings = GatewaySettings(mappings=[path], data_dir=data, extra_tokens={"pw": [SecretStr(TOKEN)]})
    scim = Scim(await aiohttp_client(create_app(settings)), base="/apps/pw/scim/v2")
    pin = "PIN-98765-secret"
    resp, user = await scim.post("/Users", {"schemas": [USER_URN, PIN_URN], "userName": "ann", PIN_URN: {"pin": pin}})
    assert resp.status == 201 and pin not in json.dumps(user), user
    with sqlite3.connect(data / "pw.db") as db:
        assert [r[0] for r in db.execute("SELECT title FROM accounts")] == [pin]  # the app got it
    resp, data_ = await scim.patch(f"/Users/{user['id']}", [{"op": "replace", "path": "active", "value": False}])
    assert resp.status == 200, data_
    assert pin.encode() not in store_bytes(tmp_path)
    resp, found = await scim.get("/Users?filter=" + q(f"{PIN_URN}:pin pr"))
    assert resp.status == 400 and "write-only" in found["detail"], found
    path.write_text(PIN_MAPPING.replace("field: title, direction: to_app", "field: title"))
    assert main(["check", str(path)]) == 1
