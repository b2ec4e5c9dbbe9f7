"""Live gateways for the external suites: the demo (SQLite) and the REST example apps, each a real process."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import TOKEN, LiveGateway, free_port
from tests.fakes.crm_app import CLIENT_SECRET
from tests.fakes.desk_app import API_TOKEN as DESK_API_TOKEN
from tests.fakes.fresh_app import API_KEY as FRESH_API_KEY
from tests.fakes.fresh_app import PASSWORD as FRESH_API_PASSWORD
from tests.fakes.serve import HR_API_KEY
from tests.fakes.staff_app import API_KEY as STAFF_API_KEY
from tests.services import create_pg_database, drop_pg_database, pg_url

ROOT = Path(__file__).resolve().parents[2]


def _start_fake(name: str, log: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.fakes.serve", name, str(port)], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT
        )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"fake {name} exited:\n{log.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc, port
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"fake {name} did not start:\n{log.read_text()}")


# legacy_pg is left out on purpose: its hr_person.employee_no is VARCHAR(20), and scim2-tester's random values
# are longer, so its writes are refused (400 invalidValue, as they should be) in a varying set of checks.
@pytest.fixture(
    scope="module",
    params=[
        "demo",
        "demo-pg-store",
        "hr",
        "crm",
        "desk",
        "staff",
        "fresh",
        "legacy_mariadb",
        "openldap",
        "active_directory",
        "scim_app",
        "hub",
    ],
)
def suite_gateway(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveGateway]:
    """A gateway process for one app: the demo (SQLite store, or PostgreSQL store), or a REST example app before its fake."""
    name = request.param
    root = tmp_path_factory.mktemp(f"suite-{name}")
    if name == "demo":
        gateway = LiveGateway(root)
        gateway.start()
        yield gateway
        gateway.stop()
        return
    if name == "demo-pg-store":
        database = asyncio.run(create_pg_database())
        gateway = LiveGateway(root, env={"SCIM_GATEWAY_STORE": pg_url(database)})
        try:
            gateway.start()
            yield gateway
        finally:
            gateway.stop()
            asyncio.run(drop_pg_database(database))
        return
    if name.startswith("legacy_"):
        yield from _legacy_gateway(name, root)
        return
    if name == "openldap":
        yield from _openldap_gateway(request.getfixturevalue("slapd"), root)
        return
    if name == "active_directory":
        yield from _ad_gateway(request.getfixturevalue("samba_dc"), root)
        return
    if name == "scim_app":
        yield from _scim_gateway(root)
        return
    if name == "hub":
        yield from _hub_gateway(root)
        return
    fake, port = _start_fake(name, root / "fake.log")
    api = f"http://127.0.0.1:{port}"
    env = {
        "hr": {"HR_API_URL": f"{api}/api", "HR_API_KEY": HR_API_KEY, "HR_SCIM_TOKEN": TOKEN},
        "crm": {
            "CRM_API_URL": f"{api}/api/v1",
            "CRM_TOKEN_URL": f"{api}/oauth/token",
            "CRM_CLIENT_SECRET": CLIENT_SECRET,
            "CRM_SCIM_TOKEN": TOKEN,
        },
        "desk": {"DESK_API_URL": f"{api}/api/v2", "DESK_API_TOKEN": DESK_API_TOKEN, "DESK_SCIM_TOKEN": TOKEN},
        "staff": {"STAFF_API_URL": f"{api}/api", "STAFF_API_TOKEN": STAFF_API_KEY, "STAFF_SCIM_TOKEN": TOKEN},
        "fresh": {
            "FRESH_API_URL": f"{api}/api/v2",
            "FRESH_API_KEY": FRESH_API_KEY,
            "FRESH_API_PASSWORD": FRESH_API_PASSWORD,
            "FRESH_SCIM_TOKEN": TOKEN,
        },
    }[name]
    gateway = LiveGateway(root, token="", app=name, env=env)
    gateway.token = TOKEN  # accepted through the mapping's auth.bearer {env: ..._SCIM_TOKEN}
    try:
        gateway.start("--config", str(_unthrottled(ROOT / "mappings" / f"{name}_rest.yaml", root)))
        yield gateway
    finally:
        gateway.stop()
        fake.terminate()
        fake.wait(timeout=10)


def _hub_gateway(root: Path) -> Iterator[LiveGateway]:
    """The hub's own endpoint, /hub/scim/v2 (docs/hub.md), feeding the demo app (everyone) behind it."""
    from gateway.demo import demo_mapping_path, ensure_demo_database

    ensure_demo_database(root / "data")
    hub = root / "hub.yaml"
    hub.write_text("auth:\n  bearer:\n    - env: HUB_SCIM_TOKEN\napps:\n  demo:\n    users: {everyone: true}\n")
    gateway = LiveGateway(root, token="", env={"HUB_SCIM_TOKEN": TOKEN})
    gateway.base_url = f"{gateway.url}/hub/scim/v2"
    try:
        gateway.start("--config", str(demo_mapping_path()), "--hub", str(hub))
        gateway.token = TOKEN  # the hub's (not --token: the demo takes no IdP token of its own when the hub feeds it)
        yield gateway
    finally:
        gateway.stop()


def _unthrottled(mapping: Path, root: Path) -> Path:
    """The shipped mapping, but for its `rate_limit` (hr's 20 calls/s would make the suite wait out ~25 s of
    throttling; the limiter has tests of its own). Everything the suites check is the mapping as shipped."""
    text = mapping.read_text()
    lines = [line for line in text.splitlines(keepends=True) if not line.lstrip().startswith("rate_limit:")]
    variant = root / mapping.name
    variant.write_text("".join(lines))
    return variant


def _legacy_gateway(name: str, root: Path) -> Iterator[LiveGateway]:
    """An example legacy database (its DDL from mappings/sql/) in a fresh database, behind a gateway process."""
    from tests.integration.test_sql_legacy import load_ddl
    from tests.services import create_mariadb_database, drop_mariadb_database, mariadb_url

    pg = name == "legacy_pg"
    database = asyncio.run(create_pg_database() if pg else create_mariadb_database())
    try:
        asyncio.run(load_ddl(name, database))
        dsn = pg_url(database, "postgresql+asyncpg") if pg else mariadb_url(database)
        gateway = LiveGateway(root, token="", app=name, env={f"{name.upper()}_DSN": dsn, f"{name.upper()}_SCIM_TOKEN": TOKEN})
        gateway.token = TOKEN
        try:
            gateway.start("--config", str(ROOT / "mappings" / f"{name}.yaml"))
            yield gateway
        finally:
            gateway.stop()
    finally:
        asyncio.run(drop_pg_database(database) if pg else drop_mariadb_database(database))


def _openldap_gateway(slapd: Any, root: Path) -> Iterator[LiveGateway]:
    """The shipped mappings/openldap.yaml on a subtree of its own of the test run's slapd, behind a gateway process."""
    from tests.directories import ADMIN_PASSWORD
    from tests.integration.test_ldap_openldap import shipped_mapping

    top = slapd.subtree("people", "groups")
    slapd.add("\n".join(f"dn: ou={ou},ou=people,{top}\nobjectClass: organizationalUnit\nou: {ou}\n" for ou in ("rnd", "sales")))
    env = {"OPENLDAP_URL": slapd.url, "OPENLDAP_BIND_PASSWORD": ADMIN_PASSWORD, "OPENLDAP_SCIM_TOKEN": TOKEN}
    gateway = LiveGateway(root, token="", app="openldap", env=env)
    gateway.token = TOKEN
    try:
        gateway.start("--config", str(shipped_mapping(top, root)))
        yield gateway
    finally:
        gateway.stop()


def _scim_gateway(root: Path) -> Iterator[LiveGateway]:
    """The shipped mappings/scim_app.yaml in front of a real SCIM server by others (scim2-server), behind a gateway process."""
    from tests.scim_target import TARGET_TOKEN, ScimTarget

    target = ScimTarget(root)
    target.start()
    env = {"SCIM_APP_URL": target.tenant().base_url, "SCIM_APP_TOKEN": TARGET_TOKEN, "SCIM_APP_SCIM_TOKEN": TOKEN}
    gateway = LiveGateway(root, token="", app="scim_app", env=env)
    gateway.token = TOKEN
    try:
        gateway.start("--config", str(ROOT / "mappings" / "scim_app.yaml"))
        yield gateway
    finally:
        gateway.stop()
        target.stop()


def _ad_gateway(dc: Any, root: Path) -> Iterator[LiveGateway]:
    """The shipped mappings/active_directory.yaml on a subtree of its own of the test run's Samba domain."""
    from tests.directories import AD_PASSWORD
    from tests.integration.test_ldap_ad import shipped_mapping

    top = dc.subtree("Users", "Groups")
    env = {"AD_URL": dc.url, "AD_BIND_PASSWORD": AD_PASSWORD, "AD_SCIM_TOKEN": TOKEN}
    gateway = LiveGateway(root, token="", app="active_directory", env=env)
    gateway.token = TOKEN
    try:
        gateway.start("--config", str(shipped_mapping(dc, top, root)))
        yield gateway
    finally:
        gateway.stop()
