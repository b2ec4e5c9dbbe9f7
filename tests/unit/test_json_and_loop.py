"""The fast JSON codec answers as the standard library would, and `serve` picks its event loop as told."""

from __future__ import annotations

import asyncio
import json

import pytest
import uvloop

from gateway.cli.serve import new_event_loop
from gateway.http.body import dump_json, load_json


@pytest.mark.parametrize(
    "raw",
    [
        b'{"userName": "bjensen", "emails": [{"value": "b@example.com", "primary": true}], "n": 1.5, "z": null}',
        b'{"a": 123456789012345678901234567890}',  # past 64 bits: an integer, as the standard library reads it
        b'{"a": NaN, "b": -Infinity}',
        b'{"a": "\\ud800"}',  # a lone surrogate: refused later by check_json, with its own message
        b'{"a": 1, "a": 2}',
        '{"name": "Zoë 😀"}'.encode(),
    ],
)
def test_load_json_reads_what_the_standard_library_reads(raw: bytes) -> None:
    got, expected = load_json(raw), json.loads(raw)
    assert json.dumps(got, sort_keys=True) == json.dumps(expected, sort_keys=True)
    assert type(got.get("a")) is type(expected.get("a"))


@pytest.mark.parametrize("raw", [b"{", b'{"a": }', b"\xff\xfe", b'{"a": "x"} trailing'])
def test_load_json_refuses_what_the_standard_library_refuses(raw: bytes) -> None:
    with pytest.raises((ValueError, UnicodeDecodeError)):
        json.loads(raw)
    with pytest.raises((ValueError, UnicodeDecodeError)):
        load_json(raw)


@pytest.mark.parametrize("body", [{"a": "Zoë", "b": [1, 2.5, None, True]}, {"big": 2**70}, {"lone": "\ud800"}])
def test_dump_json_writes_compact_utf8_for_everything(body: dict[str, object]) -> None:
    out = dump_json(body)
    expected = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "backslashreplace")
    assert out == expected


def test_serve_runs_on_uvloop_unless_told_otherwise() -> None:
    for kind, expected in (("auto", uvloop.Loop), ("uvloop", uvloop.Loop), ("asyncio", asyncio.BaseEventLoop)):
        loop = new_event_loop(kind)
        try:
            assert isinstance(loop, expected), (kind, type(loop))
            assert kind == "asyncio" or not isinstance(loop, asyncio.SelectorEventLoop)
        finally:
            loop.close()
