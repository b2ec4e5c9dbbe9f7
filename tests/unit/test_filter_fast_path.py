"""The fast path for `attr op "text"` gives exactly the tree scim2-models' grammar gives, and nothing else takes it."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scim2_models.path import ScimFilter

from gateway.scim import filter as scim_filter
from gateway.scim.errors import ScimError

NAME = st.from_regex(r"[A-Za-z][A-Za-z0-9_-]{0,12}", fullmatch=True)
OP = st.sampled_from(["eq", "ne", "co", "sw", "ew", "gt", "ge", "lt", "le", "EQ", "Sw", "gE"])
TEXT = st.text(st.characters(blacklist_characters='"\\', blacklist_categories=("Cs",)), max_size=20)
SPACE = st.sampled_from(["", " ", "  "])


def grammar(text: str) -> object:
    try:
        return ScimFilter(text).ast
    except Exception as exc:  # the grammar's own error types
        return type(exc)


@settings(max_examples=300, derandomize=True, deadline=None)
@given(NAME, st.none() | NAME, OP, TEXT, SPACE, SPACE)
def test_simple_comparisons_parse_as_the_grammar_does(
    attr: str, sub: str | None, op: str, value: str, lead: str, trail: str
) -> None:
    text = f'{lead}{attr}{"." + sub if sub else ""} {op} "{value}"{trail}'
    expected = grammar(text)
    scim_filter.parse_filter_syntax.cache_clear()
    if isinstance(expected, type):  # the grammar refuses it (a control character): so must we
        assert scim_filter._SIMPLE_COMPARISON.fullmatch(text) is None
        with pytest.raises(ScimError):
            scim_filter.parse_filter_syntax(text)
    else:
        assert scim_filter.parse_filter_syntax(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        'userName eq "bjensen@example.com"',
        'displayName eq "Sales – EMEA (Zürich)"',
        'name.familyName sw "O\'Brien"',
        'externalId Eq "a b"',
    ],
)
def test_the_lookups_idps_send_take_the_fast_path(text: str) -> None:
    assert scim_filter._SIMPLE_COMPARISON.fullmatch(text) is not None
    scim_filter.parse_filter_syntax.cache_clear()
    assert scim_filter.parse_filter_syntax(text) == ScimFilter(text).ast


@pytest.mark.parametrize(
    "text",
    [
        'userName eq "a" and title eq "b"',
        'userName eq "a\\"b"',
        'emails[type eq "work"].value eq "x"',
        "active eq true",
        'urn:ietf:params:scim:schemas:core:2.0:User:userName eq "x"',
        'not (userName eq "x")',
        "userName pr",
    ],
)
def test_everything_else_goes_to_the_grammar(text: str) -> None:
    assert scim_filter._SIMPLE_COMPARISON.fullmatch(text) is None
    scim_filter.parse_filter_syntax.cache_clear()
    assert scim_filter.parse_filter_syntax(text) == ScimFilter(text).ast
