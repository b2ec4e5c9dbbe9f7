"""The mapping as requests run it: transforms that skip Jinja2's render context (constants, bare names,
functions of `value` remembered), the per-rule getters and setters, and the JSON copy overlay makes."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from gateway.mapping.access import getter, setter
from gateway.mapping.loader import parse_yaml
from gateway.mapping.template import MEMO_ENTRIES, TemplateError, Transform, compile_template
from gateway.mapping.transforms import create_environment
from gateway.schema import ENTERPRISE_USER, json_copy, user_resource_type

ENV = create_environment({"codes": {"A": "active", "I": "inactive"}})
NAMES = {"value", "resource", "record"}


def compiled(source: str) -> Transform:
    problems: list[Any] = []
    transform = compile_template(ENV, source, NAMES, parse_yaml("a: 1\n", "x.yaml"), ("a",), problems)
    assert not problems and transform is not None
    return transform


def plain(source: str) -> Transform:
    """The same expression always run through Jinja2 (what every transform did before)."""
    return Transform(source, ENV.compile_expression(source, undefined_to_none=False))


@pytest.mark.parametrize(
    ("source", "kind"),
    [
        ("'A'", "constant"),
        ("none", "constant"),
        ("42", "constant"),
        ("value", "name"),
        ("resource", "name"),
        ("value | lower if value else none", "value"),
        ("none if value is none else ('A' if value else 'I')", "value"),
        ("value | lookup('codes', default='?')", "value"),
        ("value ~ '-' ~ record.x", "jinja"),
        ("['a', 'b']", "value"),
    ],
)
def test_each_shape_answers_as_jinja_does(source: str, kind: str) -> None:
    fast, slow = compiled(source), plain(source)
    assert fast.kind == kind
    for value in ("Ab@X.test", "", None, True, False, 1, 0, 1.0, "A", "I", "Q"):
        variables = {"value": value, "resource": {"userName": "u"}, "record": {"x": "y"}}
        for _ in range(2):  # the second call of a `value` transform is remembered
            try:
                expected: Any = slow(**variables)
            except TemplateError as exc:
                with pytest.raises(TemplateError, match=str(exc).replace("(", r"\(").replace(")", r"\)")):
                    fast(**variables)
                continue
            got = fast(**variables)
            assert got == expected and type(got) is type(expected), (source, value)


def test_remembered_answers_are_kept_apart_by_type_and_never_shared_when_mutable() -> None:
    text = compiled("value ~ ''")
    assert [text(value=v) for v in (1, True, 1.0, "1")] == ["1", "True", "1.0", "1"]
    listed = compiled("value.split(',')")
    first = listed(value="a,b")
    first.append("changed")
    assert listed(value="a,b") == ["a", "b"]  # a list answer is computed again, never handed out twice
    assert listed._memo == {}


def test_errors_are_raised_every_time_and_memory_is_bounded() -> None:
    failing = compiled("value + 1")
    for _ in range(2):
        with pytest.raises(TemplateError):
            failing(value="a")
    assert failing._memo == {}
    upper = compiled("value | upper")
    for i in range(MEMO_ENTRIES + 10):
        assert upper(value=f"v{i}") == f"V{i}"
    assert 0 < len(upper._memo) <= MEMO_ENTRIES
    long = "x" * 1000
    assert upper(value=long) == long.upper() and (str, long) not in upper._memo


def test_a_bare_name_not_given_answers_as_jinja_does() -> None:
    # Jinja2 answers a strict Undefined (which fails where it is used): the fast path gives the same.
    assert type(compiled("resource")(value=1)) is type(plain("resource")(value=1))


RTYPE = user_resource_type()


def paths() -> list[tuple[Any, dict[str, Any] | None]]:
    return [
        (RTYPE.resolve("userName"), None),
        (RTYPE.resolve("name", "givenName"), None),
        (RTYPE.resolve("emails", "value"), {"type": "work"}),
        (RTYPE.resolve("phoneNumbers", "value"), None),
        (RTYPE.resolve("department", None, ENTERPRISE_USER), None),
        (RTYPE.resolve("manager", "value", ENTERPRISE_USER), None),
    ]


RESOURCES: list[dict[str, Any]] = [
    {},
    {"userName": "u", "name": {"givenName": "G", "familyName": "F"}},
    {"emails": [{"type": "home", "value": "h@x"}, {"type": "WORK", "value": "w@x", "primary": True}]},
    {"emails": [{"type": "work", "value": "w@x"}], "phoneNumbers": [{"value": "1"}, {"value": "2", "primary": True}]},
    {ENTERPRISE_USER: {"department": "D", "manager": {"value": "m1"}}},
    {ENTERPRISE_USER: {"manager": {"value": "m1"}}, "name": "not a dict", "emails": "nor a list"},
    {ENTERPRISE_USER: "not a dict"},
]


# ---- the per-rule code as it was before it was compiled (gateway/mapping/translate.py), the oracle below


class _Rule:
    def __init__(self, resolved: Any, selector: dict[str, Any] | None) -> None:
        self.resolved, self.selector = resolved, selector


def _container(resource: dict[str, Any], rule: Any, create: bool) -> dict[str, Any] | None:
    urn = rule.resolved.urn
    if urn is None:
        return resource
    found = resource.get(urn)
    if isinstance(found, dict):
        return found
    if create:
        resource[urn] = {}
        return resource[urn]
    return None


def _selects(element: Any, selector: dict[str, Any]) -> bool:
    if not isinstance(element, dict):
        return False
    for key, expected in selector.items():
        actual = element.get(key)
        if isinstance(expected, str) and isinstance(actual, str):
            if actual.casefold() != expected.casefold():
                return False
        elif actual != expected:
            return False
    return True


def read_rule(resource: dict[str, Any], rule: Any) -> Any:
    """The SCIM value a rule maps, or None."""
    container = _container(resource, rule, create=False)
    if container is None:
        return None
    attribute, sub = rule.resolved.attribute, rule.resolved.sub
    value = container.get(attribute.name)
    if sub is None:
        return value
    if attribute.multi_valued:
        if not isinstance(value, list):
            return None
        if rule.selector is not None:
            element = next((e for e in value if _selects(e, rule.selector)), None)
        else:
            element = next((e for e in value if isinstance(e, dict) and e.get("primary") is True), None)
            element = element or next((e for e in value if isinstance(e, dict)), None)
        return element.get(sub.name) if isinstance(element, dict) else None
    return value.get(sub.name) if isinstance(value, dict) else None


def write_rule(resource: dict[str, Any], rule: Any, value: Any) -> None:
    """Set (or, for None, clear) the SCIM value a rule maps, in place."""
    attribute, sub = rule.resolved.attribute, rule.resolved.sub
    container = _container(resource, rule, create=value is not None)
    if container is None:
        return
    if sub is None:
        if value is None:
            container.pop(attribute.name, None)
        else:
            container[attribute.name] = value
    elif attribute.multi_valued:
        elements = container.get(attribute.name)
        if not isinstance(elements, list):
            elements = []
        selector = rule.selector or {}
        index = next((i for i, e in enumerate(elements) if _selects(e, selector)), None)
        if value is None:
            if index is not None:
                element = dict(elements[index])
                element.pop(sub.name, None)
                if set(element) - set(selector) - {"primary"}:
                    elements[index] = element
                else:
                    del elements[index]
        elif index is None:
            elements.append({**selector, sub.name: value})
        else:
            elements[index] = {**elements[index], sub.name: value}
        if elements:
            container[attribute.name] = elements
        else:
            container.pop(attribute.name, None)
    else:
        parent = container.get(attribute.name)
        parent = dict(parent) if isinstance(parent, dict) else {}
        if value is None:
            parent.pop(sub.name, None)
        else:
            parent[sub.name] = value
        if parent:
            container[attribute.name] = parent
        else:
            container.pop(attribute.name, None)
    if rule.resolved.urn is not None and not resource.get(rule.resolved.urn):
        resource.pop(rule.resolved.urn, None)


@pytest.mark.parametrize("resource", RESOURCES)
def test_getters_and_setters_do_what_the_rule_walk_did_without_changing_a_shallow_copy(resource: dict[str, Any]) -> None:
    for resolved, selector in paths():
        get, put = getter(resolved, selector), setter(resolved, selector)
        assert get(resource) == read_rule(resource, _Rule(resolved, selector))
        for value in ("new", None, ""):
            before = copy.deepcopy(resource)
            expected = copy.deepcopy(resource)
            write_rule(expected, _Rule(resolved, selector), value)
            out = dict(resource)
            put(out, value)
            assert out == expected
            assert resource == before  # nothing below the top level was changed in place


def test_setting_and_clearing_follow_the_value_filter() -> None:
    emails, _ = paths()[2]
    put, get = setter(emails, {"type": "work"}), getter(emails, {"type": "work"})
    out: dict[str, Any] = {"emails": [{"type": "home", "value": "h@x"}]}
    put(out, "w@x")
    assert out["emails"] == [{"type": "home", "value": "h@x"}, {"type": "work", "value": "w@x"}] and get(out) == "w@x"
    put(out, None)
    assert out["emails"] == [{"type": "home", "value": "h@x"}]
    department = setter(RTYPE.resolve("department", None, ENTERPRISE_USER), None)
    holder: dict[str, Any] = {ENTERPRISE_USER: {"department": "D"}}
    department(holder, None)
    assert holder == {}  # an extension left empty goes


def test_json_copy_is_a_deep_copy() -> None:
    class Odd:
        def __init__(self) -> None:
            self.items = [1]

    tree = {"a": [{"b": "c"}, 1, 2.5, None, True], "odd": Odd()}
    copied = json_copy(tree)
    assert copied["a"] == tree["a"] and copied["a"] is not tree["a"] and copied["a"][0] is not tree["a"][0]
    assert copied["odd"] is not tree["odd"] and copied["odd"].items == [1]
