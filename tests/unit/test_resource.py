"""normalize_resource / normalize_value: what Entra ID and Okta POST and PUT, and what must be refused."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from gateway.schema import CORE_GROUP, CORE_USER, ENTERPRISE_USER, group_resource_type, user_resource_type
from gateway.scim.errors import ScimError
from gateway.scim.resource import normalize_resource, normalize_value

USER = user_resource_type()
GROUP = group_resource_type()

# What Okta POSTs to /Users (Okta SCIM 2.0 developer guide), verbatim shape.
OKTA_CREATE_USER: dict[str, Any] = {
    "schemas": [CORE_USER],
    "userName": "test.user@okta.local",
    "name": {"givenName": "Test", "familyName": "User"},
    "emails": [{"primary": True, "value": "test.user@okta.local", "type": "work"}],
    "displayName": "Test User",
    "locale": "en-US",
    "externalId": "00ujl29u0le5T6Aj10h7",
    "groups": [],
    "password": "1mz050nq",
    "active": True,
}

# What Entra ID POSTs to /Users (Entra SCIM validator / provisioning logs).
ENTRA_CREATE_USER: dict[str, Any] = {
    "schemas": [CORE_USER, ENTERPRISE_USER],
    "externalId": "0a21f0f2-8d2a-4f8e-bf98-7363c4aed4ef",
    "userName": "Test_User_ab6490ee@testuser.com",
    "active": "True",
    "emails": [{"primary": True, "type": "work", "value": "Test_User_fd0ea19b@testuser.com"}],
    "meta": {"resourceType": "User"},
    "name": {"formatted": "givenName familyName", "familyName": "familyName", "givenName": "givenName"},
    "roles": [],
    f"{ENTERPRISE_USER}:department": "Sales",
    f"{ENTERPRISE_USER}:manager": "26118915-6090-4610-87e4-49d8ca9f808d",
}

# Entra creates groups with a Microsoft schema URN nobody else knows.
ENTRA_CREATE_GROUP: dict[str, Any] = {
    "schemas": [CORE_GROUP, "http://schemas.microsoft.com/2006/11/ResourceManagement/ADSCIM/2.0/Group"],
    "externalId": "8aa1a0c0-c4c3-4bc0-b4a5-2ef676900159",
    "displayName": "Group1DisplayName",
    "meta": {"resourceType": "Group"},
}


def test_okta_create_user() -> None:
    assert normalize_resource(OKTA_CREATE_USER, USER) == {
        "userName": "test.user@okta.local",
        "name": {"givenName": "Test", "familyName": "User"},
        "emails": [{"primary": True, "value": "test.user@okta.local", "type": "work"}],
        "displayName": "Test User",
        "locale": "en-US",
        "externalId": "00ujl29u0le5T6Aj10h7",
        "password": "1mz050nq",
        "active": True,
    }


def test_entra_create_user_with_flattened_extension_and_string_boolean() -> None:
    assert normalize_resource(ENTRA_CREATE_USER, USER) == {
        "externalId": "0a21f0f2-8d2a-4f8e-bf98-7363c4aed4ef",
        "userName": "Test_User_ab6490ee@testuser.com",
        "active": True,
        "emails": [{"primary": True, "type": "work", "value": "Test_User_fd0ea19b@testuser.com"}],
        "name": {"formatted": "givenName familyName", "familyName": "familyName", "givenName": "givenName"},
        ENTERPRISE_USER: {"department": "Sales", "manager": {"value": "26118915-6090-4610-87e4-49d8ca9f808d"}},
    }


def test_entra_create_group_with_unknown_schema_urn() -> None:
    assert normalize_resource(ENTRA_CREATE_GROUP, GROUP) == {
        "externalId": "8aa1a0c0-c4c3-4bc0-b4a5-2ef676900159",
        "displayName": "Group1DisplayName",
    }


@pytest.mark.parametrize(
    "body",
    [OKTA_CREATE_USER, ENTRA_CREATE_USER, {"userName": "a", "emails": {"value": "x"}, "manager": None}],
)
def test_input_is_not_mutated(body: dict[str, Any]) -> None:
    before = copy.deepcopy(body)
    normalize_resource(body, USER)
    assert body == before


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        # names in any case become canonical
        ({"USERNAME": "a", "Name": {"GIVENNAME": "G"}}, {"userName": "a", "name": {"givenName": "G"}}),
        (
            {"userName": "a", "emails": [{"VALUE": "x@y", "Type": "work"}]},
            {"userName": "a", "emails": [{"value": "x@y", "type": "work"}]},
        ),
        # unknown attributes, sub-attributes and schema URNs are tolerated and dropped
        ({"userName": "a", "favouriteColour": "blue"}, {"userName": "a"}),
        ({"userName": "a", "name": {"givenName": "G", "nickname": "x"}}, {"userName": "a", "name": {"givenName": "G"}}),
        ({"userName": "a", "urn:example:custom:2.0:User": {"x": 1}}, {"userName": "a"}),
        ({"userName": "a", "urn:example:custom:2.0:User:x": 1}, {"userName": "a"}),
        # nulls are dropped, and so is whatever becomes empty
        ({"userName": "a", "displayName": None, "name": {"givenName": None}}, {"userName": "a"}),
        ({"userName": "a", "emails": [None, {"value": None}]}, {"userName": "a"}),
        ({"userName": "a", "emails": []}, {"userName": "a"}),
        # readOnly attributes and sub-attributes are dropped silently
        ({"userName": "a", "id": "x", "meta": {"created": "2020-01-01T00:00:00Z"}}, {"userName": "a"}),
        ({"userName": "a", "groups": [{"value": "g1"}]}, {"userName": "a"}),
        (
            {"userName": "a", ENTERPRISE_USER: {"manager": {"value": "m", "displayName": "Boss"}}},
            {"userName": "a", ENTERPRISE_USER: {"manager": {"value": "m"}}},
        ),
        # booleans as strings, in any case
        ({"userName": "a", "active": "false"}, {"userName": "a", "active": False}),
        ({"userName": "a", "active": "TRUE"}, {"userName": "a", "active": True}),
        (
            {"userName": "a", "roles": [{"value": "Admin", "primary": "True"}]},
            {"userName": "a", "roles": [{"value": "Admin", "primary": True}]},
        ),
        # a single object for a multi-valued attribute is wrapped
        ({"userName": "a", "emails": {"value": "x@y"}}, {"userName": "a", "emails": [{"value": "x@y"}]}),
        # extension nested, URN in another case; flattened with a dotted sub-attribute
        (
            {"userName": "a", ENTERPRISE_USER.upper(): {"Department": "D", "costCenter": "42"}},
            {"userName": "a", ENTERPRISE_USER: {"department": "D", "costCenter": "42"}},
        ),
        (
            {"userName": "a", f"{ENTERPRISE_USER}:manager.value": "m"},
            {"userName": "a", ENTERPRISE_USER: {"manager": {"value": "m"}}},
        ),
        # the `URN.attr` spelling of a qualified name
        ({"userName": "a", f"{ENTERPRISE_USER}.department": "D"}, {"userName": "a", ENTERPRISE_USER: {"department": "D"}}),
        # nested and flattened forms of one extension add up
        (
            {"userName": "a", ENTERPRISE_USER: {"department": "D"}, f"{ENTERPRISE_USER}:division": "V"},
            {"userName": "a", ENTERPRISE_USER: {"department": "D", "division": "V"}},
        ),
        # core attributes qualified with the core URN
        ({f"{CORE_USER}:userName": "a"}, {"userName": "a"}),
        # binary values travel as (base64) strings
        ({"userName": "a", "x509Certificates": [{"value": "TUlJ"}]}, {"userName": "a", "x509Certificates": [{"value": "TUlJ"}]}),
        # schemas, id and meta belong to the caller
        ({"userName": "a", "schemas": ["whatever"]}, {"userName": "a"}),
    ],
)
def test_normalize_resource(body: dict[str, Any], expected: dict[str, Any]) -> None:
    assert normalize_resource(body, USER) == expected


@pytest.mark.parametrize(
    ("body", "scim_type", "detail"),
    [
        ([{"userName": "a"}], "invalidSyntax", "JSON object"),
        ("userName=a", "invalidSyntax", "JSON object"),
        ({"displayName": "no user name"}, "invalidValue", "userName is required"),
        ({"userName": ""}, "invalidValue", "userName is required"),
        ({"userName": "   "}, "invalidValue", "userName is required"),
        ({"userName": None}, "invalidValue", "userName is required"),
        ({"userName": "a", "active": "maybe"}, "invalidValue", "active: expected a boolean, got 'maybe'"),
        ({"userName": "a", "active": 1}, "invalidValue", "active: expected a boolean, got 1"),
        ({"userName": 42}, "invalidValue", "userName: expected a string, got 42"),
        ({"userName": "a", "displayName": ["x"]}, "invalidValue", "displayName: expected a string"),
        ({"userName": "a", "name": "Barbara Jensen"}, "invalidValue", "name: expected an object, got 'Barbara Jensen'"),
        ({"userName": "a", "emails": ["a@b"]}, "invalidValue", "emails: expected an object"),
        ({"userName": "a", "name": {"givenName": 7}}, "invalidValue", "name.givenName: expected a string, got 7"),
        ({"userName": "a", "emails": [{"value": "x", "primary": "yes"}]}, "invalidValue", "emails.primary: expected a boolean"),
        (
            {"userName": "a", "emails": [{"value": "x", "primary": True}, {"value": "y", "primary": "true"}]},
            "invalidValue",
            "emails: at most one element may have primary true",
        ),
        ({"userName": "a", ENTERPRISE_USER: "Sales"}, "invalidValue", f"{ENTERPRISE_USER}: expected an object"),
        (
            {"userName": "a", ENTERPRISE_USER: {"department": 5}},
            "invalidValue",
            f"{ENTERPRISE_USER}:department: expected a string",
        ),
        ({"userName": "a", f"{ENTERPRISE_USER}:manager": 5}, "invalidValue", f"{ENTERPRISE_USER}:manager: expected an object"),
    ],
)
def test_normalize_resource_errors(body: Any, scim_type: str, detail: str) -> None:
    with pytest.raises(ScimError) as info:
        normalize_resource(body, USER)
    assert info.value.status == 400
    assert info.value.scim_type == scim_type
    assert detail in info.value.detail


def test_group_requires_display_name() -> None:
    with pytest.raises(ScimError) as info:
        normalize_resource({"members": [{"value": "u1"}]}, GROUP)
    assert (info.value.status, info.value.scim_type, info.value.detail) == (400, "invalidValue", "displayName is required")


def test_okta_create_group_with_members() -> None:
    body = {"schemas": [CORE_GROUP], "displayName": "Test SCIMv2", "members": [{"value": "u1", "display": "a@b"}]}
    assert normalize_resource(body, GROUP) == {"displayName": "Test SCIMv2", "members": [{"value": "u1", "display": "a@b"}]}


def test_enterprise_attributes_unknown_without_the_extension() -> None:
    bare = user_resource_type(extensions=())
    body = {"userName": "a", ENTERPRISE_USER: {"department": "D"}, f"{ENTERPRISE_USER}:division": "V"}
    assert normalize_resource(body, bare) == {"userName": "a"}


# ---------------------------------------------------------------- typed attributes via a custom schema


def _typed_resource_type() -> Any:
    from gateway.schema import Attribute, ResourceType, Schema

    schema = Schema(
        "urn:example:params:scim:schemas:core:2.0:Device",
        "Device",
        "",
        (
            Attribute("serial", required=True),
            Attribute("ports", type="integer"),
            Attribute("weight", type="decimal"),
            Attribute("seen", type="dateTime"),
            Attribute("tags", multi_valued=True),
        ),
    )
    return ResourceType("Device", "/Devices", schema)


DEVICE = _typed_resource_type()


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"serial": "s", "ports": 4}, {"serial": "s", "ports": 4}),
        ({"serial": "s", "ports": 4.0}, {"serial": "s", "ports": 4}),
        ({"serial": "s", "weight": 1}, {"serial": "s", "weight": 1}),
        ({"serial": "s", "weight": 1.5}, {"serial": "s", "weight": 1.5}),
        ({"serial": "s", "seen": "2024-05-01T10:00:00Z"}, {"serial": "s", "seen": "2024-05-01T10:00:00Z"}),
        ({"serial": "s", "seen": "2024-05-01T10:00:00.123+02:00"}, {"serial": "s", "seen": "2024-05-01T10:00:00.123+02:00"}),
        ({"serial": "s", "tags": "one"}, {"serial": "s", "tags": ["one"]}),
        ({"serial": "s", "tags": ["one", None, "two"]}, {"serial": "s", "tags": ["one", "two"]}),
    ],
)
def test_typed_values(body: dict[str, Any], expected: dict[str, Any]) -> None:
    assert normalize_resource(body, DEVICE) == expected


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({"serial": "s", "ports": "4"}, "ports: expected an integer, got '4'"),
        ({"serial": "s", "ports": 4.5}, "ports: expected an integer, got 4.5"),
        ({"serial": "s", "ports": True}, "ports: expected an integer, got True"),
        ({"serial": "s", "weight": "1.5"}, "weight: expected a number, got '1.5'"),
        ({"serial": "s", "weight": False}, "weight: expected a number, got False"),
        ({"serial": "s", "seen": "yesterday"}, "seen: expected an ISO 8601 dateTime, got 'yesterday'"),
        ({"serial": "s", "seen": 1714557600}, "seen: expected an ISO 8601 dateTime, got 1714557600"),
        ({"serial": "s", "tags": [1]}, "tags: expected a string, got 1"),
        ({"ports": 1}, "serial is required"),
    ],
)
def test_typed_value_errors(body: dict[str, Any], detail: str) -> None:
    with pytest.raises(ScimError) as info:
        normalize_resource(body, DEVICE)
    assert (info.value.status, info.value.scim_type, info.value.detail) == (400, "invalidValue", detail)


# ---------------------------------------------------------------- normalize_value and name helpers


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("active", "False", False),
        ("name.givenName", "G", "G"),
        ("emails", {"value": "x"}, [{"value": "x"}]),
        ("emails.primary", "true", True),
        (f"{ENTERPRISE_USER}:manager", "m1", {"value": "m1"}),
        (f"{ENTERPRISE_USER}:manager", {"value": "m1", "displayName": "Boss"}, {"value": "m1"}),
        ("displayName", None, None),
    ],
)
def test_normalize_value(name: str, value: Any, expected: Any) -> None:
    resolved = USER.resolve_dotted(name)
    assert resolved is not None
    assert normalize_value(value, resolved) == expected


def test_normalize_value_element_of_multi_valued() -> None:
    resolved = USER.resolve_dotted("emails")
    assert resolved is not None
    assert normalize_value({"Value": "x", "primary": "False"}, resolved, element=True) == {"value": "x", "primary": False}


def test_normalize_value_error_names_sub_attribute() -> None:
    resolved = USER.resolve_dotted("name.familyName")
    assert resolved is not None
    with pytest.raises(ScimError) as info:
        normalize_value(3, resolved)
    assert info.value.detail == "name.familyName: expected a string, got 3"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("userName", (None, "userName")),
        (f"{ENTERPRISE_USER}:department", (ENTERPRISE_USER, "department")),
        (f"{ENTERPRISE_USER}.department", (ENTERPRISE_USER, "department")),
        (ENTERPRISE_USER.lower(), (ENTERPRISE_USER, "")),
        (f"{CORE_USER}:name.givenName", (CORE_USER, "name.givenName")),
        ("urn:example:unknown:2.0:User:x", None),
    ],
)
def test_split_urn(text: str, expected: Any) -> None:
    assert USER.split_urn(text) == expected
