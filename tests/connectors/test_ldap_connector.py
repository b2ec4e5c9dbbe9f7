"""The LDAP connector against a real OpenLDAP server (slapd started by the tests): the shared connector contract,
and what is the directory's own: names that need escaping, renames and moves that keep the id, member lists,
referenced entries by DN."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from scim_gateway_plugins.ldap import LdapConnector, LdapConnectorConfig

from gateway.connectors import AppContext, Record
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


@pytest.fixture
async def opened(slapd: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Any]:
    monkeypatch.setenv("TEST_SLAPD_PASSWORD", ADMIN_PASSWORD)
    connectors: list[LdapConnector] = []

    async def open_one(**overrides: Any) -> LdapConnector:
        top = slapd.subtree("people", "groups")
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
