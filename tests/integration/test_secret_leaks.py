"""Secrets never leak: one full run with real secrets of every kind, then a scan of everything written.

The secrets: the inbound bearer tokens of two apps (by their mappings' env references), a PostgreSQL
store URL with a password (given as $SCIM_GATEWAY_STORE; the server trusts any password, so it
connects), the CRM fake's OAuth2 client secret, the HR fake's API key, a token given as
$SCIM_GATEWAY_TOKEN, and SCIM `password` values sent in POST, PUT, PATCH, Bulk, refused bodies and
`translate` requests.

The run: a live `serve --log-level debug` of the hr and crm mappings (REST fakes on loopback, in this
process) driven through successes and failures (bad and near-miss tokens, bad bodies, the app's own
errors echoing secrets, the app down, the CRM refusing the client secret); `check`, `check --connect`
(app up and down), `translate` with and without a mapped password, `import`; and a second `serve` of
the demo with the token from the environment. Then every byte written is scanned for each secret, raw
and in its URL-encoded and base64 forms: stdout and stderr of every process, every file in the data
directories (the SQLite files, the audit log, whatever else is there), every HTTP response's status
line, headers and body, and the rows of the PostgreSQL store.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from tests.conftest import ENTERPRISE_URN, PATCH_URN, USER_URN, LiveGateway
from tests.fakes.crm_app import API as CRM_API
from tests.fakes.crm_app import CLIENT_ID, CRM_STATE, CrmState, create_crm_app
from tests.fakes.hr_app import HR_STATE, create_hr_app
from tests.services import create_pg_database, drop_pg_database

ROOT = Path(__file__).resolve().parents[2]
BULK_URN = "urn:ietf:params:scim:api:messages:2.0:BulkRequest"

SECRETS = {
    "hr inbound token": "hr-inbound-TOKEN-a1b2c3d4e5f6",
    "crm inbound token": "crm-inbound-TOKEN-g7h8i9j0k1",
    "env token (SCIM_GATEWAY_TOKEN)": "demo-env-TOKEN-l2m3n4o5p6",
    "store password": "S3cret-pg-xyz",
    "crm client secret": "crm-client-SECRET-q7r8s9t0u1",
    "hr api key": "hr-api-KEY-v2w3x4y5z6",
    "password in POST": "Pw-post-A1b2C3d4!",
    "password in PUT": "Pw-put-E5f6G7h8!",
    "password in PATCH": "Pw-patch-I9j0K1l2!",
    "password in path-less PATCH": "Pw-pathless-M3n4O5!",
    "password in Bulk": "Pw-bulk-P6q7R8s9!",
    "password in a refused body": "Pw-refused-T0u1V2!",
    "password in a refused PATCH": "Pw-refusedpatch-W3x4!",
    "password in translate": "Pw-translate-Y5z6A7!",
    "admin page token": "admin-page-TOKEN-b8c9d0e1f2",
    "admin page password": "admin-page-PASSWORD-g3h4i5",
}
S = SECRETS


def forms(secret: str) -> set[str]:
    """How a secret could appear written down."""
    out = {secret, quote(secret, safe=""), quote_plus(secret), json.dumps(secret)[1:-1]}
    for raw in (secret, f"{CLIENT_ID}:{secret}"):
        encoded = base64.b64encode(raw.encode()).decode()
        out |= {encoded.rstrip("="), base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")}
    return {f for f in out if len(f) >= 8}


@dataclass
class Written:
    """Everything the gateway wrote where someone could read it, by where it was."""

    texts: dict[str, bytes] = field(default_factory=dict)

    def add(self, where: str, data: bytes | str) -> None:
        self.texts[where] = self.texts.get(where, b"") + (
            data.encode("utf-8", "surrogateescape") if isinstance(data, str) else data
        )

    def leaks(self) -> list[str]:
        found = []
        for name, secret in SECRETS.items():
            for form in forms(secret):
                needle = form.encode()
                for where, data in self.texts.items():
                    if needle in data:
                        at = data.index(needle)
                        found.append(f"{name} ({form!r}) in {where}: ...{data[max(0, at - 150) : at + 60]!r}...")
        return found


class Idp:
    """An HTTP client that keeps every response (status line, headers, body) for the scan."""

    def __init__(self, session: aiohttp.ClientSession, written: Written) -> None:
        self.session = session
        self.written = written
        self.n = 0

    async def call(
        self,
        method: str,
        url: str,
        token: str | None,
        body: Any = None,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        hdrs = {"Content-Type": "application/scim+json", **(headers or {})}
        if token is not None:
            hdrs["Authorization"] = f"Bearer {token}"
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        async with self.session.request(method, url, data=data, headers=hdrs) as resp:
            text = await resp.read()
            self.n += 1
            head = f"HTTP {resp.status} {resp.reason}\n" + "".join(f"{k}: {v}\n" for k, v in resp.headers.items())
            self.written.add(f"response {self.n} to {method} {url[:120]}", head.encode() + b"\n" + text)
            try:
                return resp.status, json.loads(text) if text else None
            except ValueError:
                return resp.status, text


@dataclass
class Fakes:
    hr: TestServer
    crm: TestServer
    env: dict[str, str]


@pytest.fixture
async def fakes() -> AsyncIterator[Fakes]:
    hr = TestServer(create_hr_app(api_key=S["hr api key"]), host="127.0.0.1")
    crm = TestServer(create_crm_app(CrmState(client_secret=S["crm client secret"])), host="127.0.0.1")
    await hr.start_server()
    await crm.start_server()
    env = {
        "HR_API_URL": str(hr.make_url("/api")),
        "HR_API_KEY": S["hr api key"],
        "HR_SCIM_TOKEN": S["hr inbound token"],
        "CRM_API_URL": str(crm.make_url(CRM_API)),
        "CRM_TOKEN_URL": str(crm.make_url("/oauth/token")),
        "CRM_CLIENT_SECRET": S["crm client secret"],
        "CRM_SCIM_TOKEN": S["crm inbound token"],
    }
    try:
        yield Fakes(hr, crm, env)
    finally:
        await hr.close()
        await crm.close()


@pytest.fixture
async def store_db() -> AsyncIterator[str]:
    name = await create_pg_database()
    yield name
    await drop_pg_database(name)


async def run_cli(written: Written, env: dict[str, str], cwd: Path, *argv: str) -> tuple[int, str]:
    """One `scim-gateway` command as its own process (the fakes in this process keep answering meanwhile)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway.cli",
        *argv,
        cwd=cwd,
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    written.add(f"stdout of scim-gateway {' '.join(argv)[:150]}", out)
    written.add(f"stderr of scim-gateway {' '.join(argv)[:150]}", err)
    assert proc.returncode is not None
    return proc.returncode, (out + err).decode("utf-8", "replace")


async def gather_cli(written: Written, env: dict[str, str], cwd: Path, runs: list[tuple[str, ...]]) -> list[tuple[int, str]]:
    """Several commands at once, three at a time (two cores; each spends most of its time importing)."""
    slots = asyncio.Semaphore(3)

    async def one(argv: tuple[str, ...]) -> tuple[int, str]:
        async with slots:
            return await run_cli(written, env, cwd, *argv)

    return list(await asyncio.gather(*(one(argv) for argv in runs)))


def scan_dir(written: Written, root: Path) -> None:
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        written.add(f"file {path.relative_to(root.parent)}", path.read_bytes())


def user(login: str, password: str | None = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "schemas": [USER_URN, ENTERPRISE_URN],
        "userName": login,
        "active": True,
        "name": {"givenName": "Given", "familyName": "Family"},
        "emails": [{"type": "work", "value": login, "primary": True}],
        ENTERPRISE_URN: {"department": "R&D"},
    }
    if password is not None:
        body["password"] = password
    return body | extra


def patch(*operations: Any) -> dict[str, Any]:
    return {"schemas": [PATCH_URN], "Operations": list(operations)}


async def drive_app(idp: Idp, base: str, token: str, other_token: str, tag: str) -> str:
    """Successes and failures on one app; returns the id of a user that stays."""
    status, u = await idp.call("POST", f"{base}/Users", token, user(f"{tag}.one@example.com", S["password in POST"]))
    assert status == 201, u
    uid = u["id"]
    assert "password" not in u
    for method, path, body, want in (
        ("GET", f"/Users/{uid}", None, 200),
        ("GET", f"/Users?filter=userName%20eq%20%22{tag}.one@example.com%22", None, 200),
        ("PUT", f"/Users/{uid}", user(f"{tag}.one@example.com", S["password in PUT"], title="Put"), 200),
        ("PATCH", f"/Users/{uid}", patch({"op": "replace", "path": "password", "value": S["password in PATCH"]}), 200),
        (
            "PATCH",
            f"/Users/{uid}",
            patch({"op": "Replace", "value": {"password": S["password in path-less PATCH"], "title": "T"}}),
            200,
        ),
        (
            "POST",
            "/Bulk",
            {
                "schemas": [BULK_URN],
                "Operations": [
                    {
                        "method": "POST",
                        "path": "/Users",
                        "bulkId": "b1",
                        "data": user(f"{tag}.bulk@example.com", S["password in Bulk"]),
                    },
                    {
                        "method": "PATCH",
                        "path": f"/Users/{uid}",
                        "data": patch({"op": "replace", "path": "password", "value": S["password in Bulk"]}),
                    },
                ],
            },
            200,
        ),
        # refused bodies carrying a password, in every way we could think of a detail might echo it
        ("POST", "/Users", user(f"{tag}.bad@example.com", [S["password in a refused body"]]), 400),  # type: ignore[arg-type]
        ("POST", "/Users", user(f"{tag}.bad@example.com", {"value": S["password in a refused body"]}), 400),  # type: ignore[arg-type]
        ("POST", "/Users", {"userName": 5, "password": S["password in a refused body"]}, 400),
        (
            "PATCH",
            f"/Users/{uid}",
            patch({"op": "replace", "path": "password", "value": [S["password in a refused PATCH"]]}),
            400,
        ),
        (
            "PATCH",
            f"/Users/{uid}",
            patch({"op": "replace", "path": "password", "value": {"x": S["password in a refused PATCH"]}}),
            400,
        ),
        ("PATCH", f"/Users/{uid}", patch({"op": "explode", "path": "password", "value": S["password in a refused PATCH"]}), 400),
        ("PATCH", f"/Users/{uid}", patch({"op": "replace", "path": "password"}), 400),
        ("PATCH", f"/Users/{uid}", patch({"op": "replace", "value": S["password in a refused PATCH"]}), 400),
        (
            "PATCH",
            f"/Users/{uid}",
            patch({"op": "replace", "path": 'password[value eq "x"]', "value": S["password in a refused PATCH"]}),
            400,
        ),
        (
            "PATCH",
            f"/Users/{uid}",
            patch({"op": "replace", "value": {"password": S["password in a refused PATCH"], "active": "maybe"}}),
            400,
        ),
        (
            "POST",
            "/Bulk",
            {
                "schemas": [BULK_URN],
                "Operations": [
                    {
                        "method": "POST",
                        "path": "/Users",
                        "bulkId": "x",
                        "data": user(f"{tag}.bulkbad@example.com", [S["password in a refused body"]]),
                    },  # type: ignore[arg-type]
                    {
                        "method": "PATCH",
                        "path": f"/Users/{uid}",
                        "data": patch({"op": "replace", "value": S["password in a refused PATCH"]}),
                    },
                ],
            },
            200,
        ),
    ):
        status, data = await idp.call(method, base + path, token, body)
        assert status == want, (method, path, data)
    # A body that is not JSON, with a password in it.
    status, _ = await idp.call(
        "POST", f"{base}/Users", token, raw=f'{{"userName": "x", "password": "{S["password in a refused body"]}"'.encode()
    )
    assert status == 400
    # Bad tokens: missing, wrong, the other app's, a near miss around the real one, the real one as Basic.
    for bad in (None, "wrong-token", other_token, token + "x", "x" + token, token[:-1]):
        status, _ = await idp.call("GET", f"{base}/Users", bad)
        assert status == 401
    status, _ = await idp.call(
        "GET", f"{base}/Users", None, headers={"Authorization": "Basic " + base64.b64encode(f"idp:{token}".encode()).decode()}
    )
    assert status == 401
    return uid


async def test_no_secret_is_written_anywhere(fakes: Fakes, store_db: str, tmp_path: Path) -> None:
    written = Written()
    store_url = f"postgresql://postgres:{S['store password']}@127.0.0.1:5432/{store_db}"
    env = {**fakes.env, "SCIM_GATEWAY_STORE": store_url}
    hr_state, crm_state = fakes.hr.app[HR_STATE], fakes.crm.app[CRM_STATE]
    hr_yaml, crm_yaml = str(ROOT / "mappings" / "hr_rest.yaml"), str(ROOT / "mappings" / "crm_rest.yaml")

    gateway = LiveGateway(tmp_path / "serve", token="", app="hr", env=env)
    # A second gateway, started alongside: the demo, its token from the environment.
    # Its admin page on: a token from the environment, a Basic user from a credentials file (a digest only).
    demo_env = {"SCIM_GATEWAY_TOKEN": S["env token (SCIM_GATEWAY_TOKEN)"], "SCIM_GATEWAY_ADMIN_TOKEN": S["admin page token"]}
    demo = LiveGateway(tmp_path / "demo", token="", env=demo_env)
    admin_creds = tmp_path / "admin.creds"
    admin_creds.write_text(f"basic ops {hashlib.sha256(S['admin page password'].encode()).hexdigest()}\n")
    # One logs JSON lines (a line per request with its fields), the other text: both formats are scanned.
    await asyncio.gather(
        asyncio.to_thread(
            gateway.start, "--config", hr_yaml, "--config", crm_yaml, "--log-level", "debug", "--log-format", "json"
        ),
        asyncio.to_thread(demo.start, "--log-level", "debug", "--admin-credentials", str(admin_creds)),
    )
    try:
        async with aiohttp.ClientSession() as session:
            idp = Idp(session, written)
            hr, crm = f"{gateway.url}/apps/hr/scim/v2", f"{gateway.url}/apps/crm/scim/v2"
            hr_uid = await drive_app(idp, hr, S["hr inbound token"], S["crm inbound token"], "hr")
            await drive_app(idp, crm, S["crm inbound token"], S["hr inbound token"], "crm")
            status, group = await idp.call(
                "POST", f"{hr}/Groups", S["hr inbound token"], {"displayName": "Leakers", "members": [{"value": hr_uid}]}
            )
            assert status == 201, group

            # The app's own errors, their bodies echoing the app's secret and a password.
            echo = json.dumps({"error": f"rejected: X-API-Key {S['hr api key']} password {S['password in POST']}"})
            for fault_status, want in ((400, 400), (409, 409), (422, 400), (500, 503), (401, 503)):
                # A 5xx three times: the shipped mapping's creates carry an idempotency key, so retries: 2 resend them.
                hr_state.fault("POST", "/users$", status=fault_status, body=echo, times=3 if fault_status >= 500 else 1)
                status, data = await idp.call(
                    "POST", f"{hr}/Users", S["hr inbound token"], user(f"fault{fault_status}@example.com", S["password in POST"])
                )
                assert status == want, (fault_status, data)

            # The CRM refusing the client secret (tokens expired, the secret rotated on its side): the token call fails.
            crm_state.expire_tokens()
            crm_state.client_secret = "rotated-elsewhere"
            status, data = await idp.call("GET", f"{crm}/Users?filter=userName%20eq%20%22x%22", S["crm inbound token"])
            assert status >= 400, data
            crm_state.client_secret = S["crm client secret"]

            # The CLI, apps up: check, check --connect, translate (with a mapped password and without), import.
            with_password = tmp_path / "hr_password.yaml"
            with_password.write_text(
                Path(hr_yaml)
                .read_text()
                .replace(
                    "      - scim: userName\n        field: login\n",
                    "      - scim: userName\n        field: login\n      - scim: password\n        field: password\n        direction: to_app\n",
                    1,
                )
            )
            requests = {
                "create": user("translate@example.com", S["password in translate"]),
                "patch": {
                    "method": "PATCH",
                    "path": "/Users/x",
                    "current": user("translate@example.com"),
                    "body": patch({"op": "replace", "path": "password", "value": S["password in translate"]}),
                },
            }
            for name, body in requests.items():
                (tmp_path / f"{name}.json").write_text(json.dumps(body))
            cli = str(tmp_path / "cli")
            runs = [
                ("check", hr_yaml, crm_yaml, str(with_password)),
                ("check", "--connect", hr_yaml, crm_yaml, "--data-dir", cli),
                ("translate", "hr", str(tmp_path / "create.json"), "--config", str(with_password)),  # password mapped
                ("translate", "hr", str(tmp_path / "patch.json"), "--config", str(with_password)),
                ("translate", "crm", str(tmp_path / "create.json"), "--config", crm_yaml),  # password not mapped
                ("import", "crm", "--config", crm_yaml, "--data-dir", cli),
            ]
            for argv, (code, out) in zip(runs, await gather_cli(written, env, tmp_path, runs), strict=True):
                assert code == 0, (argv, out)

            # The hr app goes down: requests are 503, and `check --connect` says so.
            await fakes.hr.close()
            for method, path, body in (
                ("GET", f"/Users/{hr_uid}", None),
                ("POST", "/Users", user("down@example.com", S["password in POST"])),
                ("PATCH", f"/Users/{hr_uid}", patch({"op": "replace", "path": "password", "value": S["password in PATCH"]})),
            ):
                status, data = await idp.call(method, hr + path, S["hr inbound token"], body)
                assert status == 503, (method, path, data)
            # Meanwhile: the CLI against the app that is down, and `serve` refusing a store URL with a password on its command line.
            refused = str(tmp_path / "refused")
            (code, out), (code2, out2), (code3, out3), (code4, out4) = await asyncio.gather(
                run_cli(written, env, tmp_path, "check", "--connect", hr_yaml, "--data-dir", cli),
                run_cli(written, env, tmp_path, "import", "hr", "--config", hr_yaml, "--data-dir", cli),
                run_cli(written, {}, tmp_path, "serve", "--store", store_url, "--data-dir", refused, "--port", "1"),
                run_cli(
                    written,
                    {"SCIM_GATEWAY_STORE": store_url.replace("postgresql://", "mysql://")},
                    tmp_path,
                    "serve",
                    "--data-dir",
                    refused,
                    "--port",
                    "1",
                ),
            )
            assert code == 1 and code2 == 1, (out, out2)
            assert code3 == 2 and "--store must not carry a password" in out3, out3
            assert code4 == 2 and "must be a postgresql:// URL" in out4, out4

            # The demo gateway, its token from the environment: a good request and a near miss.
            status, _ = await idp.call("GET", f"{demo.base_url}/Users", S["env token (SCIM_GATEWAY_TOKEN)"])
            assert status == 200
            status, _ = await idp.call("GET", f"{demo.base_url}/Users", S["env token (SCIM_GATEWAY_TOKEN)"][:-2])
            assert status == 401
            # Its admin page: every page with the token and with Basic, and near misses of both.
            right = "Basic " + base64.b64encode(f"ops:{S['admin page password']}".encode()).decode()
            wrong = "Basic " + base64.b64encode(f"ops:{S['admin page password'][:-1]}".encode()).decode()
            for path in (
                "/admin",
                "/admin/status.json",
                "/admin/audit?status=failed",
                "/admin/people?who=x",
                "/admin/review.csv",
            ):
                assert (await idp.call("GET", demo.url + path, S["admin page token"]))[0] == 200, path
                assert (await idp.call("GET", demo.url + path, None, headers={"Authorization": right}))[0] == 200, path
            assert (await idp.call("GET", demo.url + "/admin", S["admin page token"][:-1]))[0] == 401
            assert (await idp.call("GET", demo.url + "/admin", None, headers={"Authorization": wrong}))[0] == 401
    finally:
        await asyncio.gather(asyncio.to_thread(gateway.stop), asyncio.to_thread(demo.stop))

    # The scan: process output, every file in every data directory, every response, the PostgreSQL store's rows.
    written.add("gateway stdout+stderr", gateway.log.read_bytes())
    written.add("demo gateway stdout+stderr", demo.log.read_bytes())
    for root in (tmp_path / "serve", tmp_path / "demo", tmp_path / "cli"):
        if root.exists():
            scan_dir(written, root)
    import asyncpg

    conn = await asyncpg.connect(f"postgresql://postgres@127.0.0.1:5432/{store_db}")
    try:
        for table in ("resources", "members", "journal"):
            written.add(f"store table {table}", repr([tuple(r) for r in await conn.fetch(f"SELECT * FROM {table}")]))
    finally:
        await conn.close()
    assert len(written.texts) > 60 and idp.n > 0
    # The scan can see: the secrets did reach the places they belong (the fakes), so a leak would show.
    assert any(r.granted for r in crm_state.token_requests)
    leaks = written.leaks()
    assert not leaks, "\n\n".join(leaks)
