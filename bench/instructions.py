"""Instructions per request, counted by valgrind's callgrind: a figure that does not move with the machine's load.

    .venv/bin/python -m bench.instructions            # every kind, 100 requests each
    .venv/bin/python -m bench.instructions -n 300 get post

The gateway (the demo app, in this checkout) and an aiohttp client run in one process under callgrind; after a
warm-up, counters are zeroed, N requests of one kind are sent, and the counters are dumped. The client's share
is in every figure, the same on both sides of a comparison: compare two checkouts with the same command. About
two minutes; needs valgrind (Debian: valgrind). The wrk harness (`python -m bench`) measures rates; this
measures work, for changes too small for a shared machine's rates to show.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

KINDS = ("baseline", "spc", "list", "get", "filter", "post", "patch", "bulk", "cached")
USERS = 200
USER_URN = "urn:ietf:params:scim:schemas:core:2.0:User"
PATCH_URN = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
BULK_URN = "urn:ietf:params:scim:api:messages:2.0:BulkRequest"
TOKEN = "bench-instructions-token"
BASE = "/apps/demo/scim/v2"


def _bulk(prefix: str, count: int) -> dict[str, Any]:
    ops = [
        {
            "method": "POST",
            "path": "/Users",
            "bulkId": f"{prefix}{i}",
            "data": {"schemas": [USER_URN], "userName": f"{prefix}{i}@x.test", "title": "t"},
        }
        for i in range(count)
    ]
    return {"schemas": [BULK_URN], "Operations": ops}


def _requests(ids: list[str]) -> dict[str, Callable[[int], tuple[str, str, Any]]]:
    return {
        "spc": lambda i: ("GET", "/ServiceProviderConfig", None),
        "list": lambda i: ("GET", "/Users?count=1", None),
        "get": lambda i: ("GET", f"/Users/{ids[i % len(ids)]}", None),
        "cached": lambda i: ("GET", f"/Users/{ids[i % len(ids)]}", None),
        "filter": lambda i: ("GET", f'/Users?filter=userName eq "seed{i % len(ids)}@x.test"', None),
        "post": lambda i: ("POST", "/Users", {"schemas": [USER_URN], "userName": f"new{i}@x.test"}),
        "patch": lambda i: (
            "PATCH",
            f"/Users/{ids[i % len(ids)]}",
            {"schemas": [PATCH_URN], "Operations": [{"op": "replace", "path": "title", "value": f"v{i}"}]},
        ),
        "bulk": lambda i: ("POST", "/Bulk", _bulk(f"bulk{i}-", 100)),
    }


def _callgrind(*args: str) -> None:
    subprocess.run(["callgrind_control", *args, str(os.getpid())], check=True, capture_output=True)


async def _measure(kinds: list[str], n: int) -> None:
    """In the process callgrind runs: the requests, with counters zeroed before and dumped after each kind."""
    from aiohttp.test_utils import TestClient, TestServer
    from pydantic import SecretStr

    from gateway.app import create_app
    from gateway.demo import demo_mapping_path, ensure_demo_database
    from gateway.settings import GatewaySettings

    data_dir = Path(tempfile.mkdtemp(prefix="bench-instructions-"))
    ensure_demo_database(data_dir)
    settings = GatewaySettings(mappings=[demo_mapping_path()], data_dir=data_dir, extra_tokens={"demo": [SecretStr(TOKEN)]})
    client = TestClient(TestServer(create_app(settings)))
    await client.start_server()
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/scim+json"}
    try:
        seeded = await (await client.post(BASE + "/Bulk", json=_bulk("seed", USERS), headers=headers)).json(content_type=None)
        ids = [op["location"].rsplit("/", 1)[1] for op in seeded["Operations"]]
        requests = _requests(ids)
        if "baseline" in kinds:
            await _measure_baseline(n)
        for kind in (k for k in kinds if k not in ("baseline", "cached")):
            await _measure_kind(client, headers, kind, requests[kind], n)
        if "cached" in kinds:
            # bench/run.py's cached scenario: the gateway restarted on the same data with `reads: cached` on User.
            await client.close()
            settings = settings.model_copy(update={"mappings": [_cached_mapping(data_dir)]})
            client = TestClient(TestServer(create_app(settings)))
            await client.start_server()
            await _measure_kind(client, headers, "cached", requests["cached"], n)
    finally:
        await client.close()
        shutil.rmtree(data_dir, ignore_errors=True)


async def _measure_kind(client: Any, headers: dict[str, str], kind: str, request: Callable[[int], Any], n: int) -> None:
    """Ten warm-up requests, then N (Bulk: one per 50) between a zeroing of the counters and a dump."""
    count = max(1, n // 50) if kind == "bulk" else n  # a Bulk request is 100 creates
    for i in range(10):
        await _send(client, headers, *request(100_000 + i))
    _callgrind("-z")
    for i in range(count):
        await _send(client, headers, *request(i))
    _callgrind("-d", f"{kind}:{count}")


def _cached_mapping(data_dir: Path) -> Path:
    """The demo mapping with `reads: cached` on User, as bench/run.py's cached scenario writes it."""
    import yaml

    from gateway.demo import demo_mapping_path

    mapping = yaml.safe_load(demo_mapping_path().read_text())
    mapping["resources"]["User"]["reads"] = "cached"
    path = data_dir / "demo-cached.yaml"
    path.write_text(yaml.safe_dump(mapping, sort_keys=False))
    return path


async def _measure_baseline(n: int) -> None:
    """The bare aiohttp handler of bench/baseline.py with the same client: the floor every ratio divides by."""
    from aiohttp.test_utils import TestClient, TestServer

    from bench.baseline import create_baseline_app

    body = b'{"schemas":["urn:ietf:params:scim:schemas:core:2.0:User"],"id":"x","userName":"seed0@x.test"}'
    client = TestClient(TestServer(create_baseline_app(TOKEN, body)))
    await client.start_server()
    headers = {"Authorization": f"Bearer {TOKEN}"}
    try:
        for _ in range(10):
            await _send(client, headers, "GET", "/Users/x", None)
        _callgrind("-z")
        for _ in range(n):
            await _send(client, headers, "GET", "/Users/x", None)
        _callgrind("-d", f"baseline:{n}")
    finally:
        await client.close()


async def _send(client: Any, headers: dict[str, str], method: str, path: str, body: Any) -> None:
    resp = await client.request(method, BASE + path, json=body, headers=headers)
    await resp.read()
    if resp.status >= 300:
        raise SystemExit(f"{method} {path}: {resp.status} {await resp.text()}")


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.instructions", description=__doc__.split("\n\n")[0])
    parser.add_argument("kinds", nargs="*", metavar="KIND", help=f"request kinds (default: all: {', '.join(KINDS)})")
    parser.add_argument("-n", type=int, default=100, help="requests of each kind (Bulk: one request per 50, each of 100 creates)")
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    kinds = args.kinds or list(KINDS)
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        parser.error(f"unknown kind {unknown[0]!r} (valid: {', '.join(KINDS)})")
    if args.inside:
        asyncio.run(_measure(kinds, args.n))
        return 0
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (Debian: apt-get install valgrind)", file=sys.stderr)
        return 2
    out = Path(tempfile.mkdtemp(prefix="callgrind-"))
    cmd = [
        "valgrind",
        "--tool=callgrind",
        f"--callgrind-out-file={out}/cg.%p",
        sys.executable,
        "-m",
        "bench.instructions",
        "--inside",
        "-n",
        str(args.n),
        *kinds,
    ]
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode != 0:
        print(run.stderr[-3000:], file=sys.stderr)
        return 1
    print(f"{'request':<10} {'instructions per request':>26}")
    for dump in sorted(out.glob("cg.*.*"), key=lambda p: int(p.suffix[1:])):
        text = dump.read_text(errors="replace")
        trigger = re.search(r"^desc: Trigger: .*dump (\S+)$", text, re.M)
        total = re.search(r"^summary: (\d+)$", text, re.M)
        if trigger and total:
            kind, count = trigger.group(1).rsplit(":", 1)
            per = int(total.group(1)) / int(count)
            print(f"{kind:<10} {per:>26,.0f}" + ("  (100 creates)" if kind == "bulk" else ""))
    shutil.rmtree(out, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
