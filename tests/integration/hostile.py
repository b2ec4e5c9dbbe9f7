"""Hostile input, property-based: hypothesis attacks the live HTTP API of the demo app. This module is the harness
(the gateway under attack, the strategies, the checks); the property tests are in test_hostile_filters.py,
test_hostile_writes.py, test_hostile_raw.py and test_hostile_input.py (limits, and the regressions), split so that
`--dist loadfile` spreads them over workers.

The product bar: bad input gets a clear SCIM error (right status, a SCIM Error
body whose `status` equals the HTTP status) and changes nothing; never a 5xx
for client input, never a lost or half-applied write. Each property test sends
generated requests over real loopback HTTP to one gateway (demo mapping, real
SQLite files for the app and the correlation store) and checks after every
request:

- the status is never 5xx (save 501 for /Me, which RFC 7644 §3.11 asks for);
- every response that has a body is application/scim+json, and every error is
  an RFC 7644 §3.12 Error whose `status` is the HTTP status as a string and
  whose `detail` is a non-empty string;
- a 4xx answer to a write leaves the app's rows (employees, teams,
  team_members) and the store's rows (resources, members) exactly as they were;
- whatever the answer, the store and the app agree: every active User / Group
  row in the store has a native_id that exists in employees / teams and every
  employees / teams row is linked by exactly one of them (with the same unique
  key), the store's members table and the app's team_members table hold the
  same (team, employee) pairs, and no journal entry or row is left mid-write;
- a successful POST / PUT / PATCH answers what a GET (which reads the app)
  returns next: nothing lost, nothing invented;
- a Bulk request whose every operation failed changed nothing.

How hypothesis and asyncio meet here: hypothesis cannot drive an async test
function, and a sync `@given` function cannot block on the pytest-asyncio loop
it would be called from. So each property test is a plain *sync* test over a
function-scoped fixture, `gw`, that owns a private event loop
(`asyncio.new_event_loop()`), builds the app with `create_app(demo_settings(...))`
and an aiohttp TestServer/TestClient on that loop once, and runs each example
with `loop.run_until_complete(...)`. One gateway is shared by all examples of
one test (hence `HealthCheck.function_scoped_fixture` is suppressed); examples
therefore see what earlier successful writes left, which is fine because every
property is checked per request against a snapshot taken just before it. The
fixture closes the client, the server and the loop at the end
(filterwarnings=error makes a leaked resource fail the test).

Runs are repeatable in CI: `derandomize=True` and `database=None`. The example
counts keep this file well under a minute; `HOSTILE_SCALE=20` multiplies them
and draws fresh random inputs, for a longer hunt by hand.

What aiohttp's own HTTP parser refuses never reaches the gateway and is
answered by aiohttp in text/plain: a request line over 64 KiB (URLs between
max_url_bytes and that get the gateway's SCIM 414), control bytes in a header,
raw non-ASCII bytes in the URL. The strategies stay inside those limits.

Every request is bounded in time (`no_hang`, HANG_SECONDS): a hang fails the
test instead of stalling it. `test_limits_never_5xx_and_refusals_change_nothing`
runs a gateway with small limits (test_limits.py's) and draws sizes around
each limit, on reads and writes, and checks that exactly the requests over a
limit get that limit's error.

The plain regression tests in test_hostile_input.py pin each bug the property tests found.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import sqlite3
import string
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from yarl import URL

from gateway.app import create_app
from gateway.settings import LimitsConfig
from tests.conftest import BASE, ENTERPRISE_URN, GROUP_URN, PATCH_URN, TOKEN, USER_URN, demo_settings, user_body

ERROR_URN = "urn:ietf:params:scim:api:messages:2.0:Error"
BULK_URN = "urn:ietf:params:scim:api:messages:2.0:BulkRequest"
SEARCH_URN = "urn:ietf:params:scim:api:messages:2.0:SearchRequest"
SCIM_TYPE = "application/scim+json"
# RFC 7644 §3.12, table 9.
SCIM_TYPES = {
    "invalidFilter",
    "tooMany",
    "uniqueness",
    "mutability",
    "invalidSyntax",
    "invalidPath",
    "noTarget",
    "invalidValue",
    "invalidVers",
    "sensitive",
}
WRITES = {"POST", "PUT", "PATCH", "DELETE"}


# HOSTILE_SCALE=20 runs twenty times the examples, with fresh random inputs: a longer bug hunt, by hand.
HOSTILE_SCALE = float(os.environ.get("HOSTILE_SCALE", "1"))


def hostile(max_examples: int) -> Any:
    return settings(
        max_examples=max(1, int(max_examples * HOSTILE_SCALE)),
        deadline=None,
        derandomize=HOSTILE_SCALE == 1,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# ---------------------------------------------------------------- the gateway under attack


def to_json(value: Any) -> str:
    """json.dumps without recursion (hostile bodies nest deeper than the recursion limit); lone surrogates as \\u escapes."""
    out: list[str] = []
    stack: list[Any] = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, _Text):
            out.append(item.text)
        elif isinstance(item, dict):
            stack.append(_Text("}"))
            for i, (key, val) in enumerate(reversed(list(item.items()))):
                stack.append(val)
                stack.append(_Text(json.dumps(key) + ":"))
                if i < len(item) - 1:
                    stack.append(_Text(","))
            stack.append(_Text("{"))
        elif isinstance(item, list):
            stack.append(_Text("]"))
            for i, val in enumerate(reversed(item)):
                stack.append(val)
                if i < len(item) - 1:
                    stack.append(_Text(","))
            stack.append(_Text("["))
        else:
            out.append(json.dumps(item))
    return "".join(out)


@dataclass(frozen=True, slots=True)
class _Text:
    text: str


@dataclass
class Reply:
    method: str
    url: str
    status: int
    content_type: str
    text: str
    sent: Any

    @property
    def data(self) -> Any:
        return json.loads(self.text) if self.text else None

    def __repr__(self) -> str:
        return (
            f"{self.method} {self.url[:300]} body={str(self.sent)[:500]!r} -> {self.status} {self.content_type} {self.text[:500]}"
        )


class PgView:
    """A sync view of the PostgreSQL store with sqlite3's execute(sql, args) shape, on the gateway's private loop."""

    def __init__(self, gateway: Gateway, url: str) -> None:
        import asyncpg

        self.gateway = gateway
        self.conn = gateway.run(asyncpg.connect(url))

    def execute(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        parts = sql.split("?")
        numbered = parts[0] + "".join(f"${i}{part}" for i, part in enumerate(parts[1:], 1))
        return [tuple(r) for r in self.gateway.run(self.conn.fetch(numbered, *args))]

    def close(self) -> None:
        self.gateway.run(self.conn.close())


class _Rows(list):  # type: ignore[type-arg]
    def fetchall(self) -> list[tuple[Any, ...]]:
        return list(self)


class Gateway:
    """The demo gateway on a private event loop, plus sync views of its two databases (the store: SQLite or PostgreSQL)."""

    def __init__(self, root: Path, store_overrides: dict[str, Any] | None = None, limits: LimitsConfig | None = None) -> None:
        self.data_dir = root / "data"
        self.store_overrides = store_overrides or {}
        self.limits = limits or LimitsConfig()
        self.loop = asyncio.new_event_loop()
        self.client: TestClient = self.run(self._start())
        self.app_db = sqlite3.connect(self.data_dir / "demo.db")
        url = self.store_overrides.get("store_url")
        self.store_db: Any = (
            sqlite3.connect(self.data_dir / "gateway.db") if url is None else _PgStoreDb(PgView(self, url.get_secret_value()))
        )
        self.ids: dict[str, str] = {}
        self._serial = itertools.count(1)
        self.before: dict[str, list[tuple[Any, ...]]] | None = None  # the rows before the first write `attack` sends
        self.watching = False
        self.ensure_victims()

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    async def _start(self) -> TestClient:
        client = TestClient(TestServer(create_app(demo_settings(self.data_dir, limits=self.limits, **self.store_overrides))))
        await client.start_server()
        return client

    def close(self) -> None:
        self.app_db.close()
        self.store_db.close()
        self.run(self.client.close())
        self.run(self.loop.shutdown_asyncgens())
        self.run(self.loop.shutdown_default_executor())
        self.loop.close()

    # -- requests

    async def _send(self, method: str, url: URL, body: Any, raw: bytes | None, headers: dict[str, str] | None) -> Reply:
        hdrs = {"Authorization": f"Bearer {TOKEN}", "Content-Type": SCIM_TYPE, **(headers or {})}
        data = raw if raw is not None else (None if body is None else to_json(body).encode())
        async with self.client.session.request(method, url, data=data, headers=hdrs) as resp:
            text = await resp.text(errors="replace")
            return Reply(method, str(url), resp.status, resp.content_type, text, data[:500] if data else data)

    def _before(self, method: str) -> None:
        """Inside `attack`, the rows as they are just before its first write goes out (a read needs no copy)."""
        if self.watching and self.before is None and method.upper() in WRITES:
            self.before = self.snapshot()

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        self._before(method)
        url = self.client.make_url(BASE + path)
        if params:
            url = url.with_query(params)
        return self.run(no_hang(self._send(method, url, body, raw, headers)))

    def request_encoded(self, method: str, encoded_path_and_query: str, body: Any = None, *, raw: bytes | None = None) -> Reply:
        """Send a path (and query) exactly as given, percent-escapes and all."""
        self._before(method)
        root = str(self.client.make_url("/")).rstrip("/")
        return self.run(no_hang(self._send(method, URL(root + encoded_path_and_query, encoded=True), body, raw, None)))

    def request_bytes(self, method: str, path: str, headers: list[tuple[bytes, bytes]], body: bytes = b"") -> Reply:
        """One HTTP/1.1 request written byte for byte on a socket: header values that no HTTP client would send."""
        self._before(method)

        async def exchange() -> bytes:
            reader, writer = await asyncio.open_connection(self.client.host, self.client.port)
            try:
                head = [
                    f"{method} {BASE}{path} HTTP/1.1".encode(),
                    b"Host: gateway",
                    b"Connection: close",
                    b"Content-Length: %d" % len(body),
                    *(name + b": " + value for name, value in headers),
                ]
                writer.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
                await writer.drain()
                return await reader.read()
            finally:
                writer.close()
                await writer.wait_closed()

        answer = self.run(no_hang(exchange()))
        head, _, payload = answer.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        fields = {k.strip().lower(): v.strip() for k, _, v in (line.partition(b":") for line in lines[1:])}
        content_type = fields.get(b"content-type", b"").split(b";")[0].decode("latin-1")
        sent = repr(headers)[:500]
        return Reply(method, f"{BASE}{path}", int(lines[0].split()[1]), content_type, payload.decode("utf-8", "replace"), sent)

    # -- victims: a user with most attributes set, a bystander, and a group holding the first

    def ensure_victims(self) -> None:
        live = {r[0] for r in self.store_db.execute("SELECT id FROM resources WHERE state = 'active'")}
        if self.ids.get("uid") not in live:
            self.ids["uid"] = self._create(
                "/Users",
                user_body(
                    "victim@example.com",
                    title="Original",
                    displayName="Victim",
                    name={"givenName": "Vic", "familyName": "Tim"},
                    emails=[{"type": "work", "value": "victim@example.com", "primary": True}],
                    phoneNumbers=[{"type": "work", "value": "+1 555 0100"}],
                    **{ENTERPRISE_URN: {"department": "Dept", "employeeNumber": "E1"}},
                ),
            )
        if self.ids.get("bystander") not in live:
            self.ids["bystander"] = self._create("/Users", user_body("bystander@example.com"))
        if self.ids.get("gid") not in live:
            self.ids["gid"] = self._create(
                "/Groups",
                {
                    "schemas": [GROUP_URN],
                    "displayName": "Victims",
                    "members": [{"value": self.ids["uid"]}, {"value": self.ids["bystander"]}],
                },
            )

    def _create(self, path: str, body: dict[str, Any]) -> str:
        reply = self.request("POST", path, body)
        if reply.status == 409:
            # An example renamed something onto the victim's name: take a fresh one.
            key = "userName" if path == "/Users" else "displayName"
            body = {**body, key: f"{next(self._serial)}-{body[key]}"}
            reply = self.request("POST", path, body)
        assert reply.status == 201, reply
        return str(reply.data["id"])

    # -- the two databases

    def snapshot(self) -> dict[str, list[tuple[Any, ...]]]:
        out = {
            t: sorted(map(tuple, self.app_db.execute(f"SELECT * FROM {t}")), key=repr)
            for t in ("employees", "teams", "team_members")
        }
        out["resources"] = sorted(map(tuple, self.store_db.execute("SELECT * FROM resources")), key=repr)
        out["members"] = sorted(map(tuple, self.store_db.execute("SELECT * FROM members")), key=repr)
        return out

    def assert_consistent(self, reply: Reply) -> None:
        pending = self.store_db.execute("SELECT seq, op, resource_id FROM journal WHERE state = 'pending'").fetchall()
        assert not pending, (reply, "journal entries left pending", pending)
        odd = self.store_db.execute(
            "SELECT id, state FROM resources WHERE state != 'active' OR pending_seq IS NOT NULL"
        ).fetchall()
        assert not odd, (reply, "store rows left mid-write", odd)
        for kind, table, key, unique in (("User", "employees", "emp_no", "login"), ("Group", "teams", "team_id", "team_name")):
            store = {
                r[0]: r[1] for r in self.store_db.execute("SELECT native_id, unique_key FROM resources WHERE type = ?", (kind,))
            }
            app = {str(r[0]): r[1] for r in self.app_db.execute(f"SELECT {key}, {unique} FROM {table}")}
            assert set(store) == set(app), (
                reply,
                f"{kind}: store native ids {sorted(set(store) - set(app))} not in {table}; "
                f"{table} rows {sorted(set(app) - set(store))} not linked",
            )
            for native, unique_key in store.items():
                assert unique_key == app[native].lower(), (
                    reply,
                    f"{kind} {native}: store key {unique_key!r}, app has {app[native]!r}",
                )
        # The demo app's teams hold employees only: every membership the store records is a (team, employee) pair the app has too.
        linked = {r[0]: (r[1], r[2]) for r in self.store_db.execute("SELECT id, type, native_id FROM resources")}
        store_pairs = {
            (linked.get(g), linked.get(m)) for g, m in self.store_db.execute("SELECT group_id, member_id FROM members")
        }
        app_pairs = {
            (("Group", str(t)), ("User", str(e))) for t, e in self.app_db.execute("SELECT team_id, emp_no FROM team_members")
        }
        assert store_pairs == app_pairs, (reply, "membership differs", store_pairs ^ app_pairs)


HANG_SECONDS = 60  # generous: a request still unanswered after this long counts as a hang


async def no_hang(request: Any) -> Any:
    """Every request of these tests: answered within HANG_SECONDS, or the test fails naming the hang."""
    try:
        return await asyncio.wait_for(request, HANG_SECONDS)
    except TimeoutError:
        raise AssertionError(f"no answer within {HANG_SECONDS} s: the gateway hangs") from None


def check_reply(reply: Reply) -> None:
    """Never 5xx; SCIM content type; an error is an RFC 7644 Error naming its status."""
    # RFC 7644 §3.11: a provider without /Me answers 501; the one 5xx that is not a failure.
    under_base = reply.url.lower().partition("/scim/v2")[2].partition("?")[0]  # as sent: yarl would resolve /Me/.. away
    me = reply.status == 501 and [p for p in under_base.split("/") if p][:1] == ["me"]
    assert reply.status < 500 or me, reply
    if reply.status in (204, 304) or reply.method == "HEAD":
        return
    assert reply.content_type == SCIM_TYPE, reply
    try:
        data = reply.data
    except ValueError:
        raise AssertionError(f"not JSON: {reply!r}") from None
    if reply.status >= 400:
        assert isinstance(data, dict), reply
        assert data.get("schemas") == [ERROR_URN], reply
        assert data.get("status") == str(reply.status), reply
        assert isinstance(data.get("detail"), str) and data["detail"].strip(), reply
        assert data.get("scimType") is None or data["scimType"] in SCIM_TYPES, reply


def attack(gw: Gateway, send: Any, refused: Any = None) -> Reply:
    """Send one request (`send()` returns its Reply) and check every property around it.

    `refused(reply)` says whether a write was refused as a whole (default: a 4xx status); a refused write must change nothing.
    """
    gw.before, gw.watching = None, True
    try:
        reply = send()
    finally:
        gw.watching = False
    before = gw.before
    check_reply(reply)
    event(
        f"{reply.method} -> {reply.status}"
        + (f" {reply.data.get('scimType')}" if reply.status >= 400 and reply.method != "HEAD" else "")
    )
    if reply.method in WRITES and (reply.status >= 400 or (refused is not None and refused(reply))):
        assert before is not None, (reply, "a write went out without the rows before it recorded")
        after = gw.snapshot()
        changed = {k: (before[k], after[k]) for k in before if before[k] != after[k]}
        assert not changed, (reply, "a refused write changed rows", changed)
    gw.assert_consistent(reply)
    if reply.status < 400 and reply.method in WRITES:
        gw.ensure_victims()
    return reply


def assert_reads_back(gw: Gateway, kind: str, reply: Reply) -> None:
    """What a successful write answered is what a read (which asks the app) returns: nothing lost, nothing invented."""
    got = gw.request("GET", f"/{kind}/{reply.data['id']}")
    assert got.status == 200, (reply, got)
    assert got.data == reply.data, (reply, got)


class _PgStoreDb:
    """What the checks below call on the store: execute(...) with iteration and fetchall(), close()."""

    def __init__(self, view: PgView) -> None:
        self.view = view

    def execute(self, sql: str, args: tuple[Any, ...] = ()) -> _Rows:
        return _Rows(self.view.execute(sql, args))

    def close(self) -> None:
        self.view.close()


@pytest.fixture
def gw(tmp_path: Path, store_overrides: dict[str, Any]) -> Iterator[Gateway]:
    gateway = Gateway(tmp_path, store_overrides)
    try:
        yield gateway
    finally:
        gateway.close()


# ---------------------------------------------------------------- strategies: names and values
#
# Weighted towards input that gets past the first check (valid envelopes, known
# names, plausible values) so the deeper layers are attacked too; the outright
# garbage branches are there but rarer.

USER_NAMES = [
    "id",
    "externalId",
    "userName",
    "name",
    "name.givenName",
    "name.familyName",
    "name.formatted",
    "name.middleName",
    "displayName",
    "nickName",
    "profileUrl",
    "title",
    "userType",
    "preferredLanguage",
    "locale",
    "timezone",
    "active",
    "password",
    "emails",
    "emails.value",
    "emails.type",
    "emails.primary",
    "emails.display",
    "phoneNumbers",
    "phoneNumbers.value",
    "phoneNumbers.type",
    "ims",
    "photos",
    "addresses",
    "addresses.streetAddress",
    "addresses.country",
    "groups",
    "groups.value",
    "groups.display",
    "entitlements",
    "roles",
    "roles.value",
    "x509Certificates",
    "x509Certificates.value",
    "meta",
    "meta.created",
    "meta.lastModified",
    "meta.resourceType",
    "meta.version",
    "meta.location",
    "schemas",
    f"{ENTERPRISE_URN}:department",
    f"{ENTERPRISE_URN}:employeeNumber",
    f"{ENTERPRISE_URN}:costCenter",
    f"{ENTERPRISE_URN}:manager",
    f"{ENTERPRISE_URN}:manager.value",
    f"{ENTERPRISE_URN}:manager.displayName",
    f"{ENTERPRISE_URN}.department",
    f"{ENTERPRISE_URN}.manager",
    f"{USER_URN}:userName",
    f"{USER_URN}:name.givenName",
    ENTERPRISE_URN,
    USER_URN,
]
GROUP_NAMES = [
    "id",
    "externalId",
    "displayName",
    "members",
    "members.value",
    "members.display",
    "members.type",
    "members.$ref",
    "meta",
    "meta.created",
    "meta.lastModified",
    f"{GROUP_URN}:displayName",
    f"{GROUP_URN}:members",
    GROUP_URN,
]
UNKNOWN_NAMES = [
    "shoeSize",
    "name.nickname",
    "emails.colour",
    "urn:example:ext:1.0:User:foo",
    f"{ENTERPRISE_URN}:nope",
    f"{ENTERPRISE_URN}:",
    f"{GROUP_URN}:displayName",
    "urn:",
    "urn:ietf",
    "urn:ietf:params:scim:schemas:core:2.0",
    "ENT.department",
    "a.b.c.d",
    "$ref",
    "",
    " ",
    ".",
    "..",
    "name.",
    ".name",
    "üsername",
    "名前",
    "user name",
    "userName\u0000",
    'emails[type eq "work"].value',
    'members[value eq "x"]',
    "emails[",
    "]",
    "urn:microsoft:azure:ad:scim:2.0:Group",
    f"{ENTERPRISE_URN}:manager.value.x",
    "name.givenName.extra",
]


def weighted(*choices: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """one_of with weights. (Plain one_of drifts towards the branch with the most distinct examples,
    since hypothesis does not repeat an input: the raw-garbage branch would crowd out the rest.)"""
    total = sum(weight for weight, _ in choices)

    def pick(n: int) -> st.SearchStrategy[Any]:
        for weight, strategy in choices:
            if n < weight:
                return strategy
            n -= weight
        raise AssertionError(n)

    return st.integers(0, total - 1).flatmap(pick)


def case_variants(name: str) -> st.SearchStrategy[str]:
    return st.sampled_from([name, name.lower(), name.upper(), name.swapcase()])


user_names = st.sampled_from(USER_NAMES).flatmap(case_variants)
group_names = st.sampled_from(GROUP_NAMES).flatmap(case_variants)
names = st.one_of(st.sampled_from(USER_NAMES), st.sampled_from(GROUP_NAMES), user_names, st.sampled_from(UNKNOWN_NAMES))

HOSTILE_CHARS = [
    "\u0000",
    "\ufeff",
    "\u202e",
    "\uffff",
    "\U0001f600",
    "\\",
    '"',
    "'",
    "%",
    "\n",
    "\t",
    "é",
    "ß",
    "İ",
    "\u212a",
    "\u0130",
    "ǅ",
]
plain_text = st.text(alphabet=st.characters(codec="utf-8"), max_size=30)
odd_text = st.text(alphabet=st.one_of(st.characters(codec="utf-8"), st.sampled_from(HOSTILE_CHARS)), max_size=30)
# Lone surrogates: JSON carries them as \ud800 escapes; they are text that is not Unicode.
surrogate_text = st.tuples(plain_text, st.sampled_from(["\ud800", "\udfff", "\udc00"]), plain_text).map("".join)
words = st.sampled_from(
    ["alice", "Bob", "alice@example.com", "Engineering", "work", "home", "+1 555 0100", "", " ", "victim@example.com"]
)
texts = st.one_of(words, plain_text, odd_text)
huge_ints = st.sampled_from([2**63, -(2**63) - 1, 10**30, -(10**30), 2**64, 10**400])
floats = st.floats(allow_nan=False, allow_infinity=False)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    huge_ints,
    floats,
    texts,
    st.sampled_from(
        [float("nan"), float("inf"), -float("inf"), 1e308, 5e-324]
    ),  # Python's json reads and writes NaN and Infinity
    st.sampled_from(["True", "False", "true", "FALSE", "yes", "null", "2024-01-01T00:00:00Z", "9999-12-31T23:59:59-14:00"]),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.one_of(names, plain_text), inner, max_size=3)),
    max_leaves=8,
)
multi_item = st.fixed_dictionaries(
    {},
    optional={
        "value": st.one_of(texts, scalars),
        "type": st.one_of(st.sampled_from(["work", "home", "Work", "other"]), scalars),
        "primary": st.one_of(st.booleans(), st.sampled_from(["True", "false", "maybe"]), scalars),
        "display": scalars,
        "$ref": scalars,
        "givenName": texts,
    },
)
# Plausible values: what an attribute of some type could hold, right or wrong for the one at hand.
values = st.one_of(texts, texts, st.booleans(), st.lists(multi_item, max_size=3), multi_item, json_values, scalars)


def nested(depth: int) -> Any:
    value: Any = "deep"
    for i in range(depth):
        value = [value] if i % 2 else {"value": value}
    return value


# Rare, and each a known trap: deeper than any recursion limit, very large, not Unicode.
rare_values = st.one_of(
    st.sampled_from([10, 60, 70, 500, 5000]).map(nested),
    st.sampled_from(["x" * 100_000, ["a"] * 5000, {f"k{i}": i for i in range(3000)}]),
    surrogate_text,
    huge_ints,
)
etags = st.one_of(
    st.none(),
    st.none(),
    st.none(),
    st.none(),
    st.sampled_from(['W/"1"', '"1"', "*", 'W/"99999999999999999999999"', "garbage", 'W/""', "", 'W/"-1"', 'W/"1", W/"2"']),
    st.text(alphabet=string.printable.strip(), max_size=20),
)


# ---------------------------------------------------------------- strategies: filters

USER_FILTER_ATTRS = {
    "userName": "s",
    "displayName": "s",
    "title": "s",
    "active": "b",
    "emails": "s",
    "emails.value": "s",
    "emails.type": "s",
    "emails.primary": "b",
    "name.givenName": "s",
    "name.familyName": "s",
    "phoneNumbers.value": "s",
    "meta.created": "d",
    "meta.lastModified": "d",
    "meta.resourceType": "s",
    "id": "s",
    "externalId": "s",
    "groups": "s",
    "groups.value": "s",
    f"{ENTERPRISE_URN}:department": "s",
    f"{ENTERPRISE_URN}:manager.value": "s",
    f"{ENTERPRISE_URN}:manager": "s",
    f"{ENTERPRISE_URN}:employeeNumber": "s",
    "nickName": "s",
    "addresses.postalCode": "s",
    "x509Certificates.value": "s",
    f"{USER_URN}:userName": "s",
    "name": "s",
}
GROUP_FILTER_ATTRS = {
    "displayName": "s",
    "members": "s",
    "members.value": "s",
    "members.display": "s",
    "members.type": "s",
    "id": "s",
    "externalId": "s",
    "meta.created": "d",
    "meta.lastModified": "d",
    f"{GROUP_URN}:displayName": "s",
}
FILTER_ATTR_TYPES = {**USER_FILTER_ATTRS, **GROUP_FILTER_ATTRS}
SUB_TYPES = {"value": "s", "type": "s", "primary": "b", "display": "s"}
DATES = [
    '"2024-01-01T00:00:00Z"',
    '"2024-01-01T00:00:00"',
    '"2024-01-01"',
    '"0001-01-01T00:00:00+01:00"',
    '"9999-12-31T23:59:59-14:00"',
    '"2024-13-45T00:00:00Z"',
    '"now"',
    '"2024-06-01T12:00:00.123456+05:30"',
    '"1970-01-01T00:00:00z"',
]
OPS_BY_TYPE = {
    "s": ["eq", "ne", "co", "sw", "ew", "gt", "ge", "lt", "le"],
    "b": ["eq", "ne", "gt"],
    "d": ["eq", "gt", "ge", "lt", "le", "co"],
}


def typed_literal(kind: str) -> st.SearchStrategy[str]:
    if kind == "b":
        return st.sampled_from(["true", "false", "True", "null", '"true"', "1"])
    if kind == "d":
        return st.sampled_from(DATES)
    return st.one_of(
        texts.map(json.dumps), texts.map(lambda s: json.dumps(s, ensure_ascii=False)), st.sampled_from(["null", "5", "1.5"])
    )


def _typed_leaf(name: str, kind: str) -> st.SearchStrategy[str]:
    return st.one_of(
        st.tuples(case_variants(name), st.sampled_from(OPS_BY_TYPE[kind]), typed_literal(kind)).map(" ".join),
        case_variants(name).map(lambda a: f"{a} pr"),
    )


def valid_leaves(attrs: dict[str, str]) -> st.SearchStrategy[str]:
    return st.sampled_from(sorted(attrs.items())).flatmap(lambda kv: _typed_leaf(*kv))


valid_leaf = valid_leaves(FILTER_ATTR_TYPES)
sub_leaf = valid_leaves(SUB_TYPES)


def value_path_filters(complex_attrs: list[str]) -> st.SearchStrategy[str]:
    return st.tuples(
        st.sampled_from(complex_attrs),
        st.recursive(sub_leaf, lambda inner: st.tuples(inner, st.sampled_from(["and", "or"]), inner).map(" ".join), max_leaves=3),
    ).map(lambda t: f"{t[0]}[{t[1]}]")


def _combine_valid(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        st.tuples(inner, st.sampled_from(["and", "or", "AND", "Or"]), inner).map(" ".join),
        inner.map(lambda f: f"({f})"),
        inner.map(lambda f: f"not ({f})"),
    )


BAD_FILTER_ATTRS = [
    "shoeSize",
    "name.nick",
    "urn:foo:bar:baz",
    "urn:foo:bar:baz:attr",
    f"{ENTERPRISE_URN}:nope",
    "1abc",
    "a-b",
    "a..b",
    "emails.value.x",
    "_x",
    "ñame",
    "$ref",
    "members.$ref",
    f"{USER_URN}:userName",
    f"{GROUP_URN}:displayName",
    "password",
]
filter_attrs = st.one_of(st.sampled_from(sorted(FILTER_ATTR_TYPES)).flatmap(case_variants), st.sampled_from(BAD_FILTER_ATTRS))
compare_ops = st.sampled_from(["eq", "ne", "co", "sw", "ew", "gt", "ge", "lt", "le", "EQ", "Eq", "like", "==", "in", "", "pr"])
filter_values = st.one_of(
    texts.map(json.dumps),
    st.integers().map(str),
    huge_ints.map(str),
    floats.map(repr),
    st.sampled_from(
        [
            "true",
            "false",
            "null",
            "True",
            "NULL",
            '"',
            '"abc',
            'abc"',
            "'single'",
            '""',
            '"\\"',
            '"\\u00"',
            '"\\ud800"',
            "1e999",
            "-0",
            "0x10",
            "bare",
            "[",
            "]",
            "()",
            *DATES,
        ]
    ),
)
mixed_leaf = st.one_of(st.tuples(filter_attrs, compare_ops, filter_values).map(" ".join), filter_attrs.map(lambda a: f"{a} pr"))


def _combine_wild(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        st.tuples(inner, st.sampled_from(["and", "or", "xor", ""]), inner).map(" ".join),
        inner.map(lambda f: f"({f})"),
        inner.map(lambda f: f"not {f}"),
        st.tuples(filter_attrs, inner, st.sampled_from(["", ".value", ".nope", "]"])).map(lambda t: f"{t[0]}[{t[1]}]{t[2]}"),
        inner.map(lambda f: f"({f}"),
        inner.map(lambda f: f"{f})"),
        inner.map(lambda f: f"emails[{f}"),
    )


def _deep(parts: tuple[int, str, str]) -> str:
    depth, kind, leaf = parts
    if kind == "parens":
        return "(" * depth + leaf + ")" * depth
    if kind == "not":
        return "not (" * depth + leaf + ")" * depth
    if kind == "brackets":
        return "emails[" * depth + 'type eq "work"' + "]" * depth
    return " and ".join([leaf] * depth)


deep_filters = st.tuples(
    st.sampled_from([20, 33, 100, 400, 2000]), st.sampled_from(["parens", "not", "brackets", "chain"]), valid_leaf
).map(_deep)
TOKENS = [
    "userName",
    "eq",
    '"x"',
    "(",
    ")",
    "[",
    "]",
    "and",
    "or",
    "not",
    "pr",
    " ",
    ".",
    ":",
    "urn:x",
    '"',
    "\\",
    "emails",
    "value",
]


def filters(kind: str) -> st.SearchStrategy[str]:
    if kind == "Users":
        leaves = st.one_of(
            valid_leaves(USER_FILTER_ATTRS), value_path_filters(["emails", "phoneNumbers", "groups", "addresses", "roles", "ims"])
        )
    else:
        leaves = st.one_of(valid_leaves(GROUP_FILTER_ATTRS), value_path_filters(["members"]))
    return weighted(
        (50, st.recursive(leaves, _combine_valid, max_leaves=5)),
        (30, st.recursive(mixed_leaf, _combine_wild, max_leaves=6)),
        (5, deep_filters),
        (15, st.one_of(st.text(max_size=60), odd_text, st.lists(st.sampled_from(TOKENS), max_size=12).map("".join))),
    )


# ---------------------------------------------------------------- strategies: PATCH


USER_PATHS = [
    "userName",
    "displayName",
    "title",
    "nickName",
    "name",
    "name.givenName",
    "name.familyName",
    "active",
    "emails",
    "phoneNumbers",
    "emails.value",
    "emails.primary",
    'emails[type eq "work"].value',
    'emails[type eq "work"]',
    'emails[type eq "work" and primary eq true].value',
    'phoneNumbers[type eq "work"].value',
    'emails[value co "@"]',
    'emails.type eq "work"',
    "addresses",
    'addresses[type eq "work"].locality',
    "externalId",
    "roles",
    f"{ENTERPRISE_URN}:department",
    f"{ENTERPRISE_URN}:employeeNumber",
    f"{ENTERPRISE_URN}:manager",
    f"{ENTERPRISE_URN}:manager.value",
    ENTERPRISE_URN,
    f"{USER_URN}:title",
    "password",
    "id",
    "meta.created",
    "groups",
    "urn:nope",
    "emails[]",
    "emails[type eq work]",
    'emails[type eq "work"',
    'title[value eq "x"]',
    "members",
]
GROUP_PATHS = [
    "displayName",
    "members",
    'members[value eq "nobody"]',
    "members[value pr]",
    "members.display",
    "externalId",
    "id",
    f"{GROUP_URN}:displayName",
    GROUP_URN,
    "urn:microsoft:azure:ad:scim:2.0:Group:x",
]
OPS = st.one_of(
    st.sampled_from(["add", "remove", "replace", "Add", "Replace", "Remove", "REPLACE"]),
    st.sampled_from(["add", "replace"]),
    st.sampled_from(["delete", "", "move", "copy", "test", " add"]),
    scalars,
)
valid_ops = st.sampled_from(["add", "remove", "replace", "Add", "Replace", "Remove"])
patch_paths = st.one_of(
    st.sampled_from(USER_PATHS + GROUP_PATHS).flatmap(lambda p: st.sampled_from([p, p, p.lower(), p.upper()])),
    st.tuples(
        st.sampled_from(["emails", "phoneNumbers", "members", "addresses", "roles", "title", "name", "groups"]),
        st.recursive(sub_leaf, _combine_valid, max_leaves=3),
        st.sampled_from(["", ".value", ".type", ".primary", ".display", ".nope"]),
    ).map(lambda t: f"{t[0]}[{t[1]}]{t[2]}"),
    names,
    plain_text,
)


def some_id(ids: dict[str, str]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.sampled_from(sorted(ids.values())), st.sampled_from(sorted(ids.values())), st.just("no-such-id"), texts, scalars
    )


def entra_okta_ops(ids: dict[str, str]) -> st.SearchStrategy[dict[str, Any]]:
    member_list = st.lists(
        st.fixed_dictionaries({"value": some_id(ids)}, optional={"display": scalars, "type": scalars}), max_size=3
    )
    return st.one_of(
        st.builds(
            lambda v: {"op": "Replace", "path": "active", "value": v},
            st.one_of(st.sampled_from(["False", "True", "maybe"]), scalars),
        ),
        st.builds(lambda v: {"op": "Add", "path": 'emails[type eq "work"].value', "value": v}, values),
        st.builds(
            lambda g, d: {"op": "Replace", "value": {"name.givenName": g, f"{ENTERPRISE_URN}:department": d}}, values, values
        ),
        st.builds(lambda m: {"op": "Remove", "path": "members", "value": m}, st.one_of(member_list, values)),
        st.builds(lambda m: {"op": "add", "path": "members", "value": m}, st.one_of(member_list, member_list, values)),
        st.builds(lambda i, n: {"op": "replace", "value": {"id": i, "displayName": n}}, some_id(ids), values),
        st.builds(lambda m: {"op": "Replace", "path": f"{ENTERPRISE_URN}:manager", "value": m}, st.one_of(some_id(ids), values)),
        st.builds(lambda i: {"op": "remove", "path": f'members[value eq "{i}"]'}, some_id(ids).map(str)),
        st.builds(
            lambda v: {"op": "replace", "path": "userName", "value": v},
            st.one_of(plain_text, st.just("BYSTANDER@example.com"), values),
        ),
        st.builds(
            lambda v: {"op": "replace", "path": "displayName", "value": v}, st.one_of(plain_text, st.just("victims"), values)
        ),
        st.builds(lambda v: {"op": "replace", "value": v}, st.dictionaries(names, values, max_size=4)),
        st.builds(
            lambda v: {"op": "add", "value": {ENTERPRISE_URN: v}}, st.one_of(st.dictionaries(names, values, max_size=3), values)
        ),
    )


def patch_ops(ids: dict[str, str]) -> st.SearchStrategy[Any]:
    return weighted(
        (35, entra_okta_ops(ids)),
        (30, st.builds(lambda op, path, value: {"op": op, "path": path, "value": value}, valid_ops, patch_paths, values)),
        (10, st.builds(lambda path: {"op": "remove", "path": path}, patch_paths)),
        (4, st.builds(lambda path, value: {"op": "replace", "path": path, "value": value}, patch_paths, rare_values)),
        (
            18,
            st.fixed_dictionaries(
                {},
                optional={
                    "op": OPS,
                    "path": st.one_of(patch_paths, scalars),
                    "value": values,
                    "Op": OPS,
                    "PATH": patch_paths,
                    "Value": values,
                    "extra": scalars,
                },
            ),
        ),
        (3, scalars),
    )


def patch_bodies(ids: dict[str, str]) -> st.SearchStrategy[Any]:
    operations = st.lists(patch_ops(ids), min_size=1, max_size=3)
    return weighted(
        (80, operations.map(lambda ops: {"schemas": [PATCH_URN], "Operations": ops})),
        (5, operations.map(lambda ops: {"SCHEMAS": [PATCH_URN.upper()], "operations": ops})),
        (
            10,
            st.fixed_dictionaries(
                {}, optional={"schemas": st.one_of(st.just([PATCH_URN]), values), "Operations": st.one_of(operations, values)}
            ),
        ),
        (5, values),
    )


# ---------------------------------------------------------------- property: POST / PUT bodies


def resource_bodies(kind: str, ids: dict[str, str]) -> st.SearchStrategy[Any]:
    key = "userName" if kind == "Users" else "displayName"
    core = USER_URN if kind == "Users" else GROUP_URN
    fresh = st.one_of(
        st.tuples(st.sampled_from(["u", "x.", "Ü", "ǅ", "K"]), plain_text).map("".join),
        st.sampled_from(["victim@example.com", "BYSTANDER@EXAMPLE.COM", "Victims", "victims", " victim@example.com "]),
    )
    attrs = st.dictionaries(user_names if kind == "Users" else group_names, values, max_size=6)
    wild_attrs = st.dictionaries(names, values, max_size=4)
    return weighted(
        (35, st.tuples(fresh, attrs).map(lambda t: {"schemas": [core], key: t[0], **t[1]})),
        (12, st.tuples(fresh, wild_attrs).map(lambda t: {"schemas": [core], key: t[0], **t[1]})),
        (10, st.tuples(st.one_of(fresh, values), attrs).map(lambda t: {key: t[0], **t[1]})),
        (
            10,
            st.tuples(
                fresh,
                st.sampled_from([ENTERPRISE_URN, "urn:example:ext", USER_URN, GROUP_URN]),
                st.one_of(values, st.dictionaries(names, values, max_size=3)),
            ).map(lambda t: {key: t[0], t[1]: t[2]}),
        ),
        (
            10,
            st.tuples(
                fresh, st.lists(st.fixed_dictionaries({"value": some_id(ids)}, optional={"display": scalars}), max_size=3)
            ).map(lambda t: {key: t[0], "members": t[1]}),
        ),
        (10, st.tuples(fresh, st.one_of(some_id(ids), values)).map(lambda t: {key: t[0], ENTERPRISE_URN: {"manager": t[1]}})),
        (
            5,
            st.tuples(fresh, st.sampled_from(["title", "name", "emails", "members", "active", ENTERPRISE_URN]), rare_values).map(
                lambda t: {key: t[0], t[1]: t[2]}
            ),
        ),
        (5, values),
    )


# ---------------------------------------------------------------- property: query parameters


def param_values(name: str) -> st.SearchStrategy[str]:
    garbage = st.one_of(
        plain_text,
        odd_text,
        huge_ints.map(str),
        floats.map(repr),
        st.sampled_from(["", " ", "1e3", "0x10", "١٢", "+5", " 7 ", "NaN", "-0", ",", ",,,", "urn:x:y"]),
    )
    attribute_lists = st.lists(st.one_of(names, st.sampled_from(sorted(FILTER_ATTR_TYPES))), max_size=4).map(",".join)
    good = {
        "startindex": st.integers(min_value=-5, max_value=20).map(str),
        "count": st.integers(min_value=-5, max_value=2000).map(str),
        "sortby": st.one_of(st.sampled_from(sorted(FILTER_ATTR_TYPES)), names),
        "sortorder": st.sampled_from(["ascending", "descending", "DESCENDING", "Ascending", "sideways"]),
        "attributes": attribute_lists,
        "excludedattributes": attribute_lists,
        "filter": st.one_of(valid_leaf, st.just("")),
    }.get(name.strip().lower(), garbage)
    return st.one_of(good, good, garbage)


PARAM_NAMES = [
    "startIndex",
    "count",
    "sortBy",
    "sortOrder",
    "attributes",
    "excludedAttributes",
    "filter",
    "STARTINDEX",
    "aadOptscim062020",
    "count ",
]
params_strategy = st.lists(st.sampled_from(PARAM_NAMES), max_size=5, unique=True).flatmap(
    lambda keys: st.fixed_dictionaries({k: param_values(k) for k in keys})
)


# ---------------------------------------------------------------- property: Bulk


_ABSENT = object()


@st.composite
def bulk_operation(draw: st.DrawFn, ids: dict[str, str]) -> Any:
    """Mostly coherent (method, path and data agree on the resource type), sometimes not at all."""
    kind = draw(st.sampled_from(["Users", "Groups"]))
    method = draw(
        weighted(
            (85, st.sampled_from(["POST", "POST", "PUT", "PATCH", "PATCH", "DELETE"])),
            (10, st.sampled_from(["post", "Patch", "GET", "HEAD", ""])),
            (5, scalars),
        )
    )
    target = draw(st.sampled_from(["uid", "bystander"] if kind == "Users" else ["gid"]))
    upper = method.upper() if isinstance(method, str) else None
    good_path = (
        f"/{kind}"
        if upper == "POST"
        else draw(st.sampled_from([f"/{kind}/{ids[target]}", f"/{kind}/{ids[target]}", f"/{kind}/bulkId:a", f"/{kind}/bulkId:b"]))
    )
    path = draw(
        weighted(
            (80, st.just(good_path)),
            (
                12,
                st.sampled_from(
                    [
                        "/Users/bulkId:nope",
                        "Users",
                        "/Users/x/y",
                        "/Schemas",
                        "/Bulk",
                        "/",
                        "",
                        "/Users/",
                        "/users",
                        "/Users/bulkId:",
                        "/Users/bulkId:a/x",
                        "/Users/bulkId:bulkId:a",
                        f"/Groups/{ids['uid']}",
                        f"/Users/{ids['gid']}",
                    ]
                ),
            ),
            (8, st.one_of(plain_text, scalars)),
        )
    )
    good_data = patch_bodies(ids) if upper == "PATCH" else resource_bodies(kind, ids)
    data = draw(
        weighted(
            (70, good_data),
            (
                15,
                st.sampled_from(
                    [
                        {
                            "schemas": [GROUP_URN],
                            "displayName": "bulk group",
                            "members": [{"value": "bulkId:a"}, {"value": "bulkId:c"}],
                        },
                        {
                            "schemas": [USER_URN],
                            "userName": "bulk-report@example.com",
                            ENTERPRISE_URN: {"manager": {"value": "bulkId:a"}},
                        },
                        {"schemas": [USER_URN], "userName": "bulk-a@example.com"},
                        {
                            "schemas": [PATCH_URN],
                            "Operations": [{"op": "add", "path": "members", "value": [{"value": "bulkId:a"}]}],
                        },
                    ]
                ),
            ),
            (5, rare_values),
            (5, st.just(_ABSENT)),
            (5, values),
        )
    )
    bulk_id = draw(weighted((75, st.sampled_from(["a", "b", "c"])), (15, st.just(_ABSENT)), (10, scalars)))
    version = draw(weighted((85, st.just(_ABSENT)), (15, etags)))
    op = {"method": method, "path": path, "data": data, "bulkId": bulk_id, "version": version}
    return {k: v for k, v in op.items() if v is not _ABSENT}


def _distinct_bulk_ids(operations: list[Any]) -> list[Any]:
    seen: set[str] = set()
    for i, op in enumerate(operations):
        if isinstance(op, dict) and isinstance(op.get("bulkId"), str):
            if op["bulkId"] in seen:
                op["bulkId"] = f"{op['bulkId']}{i}"
            seen.add(op["bulkId"])
    return operations


def bulk_bodies(ids: dict[str, str]) -> st.SearchStrategy[Any]:
    operations = st.lists(weighted((92, bulk_operation(ids)), (8, scalars)), max_size=4)
    fail_on_errors = weighted((80, st.none()), (12, st.integers(1, 3)), (4, st.integers(-1, 0)), (4, scalars))
    return weighted(
        (
            85,
            st.tuples(weighted((90, operations.map(_distinct_bulk_ids)), (10, operations)), fail_on_errors).map(
                lambda t: {"schemas": [BULK_URN], "Operations": t[0], **({} if t[1] is None else {"failOnErrors": t[1]})}
            ),
        ),
        (
            10,
            st.fixed_dictionaries(
                {}, optional={"schemas": values, "Operations": st.one_of(operations, values), "failOnErrors": values}
            ),
        ),
        (5, values),
    )


# ---------------------------------------------------------------- property: raw paths


segment = st.one_of(
    st.sampled_from(
        [
            "Users",
            "users",
            "USERS",
            "Groups",
            "Schemas",
            "ResourceTypes",
            "ServiceProviderConfig",
            "Bulk",
            ".search",
            "Me",
            "{uid}",
            "{gid}",
            "{uid}",
            "{gid}",
            ENTERPRISE_URN,
            quote(ENTERPRISE_URN, safe=""),
            "User",
            "Group",
        ]
    ),
    st.sampled_from(
        [
            "..",
            ".",
            "%2e%2e",
            "%2F",
            "%00",
            "%ff",
            "%ED%A0%80",
            "%",
            "%zz",
            "~",
            "*",
            "%7Buid%7D",
            ";x=1",
            "bulkId:a",
            "%20{uid}",
            "{uid}%20",
            "{uid}%00",
            "{uid}.json",
        ]
    ),
    st.just("a" * 4000),
    st.just("b" * 17_000),  # over max_url_bytes: the gateway's SCIM 414
    st.text(max_size=30).map(lambda s: quote(s, safe="")),
    st.text(alphabet=string.ascii_letters + string.digits + "-._~!$&'()*+,;=:@", max_size=20),
)


# ---------------------------------------------------------------- property: raw header bytes

# What aiohttp's HTTP parser itself refuses (CR, LF, other control bytes, DEL) never reaches the gateway; every other byte does.
header_bytes = st.binary(max_size=40).map(lambda b: bytes(c for c in b if c >= 0x20 and c != 0x7F))


# ---------------------------------------------------------------- property: limits


SMALL = LimitsConfig(
    max_body_bytes=20_000,
    bulk_max_operations=5,
    default_page_size=3,
    max_page_size=10,
    max_patch_operations=5,
    max_patch_values=20,
    max_attribute_names=5,
    max_url_bytes=8192,
)


@pytest.fixture
def small_gw(tmp_path: Path, store_overrides: dict[str, Any]) -> Iterator[Gateway]:
    gateway = Gateway(tmp_path, store_overrides, limits=SMALL)
    try:
        yield gateway
    finally:
        gateway.close()


def around(limit: int, spread: int = 3) -> st.SearchStrategy[int]:
    """Sizes at the limit and just either side of it, sometimes far off."""
    return weighted((80, st.integers(max(0, limit - spread), limit + spread)), (20, st.integers(0, 4 * limit)))


def _limit_request(gw: Gateway, data: st.DataObject) -> tuple[str, str, Any, dict[str, str], int | None, str]:
    """(method, path, body, query, the status expected if over the limit else None, what is measured)."""
    ids = gw.ids
    what = data.draw(st.sampled_from(["patch-ops", "patch-values", "bulk-ops", "attributes", "body", "url"]), label="limit")
    if what == "patch-ops":
        n = data.draw(around(SMALL.max_patch_operations), label="operations")
        ops = (
            data.draw(st.lists(entra_okta_ops(ids), min_size=n, max_size=n), label="ops")
            if data.draw(st.booleans(), label="wild")
            else [{"op": "replace", "path": "title", "value": f"t{i}"} for i in range(n)]
        )
        return (
            "PATCH",
            f"/Users/{ids['uid']}",
            {"schemas": [PATCH_URN], "Operations": ops},
            {},
            413 if n > SMALL.max_patch_operations else None,
            what,
        )
    if what == "patch-values":
        n = data.draw(around(SMALL.max_patch_values), label="values")
        member = st.sampled_from([ids["uid"], ids["bystander"], "no-such-id"]).map(lambda v: {"value": v})
        values = data.draw(st.lists(member, min_size=n, max_size=n), label="members")
        op = data.draw(st.sampled_from(["add", "remove", "Add", "replace"]), label="op")
        operation = (
            {"op": op, "path": "members", "value": values}
            if data.draw(st.booleans(), label="with path")
            else {"op": op, "value": {"members": values}}
        )
        return (
            "PATCH",
            f"/Groups/{ids['gid']}",
            {"schemas": [PATCH_URN], "Operations": [operation]},
            {},
            413 if n > SMALL.max_patch_values else None,
            what,
        )
    if what == "bulk-ops":
        n = data.draw(around(SMALL.bulk_max_operations), label="operations")
        simple = st.one_of(
            st.integers(0, 10**6).map(
                lambda i: {"method": "POST", "path": "/Users", "bulkId": f"p{i}", "data": user_body(f"bulk{i}@example.com")}
            ),
            st.sampled_from(["uid", "bystander"]).map(
                lambda t: {
                    "method": "PATCH",
                    "path": f"/Users/{ids[t]}",
                    "data": {"schemas": [PATCH_URN], "Operations": [{"op": "replace", "path": "title", "value": "Bulk"}]},
                }
            ),
            st.just({"method": "DELETE", "path": "/Users/no-such-id"}),
        )
        ops = data.draw(st.lists(simple, min_size=n, max_size=n).map(_distinct_bulk_ids), label="ops")
        return (
            "POST",
            "/Bulk",
            {"schemas": [BULK_URN], "Operations": ops},
            {},
            413 if n > SMALL.bulk_max_operations else None,
            what,
        )
    if what == "attributes":
        n = data.draw(around(SMALL.max_attribute_names), label="names")
        listed = ",".join(data.draw(st.lists(st.sampled_from(USER_NAMES), min_size=n, max_size=n), label="attributes"))
        param = data.draw(st.sampled_from(["attributes", "excludedAttributes"]), label="parameter")
        method, path, body = data.draw(
            st.sampled_from(
                [
                    ("GET", "/Users", None),
                    ("GET", f"/Users/{ids['uid']}", None),
                    ("POST", "/Users", user_body(f"attrs{next(gw._serial)}@example.com")),
                    (
                        "PATCH",
                        f"/Users/{ids['uid']}",
                        {"schemas": [PATCH_URN], "Operations": [{"op": "replace", "path": "title", "value": "Attrs"}]},
                    ),
                    ("PUT", f"/Users/{ids['bystander']}", user_body("bystander@example.com", title="Put")),
                    ("DELETE", f"/Users/{ids['bystander']}", None),
                ]
            ),
            label="request",
        )
        return method, path, body, {param: listed}, 400 if n > SMALL.max_attribute_names else None, what
    if what == "body":
        size = data.draw(around(SMALL.max_body_bytes, 40), label="bytes")
        base = user_body(f"big{next(gw._serial)}@example.com", title="")
        pad = max(0, size - len(to_json(base).encode()))
        body = {**base, "title": "x" * pad}
        size = len(to_json(body).encode())
        method, path = data.draw(
            st.sampled_from([("POST", "/Users"), ("PUT", f"/Users/{ids['uid']}"), ("POST", "/Users/.search")]), label="request"
        )
        if method == "PUT":
            body = {**body, "userName": "victim@example.com"}
            size = len(to_json(body).encode())
        if path.endswith(".search"):
            body = {"schemas": [SEARCH_URN], "filter": 'title eq "' + "x" * pad + '"'}
            size = len(to_json(body).encode())
        return method, path, body, {}, 413 if size > SMALL.max_body_bytes else None, what
    size = data.draw(around(SMALL.max_url_bytes, 20), label="url bytes")
    method, path, body = data.draw(
        st.sampled_from(
            [
                ("GET", "/Users", None),
                ("POST", "/Users", user_body(f"url{next(gw._serial)}@example.com")),
                ("DELETE", f"/Users/{ids['bystander']}", None),
            ]
        ),
        label="request",
    )
    prefix = len(BASE + path + "?x=")
    return method, path, body, {"x": "u" * max(0, size - prefix)}, 414 if max(size, prefix) > SMALL.max_url_bytes else None, what


def all_rows(data_dir: Path) -> dict[str, list[tuple[Any, ...]]]:
    out: dict[str, list[tuple[Any, ...]]] = {}
    for db_name, tables in (("demo.db", ("employees", "teams", "team_members")), ("gateway.db", ("resources", "members"))):
        db = sqlite3.connect(data_dir / db_name)
        try:
            for table in tables:
                out[table] = sorted(map(tuple, db.execute(f"SELECT * FROM {table}")), key=repr)
        finally:
            db.close()
    return out


async def send_raw(client: TestClient, method: str, path: str, raw: bytes) -> tuple[int, str, Any]:
    resp = await client.request(
        method, BASE + path, data=raw, headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": SCIM_TYPE}
    )
    text = await resp.text()
    return resp.status, resp.content_type, json.loads(text) if text else None


def assert_scim_error(status: int, content_type: str, data: Any, expected: int, scim_type: str, *words: str) -> None:
    assert status == expected, data
    assert content_type == SCIM_TYPE
    assert data["schemas"] == [ERROR_URN], data
    assert data["status"] == str(expected), data
    assert data.get("scimType") == scim_type, data
    for word in words:
        assert word.lower() in data["detail"].lower(), (word, data)


SURROGATE_BODIES = {
    "create": ("POST", "/Users", b'{"schemas": ["%s"], "userName": "x\\ud800y@example.com"}' % USER_URN.encode()),
    "create-key": ("POST", "/Users", b'{"userName": "k@example.com", "\\udfff": "x"}'),
    "put": ("PUT", "/Users/{uid}", b'{"userName": "surrogate@example.com", "title": "\\udc00"}'),
    "patch": (
        "PATCH",
        "/Users/{uid}",
        b'{"schemas": ["%s"], "Operations": [{"op": "replace", "path": "title", "value": "\\ud83d"}]}' % PATCH_URN.encode(),
    ),
    "search": ("POST", "/Users/.search", b'{"filter": "userName eq \\"\\ud800\\""}'),
    "bulk": (
        "POST",
        "/Bulk",
        b'{"schemas": ["%s"], "Operations": [{"method": "POST", "path": "/Users", "bulkId": "a", "data": {"userName": "\\ud800"}}]}'
        % BULK_URN.encode(),
    ),
}
