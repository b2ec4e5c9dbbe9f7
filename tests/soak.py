"""A soak (issue 16): two gateway workers on one PostgreSQL store, Entra-shaped traffic from several clients, and a
legacy REST app (the hr fake, its own process) that fails a few percent of its calls and is restarted twice.

    .venv/bin/python -m tests.soak --minutes 10        # the documented soak (docs/operations.md, "Soak")
    .venv/bin/python -m tests.soak --seconds 25        # what tests/integration/test_soak.py runs in the test command

Each client keeps a model of what the gateway acknowledged to it and retries what was answered 503, as an IdP does.
Afterwards: no 5xx but the app's own 503s, every acknowledged write in the gateway's answers and in the app (no
write lost), no account in the app the store does not link and no link to an account the app lacks, no journal
entry pending, and the workers' memory after warm-up compared with at the end. Loopback only; bounded by time.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "soak-token-0123456789"
HR_API_KEY = "hr-api-key-conformance-0123"  # tests/fakes/serve.py
USER_URN = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP_URN = "urn:ietf:params:scim:schemas:core:2.0:Group"
ENTERPRISE_URN = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
PATCH_URN = "urn:ietf:params:scim:api:messages:2.0:PatchOp"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(extra: dict[str, str]) -> dict[str, str]:
    drop = {"SCIM_GATEWAY_TOKEN", "SCIM_GATEWAY_STORE"}
    return {k: v for k, v in os.environ.items() if k not in drop} | extra


async def _listening(port: int, proc: subprocess.Popen[bytes], log: Path, what: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            await asyncio.sleep(0.05)
    raise RuntimeError(f"{what} did not start:\n{log.read_text()[-4000:]}")


class HrApp:
    """The hr fake on one port, its records kept in a file: stopped (SIGTERM) and started again, it keeps them."""

    def __init__(self, root: Path, fail_rate: float, seed: int) -> None:
        self.root, self.fail_rate, self.seed = root, fail_rate, seed
        self.port = _free_port()
        self.api = f"http://127.0.0.1:{self.port}/api"
        self.log = root / "hr.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    async def start(self) -> None:
        args = ["hr", str(self.port), "--state", str(self.root / "hr-state.json")]
        args += ["--fail-rate", str(self.fail_rate), "--seed", str(self.seed + self.starts)]
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.fakes.serve", *args], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=_env({})
            )
        self.starts += 1
        await _listening(self.port, self.proc, self.log, "the hr fake")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=15)
        self.proc = None


class Gateway:
    def __init__(self, root: Path, mapping: Path, store_url: str, hr: HrApp, workers: int) -> None:
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}/apps/hr/scim/v2"
        self.log = root / "gateway.log"
        cmd = [sys.executable, "-m", "gateway.cli", "serve", "--config", str(mapping), "--port", str(self.port)]
        cmd += ["--data-dir", str(root / "data"), "--workers", str(workers), "--recovery-interval", "1"]
        env = {"SCIM_GATEWAY_STORE": store_url, "HR_API_URL": hr.api, "HR_API_KEY": HR_API_KEY, "HR_SCIM_TOKEN": TOKEN}
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(cmd, cwd=root, stdout=out, stderr=subprocess.STDOUT, env=_env(env))

    async def started(self) -> None:
        await _listening(self.port, self.proc, self.log, "the gateway")

    def workers(self) -> list[int]:
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        return [int(p) for p in children.read_text().split()] if children.exists() else []

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@dataclass
class UserModel:
    id: str
    user_name: str
    title: str
    active: bool
    deleted: bool = False


@dataclass
class GroupModel:
    id: str
    name: str
    members: set[str] = field(default_factory=set)


@dataclass
class Report:
    seconds: float
    requests: Counter[int] = field(default_factory=Counter)  # status -> count, retries included
    app_503: int = 0
    violations: list[str] = field(default_factory=list)
    restarts: int = 0
    users: int = 0
    groups: int = 0
    rss_warm: dict[int, float] = field(default_factory=dict)
    rss_end: dict[int, float] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        growth = {pid: round(self.rss_end.get(pid, 0) - mib, 1) for pid, mib in self.rss_warm.items()}
        return {
            "seconds": self.seconds,
            "requests": sum(self.requests.values()),
            "statuses": dict(sorted(self.requests.items())),
            "app_503": self.app_503,
            "restarts": self.restarts,
            "users": self.users,
            "groups": self.groups,
            "rss_after_warm_up_mib": {p: round(m, 1) for p, m in self.rss_warm.items()},
            "rss_growth_mib": growth,
            "violations": self.violations[:20],
        }


class Client:
    """One IdP connection: Entra-shaped requests, a model of what was acknowledged, 503s retried."""

    def __init__(self, n: int, http: aiohttp.ClientSession, base: str, report: Report, seed: int) -> None:
        self.n, self.http, self.base, self.report = n, http, base, report
        self.rng = random.Random(seed * 1000 + n)
        self.users: list[UserModel] = []
        self.groups: list[GroupModel] = []
        self.serial = itertools.count()

    async def send(self, method: str, path: str, body: Any = None) -> tuple[int, Any, bool]:
        """The final answer after retrying 503s (and whether any attempt was a 503: it may have landed)."""
        retried = False
        for _ in range(200):
            async with self.http.request(method, self.base + path, json=body) as resp:
                text = await resp.text()
                self.report.requests[resp.status] += 1
                data = json.loads(text) if text else None
                if resp.status != 503:
                    if resp.status >= 500:
                        self.report.violations.append(f"{method} {path}: {resp.status} {text[:300]}")
                    return resp.status, data, retried
                detail = (data or {}).get("detail", "")
                # The app's failure, translated ("the app is unavailable (...)"), never the store's or the gateway's.
                if "the app" not in detail or "correlation store" in detail or "Retry-After" not in resp.headers:
                    self.report.violations.append(f"{method} {path}: 503 not the app's: {text[:300]}")
                self.report.app_503 += 1
                retried = True
                await asyncio.sleep(min(float(resp.headers.get("Retry-After", "1")), 0.5) * self.rng.random())
        self.report.violations.append(f"{method} {path}: still 503 after 200 attempts")
        return 503, None, True

    def _bad(self, what: str, status: int, body: Any) -> None:
        self.report.violations.append(f"client {self.n}: {what}: {status} {json.dumps(body)[:300]}")

    async def step(self) -> None:
        live = [u for u in self.users if not u.deleted]
        roll = self.rng.random()
        if roll < 0.3 or len(live) < 3:
            await self.create_user()
        elif roll < 0.5:
            await self.set_title(self.rng.choice(live))
        elif roll < 0.6:
            await self.set_active(self.rng.choice(live))
        elif roll < 0.72:
            await self.read(self.rng.choice(self.users))
        elif roll < 0.8:
            await self.find(self.rng.choice(live))
        elif roll < 0.95:
            await self.group_step(live)
        else:
            await self.delete(self.rng.choice(live))

    async def create_user(self) -> None:
        name = f"soak{self.n}.{next(self.serial)}@soak.test"
        title = f"t{self.rng.randrange(1000)}"
        body = {
            "schemas": [USER_URN, ENTERPRISE_URN],
            "userName": name,
            "active": True,
            "displayName": name.split("@")[0],
            "title": title,
            "name": {"givenName": "Soak", "familyName": f"C{self.n}"},
            "emails": [{"primary": True, "type": "work", "value": name}],
            "externalId": f"ext-{name}",
            ENTERPRISE_URN: {"department": f"d{self.n}"},
        }
        status, data, retried = await self.send("POST", "/Users", body)
        if status == 409 and retried:  # an attempt answered 503 had landed after all: find it, as Entra does
            status, data, _ = await self.send("GET", f'/Users?filter=userName eq "{name}"')
            if status == 200 and data["totalResults"] == 1:
                data, status = data["Resources"][0], 201
        if status != 201:
            return self._bad(f"create {name}", status, data)
        self.users.append(UserModel(data["id"], name, title, True))

    async def set_title(self, user: UserModel) -> None:
        title = f"t{self.rng.randrange(1000)}"
        if self.rng.random() < 0.5:
            ops = [{"op": "Replace", "path": "title", "value": title}]
        else:
            ops = [{"op": "replace", "value": {"title": title, "name.givenName": "Soaked"}}]
        status, data, _ = await self.send("PATCH", f"/Users/{user.id}", {"schemas": [PATCH_URN], "Operations": ops})
        if status != 200 or data.get("title") != title:
            return self._bad(f"title of {user.user_name}", status, data)
        user.title = title

    async def set_active(self, user: UserModel) -> None:
        value = not user.active
        ops = [{"op": "Replace", "path": "active", "value": "True" if value else "False"}]  # Entra: a string
        status, data, _ = await self.send("PATCH", f"/Users/{user.id}", {"schemas": [PATCH_URN], "Operations": ops})
        if status != 200 or data.get("active") is not value:
            return self._bad(f"active of {user.user_name}", status, data)
        user.active = value

    async def read(self, user: UserModel) -> None:
        status, data, _ = await self.send("GET", f"/Users/{user.id}")
        if user.deleted:
            if status != 404:
                self._bad(f"deleted {user.user_name} read", status, data)
        elif status != 200 or (data["title"], data["active"]) != (user.title, user.active):
            self._bad(f"read {user.user_name} (model {user.title}, {user.active})", status, data)

    async def find(self, user: UserModel) -> None:
        status, data, _ = await self.send("GET", f'/Users?filter=userName eq "{user.user_name}"&attributes=title')
        if status != 200 or data["totalResults"] != 1 or data["Resources"][0]["id"] != user.id:
            self._bad(f"filter {user.user_name}", status, data)

    async def group_step(self, live: list[UserModel]) -> None:
        if len(self.groups) < 2:
            name = f"soak-group-{self.n}-{len(self.groups)}"
            status, data, retried = await self.send("POST", "/Groups", {"schemas": [GROUP_URN], "displayName": name})
            if status == 409 and retried:
                status, data, _ = await self.send("GET", f'/Groups?filter=displayName eq "{name}"')
                if status == 200 and data["totalResults"] == 1:
                    data, status = data["Resources"][0], 201
            if status != 201:
                return self._bad(f"create group {name}", status, data)
            self.groups.append(GroupModel(data["id"], name))
            return
        group = self.rng.choice(self.groups)
        user = self.rng.choice(live)
        op = "Remove" if user.id in group.members else "Add"
        ops = [{"op": op, "path": "members", "value": [{"value": user.id}]}]
        path = f"/Groups/{group.id}?excludedAttributes=members"
        status, data, _ = await self.send("PATCH", path, {"schemas": [PATCH_URN], "Operations": ops})
        if status not in (200, 204):
            return self._bad(f"{op} {user.user_name} in {group.name}", status, data)
        (group.members.discard if op == "Remove" else group.members.add)(user.id)

    async def delete(self, user: UserModel) -> None:
        status, data, retried = await self.send("DELETE", f"/Users/{user.id}")
        if status == 204 or (status == 404 and retried):
            user.deleted = True
            for group in self.groups:
                group.members.discard(user.id)
        else:
            self._bad(f"delete {user.user_name}", status, data)


async def _no_pending(url: str, timeout: float = 60.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        conn = await asyncpg.connect(url)
        try:
            rows = await conn.fetch("SELECT seq, type, resource_id, op FROM journal WHERE state = 'pending'")
        finally:
            await conn.close()
        if not rows or time.monotonic() > deadline:
            return [f"journal entry pending: {dict(r)}" for r in rows]
        await asyncio.sleep(0.5)


async def _app_records(api: str) -> tuple[dict[str, dict[str, Any]], dict[str, set[str]]]:
    """The hr app's users (native id -> record) and group members (group native id -> user native ids)."""
    headers = {"X-API-Key": HR_API_KEY}
    async with aiohttp.ClientSession(headers=headers) as http:

        async def every(path: str) -> list[dict[str, Any]]:
            out: list[dict[str, Any]] = []
            for page in itertools.count(1):
                while True:  # the app fails its injected share of these calls too
                    async with http.get(f"{api}{path}", params={"page": page, "per_page": 100}) as resp:
                        body = await resp.json()
                    if resp.status == 200:
                        break
                    await asyncio.sleep(0.05)
                out += body["data"]
                if page * 100 >= body["total"]:
                    return out

        users = {str(u["id"]): u for u in await every("/users")}
        groups = {str(g["id"]): g for g in await every("/groups")}
        members = {gid: {str(m["user_id"]) for m in await every(f"/groups/{gid}/members")} for gid in groups}
    return users, members


async def _compare(clients: list[Client], http: aiohttp.ClientSession, base: str, store_url: str, api: str) -> list[str]:
    """The clients' models against the gateway's answers, the store's links and the app's records."""
    problems: list[str] = []
    conn = await asyncpg.connect(store_url)
    try:
        links = {r["id"]: r["native_id"] for r in await conn.fetch("SELECT id, native_id FROM resources WHERE app = 'hr'")}
    finally:
        await conn.close()
    app_users, app_members = await _app_records(api)
    for client in clients:
        for user in client.users:
            async with http.get(f"{base}/Users/{user.id}") as resp:
                data = await resp.json(content_type=None)
            if user.deleted:
                if resp.status != 404 or user.id in links:
                    problems.append(f"{user.user_name} was deleted, the gateway answers {resp.status}")
                continue
            if resp.status != 200 or (data["title"], data["active"]) != (user.title, user.active):
                problems.append(f"{user.user_name}: model ({user.title}, {user.active}), gateway {resp.status} {data}")
                continue
            record = app_users.get(str(links.get(user.id)))
            want = (user.user_name.lower(), user.title, "enabled" if user.active else "disabled")
            if record is None or (record["login"].lower(), record["title"], record["status"]) != want:
                problems.append(f"{user.user_name}: model {want}, app {record}")
        for group in client.groups:
            native = links.get(group.id)
            in_app = {uid for uid in app_members.get(str(native), set())}
            want = {str(links.get(m)) for m in group.members}
            if in_app != want:
                problems.append(f"group {group.name}: model members {sorted(want)}, app {sorted(in_app)}")
    linked_users = {str(n) for rid, n in links.items() if n is not None}
    orphans = set(app_users) - linked_users
    if orphans:
        problems.append(f"accounts in the app no SCIM resource links: {sorted(orphans)[:10]}")
    dangling = {n for n in linked_users if n not in app_users and n not in {str(g) for g in app_members}}
    if dangling:
        problems.append(f"links to records the app does not have: {sorted(dangling)[:10]}")
    return problems


async def run_soak(
    root: Path, seconds: float, *, store_url: str, clients: int = 4, fail_rate: float = 0.03, seed: int = 1
) -> Report:
    """The soak against a fresh (empty) PostgreSQL database at `store_url`; the report of what it saw."""
    root.mkdir(parents=True, exist_ok=True)
    mapping = root / "hr.yaml"
    # The shipped hr mapping without its 20 calls/s rate limit (the soak measures the gateway, not the limiter).
    mapping.write_text(re.sub(r"(?m)^\s*rate_limit:.*\n", "", (ROOT / "mappings" / "hr_rest.yaml").read_text()))
    report = Report(seconds)
    hr = HrApp(root, fail_rate, seed)
    await hr.start()
    gateway = Gateway(root, mapping, store_url, hr, workers=2)
    try:
        await gateway.started()
        headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/scim+json"}
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(headers=headers, timeout=timeout) as http:
            pool = [Client(n, http, gateway.base, report, seed) for n in range(clients)]
            stop = asyncio.Event()

            async def drive(client: Client) -> None:
                while not stop.is_set():
                    await client.step()

            async def restarts() -> None:
                for at in (seconds / 3, 2 * seconds / 3):
                    await asyncio.sleep(at - (time.monotonic() - began))
                    await asyncio.to_thread(hr.stop)
                    await asyncio.sleep(1.0)  # down for a second: the gateway answers the app's absence
                    await hr.start()
                    report.restarts += 1

            async def memory() -> None:
                await asyncio.sleep(seconds / 4)
                report.rss_warm = {pid: rss_mib(pid) for pid in gateway.workers()}

            began = time.monotonic()
            tasks = [asyncio.create_task(drive(c)) for c in pool]
            side = [asyncio.create_task(restarts()), asyncio.create_task(memory())]
            await asyncio.sleep(seconds)
            stop.set()
            await asyncio.gather(*tasks, *side)
            report.rss_end = {pid: rss_mib(pid) for pid in gateway.workers()}
            report.violations += await _no_pending(store_url)
            report.violations += await _compare(pool, http, gateway.base, store_url, hr.api)
            report.users = sum(len(c.users) for c in pool)
            report.groups = sum(len(c.groups) for c in pool)
    finally:
        gateway.stop()
        hr.stop()
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.soak", description=__doc__.split("\n\n")[0])
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--minutes", type=float, help="how long the traffic runs (default 10 minutes)")
    length.add_argument("--seconds", type=float, help="the same in seconds")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--fail-rate", type=float, default=0.03, help="the fraction of the app's calls it fails (503)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    seconds = args.seconds if args.seconds is not None else 60 * (args.minutes or 10)

    from tests.services import create_pg_database, drop_pg_database, pg_url

    async def run() -> Report:
        name = await create_pg_database()
        try:
            with tempfile.TemporaryDirectory(prefix="scim-gateway-soak-") as root:
                return await run_soak(
                    Path(root), seconds, store_url=pg_url(name), clients=args.clients, fail_rate=args.fail_rate, seed=args.seed
                )
        finally:
            await drop_pg_database(name)

    report = asyncio.run(run())
    print(json.dumps(report.summary(), indent=2))
    return 1 if report.violations else 0


if __name__ == "__main__":
    sys.exit(main())
