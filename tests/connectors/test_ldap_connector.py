"""The LDAP connector against a real OpenLDAP server (slapd started by the tests): the shared connector contract,
and what is the directory's own: names that need escaping, renames and moves that keep the id, member lists,
referenced entries by DN."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from scim_gateway_plugins.ldap import LdapConnector, LdapConnectorConfig

from gateway.connectors import AppContext, AppInvalid, Record
from tests.connectors.conformance import ConnectorConformance
from tests.directories import ADMIN_DN, ADMIN_PASSWORD


def ldap_config(slapd: Any, top: str, **overrides: Any) -> LdapConnectorConfig:
    block: dict[str, Any] = {
        "type": "ldap",
        "url": slapd.url,
        "bind_dn": ADMIN_DN,
        "bind_password": {"env": "TEST_SLAPD_PASSWORD"},
        "page_size": 3,
        "resources": {
            "User": {
                "base": f"ou=people,{top}",
                "object_classes": ["inetOrgPerson"],
                "rdn": "uid",
                "references": {"manager": "User"},
            },
            "Group": {
                "base": f"ou=groups,{top}",
                "object_classes": ["groupOfNames"],
                "rdn": "cn",
                "members": {"attribute": "member", "placeholder": f"cn=nobody,{top}"},
            },
        },
    }
    block.update(overrides)
    return LdapConnectorConfig.model_validate(block)


def _with_top(value: Any, top: str) -> Any:
    """TOP in an override stands for the test's own subtree."""
    if isinstance(value, str):
        return value.replace("TOP", top)
    if isinstance(value, dict):
        return {k: _with_top(v, top) for k, v in value.items()}
    if isinstance(value, list):
        return [_with_top(v, top) for v in value]
    return value


@pytest.fixture
async def opened(slapd: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Any]:
    monkeypatch.setenv("TEST_SLAPD_PASSWORD", ADMIN_PASSWORD)
    connectors: list[LdapConnector] = []

    async def open_one(**overrides: Any) -> LdapConnector:
        top = slapd.subtree("people", "groups")
        overrides = {k: _with_top(v, top) for k, v in overrides.items()}
        connector = LdapConnector(ldap_config(slapd, top, **overrides), AppContext("ldaptest", tmp_path))
        await connector.open()
        connectors.append(connector)
        connector.top = top  # type: ignore[attr-defined]
        return connector

    yield open_one
    for connector in connectors:
        await connector.close()


class TestOpenLdapConformance(ConnectorConformance):
    list_all_ordered = False  # entries come in the directory's order, not by id

    @pytest.fixture
    async def connector(self, opened: Any) -> LdapConnector:
        return await opened()  # type: ignore[no-any-return]

    @pytest.fixture
    def unique_field(self) -> str:
        return "uid"

    @pytest.fixture
    def text_field(self) -> str:
        return "description"

    def sample_user(self, tag: str) -> Record:
        return {
            "uid": f"user-{tag}",
            "cn": f"User {tag}",
            "sn": "Tester",
            "mail": f"{tag}@example.com",
            "description": f"about {tag}",
        }

    def sample_group(self, tag: str) -> Record:
        return {"cn": f"group-{tag}", "description": f"the {tag} group"}


# ---------------------------------------------------------------- the directory's own


async def test_posix_group_lists_member_names_and_follows_a_rename(opened: Any, slapd: Any) -> None:
    connector = await opened(
        resources={
            "User": {"base": "ou=people,TOP", "object_classes": ["inetOrgPerson"], "rdn": "uid"},
            "Group": {
                "base": "ou=groups,TOP",
                "object_classes": ["posixGroup"],
                "rdn": "cn",
                "members": {"attribute": "memberUid", "values": "name", "name_attribute": "uid"},
            },
        }
    )
    top = connector.top
    ann = await connector.create("User", {"uid": "ann", "cn": "Ann", "sn": "A"})
    ben = await connector.create("User", {"uid": "ben", "cn": "Ben", "sn": "B"})
    group = await connector.create_with_members("Group", {"cn": "staff", "gidNumber": "5000"}, [("User", ann)])
    await connector.add_members("Group", group, [("User", ben), ("User", ann)])  # ann again: no error
    [entry] = slapd.search(f"ou=groups,{top}", "(cn=staff)")
    assert sorted(entry["memberUid"]) == ["ann", "ben"]
    assert sorted(n for _k, n in await connector.list_members("Group", group)) == sorted([ann, ben])
    await connector.update("User", ann, {"uid": "ann.smith"})  # a rename: the group lists the new name
    [entry] = slapd.search(f"ou=groups,{top}", "(cn=staff)")
    assert sorted(entry["memberUid"]) == ["ann.smith", "ben"]
    await connector.remove_members("Group", group, [("User", ben)])
    [entry] = slapd.search(f"ou=groups,{top}", "(cn=staff)")
    assert entry["memberUid"] == ["ann.smith"]


async def test_unique_member_groups_multi_valued_and_binary_attributes(opened: Any, slapd: Any) -> None:
    connector = await opened(
        resources={
            "User": {
                "base": "ou=people,TOP",
                "object_classes": ["inetOrgPerson"],
                "rdn": "uid",
                "multi_valued": ["mail"],
                "binary": ["jpegPhoto"],
            },
            "Group": {
                "base": "ou=groups,TOP",
                "object_classes": ["groupOfUniqueNames"],
                "rdn": "cn",
                "members": {"attribute": "uniqueMember", "placeholder": "cn=nobody,TOP"},
            },
        }
    )
    top = connector.top
    photo = base64.b64encode(bytes(range(256))).decode()
    cy = await connector.create(
        "User", {"uid": "cy", "cn": "Cy", "sn": "C", "mail": ["a@x.example", "b@x.example"], "jpegPhoto": photo}
    )
    record = await connector.get("User", cy)
    assert record is not None and sorted(record["mail"]) == ["a@x.example", "b@x.example"] and record["jpegPhoto"] == photo
    group = await connector.create("Group", {"cn": "uniq"})
    [entry] = slapd.search(f"ou=groups,{top}", "(cn=uniq)")
    assert entry["uniqueMember"] == [f"cn=nobody,{top}"]  # the placeholder keeps the group valid
    assert await connector.list_members("Group", group) == []
    await connector.add_members("Group", group, [("User", cy)])
    [entry] = slapd.search(f"ou=groups,{top}", "(cn=uniq)")
    assert entry["uniqueMember"] == [f"uid=cy,ou=people,{top}"]
    await connector.remove_members("Group", group, [("User", cy)])
    [entry] = slapd.search(f"ou=groups,{top}", "(cn=uniq)")
    assert entry["uniqueMember"] == [f"cn=nobody,{top}"]
    with pytest.raises(AppInvalid, match="jpegPhoto: not base64"):
        await connector.update("User", cy, {"jpegPhoto": "not base64!"})


async def test_a_large_group_changes_by_single_values(opened: Any, slapd: Any) -> None:
    """Adding to and removing from a group of many members sends only the values that change."""
    connector = await opened()
    top = connector.top
    users = [f"uid=bulk{i},ou=people,{top}" for i in range(300)]
    slapd.add("\n".join(f"dn: {dn}\nobjectClass: inetOrgPerson\nuid: bulk{i}\ncn: b\nsn: b\n" for i, dn in enumerate(users)))
    slapd.add(f"dn: cn=big,ou=groups,{top}\nobjectClass: groupOfNames\ncn: big\n" + "".join(f"member: {dn}\n" for dn in users))
    ids = dict(await connector.find("Group", "cn", "big"))
    [group] = ids
    members = await connector.list_members("Group", group)
    assert len(members) == 300
    sent: list[Any] = []
    original = connector.ldap.write

    async def spy(what: str, operation: Any) -> None:
        class Conn:
            def modify(self, dn: str, changes: Any) -> Any:
                sent.append(changes)
                return ("ok", {"result": 0}, None, None)

        operation(Conn())
        await original(what, operation)

    connector.ldap.write = spy  # type: ignore[method-assign]
    await connector.remove_members("Group", group, [members[0]])
    assert [len(values) for change in sent for ops in change.values() for _op, values in ops] == [1]
    assert len(slapd.search(f"ou=groups,{top}", "(cn=big)")[0]["member"]) == 299


async def test_a_deleted_user_leaves_posix_groups(opened: Any, slapd: Any) -> None:
    connector = await opened(
        resources={
            "User": {"base": "ou=people,TOP", "object_classes": ["inetOrgPerson"], "rdn": "uid"},
            "Group": {
                "base": "ou=groups,TOP",
                "object_classes": ["posixGroup"],
                "rdn": "cn",
                "members": {"attribute": "memberUid", "values": "name", "name_attribute": "uid"},
            },
        }
    )
    dee = await connector.create("User", {"uid": "dee", "cn": "Dee", "sn": "D"})
    eve = await connector.create("User", {"uid": "eve", "cn": "Eve", "sn": "E"})
    await connector.create_with_members("Group", {"cn": "ops", "gidNumber": "5001"}, [("User", dee), ("User", eve)])
    await connector.delete("User", dee)
    [entry] = slapd.search(f"ou=groups,{connector.top}", "(cn=ops)")
    assert entry["memberUid"] == ["eve"]


def test_a_password_refused_by_policy_is_invalid_not_a_conflict() -> None:
    from scim_gateway_plugins.ldap.client import CONSTRAINT, LdapFailure, app_error

    from gateway.connectors import AppConflict

    policy = LdapFailure(CONSTRAINT, "constraintViolation", "0000052D: Constraint violation - check_password_restrictions")
    assert isinstance(app_error("creating User x", policy), AppInvalid)
    assert "password policy" in str(app_error("creating User x", policy))
    taken = LdapFailure(CONSTRAINT, "constraintViolation", "attribute 'userPrincipalName': value is not unique")
    assert isinstance(app_error("creating User x", taken), AppConflict)
