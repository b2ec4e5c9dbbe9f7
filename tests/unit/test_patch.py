"""apply_patch: RFC 7644 §3.5.2 and the PATCH dialects of Entra ID and Okta."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from gateway.schema import CORE_GROUP, CORE_USER, ENTERPRISE_USER, PATCH_OP, group_resource_type, user_resource_type
from gateway.scim.errors import ScimError
from gateway.scim.patch import apply_patch

USER = user_resource_type()
GROUP = group_resource_type()
DELETE = object()

BASE_USER: dict[str, Any] = {
    "schemas": [CORE_USER],
    "id": "2819c223-7f76-453a-919d-413861904646",
    "externalId": "ext-1",
    "meta": {
        "resourceType": "User",
        "created": "2024-01-01T00:00:00Z",
        "lastModified": "2024-01-01T00:00:00Z",
        "version": 'W/"1"',
    },
    "userName": "bjensen@example.com",
    "name": {"givenName": "Barbara", "familyName": "Jensen"},
    "displayName": "Babs",
    "active": True,
    "emails": [
        {"value": "bjensen@example.com", "type": "work", "primary": True},
        {"value": "babs@home.example", "type": "home"},
    ],
}

MANAGED_USER: dict[str, Any] = {
    **copy.deepcopy(BASE_USER),
    "schemas": [CORE_USER, ENTERPRISE_USER],
    ENTERPRISE_USER: {"department": "Tour Operations", "manager": {"value": "m-1", "displayName": "John Smith"}},
}

BASE_GROUP: dict[str, Any] = {
    "schemas": [CORE_GROUP],
    "id": "e9e30dba-f08f-4109-8486-d5c6a331660a",
    "meta": {"resourceType": "Group", "version": 'W/"3"'},
    "displayName": "Tour Guides",
    "members": [{"value": "u1", "display": "one"}, {"value": "u2"}, {"value": "u3"}],
}


def body(*operations: Any) -> dict[str, Any]:
    return {"schemas": [PATCH_OP], "Operations": list(operations)}


def changed(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in changes.items():
        if value is DELETE:
            del out[key]
        else:
            out[key] = value
    return out


def patched(base: dict[str, Any], *operations: dict[str, Any], rtype: Any = USER) -> dict[str, Any]:
    before = copy.deepcopy(base)
    result = apply_patch(base, body(*operations), rtype)
    assert base == before, "apply_patch mutated its input"
    return result


def patch_error(base: dict[str, Any], request: Any, rtype: Any = USER) -> ScimError:
    before = copy.deepcopy(base)
    with pytest.raises(ScimError) as info:
        apply_patch(base, request, rtype)
    assert base == before, "apply_patch mutated its input"
    return info.value


# ---------------------------------------------------------------- Entra ID


def test_entra_replace_active_string_false() -> None:
    result = patched(BASE_USER, {"op": "Replace", "path": "active", "value": "False"})
    assert result == changed(BASE_USER, {"active": False})


@pytest.mark.parametrize("op", ["Add", "ADD", "add", "Replace", "replace", "REPLACE"])
def test_entra_op_in_any_case(op: str) -> None:
    result = patched(BASE_USER, {"op": op, "path": "displayName", "value": "Barbara J"})
    assert result == changed(BASE_USER, {"displayName": "Barbara J"})


def test_entra_patch_add_to_unmatched_value_path_creates_entry() -> None:
    result = patched(BASE_USER, {"op": "Add", "path": 'phoneNumbers[type eq "mobile"].value', "value": "+1 555 0100"})
    assert result == changed(BASE_USER, {"phoneNumbers": [{"type": "mobile", "value": "+1 555 0100"}]})


def test_entra_patch_replace_on_unmatched_value_path_creates_entry() -> None:
    result = patched(BASE_USER, {"op": "Replace", "path": 'emails[type eq "other"].value', "value": "b@other.example"})
    emails = [*BASE_USER["emails"], {"type": "other", "value": "b@other.example"}]
    assert result == changed(BASE_USER, {"emails": emails})


def test_entra_patch_add_to_unmatched_address_sub_attribute_creates_entry() -> None:
    result = patched(
        BASE_USER,
        {"op": "Add", "path": 'addresses[type eq "work"].streetAddress', "value": "100 Universal City Plaza"},
        {"op": "Add", "path": 'addresses[type eq "work"].locality', "value": "Hollywood"},
    )
    assert result == changed(
        BASE_USER, {"addresses": [{"type": "work", "streetAddress": "100 Universal City Plaza", "locality": "Hollywood"}]}
    )


def test_entra_patch_add_to_matched_value_path_sets_the_sub_attribute() -> None:
    result = patched(BASE_USER, {"op": "Add", "path": 'emails[type eq "work"].value', "value": "barbara@example.com"})
    emails = [{"value": "barbara@example.com", "type": "work", "primary": True}, BASE_USER["emails"][1]]
    assert result == changed(BASE_USER, {"emails": emails})


def test_entra_patch_unmatched_value_path_with_and_filter_creates_entry() -> None:
    result = patched(BASE_USER, {"op": "Add", "path": 'phoneNumbers[type eq "work" and primary eq true].value', "value": "123"})
    assert result["phoneNumbers"] == [{"type": "work", "primary": True, "value": "123"}]


@pytest.mark.parametrize(
    "value",
    ["26118915-6090-4610-87e4-49d8ca9f808d", {"value": "26118915-6090-4610-87e4-49d8ca9f808d"}],
)
def test_entra_add_manager_as_plain_id(value: Any) -> None:
    result = patched(BASE_USER, {"op": "Add", "path": f"{ENTERPRISE_USER}:manager", "value": value})
    assert result == changed(
        BASE_USER,
        {
            "schemas": [CORE_USER, ENTERPRISE_USER],
            ENTERPRISE_USER: {"manager": {"value": "26118915-6090-4610-87e4-49d8ca9f808d"}},
        },
    )


def test_entra_replace_manager_keeps_the_extension_other_attributes() -> None:
    result = patched(MANAGED_USER, {"op": "Replace", "path": f"{ENTERPRISE_USER}:manager", "value": "m-2"})
    assert result[ENTERPRISE_USER] == {
        "department": "Tour Operations",
        "manager": {"value": "m-2", "displayName": "John Smith"},
    }


def test_entra_remove_manager() -> None:
    result = patched(MANAGED_USER, {"op": "Remove", "path": f"{ENTERPRISE_USER}:manager"})
    assert result[ENTERPRISE_USER] == {"department": "Tour Operations"}


def test_entra_remove_last_extension_attribute_drops_the_extension() -> None:
    result = patched(
        MANAGED_USER,
        {"op": "Remove", "path": f"{ENTERPRISE_USER}:manager"},
        {"op": "Remove", "path": f"{ENTERPRISE_USER}:department"},
    )
    assert result == changed(MANAGED_USER, {ENTERPRISE_USER: DELETE, "schemas": [CORE_USER]})


def test_entra_remove_members_with_value_list_removes_only_those() -> None:
    result = patched(
        BASE_GROUP,
        {"op": "Remove", "path": "members", "value": [{"value": "u1"}, {"value": "u3"}]},
        rtype=GROUP,
    )
    assert result == changed(BASE_GROUP, {"members": [{"value": "u2"}]})


def test_entra_remove_members_with_unknown_member_is_a_no_op() -> None:
    result = patched(BASE_GROUP, {"op": "Remove", "path": "members", "value": [{"value": "nobody"}]}, rtype=GROUP)
    assert result == BASE_GROUP


def test_entra_add_members() -> None:
    result = patched(BASE_GROUP, {"op": "Add", "path": "members", "value": [{"value": "u4"}]}, rtype=GROUP)
    assert result["members"] == [*BASE_GROUP["members"], {"value": "u4"}]


def test_entra_replace_group_display_name() -> None:
    result = patched(BASE_GROUP, {"op": "Replace", "path": "displayName", "value": "Guides"}, rtype=GROUP)
    assert result == changed(BASE_GROUP, {"displayName": "Guides"})


def test_entra_pathless_add_with_dotted_urn_and_value_path_keys() -> None:
    result = patched(
        BASE_USER,
        {
            "op": "Add",
            "value": {
                "name.givenName": "Barb",
                f"{ENTERPRISE_USER}:department": "Sales",
                f"{ENTERPRISE_USER}:employeeNumber": "701984",
                'emails[type eq "work"].value': "barb@example.com",
                'phoneNumbers[type eq "mobile"].value': "555",
                "title": "Tour Guide",
            },
        },
    )
    assert result == changed(
        BASE_USER,
        {
            "schemas": [CORE_USER, ENTERPRISE_USER],
            "name": {"givenName": "Barb", "familyName": "Jensen"},
            ENTERPRISE_USER: {"department": "Sales", "employeeNumber": "701984"},
            "emails": [{"value": "barb@example.com", "type": "work", "primary": True}, BASE_USER["emails"][1]],
            "phoneNumbers": [{"type": "mobile", "value": "555"}],
            "title": "Tour Guide",
        },
    )


def test_entra_pathless_replace_with_urn_key_holding_an_object() -> None:
    result = patched(
        MANAGED_USER,
        {"op": "Replace", "value": {ENTERPRISE_USER: {"department": "Sales", "manager": "m-9"}}},
    )
    assert result[ENTERPRISE_USER] == {"department": "Sales", "manager": {"value": "m-9", "displayName": "John Smith"}}


def test_entra_pathless_unknown_keys_are_ignored() -> None:
    result = patched(
        BASE_USER,
        {"op": "Add", "value": {"urn:example:custom:2.0:User:badge": "7", "nickname2": "x", "displayName": "B"}},
    )
    assert result == changed(BASE_USER, {"displayName": "B"})


def test_entra_replace_roles_with_string_primary() -> None:
    value = [{"primary": "True", "type": "WindowsAzureActiveDirectoryRole", "value": "Admin"}]
    result = patched(BASE_USER, {"op": "Replace", "path": "roles", "value": value})
    assert result["roles"] == [{"primary": True, "type": "WindowsAzureActiveDirectoryRole", "value": "Admin"}]


def test_entra_url_style_urn_dot_attribute_path() -> None:
    result = patched(BASE_USER, {"op": "Add", "path": f"{ENTERPRISE_USER}.department", "value": "Sales"})
    assert result[ENTERPRISE_USER] == {"department": "Sales"}


# ---------------------------------------------------------------- Okta


def test_okta_replace_active_false_without_path() -> None:
    result = patched(BASE_USER, {"op": "replace", "value": {"active": False}})
    assert result == changed(BASE_USER, {"active": False})


def test_okta_replace_password_without_path() -> None:
    result = patched(BASE_USER, {"op": "replace", "value": {"password": "t1meMa$heen"}})
    assert result == changed(BASE_USER, {"password": "t1meMa$heen"})


def test_okta_rename_group_with_id_in_value() -> None:
    result = patched(
        BASE_GROUP,
        {"op": "replace", "value": {"id": BASE_GROUP["id"], "displayName": "Test SCIMv2"}},
        rtype=GROUP,
    )
    assert result == changed(BASE_GROUP, {"displayName": "Test SCIMv2"})


def test_okta_remove_member_by_value_filter() -> None:
    result = patched(BASE_GROUP, {"op": "remove", "path": 'members[value eq "u2"]'}, rtype=GROUP)
    assert result["members"] == [{"value": "u1", "display": "one"}, {"value": "u3"}]


def test_okta_remove_absent_member_by_value_filter_succeeds() -> None:
    result = patched(BASE_GROUP, {"op": "remove", "path": 'members[value eq "u9"]'}, rtype=GROUP)
    assert result == BASE_GROUP


def test_okta_add_members_dedupes_by_value() -> None:
    result = patched(
        BASE_GROUP,
        {"op": "add", "path": "members", "value": [{"value": "u2", "display": "two"}, {"value": "u5", "display": "five"}]},
        rtype=GROUP,
    )
    assert result["members"] == [
        {"value": "u1", "display": "one"},
        {"value": "u2", "display": "two"},
        {"value": "u3"},
        {"value": "u5", "display": "five"},
    ]


# ---------------------------------------------------------------- RFC 7644 §3.5.2 semantics

ADD, REPLACE, REMOVE = "add", "replace", "remove"


@pytest.mark.parametrize(
    ("operations", "changes"),
    [
        pytest.param(
            [{"op": ADD, "path": "emails", "value": [{"value": "b@x.example", "type": "other"}]}],
            {"emails": [*BASE_USER["emails"], {"value": "b@x.example", "type": "other"}]},
            id="add-appends-to-multi-valued",
        ),
        pytest.param(
            [{"op": ADD, "path": "emails", "value": {"value": "babs@home.example", "type": "home"}}],
            {},
            id="add-identical-element-is-deduped",
        ),
        pytest.param(
            [{"op": ADD, "path": "emails", "value": [{"value": "new@x.example", "primary": True}]}],
            {
                "emails": [
                    {"value": "bjensen@example.com", "type": "work", "primary": False},
                    BASE_USER["emails"][1],
                    {"value": "new@x.example", "primary": True},
                ]
            },
            id="add-new-primary-demotes-old",
        ),
        pytest.param(
            [{"op": REPLACE, "path": 'emails[type eq "home"].primary', "value": True}],
            {
                "emails": [
                    {"value": "bjensen@example.com", "type": "work", "primary": False},
                    {"value": "babs@home.example", "type": "home", "primary": True},
                ]
            },
            id="primary-via-value-path-demotes-old",
        ),
        pytest.param(
            [{"op": REPLACE, "path": "emails", "value": [{"value": "only@x.example", "type": "work"}]}],
            {"emails": [{"value": "only@x.example", "type": "work"}]},
            id="replace-multi-valued-replaces-list",
        ),
        pytest.param(
            [{"op": REPLACE, "path": "name", "value": {"givenName": "Barb"}}],
            {"name": {"givenName": "Barb", "familyName": "Jensen"}},
            id="replace-complex-keeps-other-sub-attributes",
        ),
        pytest.param(
            [{"op": REPLACE, "value": {"name": {"familyName": "Jensen-Smith", "middleName": "Q"}}}],
            {"name": {"givenName": "Barbara", "familyName": "Jensen-Smith", "middleName": "Q"}},
            id="pathless-replace-complex-merges",
        ),
        pytest.param(
            [{"op": ADD, "path": "name.honorificPrefix", "value": "Ms."}],
            {"name": {"givenName": "Barbara", "familyName": "Jensen", "honorificPrefix": "Ms."}},
            id="add-sub-attribute",
        ),
        pytest.param(
            [{"op": REPLACE, "path": 'emails[type eq "work"]', "value": {"value": "w@x.example"}}],
            {"emails": [{"type": "work", "value": "w@x.example"}, BASE_USER["emails"][1]]},
            id="replace-value-path-element-keeps-filter-terms",
        ),
        pytest.param(
            [{"op": ADD, "path": 'emails[type eq "home"]', "value": {"display": "Home"}}],
            {"emails": [BASE_USER["emails"][0], {"value": "babs@home.example", "type": "home", "display": "Home"}]},
            id="add-value-path-element-merges",
        ),
        pytest.param(
            [{"op": ADD, "path": 'ims[type eq "xmpp"]', "value": {"value": "babs@jabber"}}],
            {"ims": [{"type": "xmpp", "value": "babs@jabber"}]},
            id="add-unmatched-value-path-element-creates",
        ),
        pytest.param(
            [{"op": REMOVE, "path": "name.givenName"}],
            {"name": {"familyName": "Jensen"}},
            id="remove-sub-attribute",
        ),
        pytest.param(
            [{"op": REMOVE, "path": "name.givenName"}, {"op": REMOVE, "path": "name.familyName"}],
            {"name": DELETE},
            id="complex-left-empty-is-removed",
        ),
        pytest.param(
            [{"op": REMOVE, "path": 'emails[type eq "home"]'}],
            {"emails": [BASE_USER["emails"][0]]},
            id="remove-value-path",
        ),
        pytest.param(
            [{"op": REMOVE, "path": 'emails.type eq "home"'}],
            {"emails": [BASE_USER["emails"][0]]},
            id="remove-errata-7122-comparison-path",
        ),
        pytest.param(
            [{"op": REMOVE, "path": 'emails[type eq "home"].value'}],
            {"emails": [BASE_USER["emails"][0], {"type": "home"}]},
            id="remove-value-path-sub-attribute",
        ),
        pytest.param(
            [{"op": REMOVE, "path": 'emails[type eq "work" or type eq "home"]'}],
            {"emails": DELETE},
            id="list-left-empty-is-removed",
        ),
        pytest.param([{"op": REMOVE, "path": "emails"}], {"emails": DELETE}, id="remove-all-of-multi-valued"),
        pytest.param([{"op": REMOVE, "path": "nickName"}], {}, id="remove-absent-attribute-is-a-no-op"),
        pytest.param([{"op": REMOVE, "path": "externalId"}], {"externalId": DELETE}, id="remove-external-id"),
        pytest.param([{"op": REPLACE, "path": "displayName", "value": None}], {"displayName": DELETE}, id="replace-null-removes"),
        pytest.param(
            [{"op": REPLACE, "value": {"displayName": None, "title": "Guide"}}],
            {"displayName": DELETE, "title": "Guide"},
            id="pathless-replace-null-removes",
        ),
        pytest.param([{"op": ADD, "path": "displayName", "value": None}], {}, id="add-null-is-a-no-op"),
        pytest.param(
            [{"op": ADD, "path": "DISPLAYNAME", "value": "B"}, {"op": ADD, "path": "Name.GivenName", "value": "G"}],
            {"displayName": "B", "name": {"givenName": "G", "familyName": "Jensen"}},
            id="path-names-in-any-case",
        ),
        pytest.param(
            [{"op": REPLACE, "path": f"{CORE_USER}:displayName", "value": "B"}],
            {"displayName": "B"},
            id="core-urn-qualified-path",
        ),
        pytest.param(
            [{"op": ADD, "path": ENTERPRISE_USER, "value": {"department": "Sales", "costCenter": "4130"}}],
            {"schemas": [CORE_USER, ENTERPRISE_USER], ENTERPRISE_USER: {"department": "Sales", "costCenter": "4130"}},
            id="bare-extension-urn-path",
        ),
        pytest.param(
            [
                {"op": REPLACE, "path": "displayName", "value": "First"},
                {"op": REPLACE, "path": "displayName", "value": "Second"},
                {"op": ADD, "path": 'emails[value eq "babs@home.example"].display', "value": "home"},
            ],
            {"displayName": "Second", "emails": [BASE_USER["emails"][0], {**BASE_USER["emails"][1], "display": "home"}]},
            id="operations-apply-in-order",
        ),
        pytest.param(
            [{"op": REPLACE, "path": "userName", "value": "babs@example.com"}],
            {"userName": "babs@example.com"},
            id="replace-required-attribute",
        ),
    ],
)
def test_patch_semantics(operations: list[dict[str, Any]], changes: dict[str, Any]) -> None:
    assert patched(BASE_USER, *operations) == changed(BASE_USER, changes)


def test_remove_bare_extension_urn_drops_extension_and_schema() -> None:
    result = patched(MANAGED_USER, {"op": "remove", "path": ENTERPRISE_USER})
    assert result == changed(MANAGED_USER, {ENTERPRISE_USER: DELETE, "schemas": [CORE_USER]})


def test_remove_all_members() -> None:
    assert patched(BASE_GROUP, {"op": "remove", "path": "members"}, rtype=GROUP) == changed(BASE_GROUP, {"members": DELETE})


def test_own_id_in_a_value_is_accepted_in_both_forms() -> None:
    for operation in ({"op": "replace", "value": {"id": BASE_USER["id"], "active": False}},
                      {"op": "replace", "path": "id", "value": BASE_USER["id"]}):  # fmt: skip
        result = patched(BASE_USER, operation, {"op": "replace", "path": "active", "value": False})
        assert result == changed(BASE_USER, {"active": False})


READ_ONLY_IN_BOTH_FORMS = [
    ("id", "other"),
    ("meta", {"version": "x"}),
    ("meta.lastModified", "2024-01-01T00:00:00Z"),
    ("groups", [{"value": "g"}]),
    (f"{ENTERPRISE_USER}:manager.displayName", "x"),
]


@pytest.mark.parametrize(("path", "value"), READ_ONLY_IN_BOTH_FORMS, ids=[p for p, _ in READ_ONLY_IN_BOTH_FORMS])
def test_read_only_attribute_gets_the_same_answer_with_or_without_a_path(path: str, value: Any) -> None:
    """A path-less value's key answered 200 and was ignored where its path answered 400 mutability."""
    with_path = patch_error(BASE_USER, body({"op": "replace", "path": path, "value": value}))
    without = patch_error(BASE_USER, body({"op": "replace", "value": {path: value, "active": False}}))
    for error in (with_path, without):
        assert (error.status, error.scim_type) == (400, "mutability"), error
        assert path in error.detail, error


def test_result_shares_nothing_with_input() -> None:
    result = patched(BASE_USER, {"op": "replace", "path": "active", "value": False})
    result["emails"][0]["value"] = "changed"
    result["meta"]["version"] = "changed"
    assert BASE_USER["emails"][0]["value"] == "bjensen@example.com"
    assert BASE_USER["meta"]["version"] == 'W/"1"'


def test_operations_key_and_schema_urn_in_other_case() -> None:
    request = {"schemas": [PATCH_OP.lower()], "operations": [{"OP": "replace", "PATH": "active", "Value": False}]}
    assert apply_patch(BASE_USER, request, USER)["active"] is False


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("request_body", "scim_type", "detail"),
    [
        pytest.param([], "invalidSyntax", "JSON object", id="body-not-object"),
        pytest.param({"Operations": [{"op": "add", "path": "title", "value": "x"}]}, "invalidSyntax", PATCH_OP, id="no-schemas"),
        pytest.param(
            {"schemas": [CORE_USER], "Operations": [{"op": "add", "path": "title", "value": "x"}]},
            "invalidSyntax",
            PATCH_OP,
            id="wrong-schemas",
        ),
        pytest.param({"schemas": [PATCH_OP]}, "invalidSyntax", "Operations", id="no-operations"),
        pytest.param({"schemas": [PATCH_OP], "Operations": []}, "invalidSyntax", "Operations", id="empty-operations"),
        pytest.param(
            {"schemas": [PATCH_OP], "Operations": {"op": "add"}}, "invalidSyntax", "Operations", id="operations-not-list"
        ),
        pytest.param(body("add"), "invalidSyntax", "JSON object", id="operation-not-object"),
        pytest.param(body({"op": "move", "path": "title", "value": "x"}), "invalidSyntax", "'move'", id="unknown-op"),
        pytest.param(body({"path": "title", "value": "x"}), "invalidSyntax", "None", id="missing-op"),
        pytest.param(body({"op": "add", "path": "title"}), "invalidSyntax", "title", id="add-without-value"),
        pytest.param(body({"op": "remove"}), "noTarget", "remove needs a path", id="remove-without-path"),
        pytest.param(body({"op": "Remove", "path": ""}), "noTarget", "remove needs a path", id="remove-empty-path"),
        pytest.param(
            body({"op": "add", "path": "favouriteColour", "value": "x"}), "invalidPath", "favouriteColour", id="unknown-attribute"
        ),
        pytest.param(
            body({"op": "replace", "path": "name.nickname", "value": "x"}),
            "invalidPath",
            "name.nickname",
            id="unknown-sub-attribute",
        ),
        pytest.param(
            body({"op": "add", "path": 'emails[type eq "work"].label', "value": "x"}),
            "invalidPath",
            "label",
            id="unknown-sub-attribute-after-filter",
        ),
        pytest.param(
            body({"op": "add", "path": "urn:example:custom:2.0:User:badge", "value": "x"}),
            "invalidPath",
            "urn:example:custom:2.0:User:badge",
            id="unknown-schema-urn",
        ),
        pytest.param(body({"op": "replace", "path": "id", "value": "x"}), "mutability", "id", id="id-read-only"),
        pytest.param(body({"op": "remove", "path": "meta"}), "mutability", "meta", id="meta-read-only"),
        pytest.param(
            body({"op": "replace", "path": "meta.lastModified", "value": "2024-01-01T00:00:00Z"}),
            "mutability",
            "meta.lastModified",
            id="meta-sub-read-only",
        ),
        pytest.param(
            body({"op": "add", "path": "groups", "value": [{"value": "g"}]}), "mutability", "groups", id="groups-read-only"
        ),
        pytest.param(
            body({"op": "replace", "path": f"{ENTERPRISE_USER}:manager.displayName", "value": "x"}),
            "mutability",
            "manager.displayName",
            id="read-only-sub-attribute",
        ),
        pytest.param(
            body({"op": "add", "path": 'name[givenName eq "x"].familyName', "value": "y"}),
            "invalidPath",
            "name",
            id="filter-on-single-valued-complex",
        ),
        pytest.param(
            body({"op": "remove", "path": 'userName[value eq "x"]'}), "invalidPath", "userName", id="filter-on-simple-attribute"
        ),
        pytest.param(
            body({"op": "remove", "path": 'emails[label eq "x"]'}), "invalidPath", "label", id="filter-on-unknown-sub-attribute"
        ),
        pytest.param(
            body({"op": "remove", "path": 'emails[type eq "work"'}), "invalidPath", 'emails[type eq "work"', id="malformed-path"
        ),
        pytest.param(body({"op": "remove", "path": "display name"}), "invalidPath", "display name", id="malformed-path-space"),
        pytest.param(body({"op": "add", "path": 42, "value": "x"}), "invalidPath", "42", id="path-not-string"),
        pytest.param(body({"op": "remove", "path": CORE_USER}), "invalidPath", "core schema", id="remove-core-schema"),
        pytest.param(
            body({"op": "replace", "path": "active", "value": "maybe"}),
            "invalidValue",
            "active: expected a boolean, got 'maybe'",
            id="bad-boolean",
        ),
        pytest.param(
            body({"op": "replace", "path": "name.givenName", "value": 5}),
            "invalidValue",
            "name.givenName: expected a string",
            id="bad-sub-value",
        ),
        pytest.param(
            body({"op": "replace", "path": "name", "value": "Barbara"}),
            "invalidValue",
            "name: expected an object",
            id="bad-complex-value",
        ),
        pytest.param(
            body({"op": "add", "path": 'emails[type eq "work"].primary', "value": "yes"}),
            "invalidValue",
            "emails.primary: expected a boolean",
            id="bad-value-path-value",
        ),
        pytest.param(body({"op": "replace", "value": {"active": "nope"}}), "invalidValue", "active", id="bad-pathless-value"),
        pytest.param(body({"op": "replace", "value": "active"}), "invalidValue", "object value", id="pathless-value-not-object"),
        pytest.param(
            body({"op": "replace", "value": {ENTERPRISE_USER: "Sales"}}), "invalidValue", ENTERPRISE_USER, id="urn-key-not-object"
        ),
        pytest.param(
            body({"op": "add", "path": "emails", "value": [{"value": "a", "primary": True}, {"value": "b", "primary": True}]}),
            "invalidValue",
            "emails: at most one element may have primary true",
            id="two-primaries-in-one-value",
        ),
        pytest.param(body({"op": "remove", "path": "userName"}), "invalidValue", "userName is required", id="remove-required"),
        pytest.param(
            body({"op": "replace", "path": "userName", "value": None}), "invalidValue", "userName is required", id="null-required"
        ),
        pytest.param(
            body({"op": "replace", "value": {"userName": ""}}), "invalidValue", "userName is required", id="empty-required"
        ),
        pytest.param(
            body({"op": "add", "path": 'emails[value co "zzz"].type', "value": "work"}),
            "noTarget",
            'emails[value co "zzz"].type',
            id="unmatched-filter-that-cannot-create",
        ),
        pytest.param(
            body({"op": "add", "path": 'phoneNumbers[type eq "work" or type eq "home"].value', "value": "1"}),
            "noTarget",
            "phoneNumbers",
            id="unmatched-or-filter-cannot-create",
        ),
        pytest.param(
            body(
                {"op": "replace", "path": "displayName", "value": "applied first"},
                {"op": "replace", "path": "active", "value": "maybe"},
            ),
            "invalidValue",
            "active",
            id="all-or-nothing",
        ),
    ],
)
def test_patch_errors(request_body: Any, scim_type: str, detail: str) -> None:
    error = patch_error(BASE_USER, request_body)
    assert error.status == 400
    assert error.scim_type == scim_type
    assert detail in error.detail


def test_remove_group_display_name_is_refused() -> None:
    error = patch_error(BASE_GROUP, body({"op": "remove", "path": "displayName"}), GROUP)
    assert (error.status, error.scim_type, error.detail) == (400, "invalidValue", "displayName is required")
