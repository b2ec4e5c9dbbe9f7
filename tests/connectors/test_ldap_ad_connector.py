"""The LDAP connector against a real Active Directory (a Samba domain controller started by the tests): the shared
connector contract on objectGUID ids and AD groups, over LDAPS."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from scim_gateway_plugins.ldap import LdapConnector, LdapConnectorConfig

from gateway.connectors import AppContext, Record
from tests.connectors.conformance import ConnectorConformance
from tests.directories import AD_ADMIN, AD_PASSWORD


def ad_config(dc: Any, top: str, **overrides: Any) -> LdapConnectorConfig:
    block: dict[str, Any] = {
        "type": "ldap",
        "url": dc.url,
        "ca_file": str(dc.ca_file),
        "verify_hostname": False,  # Samba's self-signed certificate names its host, not the loopback address
        "bind_dn": AD_ADMIN,
        "bind_password": {"env": "TEST_AD_PASSWORD"},
        "directory": "active_directory",
        "page_size": 3,
        "resources": {
            "User": {"base": f"OU=people,{top}", "object_classes": ["user"], "rdn": "cn", "references": {"manager": "User"}},
            "Group": {"base": f"OU=groups,{top}", "object_classes": ["group"], "rdn": "cn", "members": {"attribute": "member"}},
        },
    }
    block.update(overrides)
    return LdapConnectorConfig.model_validate(block)


@pytest.fixture
async def ad_opened(samba_dc: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Any]:
    monkeypatch.setenv("TEST_AD_PASSWORD", AD_PASSWORD)
    connectors: list[LdapConnector] = []

    async def open_one(**overrides: Any) -> LdapConnector:
        top = samba_dc.subtree("people", "groups")
        connector = LdapConnector(ad_config(samba_dc, top, **overrides), AppContext("adtest", tmp_path))
        await connector.open()
        connectors.append(connector)
        connector.top = top  # type: ignore[attr-defined]
        return connector

    yield open_one
    for connector in connectors:
        await connector.close()


class TestActiveDirectoryConformance(ConnectorConformance):
    list_all_ordered = False

    @pytest.fixture
    async def connector(self, ad_opened: Any) -> LdapConnector:
        return await ad_opened()  # type: ignore[no-any-return]

    @pytest.fixture
    def unique_field(self) -> str:
        return "cn"  # the RDN: unique where the entries live (sAMAccountName refuses quotes and is 20 characters at most)

    @pytest.fixture
    def text_field(self) -> str:
        return "description"

    def sample_user(self, tag: str) -> Record:
        return {"cn": f"user-{tag}", "sn": "Tester", "givenName": "Test", "description": f"about {tag}"}

    def sample_group(self, tag: str) -> Record:
        return {"cn": f"group-{tag}", "description": f"the {tag} group"}


@pytest.mark.parametrize(("new_password", "has_password"), [("random", True), ("none", False)])
async def test_an_account_enabled_without_a_password(
    ad_opened: Any, samba_dc: Any, new_password: str, has_password: bool
) -> None:
    """Entra sends no password: by default the new enabled account gets a random one (Windows AD requires one)."""
    connector = await ad_opened(active_directory={"new_password": new_password})
    await connector.create("User", {"cn": f"np-{new_password}", "sn": "N", "enabled": True})
    [entry] = samba_dc.search(f"OU=people,{connector.top}", f"(cn=np-{new_password})", "pwdLastSet", "userAccountControl")
    assert int(entry["userAccountControl"][0]) & 0x2 == 0
    assert (entry["pwdLastSet"] != ["0"]) is has_password, entry
