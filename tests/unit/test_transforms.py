"""The template language: our filters, and what the sandbox refuses at load or bounds at run time."""

from __future__ import annotations

import pytest

from gateway.mapping.compile import TemplateError, Transform
from gateway.mapping.transforms import create_environment

ENV = create_environment({"departments": {"Sales": "S01", "Engineering": "E02"}, "codes": {"yes": 1, "no": 0}})


def run(source: str, **variables: object) -> object:
    parsed = ENV.parse("{{ " + source + " }}")
    assert ENV.check(parsed) == []
    return Transform(source, ENV.compile_expression(source, undefined_to_none=False))(**variables)


def problems(source: str) -> list[str]:
    return ENV.check(ENV.parse("{{ " + source + " }}"))


def test_lookup_both_ways_case_insensitively_and_with_defaults() -> None:
    assert run("value | lookup('departments')", value="sales") == "S01"
    assert run("value | lookup('departments', reverse=true)", value="E02") == "Engineering"
    assert run("value | lookup('codes', reverse=true)", value=0) == "no"
    assert run("value | lookup('departments', default='X99')", value="Legal") == "X99"
    assert run("value | lookup('departments')", value=None) is None
    with pytest.raises(TemplateError, match="'Legal' is not in lookup table 'departments'"):
        run("value | lookup('departments')", value="Legal")


def test_dates_parse_and_format() -> None:
    assert run("value | format_date('%d.%m.%Y')", value="2024-03-01T10:00:00Z") == "01.03.2024"
    assert run("value | parse_date('%d.%m.%Y') | format_date", value="01.03.2024") == "2024-03-01T00:00:00Z"
    assert run("value | format_date('%Y')", value=None) is None
    with pytest.raises(TemplateError):
        run("value | parse_date('%d.%m.%Y')", value="2024-13-45")


def test_ascii_split_join_and_computed_names() -> None:
    assert run("value | ascii", value="Zoë Ñandú") == "Zoe Nandu"
    assert run("value.split(',')", value="a,b") == ["a", "b"]
    assert (
        run("(r.name.givenName[0] ~ r.name.familyName) | ascii | lower", r={"name": {"givenName": "Émile", "familyName": "Zola"}})
        == "ezola"
    )


def test_load_time_refusals() -> None:
    assert problems("value.__class__") == ["private attribute '__class__' is not allowed"]
    assert problems("value['_secret']") == ["private attribute '_secret' is not allowed"]
    assert problems("value }}{% include 'x' %}{{ value") == [
        "only one expression is allowed (no {% %} statements, no text around it)"
    ]
    assert problems("value | lookup(name)") == ["lookup needs the table's name as a quoted string: value | lookup('departments')"]
    assert "did you mean departments?" in problems("value | lookup('department')")[0]


@pytest.mark.parametrize("source", ["value * 10**9", "[value] * 10**7", "n ** 100000", "value * 99999 + value * 99999"])
def test_huge_values_are_refused_at_run_time(source: str) -> None:
    # With a variable in it, the expression passes load (tests/mapping/test_template_sandbox.py: constant ones do not).
    with pytest.raises(TemplateError):
        run(source, value="x", n=2)


def test_the_sandbox_cannot_reach_python() -> None:
    assert problems("value.mro()")[0].startswith("calling .mro() is not allowed")  # refused at load
    with pytest.raises(TemplateError, match="calling .*upper.* is not allowed"):
        run("value['upper']()", value=str)  # and at run time: no method of a type, a class or a module is callable
    with pytest.raises(TemplateError, match="calling .*format.* is not allowed"):
        run("value[name]()", value="{0:>999999}", name="format")
    assert not ENV.globals  # no range(10**9), lipsum, cycler, joiner, namespace, dict
