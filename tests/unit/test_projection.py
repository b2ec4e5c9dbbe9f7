"""project / parse_attribute_list: `returned` (RFC 7643 §7) and attributes / excludedAttributes (RFC 7644 §3.4.2.5)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from gateway.schema import (
    CORE_GROUP,
    CORE_USER,
    ENTERPRISE_USER,
    Attribute,
    Resolved,
    ResourceType,
    Schema,
    group_resource_type,
    user_resource_type,
)
from gateway.scim.projection import parse_attribute_list, project

USER = user_resource_type()
GROUP = group_resource_type()

META = {"resourceType": "User", "created": "2024-01-01T00:00:00Z", "location": "https://gw/Users/1", "version": 'W/"1"'}

STORED_USER: dict[str, Any] = {
    "schemas": [CORE_USER, ENTERPRISE_USER],
    "id": "1",
    "externalId": "ext-1",
    "meta": META,
    "userName": "bjensen",
    "name": {"givenName": "Barbara", "familyName": "Jensen"},
    "active": True,
    "password": "secret",
    "emails": [{"value": "b@work", "type": "work", "primary": True}, {"value": "b@home", "type": "home"}],
    ENTERPRISE_USER: {"department": "Sales", "manager": {"value": "m-1", "displayName": "Boss"}},
}


def project_text(resource: dict[str, Any], rtype: ResourceType, attributes: str | None, excluded: str | None) -> dict[str, Any]:
    before = copy.deepcopy(resource)
    out = project(resource, rtype, parse_attribute_list(attributes, rtype), parse_attribute_list(excluded, rtype))
    assert resource == before, "project mutated its input"
    return out


def without(resource: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in resource.items() if k not in keys}


def test_default_drops_password_only() -> None:
    assert project_text(STORED_USER, USER, None, None) == without(STORED_USER, "password")


@pytest.mark.parametrize(
    ("attributes", "expected"),
    [
        ("userName", {"schemas": STORED_USER["schemas"], "id": "1", "userName": "bjensen"}),
        ("USERNAME", {"schemas": STORED_USER["schemas"], "id": "1", "userName": "bjensen"}),
        ("userName,meta", {"schemas": STORED_USER["schemas"], "id": "1", "userName": "bjensen", "meta": META}),
        ("meta.version", {"schemas": STORED_USER["schemas"], "id": "1", "meta": {"version": 'W/"1"'}}),
        ("name.givenName", {"schemas": STORED_USER["schemas"], "id": "1", "name": {"givenName": "Barbara"}}),
        ("name, name.givenName", {"schemas": STORED_USER["schemas"], "id": "1", "name": STORED_USER["name"]}),
        ("name.givenName,name", {"schemas": STORED_USER["schemas"], "id": "1", "name": STORED_USER["name"]}),
        (
            "emails.value",
            {"schemas": STORED_USER["schemas"], "id": "1", "emails": [{"value": "b@work"}, {"value": "b@home"}]},
        ),
        (
            "emails.value,emails.primary",
            {
                "schemas": STORED_USER["schemas"],
                "id": "1",
                "emails": [{"value": "b@work", "primary": True}, {"value": "b@home"}],
            },
        ),
        ("emails.display", {"schemas": STORED_USER["schemas"], "id": "1"}),
        (
            f"{ENTERPRISE_USER}:department",
            {"schemas": STORED_USER["schemas"], "id": "1", ENTERPRISE_USER: {"department": "Sales"}},
        ),
        (
            f"{ENTERPRISE_USER}:manager.value",
            {"schemas": STORED_USER["schemas"], "id": "1", ENTERPRISE_USER: {"manager": {"value": "m-1"}}},
        ),
        (
            ENTERPRISE_USER,
            {"schemas": STORED_USER["schemas"], "id": "1", ENTERPRISE_USER: STORED_USER[ENTERPRISE_USER]},
        ),
        (f"{ENTERPRISE_USER}:costCenter", {"schemas": STORED_USER["schemas"], "id": "1"}),
        (f"{CORE_USER}:active", {"schemas": STORED_USER["schemas"], "id": "1", "active": True}),
        ("password", {"schemas": STORED_USER["schemas"], "id": "1"}),
        ("id", {"schemas": STORED_USER["schemas"], "id": "1"}),
        ("favouriteColour", {"schemas": STORED_USER["schemas"], "id": "1"}),
        ("externalId,nickName", {"schemas": STORED_USER["schemas"], "id": "1", "externalId": "ext-1"}),
    ],
)
def test_attributes(attributes: str, expected: dict[str, Any]) -> None:
    assert project_text(STORED_USER, USER, attributes, None) == expected


@pytest.mark.parametrize(
    ("excluded", "expected"),
    [
        ("emails", without(STORED_USER, "password", "emails")),
        ("EMAILS,active", without(STORED_USER, "password", "emails", "active")),
        ("id", without(STORED_USER, "password")),
        ("meta", without(STORED_USER, "password", "meta")),
        ("password", without(STORED_USER, "password")),
        ("favouriteColour", without(STORED_USER, "password")),
        ("name.givenName", {**without(STORED_USER, "password"), "name": {"familyName": "Jensen"}}),
        ("name.givenName,name.familyName", without(STORED_USER, "password", "name")),
        (
            "emails.primary",
            {
                **without(STORED_USER, "password"),
                "emails": [{"value": "b@work", "type": "work"}, {"value": "b@home", "type": "home"}],
            },
        ),
        (
            f"{ENTERPRISE_USER}:department",
            {**without(STORED_USER, "password"), ENTERPRISE_USER: {"manager": {"value": "m-1", "displayName": "Boss"}}},
        ),
        (
            f"{ENTERPRISE_USER}:department,{ENTERPRISE_USER}:manager",
            without(STORED_USER, "password", ENTERPRISE_USER),
        ),
        (ENTERPRISE_USER, without(STORED_USER, "password", ENTERPRISE_USER)),
    ],
)
def test_excluded_attributes(excluded: str, expected: dict[str, Any]) -> None:
    assert project_text(STORED_USER, USER, None, excluded) == expected


def test_attributes_and_excluded_together() -> None:
    assert project_text(STORED_USER, USER, "userName,name,meta", "name.familyName,meta") == {
        "schemas": STORED_USER["schemas"],
        "id": "1",
        "userName": "bjensen",
        "name": {"givenName": "Barbara"},
    }


STORED_GROUP: dict[str, Any] = {
    "schemas": [CORE_GROUP],
    "id": "g1",
    "meta": {"resourceType": "Group"},
    "displayName": "Sales",
    "members": [{"value": "1", "display": "bjensen"}],
}


def test_entra_group_query_excludes_members() -> None:
    # Entra reads groups with GET /Groups?excludedAttributes=members&filter=displayName eq "...".
    assert project_text(STORED_GROUP, GROUP, None, "members") == without(STORED_GROUP, "members")


def test_entra_group_query_asks_for_id_only() -> None:
    # Entra probes group existence with attributes=id (and sometimes externalId).
    assert project_text(STORED_GROUP, GROUP, "id", None) == {"schemas": [CORE_GROUP], "id": "g1"}


def test_projection_does_not_share_nested_containers_it_changed() -> None:
    out = project_text(STORED_USER, USER, None, f"{ENTERPRISE_USER}:department")
    out[ENTERPRISE_USER]["costCenter"] = "x"
    assert "costCenter" not in STORED_USER[ENTERPRISE_USER]


# ---------------------------------------------------------------- returned=request and returned=never sub-attributes

DEVICE = ResourceType(
    "Device",
    "/Devices",
    Schema(
        "urn:example:params:scim:schemas:core:2.0:Device",
        "Device",
        "",
        (
            Attribute("serial", returned="always"),
            Attribute("label"),
            Attribute("secretKey", returned="never"),
            Attribute("inventory", returned="request"),
            Attribute(
                "owner",
                type="complex",
                sub_attributes=(Attribute("value"), Attribute("pin", returned="never"), Attribute("note", returned="request")),
            ),
        ),
    ),
)

STORED_DEVICE: dict[str, Any] = {
    "schemas": ["urn:example:params:scim:schemas:core:2.0:Device"],
    "id": "d1",
    "serial": "SN1",
    "label": "Printer",
    "secretKey": "k",
    "inventory": "INV-9",
    "owner": {"value": "u1", "pin": "1234", "note": "n"},
}


@pytest.mark.parametrize(
    ("attributes", "excluded", "expected"),
    [
        (
            None,
            None,
            {"schemas": STORED_DEVICE["schemas"], "id": "d1", "serial": "SN1", "label": "Printer", "owner": {"value": "u1"}},
        ),
        ("label", None, {"schemas": STORED_DEVICE["schemas"], "id": "d1", "serial": "SN1", "label": "Printer"}),
        ("inventory", None, {"schemas": STORED_DEVICE["schemas"], "id": "d1", "serial": "SN1", "inventory": "INV-9"}),
        ("secretKey,owner.pin", None, {"schemas": STORED_DEVICE["schemas"], "id": "d1", "serial": "SN1"}),
        (
            "owner",
            None,
            {"schemas": STORED_DEVICE["schemas"], "id": "d1", "serial": "SN1", "owner": {"value": "u1", "note": "n"}},
        ),
        ("owner.note", None, {"schemas": STORED_DEVICE["schemas"], "id": "d1", "serial": "SN1", "owner": {"note": "n"}}),
        (
            None,
            "serial,label,inventory",
            {"schemas": STORED_DEVICE["schemas"], "id": "d1", "serial": "SN1", "owner": {"value": "u1"}},
        ),
    ],
)
def test_returned_characteristics(attributes: str | None, excluded: str | None, expected: dict[str, Any]) -> None:
    assert project_text(STORED_DEVICE, DEVICE, attributes, excluded) == expected


# ---------------------------------------------------------------- parse_attribute_list


@pytest.mark.parametrize("text", [None, "", "   "])
def test_parse_attribute_list_absent(text: str | None) -> None:
    assert parse_attribute_list(text, USER) is None


def test_parse_attribute_list_blank_commas_is_empty_list() -> None:
    assert parse_attribute_list(" , ", USER) == []


def test_parse_attribute_list_resolves_and_ignores_unknown() -> None:
    parsed = parse_attribute_list(
        f" UserName , name.givenName,,bogus, userName, {ENTERPRISE_USER}:Manager.value, urn:example:x:1.0:User:y", USER
    )
    assert parsed is not None
    assert [(r.urn, r.attribute.name, r.sub.name if r.sub else None) for r in parsed] == [
        (None, "userName", None),
        (None, "name", "givenName"),
        (ENTERPRISE_USER, "manager", "value"),
    ]


def test_parse_attribute_list_bare_extension_urn_means_all_its_attributes() -> None:
    parsed = parse_attribute_list(ENTERPRISE_USER, USER)
    assert parsed is not None
    assert [r.attribute.name for r in parsed] == [
        "employeeNumber",
        "costCenter",
        "organization",
        "division",
        "department",
        "manager",
    ]
    assert all(isinstance(r, Resolved) and r.urn == ENTERPRISE_USER for r in parsed)
