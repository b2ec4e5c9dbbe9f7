"""A third-party connector in a package of its own (tests/plugin_example), as docs/connectors/writing.md describes.

Installed by `make test` beside the gateway, it is found only through its entry point, passes the conformance
class the gateway ships (gateway.connectors.conformance, imported as a plugin's tests would), and serves SCIM
requests end to end; `check` and `schema` know its options.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from aiohttp.test_utils import TestClient
from pydantic import SecretStr, ValidationError
from scim_gateway_example_plugin import JsonFileConnector, JsonFileConnectorConfig

from gateway.app import create_app
from gateway.cli import main
from gateway.connectors import AppContext, AppInvalid, Record, load_registry
from gateway.connectors.conformance import ConnectorConformance
from gateway.connectors.errors import ConnectorSetupError
from gateway.connectors.registry import ENTRY_POINT_GROUP
from gateway.mapping.compile import compile_mapping
from gateway.mapping.loader import MappingFileError, parse_yaml
from gateway.settings import GatewaySettings
from tests.conftest import USER_URN, Scim, user_body

MAPPING = Path(__file__).resolve().parents[1] / "plugin_example" / "notes.yaml"
TOKEN = "notes-scim-token-0123456789"
BASE = "/apps/notes/scim/v2"
GROUP_URN = "urn:ietf:params:scim:schemas:core:2.0:Group"

CONFIG: dict[str, Any] = {
    "type": "jsonfile",
    "kinds": {
        "User": {"unique": "login", "actions": {"disable": {"status": "disabled"}}},
        "Group": {"unique": "name", "member_kind": "User"},
    },
}


def config(**changes: Any) -> JsonFileConnectorConfig:
    return JsonFileConnectorConfig.model_validate(CONFIG | changes)


async def opened(tmp_path: Path, cfg: JsonFileConnectorConfig | None = None) -> JsonFileConnector:
    connector = JsonFileConnector(cfg or config(), AppContext(name="notes", data_dir=tmp_path))
    await connector.open()
    return connector


# ---------------------------------------------------------------- found through its entry point


def test_the_registry_finds_the_plugin_through_its_entry_point() -> None:
    (ep,) = entry_points(group=ENTRY_POINT_GROUP, name="jsonfile")
    assert ep.dist is not None and ep.dist.name == "scim-gateway-example-plugin"  # its own distribution, not ours
    registry = load_registry()
    assert registry.get("jsonfile") is JsonFileConnector
    assert {"jsonfile", "ldap", "rest", "sql"} <= set(registry.names())
    with pytest.raises(LookupError, match=r"unknown connector type 'jsonfil' \(valid: .*jsonfile"):
        registry.get("jsonfil")


# ---------------------------------------------------------------- the shipped conformance class


class TestJsonFileConformance(ConnectorConformance):
    @pytest.fixture
    async def connector(self, tmp_path: Path, page_size: int) -> AsyncIterator[JsonFileConnector]:
        connector = await opened(tmp_path)
        connector.page_size = page_size
        yield connector
        await connector.close()

    @pytest.fixture
    def text_field(self) -> str:
        return "display_name"

    def sample_user(self, tag: str) -> Record:
        return {"login": f"user.{tag}", "display_name": f"User {tag}", "email": f"{tag}@example.test"}

    def sample_group(self, tag: str) -> Record:
        return {"name": f"Team {tag}"}


# ---------------------------------------------------------------- the plugin's own rules


async def test_records_persist_in_the_app_file_across_opens(tmp_path: Path) -> None:
    connector = await opened(tmp_path)
    native_id = await connector.create("User", {"login": "ada"})
    await connector.close()
    assert json.loads((tmp_path / "notes.json").read_text())["records"]["User"] == {native_id: {"login": "ada"}}
    again = await opened(tmp_path)
    assert await again.get("User", native_id) == {"login": "ada"}


async def test_declared_fields_refuse_others_and_name_the_live_fields(tmp_path: Path) -> None:
    kinds = {"User": {"unique": "login", "fields": ["login", "email"]}}
    connector = await opened(tmp_path, config(kinds=kinds))
    with pytest.raises(AppInvalid, match="no field 'phone'"):
        await connector.create("User", {"login": "ada", "phone": "1"})
    assert connector.fields("User") == {"login", "email"} and connector.fields("Group") is None


def test_options_are_validated_by_the_plugin_model() -> None:
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        config(pathh="x.json")
    with pytest.raises(ValidationError, match=r"no kind 'Person' \(valid: Group, User\)"):
        config(kinds={"User": {}, "Group": {"member_kind": "Person"}})


async def test_a_signing_key_is_a_reference_checked_on_open(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    signed = config(signing_key={"env": "NOTES_SIGNING_KEY"})
    with pytest.raises(ConnectorSetupError, match="environment variable NOTES_SIGNING_KEY is not set"):
        await opened(tmp_path, signed)
    monkeypatch.setenv("NOTES_SIGNING_KEY", "k3y-for-tests")
    connector = await opened(tmp_path, signed)
    await connector.create("User", {"login": "ada"})
    assert "k3y-for-tests" not in repr(signed) and "k3y-for-tests" not in (tmp_path / "notes.json").read_text()
    assert connector.plan("create", "User", record={"login": "bob"})[0]["signed_with"] == "***"
    stored = json.loads((tmp_path / "notes.json").read_text())
    stored["records"]["User"]["1"]["login"] = "mallory"  # edited by hand: the HMAC no longer matches
    (tmp_path / "notes.json").write_text(json.dumps(stored))
    with pytest.raises(ConnectorSetupError, match="changed outside the gateway"):
        await opened(tmp_path, signed)


def test_capabilities_follow_the_options() -> None:
    caps = JsonFileConnector.capabilities_for(config())
    assert caps.membership and caps.search and caps.list_all and caps.actions == {"disable"}
    bare = JsonFileConnector.capabilities_for(config(kinds={"User": {"unique": "login"}}))
    assert not bare.membership and bare.actions == frozenset()


# ---------------------------------------------------------------- the gateway serves it


@pytest.fixture
async def client(aiohttp_client: Any, tmp_path: Path) -> TestClient:
    settings = GatewaySettings(mappings=[MAPPING], data_dir=tmp_path / "data", extra_tokens={"notes": [SecretStr(TOKEN)]})
    return await aiohttp_client(create_app(settings))


@pytest.fixture
def scim(client: TestClient) -> Scim:
    return Scim(client, TOKEN, BASE)


def app_file(tmp_path: Path) -> dict[str, Any]:
    """The app's own state: what the connector wrote to its file."""
    data: dict[str, Any] = json.loads((tmp_path / "data" / "notes.json").read_text())
    return data


async def test_scim_create_get_patch_delete_end_to_end(scim: Scim, tmp_path: Path) -> None:
    resp, ada = await scim.post("/Users", user_body("Ada.Lovelace@example.com"))
    assert resp.status == 201, ada
    ((native_id, record),) = app_file(tmp_path)["records"]["User"].items()
    assert record["login"] == "Ada.Lovelace@example.com" and "status" not in record

    resp, got = await scim.get(f"/Users/{ada['id']}")
    assert (resp.status, got["userName"], got["active"], got["schemas"][0]) == (200, "Ada.Lovelace@example.com", True, USER_URN)
    resp, found = await scim.get('/Users?filter=userName eq "ada.lovelace@example.com"')
    assert [r["id"] for r in found["Resources"]] == [ada["id"]]

    resp, again = await scim.post("/Users", user_body("ADA.LOVELACE@example.com"))
    assert (resp.status, again["scimType"]) == (409, "uniqueness")

    resp, team = await scim.post("/Groups", {"schemas": [GROUP_URN], "displayName": "Team", "members": [{"value": ada["id"]}]})
    assert resp.status == 201, team
    ((group_id, _),) = app_file(tmp_path)["records"]["Group"].items()
    assert app_file(tmp_path)["members"][group_id] == [["User", native_id]]

    resp, off = await scim.patch(f"/Users/{ada['id']}", [{"op": "Replace", "path": "active", "value": False}])
    assert (resp.status, off["active"]) == (200, False), off
    assert app_file(tmp_path)["records"]["User"][native_id]["status"] == "disabled"  # the connector's action

    resp, _ = await scim.delete(f"/Users/{ada['id']}")
    assert resp.status == 204
    assert app_file(tmp_path)["records"]["User"] == {} and app_file(tmp_path)["members"][group_id] == []
    resp, gone = await scim.get(f"/Users/{ada['id']}")
    assert (resp.status, gone["status"]) == (404, "404")


# ---------------------------------------------------------------- the command line knows its options


def test_check_and_check_connect_accept_the_plugin_mapping(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(MAPPING)]) == 0
    assert main(["check", "--connect", "--data-dir", str(tmp_path), str(MAPPING)]) == 0
    assert "the live app fits" in capsys.readouterr().out


def test_check_names_what_the_plugin_options_refuse(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "notes.yaml"
    bad.write_text(MAPPING.read_text().replace("      unique: login\n", "      uniq: login\n"))
    assert main(["check", str(bad)]) == 1
    line = bad.read_text().splitlines().index("      uniq: login") + 1
    assert f"{bad}:{line}:7: connector.kinds.User.uniq: unknown key 'uniq' (did you mean unique?)" in capsys.readouterr().out
    # --connect: a mapped field the connector's declared fields lack, at the mapping's line.
    bad.write_text(MAPPING.read_text().replace("fields: [login, given, family, email, status]", "fields: [login, status]"))
    assert main(["check", "--connect", "--data-dir", str(tmp_path), str(bad)]) == 1
    out = capsys.readouterr().out
    assert "resources.User.attributes[1].field: the app's User records have no field 'given'" in out


def test_a_missing_secret_reference_is_named_at_load(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTES_SIGNING_KEY", raising=False)
    text = MAPPING.read_text().replace("  kinds:\n", "  signing_key: {env: NOTES_SIGNING_KEY}\n  kinds:\n", 1)
    with pytest.raises(MappingFileError, match="connector.signing_key: environment variable NOTES_SIGNING_KEY is not set"):
        compile_mapping(parse_yaml(text, "notes.yaml"), load_registry())


def test_the_schema_command_carries_the_plugin_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert "jsonfile" in schema["properties"]["connector"]["discriminator"]["mapping"]
    validator = jsonschema.Draft202012Validator(schema)
    document = yaml.safe_load(MAPPING.read_text())
    assert [e.message for e in validator.iter_errors(document)] == []
    document["connector"]["kinds"]["User"]["uniq"] = document["connector"]["kinds"]["User"].pop("unique")
    assert any("uniq" in e.message for e in validator.iter_errors(document))


def test_translate_shows_the_plugin_plan(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    request = tmp_path / "create.json"
    request.write_text(json.dumps(user_body("grace@example.com")))
    assert main(["translate", "notes", str(request), "--config", str(MAPPING), "--data-dir", str(tmp_path)]) == 0
    plan = json.loads(capsys.readouterr().out)
    (call,) = plan["calls"]
    assert call["file"] == str(tmp_path / "notes.json") and call["operation"] == "create"
    assert call["record"]["login"] == "grace@example.com"
