"""Instructions per request through the REST connector, counted by callgrind: bench/instructions.py for the hr app.

    .venv/bin/python -m bench.instructions_rest            # get post patch put, 200 requests each
    .venv/bin/python -m bench.instructions_rest -n 300 get post
    .venv/bin/python -m bench.instructions_rest --profile get   # the same requests under cProfile, no valgrind

The gateway (mappings/hr_rest.yaml without its rate limit, as the wrk harness runs it) and an aiohttp client run in
one process under callgrind; the hr fake (`python -m tests.fakes.serve hr PORT`) runs in a process of its own, so
its work is not counted. After a warm-up, counters are zeroed, N requests of one kind are sent, and the counters are
dumped: the gateway's and the client's instructions per request. Compare two checkouts with the same command.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

import bench.instructions as _shared

KINDS = ("get", "post", "patch", "put")
# The REST connector alone, without the gateway: its get and create called directly, and the floor under them,
# the same GET made with a bare aiohttp session (one read, one JSON parse).
DIRECT_KINDS = ("connector-get", "connector-create", "aiohttp-get")
USERS = 200
TOKEN = "bench-instructions-token"
BASE = "/apps/hr/scim/v2"
ROOT = Path(__file__).resolve().parent.parent
USER_URN, PATCH_URN = _shared.USER_URN, _shared.PATCH_URN
_bulk, _callgrind = _shared._bulk, _shared._callgrind  # the same requests and counters as bench.instructions


async def _send(client: Any, headers: dict[str, str], method: str, path: str, body: Any) -> None:
    resp = await client.request(method, BASE + path, json=body, headers=headers)
    await resp.read()
    if resp.status >= 300:
        raise SystemExit(f"{method} {path}: {resp.status} {await resp.text()}")


def _figures(out: Path) -> list[tuple[str, float]]:
    """(kind, instructions per request) of each callgrind dump in `out`, in the order they were made."""
    figures = []
    for dump in sorted(out.glob("cg.*.*"), key=lambda p: int(p.suffix[1:])):
        text = dump.read_text(errors="replace")
        trigger = re.search(r"^desc: Trigger: .*dump (\S+)$", text, re.M)
        total = re.search(r"^summary: (\d+)$", text, re.M)
        if trigger and total:
            kind, count = trigger.group(1).rsplit(":", 1)
            figures.append((kind, int(total.group(1)) / int(count)))
    return figures


def _requests(ids: list[str]) -> dict[str, Callable[[int], tuple[str, str, Any]]]:
    def user(i: int, name: str) -> dict[str, Any]:
        return {
            "schemas": [USER_URN],
            "userName": f"{name}{i}@x.test",
            "name": {"givenName": "Rest", "familyName": f"Bench {i}"},
            "emails": [{"type": "work", "value": f"{name}{i}@x.test"}],
            "title": "Engineer",
            "active": True,
        }

    return {
        "get": lambda i: ("GET", f"/Users/{ids[i % len(ids)]}", None),
        "post": lambda i: ("POST", "/Users", user(i, "new")),
        "patch": lambda i: (
            "PATCH",
            f"/Users/{ids[i % len(ids)]}",
            {"schemas": [PATCH_URN], "Operations": [{"op": "replace", "path": "title", "value": f"v{i}"}]},
        ),
        "put": lambda i: ("PUT", f"/Users/{ids[i % len(ids)]}", user(i % len(ids), "seed") | {"title": f"p{i}"}),
    }


def _start_fake(work: Path) -> tuple[subprocess.Popen[bytes], str]:
    from .processes import free_port

    port = free_port()
    log = open(work / "hr-fake.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.serve", "hr", str(port)], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            urllib.request.urlopen(url + "/", timeout=1)
        except OSError as exc:
            if getattr(exc, "code", None) is not None:
                return proc, url  # an HTTP answer (404): it is up
            time.sleep(0.05)
        else:
            return proc, url
    proc.kill()
    raise SystemExit("the hr fake did not start")


async def _measure(kinds: list[str], n: int, profile: Path | None) -> None:
    """In the measured process: the fake started, the gateway built, the requests sent kind by kind."""
    from aiohttp.test_utils import TestClient, TestServer

    from gateway.app import create_app
    from gateway.settings import GatewaySettings
    from tests.fakes.serve import HR_API_KEY

    work = Path(tempfile.mkdtemp(prefix="bench-instructions-rest-"))
    fake, fake_url = _start_fake(work)
    mapping = yaml.safe_load((ROOT / "mappings" / "hr_rest.yaml").read_text())
    mapping["connector"].pop("rate_limit", None)  # as the wrk harness runs it: measure the gateway, not the courtesy
    config = work / "hr.yaml"
    config.write_text(yaml.safe_dump(mapping, sort_keys=False))
    os.environ |= {"HR_API_URL": f"{fake_url}/api", "HR_API_KEY": HR_API_KEY, "HR_SCIM_TOKEN": TOKEN}
    settings = GatewaySettings(mappings=[config], data_dir=work / "data")
    client = TestClient(TestServer(create_app(settings)))
    await client.start_server()
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/scim+json"}
    profiler = cProfile.Profile() if profile is not None else None
    try:
        seeded = await (await client.post(BASE + "/Bulk", json=_bulk("seed", USERS), headers=headers)).json(content_type=None)
        ids = [op["location"].rsplit("/", 1)[1] for op in seeded["Operations"]]
        requests = _requests(ids)
        direct = await _direct(fake_url, HR_API_KEY, mapping, work)
        for kind in kinds:
            if kind in direct:
                for i in range(10):
                    await direct[kind](100_000 + i)
                _callgrind("-z") if profiler is None else profiler.enable()
                for i in range(n):
                    await direct[kind](i)
                _callgrind("-d", f"{kind}:{n}") if profiler is None else profiler.disable()
                continue
            for i in range(10):
                await _send(client, headers, *requests[kind](100_000 + i))
            if profiler is not None:
                profiler.enable()
            else:
                _callgrind("-z")
            for i in range(n):
                await _send(client, headers, *requests[kind](i))
            if profiler is not None:
                profiler.disable()
            else:
                _callgrind("-d", f"{kind}:{n}")
    finally:
        await client.close()
        for close in _closers:
            await close()
        fake.terminate()
        fake.wait()
        shutil.rmtree(work, ignore_errors=True)
    if profiler is not None and profile is not None:
        profiler.dump_stats(profile)


_closers: list[Callable[[], Any]] = []


async def _direct(fake_url: str, key: str, mapping: dict[str, Any], work: Path) -> dict[str, Callable[[int], Any]]:
    """The calls of DIRECT_KINDS, each a coroutine function of the request number."""
    import aiohttp
    import orjson

    from gateway.connectors.base import AppContext
    from plugins.rest.connector import RestConnector

    config = RestConnector.Config.model_validate(mapping["connector"])
    connector = RestConnector(config, AppContext(name="hr", data_dir=work))
    await connector.open()
    session = aiohttp.ClientSession()
    _closers.extend([connector.close, session.close])
    ids = [str(i) for i in range(1, USERS + 1)]  # the fake numbers its users from 1: the Bulk seeding made these

    async def connector_get(i: int) -> None:
        if await connector.get("User", ids[i % len(ids)]) is None:
            raise SystemExit(f"no user {ids[i % len(ids)]}")

    async def connector_create(i: int) -> None:
        await connector.create("User", {"login": f"direct{i}@x.test", "first_name": "Rest", "title": "Engineer"})

    async def aiohttp_get(i: int) -> None:
        url = f"{fake_url}/api/users/{ids[i % len(ids)]}"
        async with session.get(url, headers={"X-API-Key": key, "Accept": "application/json"}) as resp:
            orjson.loads(await resp.read())

    return {"connector-get": connector_get, "connector-create": connector_create, "aiohttp-get": aiohttp_get}


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.instructions_rest", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "kinds", nargs="*", metavar="KIND", help=f"request kinds (default: {', '.join(KINDS)}; also {', '.join(DIRECT_KINDS)})"
    )
    parser.add_argument("-n", type=int, default=200, help="requests of each kind")
    parser.add_argument("--profile", action="store_true", help="cProfile instead of callgrind: the top functions, by own time")
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    kinds = args.kinds or list(KINDS)
    unknown = [k for k in kinds if k not in KINDS + DIRECT_KINDS]
    if unknown:
        parser.error(f"unknown kind {unknown[0]!r} (valid: {', '.join(KINDS + DIRECT_KINDS)})")
    if args.inside:
        asyncio.run(_measure(kinds, args.n, None))
        return 0
    if args.profile:
        out = Path(tempfile.mkdtemp(prefix="cprofile-")) / "rest.prof"
        asyncio.run(_measure(kinds, args.n, out))
        stats = pstats.Stats(str(out))
        stats.sort_stats("tottime").print_stats(40)
        stats.sort_stats("cumulative").print_stats(40)
        return 0
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (Debian: apt-get install valgrind)", file=sys.stderr)
        return 2
    out = Path(tempfile.mkdtemp(prefix="callgrind-"))
    cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}/cg.%p", sys.executable, "-m", "bench.instructions_rest"]
    run = subprocess.run([*cmd, "--inside", "-n", str(args.n), *kinds], capture_output=True, text=True, cwd=ROOT)
    if run.returncode != 0:
        print(run.stderr[-3000:], file=sys.stderr)
        return 1
    print(f"{'request':<10} {'instructions per request':>26}")
    for kind, per in _figures(out):
        print(f"{kind:<10} {per:>26,.0f}")
    shutil.rmtree(out, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
