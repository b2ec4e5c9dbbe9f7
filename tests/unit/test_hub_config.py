"""The hub file: every problem at its line (table-driven), the rules it compiles to, its JSON Schema, and the
refusal of an app fed by the hub that also takes its own IdP credentials."""

from __future__ import annotations

import copy

import pytest

from gateway.connectors.registry import load_registry
from gateway.demo import demo_mapping_path
from gateway.hub.config import HubConfig, compile_hub, fed_apps_problems, hub_json_schema
from gateway.mapping.compile import compile_mapping
from gateway.mapping.loader import MappingFileError, parse_yaml, read_document
from tests.conftest import ENTERPRISE_URN

GOOD = """\
auth:
  bearer:
    - sha256: "0000000000000000000000000000000000000000000000000000000000000000"
apps:
  demo:
    users:
      member_of: [Engineering]
      when: "user.department == 'Sales' and user.active"
    groups: [Engineering, Ops]
    leave: delete
  hr:
    users: {everyone: true}
"""

BAD = [
    ("apps: {}\n", ["hub.yaml:1:7: apps: name at least one app"]),
    ("auth: {}\n", ["hub.yaml:1:1: apps: required key is missing"]),
    (
        "apps:\n  demo:\n    users: {evryone: true}\n",
        ["hub.yaml:3:13: apps.demo.users.evryone: unknown key 'evryone' (did you mean everyone?)"],
    ),
    ("apps:\n  demo:\n    users: {}\n", ["hub.yaml:3:12: apps.demo.users: say which users the app gets"]),
    ("apps:\n  demo:\n    users: {everyone: true}\n    leave: drop\n", ["hub.yaml:4:12: apps.demo.leave: Input should be"]),
    (
        "apps:\n  demo:\n    users:\n      when: \"usr.department == 'x'\"\n",
        ["hub.yaml:4:13: apps.demo.users.when: undefined name usr (valid: user)"],
    ),
    ('apps:\n  demo:\n    users:\n      when: "user.("\n', ["hub.yaml:4:13: apps.demo.users.when: invalid expression"]),
    (
        # every problem, not the first only: a model error and an expression error together
        'delivery: {concurency: 2}\napps:\n  demo:\n    users:\n      when: "nope"\n',
        ["hub.yaml:1:12: delivery.concurency: unknown key", "hub.yaml:5:13: apps.demo.users.when: undefined name nope"],
    ),
    ("auth:\n  bearer:\n    - token: plain\napps:\n  demo:\n    users: {everyone: true}\n", ["hub.yaml:3:7: auth.bearer[0]"]),
]


@pytest.mark.parametrize(("text", "expected"), BAD)
def test_each_problem_of_a_hub_file_is_named_at_its_line(text: str, expected: list[str]) -> None:
    with pytest.raises(MappingFileError) as caught:
        compile_hub(parse_yaml(text, "hub.yaml"), require_secrets=False)
    found = [str(p) for p in caught.value.problems]
    assert len(found) == len(expected), found
    for line, start in zip(sorted(found), sorted(expected), strict=True):
        assert line.startswith(start), (line, start)


def test_the_rules_say_which_apps_a_resource_belongs_in() -> None:
    doc = parse_yaml(GOOD, "hub.yaml")
    before = copy.deepcopy(doc.data)
    hub = compile_hub(doc)
    assert doc.data == before  # loading never mutates its input
    route = hub.rules.route
    assert route("User", {"userName": "a"}, set()) == {"hr"}
    assert route("User", {"userName": "a"}, {"engineering"}) == {"demo", "hr"}  # group names in any case
    sales = {"userName": "a", "active": True, ENTERPRISE_URN: {"department": "Sales"}}
    assert route("User", sales, set()) == {"demo", "hr"}
    assert route("User", {**sales, "active": False}, set()) == {"hr"}
    assert route("Group", {"displayName": "OPS"}, set()) == {"demo", "hr"}
    assert route("Group", {"displayName": "Finance"}, set()) == {"hr"}  # hr: groups all (the default)


def test_an_app_fed_by_the_hub_must_exist_and_take_no_idp_credentials_of_its_own() -> None:
    hub = compile_hub(parse_yaml(GOOD, "hub.yaml"))
    demo = compile_mapping(read_document(demo_mapping_path()), load_registry())
    problems = [str(p) for p in fed_apps_problems(hub, [demo], {})]
    assert problems == ["hub.yaml:11:3: apps.hr: no mapping defines app 'hr' (valid: demo)"]
    problems = [str(p) for p in fed_apps_problems(hub, [demo], {"demo": ["a-token"]})]
    assert any("app 'demo' is fed by the hub but also accepts its own IdP credentials" in p for p in problems), problems


def test_the_json_schema_is_the_models() -> None:
    schema = hub_json_schema()
    assert schema == HubConfig.model_json_schema()
    assert set(schema["properties"]) == {"description", "auth", "delivery", "apps"}
    assert schema["additionalProperties"] is False
