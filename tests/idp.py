"""What Entra ID and Okta send, as bodies: one place for every end-to-end sequence (demo, REST, SQL apps)."""

from __future__ import annotations

from typing import Any

from tests.conftest import ENTERPRISE_URN, GROUP_URN, USER_URN

MS_GROUP_URN = "http://schemas.microsoft.com/2006/11/ResourceManagement/ADSCIM/2.0/Group"  # Entra adds it to groups

PASSWORD = "Okta-Sup3r-S3cret-Pa55!"  # what Okta sends with password sync on; must never reach an app or the store in clear


def entra_user(
    user_name: str,
    given: str,
    family: str,
    *,
    mail: str | None = None,
    title: str = "Engineer",
    department: str = "R&D",
    external_id: str | None = None,
    manager: str | None = None,
) -> dict[str, Any]:
    """The body Entra POSTs to /Users (boolean `active`, both schema URNs, externalId, meta.resourceType, empty roles)."""
    enterprise: dict[str, Any] = {"department": department}
    if manager is not None:
        enterprise["manager"] = manager
    return {
        "schemas": [USER_URN, ENTERPRISE_URN],
        "externalId": external_id or f"ext-{user_name}",
        "userName": user_name,
        "active": True,
        "displayName": f"{given} {family}",
        "emails": [{"primary": True, "type": "work", "value": mail or user_name}],
        "meta": {"resourceType": "User"},
        "name": {"formatted": f"{given} {family}", "familyName": family, "givenName": given},
        "title": title,
        "roles": [],
        ENTERPRISE_URN: enterprise,
    }


def okta_user(
    user_name: str, given: str = "Test", family: str = "User", *, password: str | None = PASSWORD, **extra: Any
) -> dict[str, Any]:
    """The body Okta POSTs (and, with id, PUTs): core schema only, groups [], password when sync is on."""
    body: dict[str, Any] = {
        "schemas": [USER_URN],
        "userName": user_name,
        "name": {"givenName": given, "familyName": family},
        "emails": [{"primary": True, "value": user_name, "type": "work"}],
        "displayName": f"{given} {family}",
        "locale": "en-US",
        "externalId": f"00u{abs(hash(user_name)) % 10**12:012d}",
        "groups": [],
        "active": True,
    }
    if password is not None:
        body["password"] = password
    body.update(extra)
    return body


def entra_group(name: str, members: list[str] | None = None) -> dict[str, Any]:
    """The body Entra POSTs to /Groups (with Microsoft's own schema URN and an externalId)."""
    body: dict[str, Any] = {"schemas": [GROUP_URN, MS_GROUP_URN], "externalId": f"ext-{name}", "displayName": name}
    if members is not None:
        body["members"] = [{"value": m} for m in members]
    return body
