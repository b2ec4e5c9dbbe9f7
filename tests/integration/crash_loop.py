"""The crash loop: a live gateway killed at random points under a stream of concurrent writes, restarted, checked.

Shared by the crash tests (test_crash.py: SQLite, PostgreSQL with --workers, the demo and hr apps;
test_crash_matrix.py: an SQL app on PostgreSQL, the LDAP directory, the hub's delivery, swaps and an open breaker;
test_recovery_kills.py). What a run checks after every restart: the app and the correlation store agree exactly
(no duplicate, no orphan, no dangling link, no pending journal entry, the same memberships) and every acknowledged
write holds; a write that got no answer may have applied or not, but the same in both places.

Speed: a gateway process takes about a second to import; 50 cold starts would be
most of the budget on two cores. So each gateway process is forked from a fork
server that imported the gateway once, and runs the real `scim-gateway serve`
(`gateway.cli.main`, argument parsing to run_app) from there: its own process,
killed with SIGKILL, listening a tenth of a second after the fork.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Set
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import GROUP_URN, PATCH_URN, USER_URN, free_port
from tests.fakes.serve import HR_API_KEY, TEST_READER

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "crash-test-token-0123456789"
KILLS_PER_APP = 25
READER = {"X-API-Key": HR_API_KEY, TEST_READER: "1"}  # the test reads the app as it is, past the faults it scripts
WORKERS = 8  # requests in flight at once

# A fork server: imports the gateway once, then per line on stdin forks a child that runs `scim-gateway serve`
# (its output to the log on stderr), answers "pid N" and, when the child ends, "exit STATUS" (a negative: the signal).
# Each process ends itself when its parent goes away, so a test killed hard leaves nothing running.
FORK_SERVER = """
import os, signal, sys, threading, time
import aiohttp.web
import gateway.app, gateway.cli, gateway.demo
import sqlalchemy.dialects.sqlite.aiosqlite  # what the demo's connector opens
import ldap3, sqlalchemy.dialects.postgresql.asyncpg  # what the LDAP and PostgreSQL connectors open
from gateway.connectors.registry import load_registry

def orphaned(then):
    parent = os.getppid()
    def watch():
        while os.getppid() == parent:
            time.sleep(0.5)
        then()
    threading.Thread(target=watch, daemon=True).start()

orphaned(lambda: os._exit(1))
load_registry()
for line in sys.stdin:
    sys.stdout.flush(); sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 70
        try:
            os.dup2(2, 1)
            sys.stdin.close()
            orphaned(lambda: os.kill(os.getpid(), signal.SIGKILL))
            code = gateway.cli.main(sys.argv[1:])
        except BaseException:
            import traceback
            traceback.print_exc()
        finally:
            sys.stdout.flush(); sys.stderr.flush()
            os._exit(code)
    print("pid", pid, flush=True)
    _, status = os.waitpid(pid, 0)
    print("exit", os.waitstatus_to_exitcode(status), flush=True)
"""


def _child_env(extra: dict[str, str]) -> dict[str, str]:
    # The SQLite store in the data dir, whatever the caller's environment says.
    drop = {"SCIM_GATEWAY_TOKEN", "SCIM_GATEWAY_STORE"}
    return {k: v for k, v in os.environ.items() if k not in drop} | extra


async def _wait_listening(
    port: int, proc: subprocess.Popen[bytes], log: Path, what: str, alive: Callable[[], bool] = lambda: True
) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None or not alive():
            raise RuntimeError(f"{what} stopped (exit {proc.returncode}):\n{log.read_text()[-4000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            await asyncio.sleep(0.01)
    raise RuntimeError(f"{what} did not start:\n{log.read_text()[-4000:]}")


class GatewayProcess:
    """`scim-gateway serve` on one port and data dir, killed and started again (each a process forked from a warm one)."""

    def __init__(self, root: Path, *serve_args: str, env: dict[str, str] | None = None, app: str = "demo") -> None:
        self.root = root
        self.data = root / "data"
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/apps/{app}/scim/v2"
        self.log = root / "gateway.log"
        root.mkdir(parents=True, exist_ok=True)
        args = ["serve", "--port", str(self.port), "--data-dir", str(self.data), *serve_args]
        with open(self.log, "ab") as log:
            self.server = subprocess.Popen(
                [sys.executable, "-c", FORK_SERVER, *args],
                cwd=ROOT,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                env=_child_env(env or {}),
            )
        self.pid: int | None = None

    @property
    def store_file(self) -> Path:
        return self.data / "gateway.db"

    def _answer(self, word: str) -> int:
        assert self.server.stdout is not None
        line = self.server.stdout.readline().decode()
        if not line.startswith(word + " "):
            raise RuntimeError(f"the fork server said {line!r}:\n{self.log.read_text()[-4000:]}")
        return int(line.split()[1])

    def spawn(self) -> None:
        """Run `serve`, not waiting for anything."""
        assert self.pid is None and self.server.stdin is not None
        self.server.stdin.write(b"serve\n")
        self.server.stdin.flush()
        self.pid = self._answer("pid")

    async def start(self) -> None:
        """Serve; start-up recovery is done once it listens."""
        self.spawn()
        await _wait_listening(self.port, self.server, self.log, "the gateway's fork server", self.alive)

    def alive(self) -> bool:
        assert self.pid is not None
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        return True

    def signal(self, signum: int) -> None:
        assert self.pid is not None
        os.kill(self.pid, signum)

    def wait(self) -> int:
        """The serving process's exit status once it has ended (negative: killed by that signal)."""
        status = self._answer("exit")
        self.pid = None
        return status

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        assert self.wait() == -signal.SIGKILL

    def close(self) -> None:
        if self.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                self.signal(signal.SIGTERM)
            deadline = time.monotonic() + 15
            while self.alive() and time.monotonic() < deadline:
                time.sleep(0.05)
            if self.alive():
                self.signal(signal.SIGKILL)
            self.wait()
        assert self.server.stdin is not None
        self.server.stdin.close()
        try:
            self.server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.server.kill()
            self.server.wait()
        assert self.server.stdout is not None
        self.server.stdout.close()


class HrFake:
    """The hr fake as its own process (`python -m tests.fakes.serve hr PORT`), read over its API."""

    def __init__(self, root: Path, *extra: str) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.api = f"http://127.0.0.1:{self.port}/api"
        self.log = root / "hr-fake.log"
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.fakes.serve", "hr", str(self.port), *extra],
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=_child_env({}),
            )

    async def started(self) -> None:
        await _wait_listening(self.port, self.proc, self.log, "the hr fake")

    @property
    def gateway_env(self) -> dict[str, str]:
        return {"HR_API_URL": self.api, "HR_API_KEY": HR_API_KEY, "HR_SCIM_TOKEN": TOKEN}

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


# ---------------------------------------------------------------- what the app and the store hold


@dataclass
class Holdings:
    """One side's records: users and groups by native id, memberships as (group native id, user native id)."""

    users: dict[str, dict[str, Any]]  # native id -> {"login", "title", "active"}
    groups: dict[str, str]  # native id -> name
    members: set[tuple[str, str]]


def _status(value: Any, active: str) -> bool | None:
    return None if value is None else value == active


def demo_app_holdings(data: Path) -> Holdings:
    db = sqlite3.connect(data / "demo.db")
    try:
        users = {
            str(n): {"login": login, "title": title, "active": _status(status, "A")}
            for n, login, title, status in db.execute("SELECT emp_no, login, job_title, status FROM employees")
        }
        groups = {str(n): name for n, name in db.execute("SELECT team_id, team_name FROM teams")}
        members = {(str(t), str(e)) for t, e in db.execute("SELECT team_id, emp_no FROM team_members")}
    finally:
        db.close()
    return Holdings(users, groups, members)


async def hr_app_holdings(session: aiohttp.ClientSession, api: str) -> Holdings:
    async def every(path: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for page in itertools.count(1):
            params = {"page": page, "per_page": 100}
            async with session.get(f"{api}{path}", params=params, headers=READER) as resp:
                assert resp.status == 200, await resp.text()
                body = await resp.json()
            out += body["data"]
            if page * 100 >= body["total"]:
                return out

    users = {
        str(u["id"]): {"login": u["login"], "title": u["title"], "active": _status(u["status"], "enabled")}
        for u in await every("/users")
    }
    groups = {str(g["id"]): g["name"] for g in await every("/groups")}
    members = {(gid, str(m["user_id"])) for gid in groups for m in await every(f"/groups/{gid}/members")}
    return Holdings(users, groups, members)


@dataclass
class StoreRows:
    users: dict[str, tuple[str | None, dict[str, Any]]]  # SCIM id -> (native id, the gateway's copy)
    groups: dict[str, tuple[str | None, dict[str, Any]]]
    members: set[tuple[str, str]]  # (group id, member id)
    unsettled: list[str]  # rows still being created, or claimed by a write


def store_rows(store_file: Path, app: str) -> StoreRows:
    db = sqlite3.connect(store_file)
    try:
        users: dict[str, tuple[str | None, dict[str, Any]]] = {}
        groups: dict[str, tuple[str | None, dict[str, Any]]] = {}
        unsettled = []
        rows = db.execute("SELECT type, id, native_id, unique_key, data, state, pending_seq FROM resources WHERE app = ?", (app,))
        for rtype, rid, native, unique_key, data, state, pending_seq in rows:
            copy = json.loads(data)
            (users if rtype == "User" else groups)[rid] = (native, copy)
            name = copy.get("userName" if rtype == "User" else "displayName")
            if state != "active" or pending_seq is not None or not isinstance(name, str) or unique_key != name.lower():
                unsettled.append(f"{rtype} {rid} {name!r}: state {state}, pending {pending_seq}, unique key {unique_key!r}")
        members = set(db.execute("SELECT group_id, member_id FROM members WHERE app = ?", (app,)))
    finally:
        db.close()
    return StoreRows(users, groups, members, unsettled)


def journal(store_file: Path, where: str = "state = 'pending'", args: tuple[Any, ...] = ()) -> list[tuple[int, str]]:
    """(seq, state) of the journal entries that match, read from the store file as any reader could."""
    db = sqlite3.connect(store_file)
    try:
        return list(db.execute(f"SELECT seq, state FROM journal WHERE {where} ORDER BY seq", args))
    finally:
        db.close()


class StoreView:
    """How the crash loop reads the correlation store after a kill, as any reader could: the SQLite file."""

    def __init__(self, store_file: Path) -> None:
        self.store_file = store_file

    async def journal(self, where: str = "state = 'pending'", args: tuple[Any, ...] = ()) -> list[tuple[int, str]]:
        return journal(self.store_file, where, args)

    async def rows(self, app: str) -> StoreRows:
        return store_rows(self.store_file, app)


class PgStoreView(StoreView):
    """The same reads of a PostgreSQL store (the `?` placeholders numbered as asyncpg wants them)."""

    def __init__(self, url: str) -> None:
        self.url = url

    async def _fetch(self, sql: str, *args: Any) -> list[Any]:
        import asyncpg

        n = itertools.count(1)
        conn = await asyncpg.connect(self.url)
        try:
            return list(await conn.fetch("".join(f"${next(n)}" if c == "?" else c for c in sql), *args))
        finally:
            await conn.close()

    async def journal(self, where: str = "state = 'pending'", args: tuple[Any, ...] = ()) -> list[tuple[int, str]]:
        return [
            (r["seq"], r["state"]) for r in await self._fetch(f"SELECT seq, state FROM journal WHERE {where} ORDER BY seq", *args)
        ]

    async def rows(self, app: str) -> StoreRows:
        users: dict[str, tuple[str | None, dict[str, Any]]] = {}
        groups: dict[str, tuple[str | None, dict[str, Any]]] = {}
        unsettled = []
        sql = "SELECT type, id, native_id, unique_key, data, state, pending_seq FROM resources WHERE app = ?"
        for r in await self._fetch(sql, app):
            copy = json.loads(r["data"]) if isinstance(r["data"], str) else r["data"]
            (users if r["type"] == "User" else groups)[r["id"]] = (r["native_id"], copy)
            name = copy.get("userName" if r["type"] == "User" else "displayName")
            if (
                r["state"] != "active"
                or r["pending_seq"] is not None
                or not isinstance(name, str)
                or r["unique_key"] != name.lower()
            ):
                unsettled.append(
                    f"{r['type']} {r['id']} {name!r}: state {r['state']}, pending {r['pending_seq']}, unique key {r['unique_key']!r}"
                )
        members = {
            (r["group_id"], r["member_id"])
            for r in await self._fetch("SELECT group_id, member_id FROM members WHERE app = ?", app)
        }
        return StoreRows(users, groups, members, unsettled)


# ---------------------------------------------------------------- what the IdP was told


@dataclass
class User:
    id: str
    values: dict[str, Any]  # userName, title, active as last acknowledged
    maybe: list[dict[str, Any]] = field(default_factory=list)  # values an unanswered PATCH may have left
    gone: bool | None = False  # None: a DELETE got no answer


@dataclass
class Group:
    id: str
    name: str
    members: set[str]
    maybe: list[set[str]] = field(default_factory=list)  # member sets an unanswered PATCH may have left
    maybe_names: list[str] = field(default_factory=list)  # the name an unanswered rename may have given it
    gone: bool | None = False


def _subsets(items: Set[str]) -> list[set[str]]:
    ordered = sorted(items)
    return [set(c) for r in range(len(ordered) + 1) for c in itertools.combinations(ordered, r)]


@dataclass
class Model:
    """Every acknowledged write, and the writes that got no answer (resolved against the store after each restart)."""

    atomic_members: bool  # the app adds a group's members in one transaction with the write (SQL), or call by call (REST)
    users: dict[str, User] = field(default_factory=dict)
    groups: dict[str, Group] = field(default_factory=dict)
    unanswered_users: dict[str, dict[str, Any]] = field(default_factory=dict)  # lower userName -> values
    unanswered_groups: dict[str, tuple[str, set[str]]] = field(default_factory=dict)  # lower name -> (name, members)
    # `deactivate: {via: delete}`: an inactive user has no record in the app (nor its memberships there); its
    # reactivation creates the record again.
    deactivation_drops: bool = False
    # `delete: deactivate`: a DELETE deactivates the app's record and forgets the resource, so the app keeps an
    # inactive record linked to nothing (and its memberships there); its name is never given again (`retired`).
    delete_keeps: bool = False
    retired: set[str] = field(default_factory=set)  # lower userNames of users a DELETE was sent for (delete_keeps)

    def member_outcomes(self, before: set[str], added: Set[str] = frozenset(), removed: Set[str] = frozenset()) -> list[set[str]]:
        """The member sets an unanswered change may have left: all of it or none (atomic), or any part of it."""
        if self.atomic_members:
            return [before, (before | added) - removed]
        return [(before | a) - r for a in _subsets(added) for r in _subsets(removed)]

    def drop_user(self, uid: str) -> None:
        for group in self.groups.values():
            group.members.discard(uid)
            for option in group.maybe:
                option.discard(uid)


def check(model: Model, store: StoreRows, app: Holdings, pending: list[tuple[int, str]]) -> list[str]:
    """Every way the app, the store and the acknowledged writes disagree; the model takes up what unanswered writes did."""
    problems: list[str] = []
    if pending:
        problems.append(f"journal entries still pending after recovery: {pending}")
    problems += [f"unsettled row: {u}" for u in store.unsettled]

    # The app: one account per login, one group per name.
    logins = [u["login"].lower() for u in app.users.values()]
    problems += [f"duplicate account in the app: {n!r}" for n in sorted({n for n in logins if logins.count(n) > 1})]
    names = [n.lower() for n in app.groups.values()]
    problems += [f"duplicate group in the app: {n!r}" for n in sorted({n for n in names if names.count(n) > 1})]

    # The store and the app: each app record linked to exactly one resource, each link to an existing record, same values.
    forgotten: set[str] = set()  # delete_keeps: the inactive records DELETEs left in the app
    if model.delete_keeps:
        linked_users = {native for native, _d in store.users.values()}
        forgotten = {
            n
            for n, r in app.users.items()
            if n not in linked_users and r["active"] is False and r["login"].lower() in model.retired
        }
    for kind, rows, records in (("User", store.users, app.users), ("Group", store.groups, app.groups)):
        linked: dict[str, list[str]] = {n: [] for n in forgotten} if kind == "User" else {}
        for rid, (native, data) in rows.items():
            if native is None and model.deactivation_drops and kind == "User" and data.get("active") is False:
                continue  # deactivated by deleting its record in the app
            if native is None:
                problems.append(f"{kind} {rid} has no app record linked")
            else:
                linked.setdefault(native, []).append(rid)
        for native, ids in linked.items():
            if len(ids) > 1:
                problems.append(f"{kind} record {native} of the app is linked to {len(ids)} resources {ids}")
            if native not in records:
                problems.append(f"dangling link: {kind} {ids} -> {native}, which the app does not have")
        problems += [f"orphan in the app: {kind} {n} {records[n]!r} is linked to no resource" for n in records if n not in linked]
    for rid, (native, data) in store.users.items():
        record = app.users.get(native or "")
        copy = {"login": data.get("userName"), "title": data.get("title"), "active": data.get("active")}
        if record is not None and copy != record:
            problems.append(f"User {rid}: the store holds {copy}, the app {record}")
    for rid, (native, data) in store.groups.items():
        name = app.groups.get(native or "")
        if name is not None and data.get("displayName") != name:
            problems.append(f"Group {rid}: the store names it {data.get('displayName')!r}, the app {name!r}")
    natives = {rid: native for rid, (native, _d) in (store.users | store.groups).items()}
    in_store = {(natives.get(g), natives.get(m)) for g, m in store.members}
    if model.deactivation_drops:
        in_store = {(g, m) for g, m in in_store if m is not None}  # an inactive user's groups are kept for its return
    in_app = {(g, m) for g, m in app.members if m not in forgotten}  # a forgotten record's memberships stay in the app
    if in_store != in_app:
        only_store, only_app = sorted(in_store - in_app, key=str), sorted(in_app - in_store, key=str)
        problems.append(f"memberships differ: only in the store {only_store}, only in the app {only_app}")

    # The acknowledged writes hold; the unanswered ones did all or nothing, as the store now says.
    for user in list(model.users.values()):
        row = store.users.get(user.id)
        if user.gone is None:
            user.gone = row is None
            if user.gone:
                model.drop_user(user.id)
        if user.gone:
            if row is not None:
                problems.append(f"deleted user {user.values['userName']!r} ({user.id}) is back")
            del model.users[user.id]
            continue
        if row is None:
            problems.append(f"acknowledged user {user.values['userName']!r} ({user.id}) is lost")
            del model.users[user.id]
            continue
        now = {k: row[1].get(k) for k in ("userName", "title", "active")}
        if now not in [user.values, *user.maybe]:
            problems.append(f"user {user.id} holds {now}, acknowledged {user.values}, maybe {user.maybe}")
        user.values, user.maybe = now, []
    for rid, (_native, data) in store.users.items():
        if rid not in model.users:
            sent = model.unanswered_users.get(str(data.get("userName")).lower())
            now = {k: data.get(k) for k in ("userName", "title", "active")}
            if sent is None or sent != now:
                problems.append(f"user {rid} {now} is in the store, but no create sent it")
            else:
                model.users[rid] = User(rid, now)
    model.unanswered_users.clear()

    for group in list(model.groups.values()):
        row = store.groups.get(group.id)
        if group.gone is None:
            group.gone = row is None
        if group.gone:
            if row is not None:
                problems.append(f"deleted group {group.name!r} ({group.id}) is back")
            del model.groups[group.id]
            continue
        if row is None:
            problems.append(f"acknowledged group {group.name!r} ({group.id}) is lost")
            del model.groups[group.id]
            continue
        now_members = {m for g, m in store.members if g == group.id}
        if now_members not in [group.members, *group.maybe]:
            problems.append(
                f"group {group.name!r} has members {sorted(now_members)}, acknowledged {sorted(group.members)},"
                f" maybe {group.maybe}"
            )
        now_name = row[1].get("displayName")
        if now_name not in [group.name, *group.maybe_names]:
            problems.append(f"group {group.id} is named {now_name!r}, acknowledged {group.name!r}, maybe {group.maybe_names}")
        group.members, group.maybe, group.name, group.maybe_names = now_members, [], str(now_name), []
    for rid, (_native, data) in store.groups.items():
        if rid not in model.groups:
            name = str(data.get("displayName"))
            sent = model.unanswered_groups.get(name.lower())
            now_members = {m for g, m in store.members if g == rid}
            # An unanswered create with members: all of them (atomic), or any part (the REST app adds them one by one).
            allowed = [] if sent is None else [sent[1]] if model.atomic_members else model.member_outcomes(set(), added=sent[1])
            if now_members not in allowed:
                problems.append(f"group {rid} {name!r} with members {sorted(now_members)} is in the store, but no create sent it")
            else:
                model.groups[rid] = Group(rid, name, now_members)
    model.unanswered_groups.clear()
    return problems


# ---------------------------------------------------------------- the stream of writes


class Names:
    """The unique names (userName, group displayName) of one resource type, as an IdP picks them.

    Mostly new ones; else one freed by an acknowledged rename or delete (an IdP reuses
    those), or one another resource is giving up right now, its rename or delete in
    flight: a race the gateway may answer 409 or 201.
    """

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.sent: list[str] = []  # every name sent (a candidate for reuse once nobody holds it)
        self.leaving: dict[str, str] = {}  # resource id -> the name it gives up, while its rename or delete is in flight
        self.creating: set[str] = set()  # lower names a create in flight is taking
        self.retired: set[str] = set()  # lower names never given again (a DELETE left the app a record holding it)

    def pick(self, rng: random.Random, serial: Iterator[int], held: set[str], *, racing: bool) -> tuple[str, bool]:
        """A name, and whether a 409 for it is a fair answer."""
        roll = rng.random()
        leaving = sorted(n for n in self.leaving.values() if n.lower() not in self.creating | self.retired)
        if racing and roll < 0.15 and leaving:
            return rng.choice(leaving), True
        freed = [n for n in self.sent if n.lower() not in held | self.creating | self.retired]
        if roll < 0.3 and freed:
            return rng.choice(freed), False
        return f"{self.prefix}{next(serial)}", False


PARTLY = "recovery settles it from the app"  # what a write's error says when it is left pending for recovery


class Outage:
    """The app down for a while during the stream: its 503s are fair answers, never acknowledged writes. A write the
    breaker refused (its circuit open) never reached the app and must leave no journal row: each refused write to one
    resource is checked against the journal between just before it was sent and just after its answer (the resource
    busy with it alone meanwhile)."""

    def __init__(self, store_file: Path) -> None:
        self.store_file = store_file
        self.refused: list[tuple[str, str, int, int]] = []  # method, path, last journal seq before it, after its answer
        self.failed = 0  # 503s of the app's own: the write was journaled, the app failed it, the gateway rolled it back

    def last_seq(self) -> int:
        db = sqlite3.connect(self.store_file)
        try:
            return int(db.execute("SELECT coalesce(max(seq), 0) FROM journal").fetchone()[0])
        finally:
            db.close()

    def answered(self, method: str, path: str, body: Any, floor: int) -> None:
        detail = str(body.get("detail", "")) if isinstance(body, dict) else ""
        if "unavailable: circuit" in detail:
            self.refused.append((method, path, floor, self.last_seq()))
        else:
            self.failed += 1

    def journaled_refusals(self) -> tuple[int, list[str]]:
        """How many refusals of a write to one resource were checked, and those that left a journal row (none may)."""
        checked, wrong = 0, []
        for method, path, floor, ceiling in self.refused:
            parts = path.strip("/").split("/")
            if len(parts) != 2:
                continue  # a create or a Bulk: no resource id to look for
            checked += 1
            rows = journal(self.store_file, "resource_id = ? AND seq > ? AND seq <= ?", (parts[1], floor, ceiling))
            if rows:
                wrong.append(f"{method} {path} was refused by the breaker but left journal entries {rows}")
        return checked, wrong


class Driver:
    """WORKERS concurrent IdP requests, each on resources no other request in flight touches (so each has one outcome)."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        model: Model,
        rng: random.Random,
        extended: bool = False,
        swaps: bool = False,
        token: str = TOKEN,
    ) -> None:
        self.extended = extended  # PUT and Bulk too
        self.swaps = swaps  # two users exchanging their userNames, the two PATCHes in flight at once
        self.token = token
        # An outage of the app (Outage): 503 is a fair answer; the breaker's refusals are checked to leave no journal row.
        self.outage: Outage | None = None
        self.session = session
        self.base_url = base_url
        self.model = model
        self.rng = rng
        self.busy: set[str] = set()
        self.serial = itertools.count(1)
        self.stopping = False
        self.unexpected: list[str] = []
        self.sent = 0
        self.counts: Counter[str] = Counter()  # the writes started, by kind
        self.user_names = Names("user")
        self.group_names = Names("Team ")
        self.user_names.retired = model.retired

    async def send(self, method: str, path: str, body: Any = None, allowed: tuple[int, ...] = ()) -> tuple[int | None, Any]:
        """The answer's status and body; (None, None) when the gateway gave none (it died): the write may have applied."""
        self.sent += 1
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/scim+json"}
        floor = None if self.outage is None else self.outage.last_seq()
        try:
            async with self.session.request(method, self.base_url + path, json=body, headers=headers) as resp:
                text = await resp.text()
                status = resp.status
        except (TimeoutError, aiohttp.ClientError, OSError):
            return None, None
        data = json.loads(text) if text else None
        if status == 503 and isinstance(data, dict) and PARTLY in str(data.get("detail", "")):
            return None, data  # left pending (part of it took effect, or its claim cannot be undone yet): as after a kill
        if status == 503 and self.outage is not None and floor is not None:
            self.outage.answered(method, path, data, floor)
            return status, data
        if status >= 300 and status not in allowed:
            self.unexpected.append(f"{method} {path} {json.dumps(body)[:300]} -> {status} {text[:300]}")
        return status, data

    def _free_users(self) -> list[User]:
        return [u for u in self.model.users.values() if u.gone is False and u.id not in self.busy]

    def _free_groups(self) -> list[Group]:
        return [g for g in self.model.groups.values() if g.gone is False and g.id not in self.busy]

    def _user_name(self, *, racing: bool) -> tuple[str, bool]:
        held = {u.values["userName"].lower() for u in self.model.users.values() if u.gone is not True}
        return self.user_names.pick(self.rng, self.serial, held, racing=racing)

    def _group_name(self, *, racing: bool) -> tuple[str, bool]:
        held = {g.name.lower() for g in self.model.groups.values() if g.gone is not True}
        return self.group_names.pick(self.rng, self.serial, held, racing=racing)

    def _pick(self) -> Callable[[], Awaitable[None]]:
        users, groups = self._free_users(), self._free_groups()
        live_users = sum(1 for u in self.model.users.values() if u.gone is False)
        live_groups = sum(1 for g in self.model.groups.values() if g.gone is False)
        ops: list[tuple[float, Callable[[], Awaitable[None]]]] = [(3 + (6 if live_users < 10 else 0), self.create_user)]
        ops.append((1 + (3 if live_groups < 4 else 0), self.create_group))
        if users:
            ops.append((4, self.patch_user))
        if groups:
            ops.append((0.7, self.rename_group))
        if users and groups:
            ops.append((3, self.add_members))
        if any(g.members - self.busy for g in groups):
            ops.append((2, self.remove_member))
        if users and live_users > 8:
            ops.append((1.5, self.delete_user))
        if groups and live_groups > 4:
            ops.append((0.7, self.delete_group))
        if self.extended:
            ops.append((1.5, self.bulk_create))
            if users:
                ops.append((2, self.put_user))
        if self.swaps and len(users) >= 2:
            ops.append((1, self.swap_users))
        return self.rng.choices([op for _, op in ops], [w for w, _ in ops])[0]

    async def worker(self) -> None:
        while not self.stopping:
            op = self._pick()
            self.counts[op.__name__] += 1
            await op()

    def _take(self, *ids: str) -> None:
        self.busy.update(ids)

    def _release(self, *ids: str) -> None:
        self.busy.difference_update(ids)

    async def create_user(self) -> None:
        name, may_clash = self._user_name(racing=True)
        n = next(self.serial)
        values = {"userName": name, "title": f"title-{n}", "active": True}
        body = {
            "schemas": [USER_URN],
            "userName": name,
            "title": values["title"],
            "active": True,
            "name": {"givenName": "Crash", "familyName": f"Test{n}"},
            "emails": [{"type": "work", "value": f"user{n}@example.com", "primary": True}],
        }
        self.user_names.sent.append(name)
        self.user_names.creating.add(name.lower())
        try:
            status, data = await self.send("POST", "/Users", body, allowed=(409,) if may_clash else ())
        finally:
            self.user_names.creating.discard(name.lower())
        if status == 201:
            self.model.users[data["id"]] = User(data["id"], values)
        elif status is None:
            self.model.unanswered_users[name.lower()] = values

    async def patch_user(self) -> None:
        user = self.rng.choice(self._free_users())
        new = dict(user.values, title=f"title-{next(self.serial)}")
        ops: list[dict[str, Any]] = [{"op": "replace", "path": "title", "value": new["title"]}]
        roll = self.rng.random()
        if roll < 0.25:
            new["active"] = not user.values["active"]
            ops.append({"op": "replace", "path": "active", "value": new["active"]})
        elif roll < 0.45:
            new["userName"], _ = self._user_name(racing=False)  # a rename: the unique key moves, the old name is freed
            ops.append({"op": "replace", "path": "userName", "value": new["userName"]})
            self.user_names.creating.add(new["userName"].lower())
            self.user_names.leaving[user.id] = user.values["userName"]
        self._take(user.id)
        try:
            status, _ = await self.send("PATCH", f"/Users/{user.id}", {"schemas": [PATCH_URN], "Operations": ops})
            if status == 200:
                user.values = new
            elif status is None:
                user.maybe = [new]
        finally:
            self._release(user.id)
            if self.user_names.leaving.pop(user.id, None) is not None:
                self.user_names.creating.discard(new["userName"].lower())
                self.user_names.sent.append(new["userName"])

    async def put_user(self) -> None:
        """PUT: the whole user replaced (a new title, sometimes the other `active`), the same userName."""
        user = self.rng.choice(self._free_users())
        n = next(self.serial)
        new = dict(user.values, title=f"title-{n}")
        if self.rng.random() < 0.3:
            new["active"] = not user.values["active"]
        body = {
            "schemas": [USER_URN],
            "userName": new["userName"],
            "title": new["title"],
            "active": new["active"],
            "name": {"givenName": "Put", "familyName": f"Test{n}"},
        }
        self._take(user.id)
        try:
            status, _ = await self.send("PUT", f"/Users/{user.id}", body)
            if status == 200:
                user.values = new
            elif status is None:
                user.maybe = [new]
        finally:
            self._release(user.id)

    async def bulk_create(self) -> None:
        """A Bulk of two creates, with or without failOnErrors; each operation has its own outcome."""
        names = [self._user_name(racing=False)[0] for _ in range(2)]
        if len({n.lower() for n in names}) < 2:
            return
        values = [{"userName": name, "title": f"bulk-{next(self.serial)}", "active": True} for name in names]
        ops = [
            {"method": "POST", "path": "/Users", "bulkId": f"b{i}", "data": {"schemas": [USER_URN], **v}}
            for i, v in enumerate(values)
        ]
        body: dict[str, Any] = {"schemas": ["urn:ietf:params:scim:api:messages:2.0:BulkRequest"], "Operations": ops}
        if self.rng.random() < 0.5:
            body["failOnErrors"] = 1
        for name in names:
            self.user_names.sent.append(name)
            self.user_names.creating.add(name.lower())
        try:
            status, data = await self.send("POST", "/Bulk", body)
        finally:
            for name in names:
                self.user_names.creating.discard(name.lower())
        if status is None:
            for v in values:
                self.model.unanswered_users[v["userName"].lower()] = v
            return
        if status != 200:
            return
        by_id = {op.get("bulkId"): op for op in data["Operations"]}
        for i, v in enumerate(values):
            op = by_id.get(f"b{i}")
            if op is not None and str(op.get("status")) == "201":
                rid = op["location"].rstrip("/").rsplit("/", 1)[1]
                self.model.users[rid] = User(rid, v)
            elif op is None or str(op.get("status", "")).startswith("5"):
                self.model.unanswered_users[v["userName"].lower()] = v  # not run, or its outcome unknown
            else:
                self.unexpected.append(f"Bulk create {v['userName']}: {op}")

    async def swap_users(self) -> None:
        """Two users exchange their userNames, as IdPs do it: the two PATCHes sent at once, each may find the other's
        name still held (409); or the first moved to a name of its own first, then the two sent at once."""
        a, b = self.rng.sample(self._free_users(), 2)
        name_a, name_b = a.values["userName"], b.values["userName"]
        interim = f"swap{next(self.serial)}" if self.rng.random() < 0.5 else None
        taken = {name_a.lower(), name_b.lower(), *([interim.lower()] if interim else [])}
        self._take(a.id, b.id)
        self.user_names.creating.update(taken)  # no create takes them meanwhile
        try:
            if interim is not None:
                self.user_names.sent.append(interim)
                if await self._rename(a, interim, may_clash=False) != 200:
                    return
            await asyncio.gather(self._rename(b, name_a, may_clash=True), self._rename(a, name_b, may_clash=True))
        finally:
            self._release(a.id, b.id)
            self.user_names.creating.difference_update(taken)

    async def _rename(self, user: User, name: str, *, may_clash: bool) -> int | None:
        new = dict(user.values, userName=name)
        ops = [{"op": "replace", "path": "userName", "value": name}]
        allowed = (409,) if may_clash else ()
        status, _ = await self.send("PATCH", f"/Users/{user.id}", {"schemas": [PATCH_URN], "Operations": ops}, allowed)
        if status == 200:
            user.values = new
        elif status is None:
            user.maybe = [new]
        return status

    async def create_group(self, members: int | None = None) -> None:
        name, may_clash = self._group_name(racing=True)
        free = self._free_users()
        chosen = self.rng.sample(free, min(len(free), self.rng.choice([0, 1, 2]) if members is None else members))
        ids = {u.id for u in chosen}
        body: dict[str, Any] = {"schemas": [GROUP_URN], "displayName": name}
        if ids:
            body["members"] = [{"value": i} for i in sorted(ids)]
        self.group_names.sent.append(name)
        self.group_names.creating.add(name.lower())
        self._take(*ids)
        try:
            status, data = await self.send("POST", "/Groups", body, allowed=(409,) if may_clash else ())
            if status == 201:
                self.model.groups[data["id"]] = Group(data["id"], name, set(ids))
            elif status is None:
                self.model.unanswered_groups[name.lower()] = (name, set(ids))
        finally:
            self._release(*ids)
            self.group_names.creating.discard(name.lower())

    async def rename_group(self) -> None:
        group = self.rng.choice(self._free_groups())
        name, _ = self._group_name(racing=False)
        self._take(group.id)
        self.group_names.creating.add(name.lower())
        self.group_names.leaving[group.id] = group.name
        try:
            ops = [{"op": "replace", "path": "displayName", "value": name}]
            status, _ = await self.send("PATCH", f"/Groups/{group.id}", {"schemas": [PATCH_URN], "Operations": ops})
            if status == 200:
                group.name = name
            elif status is None:
                group.maybe_names = [name]
        finally:
            self._release(group.id)
            self.group_names.leaving.pop(group.id, None)
            self.group_names.creating.discard(name.lower())
            self.group_names.sent.append(name)

    async def add_members(self) -> None:
        group = self.rng.choice(self._free_groups())
        candidates = [u for u in self._free_users() if u.id not in group.members]
        if not candidates:
            return
        ids = {u.id for u in self.rng.sample(candidates, min(len(candidates), self.rng.choice([1, 1, 2])))}
        self._take(group.id, *ids)
        try:
            ops = [{"op": "add", "path": "members", "value": [{"value": i} for i in sorted(ids)]}]
            status, _ = await self.send("PATCH", f"/Groups/{group.id}", {"schemas": [PATCH_URN], "Operations": ops})
            if status == 200:
                group.members |= ids
            elif status is None:
                group.maybe = self.model.member_outcomes(group.members, added=ids)
        finally:
            self._release(group.id, *ids)

    async def remove_member(self) -> None:
        groups = [g for g in self._free_groups() if g.members - self.busy]
        if not groups:
            return
        group = self.rng.choice(groups)
        uid = self.rng.choice(sorted(group.members - self.busy))
        self._take(group.id, uid)
        try:
            ops = [{"op": "remove", "path": f'members[value eq "{uid}"]'}]
            status, _ = await self.send("PATCH", f"/Groups/{group.id}", {"schemas": [PATCH_URN], "Operations": ops})
            if status == 200:
                group.members.discard(uid)
            elif status is None:
                group.maybe = self.model.member_outcomes(group.members, removed={uid})
        finally:
            self._release(group.id, uid)

    async def delete_user(self) -> None:
        user = self.rng.choice(self._free_users())
        self._take(user.id)
        if self.model.delete_keeps:
            self.model.retired.add(user.values["userName"].lower())  # the app keeps a record with it
        self.user_names.leaving[user.id] = user.values["userName"]
        try:
            status, _ = await self.send("DELETE", f"/Users/{user.id}")
            if status == 204:
                user.gone = True
                self.model.drop_user(user.id)
            elif status is None:
                user.gone = None
        finally:
            self._release(user.id)
            self.user_names.leaving.pop(user.id, None)

    async def delete_group(self) -> None:
        group = self.rng.choice(self._free_groups())
        self._take(group.id)
        self.group_names.leaving[group.id] = group.name
        try:
            status, _ = await self.send("DELETE", f"/Groups/{group.id}")
            if status == 204:
                group.gone = True
            elif status is None:
                group.gone = None
        finally:
            self._release(group.id)
            self.group_names.leaving.pop(group.id, None)


# ---------------------------------------------------------------- the crash loop


@dataclass
class Tally:
    kills: int = 0
    in_flight_at_kill: list[int] = field(default_factory=list)  # pending journal entries right after each kill
    settled: int = 0  # of those, settled by recovery (the app had it: linked, updated, deleted)
    rolled_back: int = 0  # of those, undone by recovery
    requests: int = 0
    unanswered: int = 0
    writes: Counter[str] = field(default_factory=Counter)  # the writes started, by kind (the Driver's methods)

    def summary(self) -> str:
        hit = sum(1 for n in self.in_flight_at_kill if n)
        return (
            f"{self.kills} kill points, {hit} with writes in flight ({sum(self.in_flight_at_kill)} journal entries pending"
            f" at the kills: {self.settled} settled, {self.rolled_back} rolled back by recovery); {self.requests} requests,"
            f" {self.unanswered} unanswered"
        )


async def crash_loop(
    gateway: GatewayProcess,
    app: str,
    model: Model,
    holdings: Callable[[], Awaitable[Holdings]],
    seed: int,
    kills: int,
    app_idle: Callable[[], Awaitable[None]] | None = None,
    view: StoreView | None = None,
    kill: Callable[[int], Awaitable[None]] | None = None,
    settle_wait: float = 0.0,
    extended: bool = False,
    swaps: bool = False,
    outage: Outage | None = None,
    during: Callable[[int], Awaitable[None]] | None = None,
    window: tuple[float, float] = (0.08, 0.35),
    token: str = TOKEN,
) -> Tally:
    """Kill the gateway `kills` times under load (`kill(point)`, default SIGKILL of its one process), start it again,
    and check app and store agree. `settle_wait`: how long the restarted gateway may take to leave no entry pending
    (several processes on one store: each one's start-up recovery takes only entries older than two sweeps).
    `during(point)` runs beside each stretch of the stream (an outage of the app, say), cancelled at the kill;
    each stretch lasts a random time within `window` seconds."""
    rng = random.Random(seed)
    view = view or StoreView(gateway.store_file)

    async def kill_it(_point: int) -> None:
        gateway.kill()

    kill = kill or kill_it
    tally = Tally()
    timeout = aiohttp.ClientTimeout(total=30)
    # No keep-alive: a request is sent once, on its own connection (aiohttp re-sends an idempotent one on a reused
    # connection that closed, which would blur what the gateway got before it died).
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(force_close=True)) as session:
        # Nor does aiohttp send a PUT or DELETE again by itself when the server dropped the connection (its
        # RFC 9112 retry, on by default): with --workers, a second worker would answer a write the killed one had
        # made (a DELETE done, then answered 404 by the retry). aiohttp's own TestClient turns it off the same way.
        session._retry_connection = False
        await gateway.start()
        driver = Driver(session, gateway.base_url, model, rng, extended, swaps, token)
        driver.outage = outage
        for point in range(kills):
            driver.stopping, driver.sent = False, 0
            workers = [asyncio.create_task(driver.worker()) for _ in range(WORKERS)]
            beside = asyncio.create_task(during(point)) if during is not None else None
            await asyncio.sleep(rng.uniform(*window))
            # Kill, then read the journal before anything else runs: what the crash left in flight.
            driver.stopping = True
            await kill(point)
            if beside is not None:
                beside.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await beside
            pending = [seq for seq, _ in await view.journal()]
            tally.kills += 1
            tally.in_flight_at_kill.append(len(pending))
            await asyncio.gather(*workers)
            tally.requests += driver.sent
            assert not driver.unexpected, f"kill point {point}: answers other than success:\n" + "\n".join(driver.unexpected)
            if app_idle is not None:
                await app_idle()

            await gateway.start()
            deadline = time.monotonic() + settle_wait
            while settle_wait and await view.journal() and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            if pending:
                outcome = await view.journal(f"seq IN ({','.join('?' * len(pending))})", tuple(pending))
                tally.settled += sum(1 for _, state in outcome if state == "done")
                tally.rolled_back += sum(1 for _, state in outcome if state == "aborted")
            unanswered = len(model.unanswered_users) + len(model.unanswered_groups)
            unanswered += sum(1 for u in model.users.values() if u.maybe or u.gone is None)
            unanswered += sum(1 for g in model.groups.values() if g.maybe or g.maybe_names or g.gone is None)
            tally.unanswered += unanswered
            problems = check(model, await view.rows(app), await holdings(), await view.journal())
            assert not problems, f"kill point {point} (seed {seed}, {len(pending)} writes in flight; {tally.summary()}):\n" + (
                "\n".join(problems)
            )
        tally.writes = driver.counts
    return tally


def report(name: str, tally: Tally, model: Model, elapsed: float, capsys: pytest.CaptureFixture[str]) -> None:
    hit = sum(1 for n in tally.in_flight_at_kill if n)
    with capsys.disabled():
        print(
            f"\n[crash {name}] {tally.summary()}; "
            f"{len(model.users)} users, {len(model.groups)} groups at the end; {elapsed:.1f} s; writes started: "
            + ", ".join(f"{n} {k}" for k, n in sorted(tally.writes.items()))
        )
    # The kills must land mid-write, or this proves nothing about recovery.
    assert hit * 3 >= tally.kills, f"only {hit} of {tally.kills} kill points had a write in flight: {tally.in_flight_at_kill}"
    assert tally.settled + tally.rolled_back == sum(tally.in_flight_at_kill)


Closers = list[Callable[[], None]]
posix_processes = pytest.mark.skipif(not hasattr(os, "fork"), reason="the gateway processes are forked and killed: POSIX only")


@pytest.fixture(name="cleanup")
def cleanup_fixture() -> Iterator[Closers]:
    """Close what a test started (processes), last first, whatever the test's outcome."""
    closers: Closers = []
    yield closers
    for close in reversed(closers):
        close()


def children_of(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def is_worker(pid: int) -> bool:
    """A serving worker of `serve --workers` (not multiprocessing's resource tracker)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return False
    return b"resource_tracker" not in cmdline


# Kill points per configuration where a run is costly (several processes, a directory): 50 or more for the full run.
CRASH_KILLS = int(os.environ.get("SCIM_GATEWAY_CRASH_KILLS", "12"))
