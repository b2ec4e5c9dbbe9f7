"""An asyncio client over ldap3: a pool of bound connections, each used by one request at a time in a thread.

ldap3 is synchronous; each operation runs on a worker thread with a connection of its own, so the event loop
never waits on the directory. A connection that breaks (the server restarted, a timeout) is replaced and
bound again; a read is then tried once more, a write is not (the server may have applied it).
"""

from __future__ import annotations

import asyncio
import logging
import select
import ssl
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import ldap3
from ldap3.core import exceptions as lx

from gateway.connectors.errors import AppConflict, AppCredentialsRefused, AppError, AppInvalid, AppNotFound, AppUnavailable

log = logging.getLogger(__name__)
T = TypeVar("T")

RETRY_AFTER = 5
PAGED_RESULTS = "1.2.840.113556.1.4.319"  # RFC 2696
# Result codes (RFC 4511 §4.1.9) and what they mean to the IdP.
NO_SUCH_ATTRIBUTE, UNDEFINED_TYPE, CONSTRAINT, VALUE_EXISTS, INVALID_SYNTAX = 16, 17, 19, 20, 21
NO_SUCH_OBJECT, INVALID_DN, INVALID_CREDENTIALS, INSUFFICIENT_ACCESS = 32, 34, 49, 50
BUSY, UNAVAILABLE, UNWILLING, NAMING, OBJECT_CLASS, NOT_ON_RDN, ALREADY_EXISTS = 51, 52, 53, 64, 65, 67, 68
_UNAVAILABLE = {3, 11, 51, 52, 80, 81}  # time limit, admin limit, busy, unavailable, other, server down
_INVALID = {UNDEFINED_TYPE, INVALID_SYNTAX, INVALID_DN, UNWILLING, NAMING, OBJECT_CLASS, NOT_ON_RDN, 18, 69}


@dataclass(slots=True)
class Entry:
    dn: str
    attributes: dict[str, list[bytes]]  # as the server names them, values raw

    def get(self, name: str) -> list[bytes]:
        """The values of an attribute, its name in any case."""
        lowered = name.lower()
        return next((v for k, v in self.attributes.items() if k.lower() == lowered), [])


class LdapFailure(Exception):
    """The server refused an operation: its result code and message."""

    def __init__(self, code: int, description: str, message: str) -> None:
        super().__init__(f"{description} ({code}): {message}".strip())
        self.code = code
        self.description = description
        self.message = message


def app_error(what: str, failure: LdapFailure) -> AppError:
    """The directory's refusal as the provisioner understands it; the detail is the server's own words."""
    words = failure.description + (f": {failure.message.strip()}" if failure.message.strip() else "")
    detail = f"{what}: {words}"
    if failure.code == CONSTRAINT and ("052d" in failure.message.lower() or "password" in failure.message.lower()):
        # AD's (and Samba's) refusal of a password by its policy is a constraint violation too: the value is at fault.
        return AppInvalid(f"{what}: the directory's password policy refused the password ({failure.message.strip()})")
    if failure.code in (ALREADY_EXISTS, CONSTRAINT, VALUE_EXISTS):
        return AppConflict(detail)
    if failure.code == NO_SUCH_OBJECT:
        return AppNotFound(detail)
    if failure.code in _INVALID:
        return AppInvalid(detail)
    if failure.code == INVALID_CREDENTIALS:
        return AppCredentialsRefused(f"{what}: the directory refused the gateway's bind ({words})", retry_after=RETRY_AFTER)
    if failure.code == INSUFFICIENT_ACCESS:
        return AppCredentialsRefused(f"{what}: the gateway's bind DN may not do this ({words})", retry_after=RETRY_AFTER)
    if failure.code in _UNAVAILABLE:
        return AppUnavailable(detail, retry_after=RETRY_AFTER)
    return AppError(detail)


class _Tls(ldap3.Tls):
    """TLS by the standard library's own checks (ldap3's hostname check calls a deprecated ssl function)."""

    def __init__(self, ca_file: Path | None, verify_hostname: bool) -> None:
        super().__init__(validate=ssl.CERT_REQUIRED, ca_certs_file=str(ca_file) if ca_file else None)
        self.verify_hostname = verify_hostname

    def wrap_socket(self, connection: Any, do_handshake: bool = False) -> None:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.ca_certs_file)
        context.check_hostname = self.verify_hostname
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        connection.socket = context.wrap_socket(
            connection.socket, server_side=False, do_handshake_on_connect=do_handshake, server_hostname=connection.server.host
        )


@dataclass(frozen=True, slots=True)
class ClientOptions:
    url: str
    bind_dn: str
    password: str
    start_tls: bool
    ca_file: Path | None
    verify_hostname: bool
    pool_size: int
    timeout: float
    name: str  # for thread names and messages


class LdapClient:
    def __init__(self, options: ClientOptions) -> None:
        self.options = options
        use_ssl = options.url.startswith("ldaps://")
        tls = _Tls(options.ca_file, options.verify_hostname) if use_ssl or options.start_tls else None
        self.server = ldap3.Server(options.url, use_ssl=use_ssl, tls=tls, get_info=ldap3.NONE, connect_timeout=options.timeout)
        self._idle: asyncio.Queue[ldap3.Connection | None] = asyncio.Queue()
        self._executor: ThreadPoolExecutor | None = None

    @property
    def where(self) -> str:
        return self.options.url

    # ------------------------------------------------------------------ connections

    def _connect(self, get_schema: bool = False) -> ldap3.Connection:
        """A new bound connection (on a worker thread); AppUnavailable when the directory cannot be reached or refuses the bind."""
        # A Server of its own for each connection: ldap3 remembers an address that refused a connect as unavailable
        # for RESET_AVAILABILITY_TIMEOUT seconds ("invalid server address"); when to try again is the breaker's call.
        base = self.server
        server = ldap3.Server(
            self.options.url,
            use_ssl=base.ssl,
            tls=base.tls,
            get_info=ldap3.SCHEMA if get_schema else ldap3.NONE,
            connect_timeout=self.options.timeout,
        )
        conn = ldap3.Connection(
            server,
            self.options.bind_dn,
            self.options.password,
            client_strategy=ldap3.SAFE_SYNC,
            raise_exceptions=False,
            receive_timeout=max(1, round(self.options.timeout)),
            auto_referrals=False,  # whole seconds: a socket option
        )
        try:
            conn.open()
            if self.options.start_tls:
                conn.start_tls()
            status, result, _r, _q = conn.bind()
        except lx.LDAPException as exc:
            _drop(conn)
            _close_socket(conn)  # ldap3 2.9.1 leaves the socket of a refused connect open
            raise AppUnavailable(f"cannot reach the directory at {self.where}: {_reason(exc)}", retry_after=RETRY_AFTER) from None
        if not status:
            _drop(conn)
            raise app_error(f"binding as {self.options.bind_dn}", _failure(result))
        return conn

    async def open(self) -> None:
        self._executor = ThreadPoolExecutor(self.options.pool_size, thread_name_prefix=f"ldap-{self.options.name}")
        loop = asyncio.get_running_loop()
        first = await loop.run_in_executor(self._executor, self._connect)  # a wrong URL or password fails here, once
        self._idle.put_nowait(first)
        for _ in range(self.options.pool_size - 1):
            self._idle.put_nowait(None)  # opened when first needed

    async def close(self) -> None:
        while not self._idle.empty():
            conn = self._idle.get_nowait()
            _drop(conn)
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    async def run(self, what: str, operation: Callable[[ldap3.Connection], T], *, retry: bool) -> T:
        """`operation(connection)` on a pooled connection, on a worker thread; a broken connection is replaced."""
        if self._executor is None:
            raise AppUnavailable(f"{what}: the directory connection is not open", retry_after=RETRY_AFTER)
        loop = asyncio.get_running_loop()
        conn = await self._idle.get()
        if conn is not None and not _still_open(conn):
            _drop(conn)  # the server closed it while it was idle (a restart): a new one, before anything is sent
            conn = None
        try:
            for attempt in (1, 2):
                try:
                    if conn is None:
                        conn = await loop.run_in_executor(self._executor, self._connect)
                    return await loop.run_in_executor(self._executor, operation, conn)
                except lx.LDAPException as exc:  # the connection broke (a failure the server answered is no exception here)
                    _drop(conn)
                    conn = None
                    if attempt == 2 or not retry:
                        raise AppUnavailable(
                            f"{what}: the directory at {self.where} failed: {_reason(exc)}", retry_after=RETRY_AFTER
                        ) from None
            raise AssertionError("unreachable")
        finally:
            self._idle.put_nowait(conn)

    # ------------------------------------------------------------------ operations (failures raise LdapFailure)

    async def search(
        self,
        base: str,
        search_filter: str,
        attributes: list[str],
        *,
        scope: Literal["BASE", "LEVEL", "SUBTREE"] = "SUBTREE",
        what: str = "searching",
    ) -> list[Entry]:
        def op(conn: ldap3.Connection) -> list[Entry]:
            status, result, response, _request = conn.search(base, search_filter, search_scope=scope, attributes=attributes)
            if not status and result["result"] != 0:
                failure = _failure(result)
                if failure.code != NO_SUCH_OBJECT:
                    raise failure
                return []  # the base itself is not there: nothing in it
            return _entries(response)

        return await self.run(what, op, retry=True)

    async def paged(self, base: str, search_filter: str, attributes: list[str], page_size: int) -> AsyncIterator[list[Entry]]:
        """The entries of a search page by page (RFC 2696), so a directory of any size is listed in bounded memory.

        On a connection of its own: the server ties the paging cookie to the connection, and the caller may use
        the pool between pages.
        """
        if self._executor is None:
            raise AppUnavailable("listing entries: the directory connection is not open", retry_after=RETRY_AFTER)
        executor = self._executor
        loop = asyncio.get_running_loop()
        conn = await loop.run_in_executor(executor, self._connect)
        cookie: bytes | None = None
        try:
            while True:

                def op(cookie: bytes | None = cookie) -> tuple[list[Entry], bytes | None]:
                    status, result, response, _request = conn.search(
                        base,
                        search_filter,
                        search_scope=ldap3.SUBTREE,
                        attributes=attributes,
                        paged_size=page_size,
                        paged_cookie=cookie,
                    )
                    if not status and result["result"] != 0:
                        failure = _failure(result)
                        if failure.code == NO_SUCH_OBJECT:
                            return [], None
                        raise failure
                    control = (result.get("controls") or {}).get(PAGED_RESULTS) or {}
                    return _entries(response), (control.get("value") or {}).get("cookie") or None

                try:
                    entries, cookie = await loop.run_in_executor(executor, op)
                except lx.LDAPException as exc:
                    raise AppUnavailable(
                        f"listing entries: the directory at {self.where} failed: {_reason(exc)}", retry_after=RETRY_AFTER
                    ) from None
                yield entries
                if not cookie:
                    return
        finally:
            _drop(conn)

    async def write(self, what: str, operation: Callable[[ldap3.Connection], tuple[Any, ...]]) -> None:
        """One write (add, modify, modify_dn, delete); LdapFailure when the server refuses it."""

        def op(conn: ldap3.Connection) -> None:
            status, result, _response, _request = operation(conn)
            if not status:
                raise _failure(result)

        await self.run(what, op, retry=False)

    async def schema(self) -> Any:
        """The server's subschema (for `check --connect`), on a connection of its own."""
        if self._executor is None:
            raise AppUnavailable("the directory connection is not open", retry_after=RETRY_AFTER)
        conn = await asyncio.get_running_loop().run_in_executor(self._executor, lambda: self._connect(get_schema=True))
        try:
            return conn.server.schema
        finally:
            _drop(conn)


def _still_open(conn: ldap3.Connection) -> bool:
    """Whether an idle connection may still be used: a server has nothing to say on an idle LDAP connection
    but its end (EOF, a reset or a notice of disconnection), so an idle socket with anything to read is closed."""
    sock = getattr(conn, "socket", None)
    if sock is None or conn.closed:
        return False
    try:
        readable, _w, _x = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return False
    return not readable


def _close_socket(conn: ldap3.Connection) -> None:
    sock = getattr(conn, "socket", None)
    if sock is not None:
        try:
            sock.close()
        except OSError:
            pass


def _drop(conn: ldap3.Connection | None) -> None:
    """Close a connection that may be broken already."""
    if conn is not None:
        try:
            conn.unbind()
        except (lx.LDAPException, OSError):
            pass


def _failure(result: dict[str, Any]) -> LdapFailure:
    return LdapFailure(int(result.get("result", 80)), str(result.get("description", "")), str(result.get("message", "")))


def _entries(response: list[dict[str, Any]] | None) -> list[Entry]:
    return [
        Entry(item["dn"], dict(item.get("raw_attributes") or {}))
        for item in response or []
        if item.get("type") == "searchResEntry"
    ]


def _reason(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


__all__ = ["ClientOptions", "Entry", "LdapClient", "LdapFailure", "app_error"]
