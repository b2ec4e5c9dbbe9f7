"""The hub's live test stack: a gateway serving /hub/scim/v2 in front of two apps, the demo SQLite app and the REST
hr fake running as its own process, each app's state read directly (the demo's database, the fake's own API), never
through the gateway. Shared by tests/integration/test_hub.py (sequences on both stores), test_hub_crash.py (kills)
and test_hub_workers.py (two processes on one PostgreSQL store).

The hub file: demo gets the members of the hub group Engineering and everyone in Sales (leaving: delete);
hr gets everyone (leaving: deactivate), every group pushed to both.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import yaml

from gateway.demo import demo_mapping_path, ensure_demo_database
from tests.conftest import PATCH_URN, LiveGateway, free_port
from tests.fakes.serve import HR_API_KEY
from tests.idp import entra_user

ROOT = Path(__file__).resolve().parents[2]
HUB_TOKEN = "hub-token-0123456789abcdef"
ADMIN_TOKEN = "hub-admin-token-0123456789"
T = TypeVar("T")

HUB_FILE = {
    "auth": {"bearer": [{"env": "HUB_SCIM_TOKEN"}]},
    "delivery": {"concurrency": 4, "max_attempts": 1000, "backoff": 0.2, "max_backoff": 1.0, "poll_interval": 0.2},
    "apps": {
        "demo": {
            "users": {"member_of": ["Engineering"], "when": "user.department == 'Sales'"},
            "groups": "all",
            "leave": "delete",
        },
        "hr": {"users": {"everyone": True}, "groups": "all", "leave": "deactivate"},
    },
}


class HrProcess:
    """The hr fake as its own process, read over its API; SIGSTOP / SIGCONT stop and resume it."""

    def __init__(self, root: Path, *extra: str) -> None:
        self.port = free_port()
        self.api = f"http://127.0.0.1:{self.port}/api"
        self.log = root / "hr-fake.log"
        env = {k: v for k, v in os.environ.items() if k not in ("SCIM_GATEWAY_TOKEN", "SCIM_GATEWAY_STORE")}
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.fakes.serve", "hr", str(self.port), *extra],
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the hr fake stopped:\n{self.log.read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("the hr fake did not start")

    def pause(self) -> None:
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def close(self) -> None:
        self.resume()
        self.proc.terminate()
        self.proc.wait(timeout=10)

    async def get(self, path: str) -> Any:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{self.api}{path}", headers={"X-API-Key": HR_API_KEY}, params={"per_page": "100"}) as resp,
        ):
            assert resp.status == 200, await resp.text()
            return await resp.json()

    async def users(self) -> list[dict[str, Any]]:
        return list((await self.get("/users"))["data"])

    async def user(self, login: str) -> dict[str, Any] | None:
        found = [u for u in await self.users() if u["login"].lower() == login.lower()]
        assert len(found) <= 1, f"{login} is in the hr app {len(found)} times"
        return found[0] if found else None

    async def group_members(self, name: str) -> set[str] | None:
        groups = [g for g in (await self.get("/groups"))["data"] if g["name"] == name]
        if not groups:
            return None
        members = (await self.get(f"/groups/{groups[0]['id']}/members"))["data"]
        by_id = {u["id"]: u["login"] for u in await self.users()}
        return {by_id[m["user_id"]] for m in members}


class Demo:
    """The demo app's own database, read directly."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _db(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path)
        db.row_factory = sqlite3.Row
        return db

    def employee(self, login: str) -> dict[str, Any] | None:
        with self._db() as db:
            rows = db.execute("SELECT * FROM employees WHERE login = ? COLLATE NOCASE", (login,)).fetchall()
        assert len(rows) <= 1, f"{login} is in the demo app {len(rows)} times"
        return dict(rows[0]) if rows else None

    def team_logins(self, name: str) -> set[str] | None:
        with self._db() as db:
            team = db.execute("SELECT team_id FROM teams WHERE team_name = ?", (name,)).fetchone()
            if team is None:
                return None
            rows = db.execute(
                "SELECT e.login FROM team_members m JOIN employees e ON e.emp_no = m.emp_no WHERE m.team_id = ?", (team[0],)
            ).fetchall()
        return {r[0] for r in rows}


class Stack:
    def __init__(self, root: Path, hr: HrProcess, gateway: LiveGateway, demo: Demo) -> None:
        self.root = root
        self.hr = hr
        self.gateway = gateway
        self.demo = demo

    @property
    def hub(self) -> str:
        return f"{self.gateway.url}/hub/scim/v2"

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any, float]:
        """One hub request: its status, JSON body and how long the hub took to answer."""
        headers = {"Authorization": f"Bearer {HUB_TOKEN}", "Content-Type": "application/scim+json"}
        started = time.monotonic()
        async with (
            aiohttp.ClientSession() as session,
            session.request(method, f"{self.hub}{path}", json=body, headers=headers) as resp,
        ):
            text = await resp.text()
            took = time.monotonic() - started
            assert resp.content_type == "application/scim+json" or resp.status == 204, text
            return resp.status, json.loads(text) if text else None, took

    async def create_user(self, user_name: str, department: str = "R&D", **kw: Any) -> str:
        given, family = user_name.split("@")[0].split(".")
        status, body, _ = await self.call(
            "POST", "/Users", entra_user(user_name, given.title(), family.title(), department=department, **kw)
        )
        assert status == 201, body
        return str(body["id"])

    async def patch(self, path: str, *operations: dict[str, Any]) -> tuple[int, Any, float]:
        return await self.call("PATCH", path, {"schemas": [PATCH_URN], "Operations": list(operations)})

    async def status(self, user: str | None = None) -> dict[str, Any]:
        async with (
            aiohttp.ClientSession() as session,
            session.get(
                f"{self.gateway.url}/hub/status",
                params={"user": user} if user else {},
                headers={"Authorization": f"Bearer {HUB_TOKEN}"},
            ) as resp,
        ):
            assert resp.status == 200, await resp.text()
            doc: dict[str, Any] = await resp.json()
            return doc


async def eventually(check: Callable[[], Awaitable[T]], what: str, timeout: float = 20.0) -> T:
    """`check`'s value once it returns without an AssertionError (delivery is asynchronous)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await check()
        except AssertionError as exc:
            if time.monotonic() > deadline:
                raise AssertionError(f"not reached within {timeout:g} s: {what}: {exc}") from None
            await asyncio.sleep(0.1)


def write_mappings(root: Path) -> tuple[Path, Path]:
    """The demo mapping as shipped; the hr one without its own IdP token (the hub feeds it), quick to give up."""
    hr = yaml.safe_load((ROOT / "mappings" / "hr_rest.yaml").read_text())
    hr.pop("auth")
    hr["connector"].update(timeout=2, retries=0)
    hr["breaker"] = {"failures": 2, "reset_after": 0.5, "max_reset_after": 1.0}
    hr_path = root / "hr.yaml"
    hr_path.write_text(yaml.safe_dump(hr, sort_keys=False))
    return demo_mapping_path(), hr_path


def start_stack(root: Path, *hr_args: str, store_url: str | None = None) -> tuple[Stack, Callable[[], None]]:
    """hr as its own process, and a gateway serving the hub in front of it and demo (on the SQLite store, or the
    PostgreSQL one at `store_url`); and how to start it again."""
    ensure_demo_database(root / "data")
    demo_yaml, hr_yaml = write_mappings(root)
    hub_yaml = root / "hub.yaml"
    hub_yaml.write_text(yaml.safe_dump(HUB_FILE))
    hr = HrProcess(root, *hr_args)
    env = {"HR_API_URL": hr.api, "HR_API_KEY": HR_API_KEY, "HUB_SCIM_TOKEN": HUB_TOKEN, "SCIM_GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN}
    if store_url is not None:
        env["SCIM_GATEWAY_STORE"] = store_url
    gateway = LiveGateway(root, token="", env=env)

    def start() -> None:
        # A sweep a second: what a kill left in an app's journal is settled soon, not after twice the default 30 s.
        gateway.start("--config", str(demo_yaml), "--config", str(hr_yaml), "--hub", str(hub_yaml), "--recovery-interval", "1")

    try:
        start()
    except BaseException:
        hr.close()
        raise
    return Stack(root, hr, gateway, Demo(root / "data" / "demo.db")), start


async def run_cli(store: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    """The command line on the gateway's store (`store`: its SCIM_GATEWAY_STORE, if it has one)."""
    env = {k: v for k, v in os.environ.items() if k not in ("SCIM_GATEWAY_TOKEN", "SCIM_GATEWAY_STORE")} | store
    return await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "gateway.cli", *argv], capture_output=True, text=True, env=env, timeout=60
    )


__all__ = [
    "ADMIN_TOKEN",
    "HUB_FILE",
    "HUB_TOKEN",
    "ROOT",
    "Demo",
    "HrProcess",
    "Stack",
    "eventually",
    "run_cli",
    "start_stack",
    "write_mappings",
]
