"""What aiohttp's own HTTP parser refuses, before any gateway code runs, is a SCIM Error too (issue 16): raw
sockets against a live gateway process, since only `serve` puts the gateway's protocol handler in front."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from typing import Any

import pytest

from tests.conftest import TOKEN, USER_URN, LiveGateway

ERROR_URN = "urn:ietf:params:scim:api:messages:2.0:Error"


async def raw_request(gateway: LiveGateway, head: bytes, body: bytes = b"") -> tuple[int, dict[str, str], Any]:
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    try:
        writer.write(head + body)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 30)
    finally:
        writer.close()
        await writer.wait_closed()
    top, _, payload = answer.partition(b"\r\n\r\n")
    lines = top.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, json.loads(payload) if payload else None


def head(request_line: str, *extra: str, length: int = 0) -> bytes:
    lines = [request_line, "Host: x", f"Authorization: Bearer {TOKEN}", "Content-Type: application/scim+json",
             f"Content-Length: {length}", "Connection: close", *extra]  # fmt: skip
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def users(gateway: LiveGateway) -> int:
    request = urllib.request.Request(f"{gateway.base_url}/Users", headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, timeout=10) as resp:
        return int(json.loads(resp.read())["totalResults"])


CASES = [
    # past aiohttp's request-line cap (4 x max_url_bytes, at least 64 KiB): was aiohttp's 400 in text/plain
    ("request-line-past-parser", "POST {base}/Users?x=" + "a" * 70_000 + " HTTP/1.1", (), 414, "request line"),
    ("request-line-huge", "GET {base}/Users?filter=" + "a" * 300_000 + " HTTP/1.1", (), 414, "request line"),
    # between max_url_bytes and the parser's cap: the gateway's own 414, naming the setting
    ("request-line-over-setting", "GET {base}/Users?x=" + "a" * 20_000 + " HTTP/1.1", (), 414, "max_url_bytes"),
    # a header line past 16 KiB: was aiohttp's 400 in text/plain
    ("header-past-parser", "POST {base}/Users HTTP/1.1", ("X-Big: " + "b" * 17_000,), 431, "header"),
    # no HTTP at all
    ("not-http", "HELLO THERE", (), 400, "not valid HTTP"),
]


@pytest.mark.parametrize(("line", "extra", "status", "mentions"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
async def test_the_parsers_refusals_are_scim_errors(
    live_gateway: LiveGateway, line: str, extra: tuple[str, ...], status: int, mentions: str
) -> None:
    before = users(live_gateway)
    path = live_gateway.base_url.split(str(live_gateway.port), 1)[1]
    body = json.dumps({"schemas": [USER_URN], "userName": f"never-{status}@example.com"}).encode()
    got, headers, data = await raw_request(live_gateway, head(line.format(base=path), *extra, length=len(body)), body)
    assert got == status, data
    assert headers["content-type"] == "application/scim+json", headers
    assert data["schemas"] == [ERROR_URN] and data["status"] == str(status), data
    assert mentions in data["detail"], data
    assert "a" * 100 not in data["detail"] and "b" * 100 not in data["detail"], data  # the request is not echoed
    assert users(live_gateway) == before  # nothing was created, and the gateway serves on
