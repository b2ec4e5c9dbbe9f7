"""Real directories for the tests, started by the tests: Debian's slapd (OpenLDAP) and Samba's AD domain controller.

- `Slapd`: an unprivileged slapd on a free loopback port, its config and database in a temporary folder; any
  number can run at once. One per test session (per xdist worker); each test works in a subtree of its own.
- `SambaDc`: a domain provisioned once per test session (a few seconds) and run in the foreground with only its
  LDAP service. Its LDAP ports are fixed (389, 636), so each xdist worker's domain listens on a loopback address
  of its own (127.0.0.4x, added to `lo` when the machine allows it).

A server that cannot be started skips the test outside CI and fails it in CI (`need_service`).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

from tests.conftest import free_port, need_service

SUFFIX = "dc=gw,dc=test"
ADMIN_DN = f"cn=admin,{SUFFIX}"
ADMIN_PASSWORD = "slapd-admin-secret"
SCHEMAS = ("core", "cosine", "inetorgperson", "nis")

AD_REALM = "GW.TEST"
AD_DOMAIN_DN = "DC=gw,DC=test"
AD_ADMIN = "Administrator@gw.test"
AD_PASSWORD = "Adm1n-Passw0rd!x"


def _wait_port(host: str, port: int, proc: subprocess.Popen[bytes], log: Path, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"not listening on {host}:{port} after {seconds} s:\n{log.read_text(errors='replace')[-3000:]}")


def ldapmodify(url: str, bind_dn: str, password: str, ldif: str, *, add: bool = False, env: dict[str, str] | None = None) -> str:
    """Apply LDIF with the OpenLDAP command-line tools, as an administrator would (not through the gateway)."""
    cmd = ["ldapmodify" if not add else "ldapadd", "-x", "-H", url, "-D", bind_dn, "-w", password]
    run = subprocess.run(cmd, input=ldif, capture_output=True, text=True, timeout=30, env={**os.environ, **(env or {})})
    if run.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} failed: {run.stderr}")
    return run.stdout


def ldapsearch(
    url: str, bind_dn: str, password: str, base: str, search: str, *attributes: str, env: dict[str, str] | None = None
) -> list[dict[str, list[str]]]:
    """Entries as plain text, read with ldapsearch (not through the gateway): [{"dn": [dn], attribute: [values]}]."""
    cmd = [
        "ldapsearch",
        "-x",
        "-LLL",
        "-o",
        "ldif-wrap=no",
        "-H",
        url,
        "-D",
        bind_dn,
        "-w",
        password,
        "-b",
        base,
        search,
        *attributes,
    ]
    if base == "":
        cmd[cmd.index("-b") : cmd.index("-b") + 2] = ["-s", "base", "-b", ""]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=30, env={**os.environ, **(env or {})})
    if run.returncode not in (0, 32):  # 32: no such object (the base is gone)
        raise RuntimeError(f"ldapsearch failed: {run.stderr}")
    import base64

    entries: list[dict[str, list[str]]] = []
    for block in run.stdout.strip().split("\n\n"):
        entry: dict[str, list[str]] = {}
        for line in block.splitlines():
            if not line or line.startswith("#") or ":" not in line:
                continue
            name, _, value = line.partition(":")
            if value.startswith(":"):  # base64 (non-ASCII or binary)
                raw = base64.b64decode(value[1:].strip())
                text = raw.decode("utf-8", "replace") if name.lower() != "objectguid" else str(uuid.UUID(bytes_le=raw))
            else:
                text = value.strip()
            entry.setdefault(name, []).append(text)
        if entry:
            entries.append(entry)
    return entries


class Slapd:
    """An OpenLDAP server of the test run's own: `url`, the suffix dc=gw,dc=test, its rootdn and password.

    `refint`: with the referential integrity overlay, as directories are usually run: the server itself renames
    or removes the `member` and `manager` values naming an entry that is renamed or deleted."""

    def __init__(self, root: Path, refint: bool = False) -> None:
        self.root = root
        self.refint = refint
        self.port = free_port()
        self.url = f"ldap://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("slapd") or "/usr/sbin/slapd"
        if not Path(binary).exists():
            need_service("slapd is not installed (Debian: apt-get install slapd ldap-utils)")
        fresh = not (self.root / "slapd.conf").exists()
        if fresh:
            (self.root / "db").mkdir(parents=True, exist_ok=True)
            includes = "\n".join(f"include /etc/ldap/schema/{name}.schema" for name in SCHEMAS)
            modules = "moduleload back_mdb\nmoduleload refint" if self.refint else "moduleload back_mdb"
            # (a group left with no member gets the DN that stands for none, as the mappings' placeholder)
            overlay = f"overlay refint\nrefint_attributes member manager\nrefint_nothing cn=nobody,{SUFFIX}\n"
            (self.root / "slapd.conf").write_text(
                f"""{includes}
modulepath /usr/lib/ldap
{modules}
pidfile {self.root}/slapd.pid
sizelimit unlimited
database mdb
maxsize 268435456
suffix "{SUFFIX}"
rootdn "{ADMIN_DN}"
rootpw {ADMIN_PASSWORD}
directory {self.root}/db
index objectClass eq
index uid,cn,mail,memberUid eq,sub
index member,uniqueMember eq
index entryUUID eq
{overlay if self.refint else ""}"""
            )
        log = self.root / "slapd.log"
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                [binary, "-h", f"{self.url}/", "-f", str(self.root / "slapd.conf"), "-d", "0"],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            _wait_port("127.0.0.1", self.port, self.proc, log, 20)
        except RuntimeError as exc:
            need_service(f"slapd did not start: {exc}")
        if fresh:
            self.add(f"dn: {SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\no: gw\ndc: gw\n")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def add(self, ldif: str) -> None:
        ldapmodify(self.url, ADMIN_DN, ADMIN_PASSWORD, ldif, add=True)

    def modify(self, ldif: str) -> None:
        ldapmodify(self.url, ADMIN_DN, ADMIN_PASSWORD, ldif)

    def search(self, base: str, search: str = "(objectClass=*)", *attributes: str) -> list[dict[str, list[str]]]:
        return ldapsearch(self.url, ADMIN_DN, ADMIN_PASSWORD, base, search, *attributes)

    def subtree(self, *ous: str) -> str:
        """A fresh ou=t<random> under the suffix, with the given child OUs: one test's own part of the directory."""
        top = f"ou=t{uuid.uuid4().hex[:10]},{SUFFIX}"
        ldif = [f"dn: {top}\nobjectClass: organizationalUnit\nou: {top.split(',')[0][3:]}\n"]
        ldif += [f"dn: ou={ou},{top}\nobjectClass: organizationalUnit\nou: {ou}\n" for ou in ous]
        self.add("\n".join(ldif))
        return top


class SambaDc:
    """A Samba AD domain controller (domain GW, realm GW.TEST) with only LDAP running, on a loopback address."""

    def __init__(self, root: Path, address: str) -> None:
        self.root = root
        self.address = address
        self.url = f"ldaps://{address}"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def ca_file(self) -> Path:
        return self.root / "dc" / "private" / "tls" / "ca.pem"

    @property
    def ldap_env(self) -> dict[str, str]:
        """For the OpenLDAP command-line tools: trust the domain's self-signed certificate (its name is the host's)."""
        return {"LDAPTLS_CACERT": str(self.ca_file), "LDAPTLS_REQCERT": "allow"}

    def provision(self) -> None:
        if shutil.which("samba-tool") is None or shutil.which("samba") is None:
            need_service("Samba's AD DC is not installed (Debian: apt-get install samba samba-ad-dc winbind krb5-user)")
        _ensure_address(self.address)
        target = self.root / "dc"
        run = subprocess.run(
            [
                "samba-tool",
                "domain",
                "provision",
                f"--targetdir={target}",
                f"--realm={AD_REALM}",
                "--domain=GW",
                "--server-role=dc",
                "--dns-backend=NONE",
                f"--adminpass={AD_PASSWORD}",
                f"--option=interfaces={self.address}",
                "--option=bind interfaces only=yes",
            ],
            capture_output=True,
            text=True,
            timeout=180,
        )
        if run.returncode != 0:
            need_service(f"samba-tool domain provision failed: {run.stderr[-2000:]}")
        (target / "run").mkdir(exist_ok=True)

    def start(self) -> None:
        target = self.root / "dc"
        log = self.root / "samba.log"
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                [
                    "samba",
                    "-i",
                    "-s",
                    str(target / "etc" / "smb.conf"),
                    "--option=server services=ldap",
                    f"--option=pid directory={target / 'run'}",
                    f"--option=log file={self.root / 'samba-%m.log'}",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its workers stop with it (stop() ends the group)
            )
        try:
            _wait_port(self.address, 636, self.proc, log, 60)
            self._wait_bind(log, 60)
        except RuntimeError as exc:
            need_service(f"samba did not start: {exc}")

    def _wait_bind(self, log: Path, seconds: float) -> None:
        """Listening is not serving: the first start makes its TLS keys first. Wait for an LDAPS bind to work."""
        deadline = time.monotonic() + seconds
        while True:
            try:
                self.search("", "(objectClass=*)", "defaultNamingContext")
                return
            except RuntimeError:
                if time.monotonic() > deadline or (self.proc is not None and self.proc.poll() is not None):
                    raise RuntimeError(f"no LDAPS bind after {seconds} s:\n{log.read_text(errors='replace')[-3000:]}") from None
                time.sleep(0.5)

    def stop(self) -> None:
        if self.proc is not None:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(self.proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.proc.wait(timeout=15)
                    break
                except subprocess.TimeoutExpired:
                    continue
            _wait_closed(self.address, 636, 15)
        self.proc = None

    def search(self, base: str, search: str = "(objectClass=*)", *attributes: str) -> list[dict[str, list[str]]]:
        return ldapsearch(self.url, AD_ADMIN, AD_PASSWORD, base, search, *attributes, env=self.ldap_env)

    def add(self, ldif: str) -> None:
        ldapmodify(self.url, AD_ADMIN, AD_PASSWORD, ldif, add=True, env=self.ldap_env)

    def modify(self, ldif: str) -> None:
        ldapmodify(self.url, AD_ADMIN, AD_PASSWORD, ldif, env=self.ldap_env)

    def subtree(self, *ous: str) -> str:
        top = f"OU=t{uuid.uuid4().hex[:10]},{AD_DOMAIN_DN}"
        ldif = [f"dn: {top}\nobjectClass: organizationalUnit\n"]
        ldif += [f"dn: OU={ou},{top}\nobjectClass: organizationalUnit\n" for ou in ous]
        self.add("\n".join(ldif))
        return top


def _wait_closed(host: str, port: int, seconds: float) -> None:
    """Until nothing listens there (the workers of a stopped server go a moment after it)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                time.sleep(0.1)
        except OSError:
            return


def dc_address() -> str:
    """A loopback address for this worker's domain controller: 127.0.0.41, .42, ... by xdist worker."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    index = int(worker[2:]) if worker[2:].isdigit() else 0
    return f"127.0.0.{41 + index}"


def _ensure_address(address: str) -> None:
    """Samba binds only to an address an interface has: add it to `lo` (root), unless it is there."""
    shown = subprocess.run(["ip", "-o", "addr", "show", "dev", "lo"], capture_output=True, text=True)
    if f" {address}/" in shown.stdout:
        return
    added = subprocess.run(["ip", "addr", "add", f"{address}/32", "dev", "lo"], capture_output=True, text=True)
    if added.returncode != 0:
        need_service(f"cannot add the loopback address {address} the test domain controller listens on: {added.stderr.strip()}")


__all__ = [
    "ADMIN_DN",
    "ADMIN_PASSWORD",
    "AD_ADMIN",
    "AD_DOMAIN_DN",
    "AD_PASSWORD",
    "SUFFIX",
    "SambaDc",
    "Slapd",
    "dc_address",
    "ldapsearch",
]
