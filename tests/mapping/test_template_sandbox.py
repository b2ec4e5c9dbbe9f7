"""Templates cannot read files, import, reach Python objects, or loop or grow without bound.

Table-driven, like the folder of bad mappings: each hostile expression is put into the demo mapping
(as the `to_app` of `title`) and `scim-gateway check` must refuse the file with its message at the
rule's FILE:LINE:COL. What must pass load (it uses a variable) is bounded at run time: the second
table runs such expressions on hostile values and asserts a quick TemplateError with little memory;
the last test drives one through a gateway and sees a 400 that changes nothing.
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from gateway.cli import main
from gateway.connectors.registry import load_registry
from gateway.demo import demo_mapping_path
from gateway.mapping.compile import TemplateError, load_mapping

REFUSED_AT_LOAD: list[tuple[str, str]] = [
    # statements: include, import, for, macro, set (an expression only)
    ("{% include '/etc/passwd' %}", "statements (include, import, for, macro, set, ...) are not allowed"),
    ("{% import 'os' as os %}", "statements (include, import, for, macro, set, ...) are not allowed"),
    ("{% for x in value %}{{ x }}{% endfor %}", "statements (include, import, for, macro, set, ...) are not allowed"),
    ("{% macro m() %}{{ m() }}{% endmacro %}", "statements (include, import, for, macro, set, ...) are not allowed"),
    ("{% set x = 1 %}", "statements (include, import, for, macro, set, ...) are not allowed"),
    ("value }}{% include 'x' %}{{ value", "only one expression is allowed"),
    # Python objects behind attributes
    ("value.__class__", "private attribute '__class__' is not allowed"),
    ("value.__class__.__mro__[1].__subclasses__()", "private attribute '__subclasses__' is not allowed"),
    ("value.__init__.__globals__", "private attribute '__globals__' is not allowed"),
    ("value['__init__']", "private attribute '__init__' is not allowed"),
    ("value.__mod__", "private attribute '__mod__' is not allowed"),
    ("resource._secret", "private attribute '_secret' is not allowed"),
    # Jinja2's globals are gone: each is an undefined name
    ("lipsum.__globals__", "undefined name lipsum (valid: resource, value)"),
    ("cycler.__init__", "undefined name cycler"),
    ("joiner()", "undefined name joiner"),
    ("namespace(a=1)", "undefined name namespace"),
    ("range(10**9)", "undefined name range"),
    ("dict.mro()", "undefined name dict"),
    ("config.items()", "undefined name config"),
    ("open('/etc/passwd').read()", "undefined name open"),
    ("self", "the name 'self' (the template object) is not allowed"),
    ("self.__dict__", "private attribute '__dict__' is not allowed"),
    # methods outside the short list, string formatting, and the filters that pad, repeat or reach Python
    ("value.format(value)", "calling .format() is not allowed (methods: capitalize,"),
    ("'{0:>999999999}'.format(value)", "calling .format() is not allowed"),
    ("value.format_map(resource)", "calling .format_map() is not allowed"),
    ("value.ljust(10**9)", "calling .ljust() is not allowed"),
    ("value.zfill(10**9)", "calling .zfill() is not allowed"),
    ("value.expandtabs(10**9)", "calling .expandtabs() is not allowed"),
    ("value.translate({120: 'y'})", "calling .translate() is not allowed"),
    ("value['center'](10**9)", "calling .center() is not allowed"),
    ("resource.update({})", "calling .update() is not allowed"),
    ("'%s' % value", "string formatting with % is not allowed; join strings with ~"),
    ("'%999999999s' % value", "string formatting with % is not allowed"),
    ("'%s' | format(value)", "filter 'format' is not allowed"),
    ("value | center(10**9)", "filter 'center' is not allowed: it pads by its argument"),
    ("value | indent(10**9)", "filter 'indent' is not allowed"),
    ("value | wordwrap(1, wrapstring=value)", "filter 'wordwrap' is not allowed"),
    ("value | batch(10**9, 'x') | list", "filter 'batch' is not allowed"),
    ("value | slice(10**9, 'x') | list", "filter 'slice' is not allowed"),
    ("value | attr('__class__')", "filter 'attr' is not allowed"),
    ("value | pprint", "filter 'pprint' is not allowed"),
    ("value | random", "filter 'random' is not allowed"),
    # constant parts that grow without bound are run at load, under the run-time bounds
    ("'a' * 10**9", "the result would be too large (over 100000 items)"),
    ("value ~ ('a' * 10**9)", "the result would be too large (over 100000 items)"),
    ("10 ** 10 ** 10", "the result would be larger than 128 bits"),
    ("2 ** 100000", "exponent 100000 is too large"),
    ("(2**64) * (2**64) * (2**64)", "the result would be larger than 128 bits"),
    ("([[1] * 99999] * 99999) | sum(start=[])", "the result would be too large"),
    ("('x' * 99999) | replace('x', 'y' * 99999)", "the result would be too large"),
    ("('x' * 99999).replace('x', 'yy')", "the result would be too large"),
    ("(['a'] * 99999) | join('x' * 99)", "the result would be too large"),
    ("('x' * 99999) | list | map('replace', 'x', 'y' * 99999) | join", "the expression builds more than 2000000 items in all"),
    ("('x' * 9) | list | map('center', 10**9) | join", "filter 'center' is not allowed"),
    ("'x' | parse_date", "fails for every value"),
    # and an expression too deep for the compiler
    ("(" * 400 + "value" + ")" * 400, "the expression nests too deeply"),
]


def with_title_transform(tmp_path: Path, expression: str) -> Path:
    text = demo_mapping_path().read_text()
    assert "        field: job_title\n" in text
    # A JSON string is a YAML double-quoted scalar: any quotes and braces pass through as they are.
    text = text.replace("        field: job_title\n", f"        field: job_title\n        to_app: {json.dumps(expression)}\n")
    path = tmp_path / "demo.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(("expression", "message"), REFUSED_AT_LOAD, ids=[e[:50] for e, _ in REFUSED_AT_LOAD])
def test_check_refuses_the_expression_at_load(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], expression: str, message: str
) -> None:
    path = with_title_transform(tmp_path, expression)
    grows = any(word in message for word in ("large", "bits", "exponent", "items", "fails"))  # run at load: watch its memory
    if grows:
        tracemalloc.start()
    started = time.monotonic()
    try:
        status = main(["check", str(path)])
        peak = tracemalloc.get_traced_memory()[1] if grows else 0
    finally:
        tracemalloc.stop()
    out = capsys.readouterr().out
    assert status == 1, out
    assert time.monotonic() - started < 10 and peak < 64 * 2**20, ("check itself must stay bounded", peak)
    lines = [line for line in out.splitlines() if message in line]
    assert lines, f"{message!r} not in:\n{out}"
    assert re.match(rf"^{re.escape(str(path))}:\d+:\d+: resources\.User\.attributes\[\d+\]\.to_app: ", lines[0]), lines[0]


# ---------------------------------------------------------------- bounded at run time

BOUNDED_AT_RUN_TIME: list[tuple[str, dict[str, Any], str]] = [
    ("value * n", {"value": "x", "n": 10**9}, "too large"),
    ("[value] * n", {"value": "x", "n": 10**7}, "too large"),
    ("([value | list] * n) | sum(start=[])", {"value": "x" * 50_000, "n": 50_000}, "too large"),
    ("value + value", {"value": "x" * 60_000}, "too large"),
    ("n ** n", {"n": 10**5}, "exponent"),
    ("(n ** 60) ** 60", {"n": 10}, "128 bits"),
    ("n * n * n", {"n": 2**60}, "128 bits"),
    ("value | replace('x', value)", {"value": "x" * 99_999}, "too large"),
    ("value.replace('', value)", {"value": "x" * 1000}, "too large"),
    ("value | list | join(value)", {"value": "x" * 99_999}, "too large"),
    ("value.join(value | list)", {"value": "x" * 99_999}, "too large"),
    ("value | list | map('replace', 'x', value) | join", {"value": "x" * 99_999}, "items in all"),
    ("value | list | map('replace', '', value) | list", {"value": "x" * 40_000}, "items in all"),
    ("fmt % value", {"fmt": "%999999999s", "value": "x"}, "string formatting"),
    ("value[name](n)", {"value": "x", "name": "ljust", "n": 10**9}, "is not allowed"),
    ("value[name](n)", {"value": "x", "name": "format", "n": 10**9}, "is not allowed"),
    ("value | map(name, n) | list", {"value": "xy", "name": "center", "n": 10**9}, "filter 'center' is not allowed"),
    ("value | map(name, '__class__') | list", {"value": "xy", "name": "attr"}, "filter 'attr' is not allowed"),
    ("value[name]()", {"value": "x", "name": "__len__"}, "access to attribute '__len__' of 'str' object is unsafe"),
    ("resource | selectattr(name) | list", {"resource": ["a"], "name": "__class__"}, "unsafe"),
]


@pytest.mark.parametrize(("expression", "variables", "message"), BOUNDED_AT_RUN_TIME, ids=[e for e, _, _ in BOUNDED_AT_RUN_TIME])
def test_what_passes_load_is_bounded_at_run_time(expression: str, variables: dict[str, Any], message: str) -> None:
    from gateway.mapping.compile import compile_template
    from gateway.mapping.loader import parse_yaml
    from gateway.mapping.transforms import create_environment

    env = create_environment({})
    problems: list[Any] = []
    names = {"value", "resource", "n", "name", "fmt"}
    transform = compile_template(env, expression, names, parse_yaml("a: 1\n", "x.yaml"), ("a",), problems)
    assert not problems, problems
    assert transform is not None
    tracemalloc.start()
    started = time.monotonic()
    try:
        with pytest.raises(TemplateError, match=re.escape(message)):
            transform(**variables)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.monotonic() - started < 5, "not bounded in time"
    assert peak < 64 * 2**20, f"built {peak} bytes before refusing"


@pytest.mark.parametrize(
    "expression",
    ["value.split('@')[0][:20]", "value[1:]", "value[::2] ~ 'x'", "(value or '')[:3] | upper"],
)
def test_check_accepts_slices(tmp_path: Path, capsys: pytest.CaptureFixture[str], expression: str) -> None:
    """A slice is no expression on its own: the load-time run of constant parts must not try it alone."""
    status = main(["check", str(with_title_transform(tmp_path, expression))])
    out = capsys.readouterr().out
    assert status == 0, out


def test_ordinary_transforms_still_work() -> None:
    from gateway.mapping.compile import Transform
    from gateway.mapping.transforms import create_environment

    env = create_environment({"d": {"Sales": "S01"}})

    def run(source: str, **variables: Any) -> Any:
        return Transform(source, env.compile_expression(source, undefined_to_none=False))(**variables)

    assert run("value | lower if value else none", value="A@Example.COM") == "a@example.com"
    assert run("value.split(',') | map('trim') | join(';')", value="a, b") == "a;b"
    assert (
        run("(r.name.givenName[0] ~ r.name.familyName) | ascii | lower", r={"name": {"givenName": "Émile", "familyName": "Zola"}})
        == "ezola"
    )
    assert run("value | replace('-', '') | upper", value="ab-cd") == "ABCD"
    assert run("value.replace('-', '').strip()", value=" ab-cd ") == "abcd"
    assert run("value | lookup('d')", value="sales") == "S01"
    assert run("(value | parse_date).isoformat()", value="2024-01-02T03:04:05Z") == "2024-01-02T03:04:05+00:00"
    assert run("record.get('x', 'none') ~ (n * 2) ~ (n ** 3) ~ (n % 5)", record={}, n=7) == "none14343" + "2"
    assert run("value * 3", value="ab") == "ababab"
    assert run("value.split('@')[0][:5]", value="alexander@example.com") == "alexa"
    assert run("value | map(attribute='value') | join(',')", value=[{"value": "a"}, {"value": "b"}]) == "a,b"


async def test_a_bounded_transform_is_a_400_that_changes_nothing(tmp_path: Path, aiohttp_client: Any) -> None:
    """Through the gateway: the bound trips at request time, the IdP gets 400 invalidValue, the app gets nothing."""
    from pydantic import SecretStr

    from gateway.app import create_app
    from gateway.demo import ensure_demo_database
    from gateway.settings import GatewaySettings
    from tests.conftest import BASE, TOKEN, user_body

    data_dir = tmp_path / "data"
    ensure_demo_database(data_dir)
    path = with_title_transform(tmp_path, "value * 50000")  # fine for a short title, too large for a long one
    load_mapping(path, load_registry(), require_secrets=False)
    settings = GatewaySettings(mappings=[path], data_dir=data_dir, extra_tokens={"demo": [SecretStr(TOKEN)]})
    client = await aiohttp_client(create_app(settings))
    headers = {"Authorization": f"Bearer {TOKEN}"}
    resp = await client.post(f"{BASE}/Users", json=user_body("ok@example.com", title="a"), headers=headers)
    assert resp.status == 201, await resp.text()
    before = sqlite3.connect(data_dir / "demo.db").execute("SELECT * FROM employees").fetchall()
    resp = await client.post(f"{BASE}/Users", json=user_body("long@example.com", title="abc"), headers=headers)
    data = await resp.json(content_type=None)
    assert resp.status == 400 and data["scimType"] == "invalidValue", data
    assert "too large" in data["detail"], data
    assert sqlite3.connect(data_dir / "demo.db").execute("SELECT * FROM employees").fetchall() == before
