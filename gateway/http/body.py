"""SCIM bodies over HTTP: request JSON read and checked, responses written as application/scim+json."""

from __future__ import annotations

import json
import re
from typing import Any

import orjson
from aiohttp import web

from ..scim.errors import ScimError, invalid_syntax, invalid_value
from ..scim.resource import MAX_INTEGER_DIGITS, long_integer_detail
from ..scim.service import Reply

SCIM_CONTENT_TYPE = "application/scim+json"
MAX_JSON_DEPTH = 64
_LONG_NUMBER = re.compile(rb"\d{19}")  # past 64 bits orjson gives a float where the standard library keeps the integer
_SURROGATE = re.compile(r"[\ud800-\udfff]")


def dump_json(body: Any) -> bytes:
    """Compact UTF-8 JSON: orjson's, or the standard library's for what orjson refuses (a lone surrogate, a huge int)."""
    try:
        return orjson.dumps(body)
    except (orjson.JSONEncodeError, TypeError):
        # backslashreplace: a lone surrogate (only possible inside a JSON string) goes out as its \\u escape, not a 500.
        return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "backslashreplace")


class LongInteger:
    """An integer literal of more than MAX_INTEGER_DIGITS digits, left unconverted: check_json refuses it
    where it stands, naming the attribute."""

    __slots__ = ("digits",)

    def __init__(self, text: str) -> None:
        self.digits = len(text.lstrip("-"))


def _parse_int(text: str) -> int | LongInteger:
    return LongInteger(text) if len(text) > MAX_INTEGER_DIGITS else int(text)


def load_json(raw: bytes) -> Any:
    """orjson's parse, the standard library's answer: what orjson refuses or reads differently (NaN, a lone
    surrogate, an integer past 64 bits) goes to the standard library, which decides and words the errors.
    An integer too long to be any SCIM value comes out as a LongInteger (see check_json)."""
    if not _LONG_NUMBER.search(raw):
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
    return json.loads(raw, parse_int=_parse_int)


def scim_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    # No charset parameter: the SCIM media type defines none (JSON is UTF-8), and clients compare the exact string.
    return web.Response(body=dump_json(body), status=status, content_type=SCIM_CONTENT_TYPE, headers=headers)


def error_response(error: ScimError) -> web.Response:
    return scim_response(error.to_json(), error.status, error.headers)


def reply_response(reply: Reply) -> web.Response:
    headers: dict[str, str] = {}
    if reply.etag is not None:
        headers["ETag"] = reply.etag
    if reply.location is not None:
        headers["Location"] = reply.location
    if reply.body is None:
        return web.Response(status=reply.status, headers=headers)
    return scim_response(reply.body, reply.status, headers)


def body_too_large(request: web.Request, limit: int) -> ScimError:
    sent = f"{request.content_length} bytes" if request.content_length is not None else f"more than {limit} bytes (chunked)"
    return ScimError(413, f"the request body is {sent}, larger than max_body_bytes {limit} (maxPayloadSize)")


async def read_json(request: web.Request, max_bytes: int) -> Any:
    content_type = request.headers.get("Content-Type", "")
    if content_type and "json" not in content_type.lower():
        raise ScimError(415, f"send application/scim+json or application/json, not {content_type.split(';')[0]}")
    if request.content_length is not None and request.content_length > max_bytes:
        raise body_too_large(request, max_bytes)  # refused before a byte of it is read
    raw = await request.read()
    if not raw.strip():
        raise invalid_syntax("the request body is empty")
    try:
        body = load_json(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise invalid_syntax(f"the request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise invalid_syntax(f"the request body nests deeper than {MAX_JSON_DEPTH} levels") from None
    check_json(body)
    return body


def check_json(body: Any) -> None:
    """Refuse what parses as JSON but is no SCIM body and would break later layers.

    Integers of more than MAX_INTEGER_DIGITS digits, nesting deeper than MAX_JSON_DEPTH (no SCIM message comes close; recursive code further in would hit
    Python's recursion limit) and unpaired UTF-16 surrogates (JSON's \\ud800 escapes decode to text that is
    not Unicode and cannot be stored). Iterative, so hostile depth cannot blow the stack here.
    """
    stack: list[tuple[Any, str, int]] = [(body, "", 0)]
    while stack:
        value, where, depth = stack.pop()
        if isinstance(value, str):
            if _SURROGATE.search(value):
                raise invalid_syntax(
                    f"the request body has an unpaired UTF-16 surrogate (\\ud800-\\udfff) in the value at {_where(where)}: text must be valid Unicode"
                )
            if "\x00" in value:
                raise invalid_value(
                    f"the value at {_where(where)} holds a NUL character (\\u0000), which no store or app keeps as text"
                )
            continue
        if isinstance(value, LongInteger):
            raise invalid_value(long_integer_detail(_where(where), value.digits))
        if not isinstance(value, (dict, list)):
            continue
        if depth >= MAX_JSON_DEPTH:
            raise invalid_syntax(f"the request body nests deeper than {MAX_JSON_DEPTH} levels (at {_where(where)})")
        if isinstance(value, dict):
            for key, item in value.items():
                if _SURROGATE.search(key) or "\x00" in key:
                    raise invalid_syntax(
                        f"the request body has an unpaired UTF-16 surrogate (\\ud800-\\udfff) or a NUL character in a member name at {_where(where)}"
                    )
                stack.append((item, f"{where}.{key}" if where else key, depth + 1))
        else:
            stack.extend((item, f"{where}[{i}]", depth + 1) for i, item in enumerate(value))


def _where(path: str) -> str:
    if not path:
        return "the top level"
    return path if len(path) <= 120 else path[:60] + "..." + path[-57:]


__all__ = [
    "SCIM_CONTENT_TYPE",
    "body_too_large",
    "check_json",
    "dump_json",
    "error_response",
    "load_json",
    "read_json",
    "reply_response",
    "scim_response",
]
