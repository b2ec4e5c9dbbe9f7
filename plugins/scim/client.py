"""The target's HTTP client: one session, the auth, retries of idempotent calls, and the translation of the
target's SCIM Error bodies (status, scimType, detail) into AppErrors, bounded and with every secret masked."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote

import aiohttp
from pydantic import SecretStr
from yarl import URL

from gateway.connectors.errors import (
    AppBadResponse,
    AppConflict,
    AppError,
    AppInvalid,
    AppNotFound,
    AppUnavailable,
    ConnectorSetupError,
)
from gateway.secrets import SecretRef

from ..rest.config import BasicAuthConfig, BearerAuthConfig, OAuth2ClientCredentialsConfig
from ..rest.connector import TokenBucket, basic_auth
from .config import ScimConnectorConfig

RETRY_AFTER = 5  # seconds the IdP is asked to wait when the target names no time itself
MAX_BODY = 16 * 1024 * 1024  # bytes of one answer; more is not a resource, it is a fault
DETAIL_CHARS = 200  # of the target's own words carried into an error
IDEMPOTENT = frozenset({"GET", "PUT", "DELETE"})
BACKOFF_BASE = 0.25  # seconds before the first retry; doubled each time, with jitter
DEFAULT_TOKEN_LIFETIME = 3600.0
MASK = "***"


class ScimSetupError(ConnectorSetupError):
    """The options cannot be used as given (a reference that resolves to nothing, a URL that is none): raised by open()."""


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: Mapping[str, str]
    body: Any  # parsed JSON; None for an empty body


class Secrets:
    """Every secret value the connector holds, to scrub from anything it reports."""

    def __init__(self) -> None:
        self.values: set[str] = set()

    def add(self, secret: SecretStr) -> str:
        value = secret.get_secret_value()
        if len(value) >= 4:
            self.values.add(value)
        return value

    def scrub(self, text: str) -> str:
        for value in self.values:
            text = text.replace(value, MASK)
        return text


def short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= DETAIL_CHARS else text[: DETAIL_CHARS - 3] + "..."


def target_said(raw: bytes) -> tuple[str | None, str]:
    """(scimType, detail) of a SCIM Error body; a JSON message of another shape; never HTML or a stack trace."""
    text = raw.decode("utf-8", "replace").strip()
    if not text:
        return None, ""
    try:
        body = json.loads(text)
    except ValueError:
        return None, "" if text.startswith("<") or "\n" in text[:DETAIL_CHARS] else text
    if not isinstance(body, Mapping):
        return None, ""
    scim_type = body.get("scimType")
    for key in ("detail", "message", "error_description", "error"):
        if isinstance(body.get(key), str) and body[key].strip():
            return (scim_type if isinstance(scim_type, str) else None), body[key]
    return (scim_type if isinstance(scim_type, str) else None), ""


def _retry_after(headers: Mapping[str, str]) -> int | None:
    value = (headers.get("Retry-After") or "").strip()
    if not value:
        return None
    if value.isdigit():
        return int(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0, int(when.timestamp() - time.time() + 0.999))


def resolve(ref: SecretRef, where: str) -> SecretStr:
    try:
        return ref.resolve()
    except ValueError as exc:
        raise ScimSetupError(f"{where}: {exc}") from None


def resolve_url(value: str | SecretRef, where: str) -> str:
    if isinstance(value, str):
        return value
    raw = resolve(value, where).get_secret_value()
    try:
        url = URL(raw)
    except (ValueError, TypeError):
        raise ScimSetupError(f"{where}: {value.describe()} holds no URL") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ScimSetupError(f"{where}: {value.describe()} holds no absolute http(s) URL")
    return raw


class _OAuth2Token:
    """A client-credentials access token, fetched on demand, cached, refreshed shortly before it expires."""

    def __init__(self, config: OAuth2ClientCredentialsConfig, url: str, secret: str) -> None:
        self.config = config
        self.url = URL(url)
        self.secret = secret
        self.token: str | None = None
        self.expires_at = 0.0
        self.lock = asyncio.Lock()
        self.clock = time.monotonic  # a test may wind it forward

    async def get(self, http: ScimHttp) -> str:
        async with self.lock:  # one refresh for every caller waiting on it
            if self.token is None or self.clock() >= self.expires_at:
                await self._fetch(http)
            assert self.token is not None
            return self.token

    def invalidate(self, used: str) -> None:
        if self.token == used:
            self.token = None

    async def _fetch(self, http: ScimHttp) -> None:
        c = self.config
        form = {"grant_type": "client_credentials"}
        headers = {"Accept": "application/json"}
        if c.client_auth == "basic":
            headers["Authorization"] = basic_auth(quote(c.client_id, safe=""), quote(self.secret, safe=""))
        else:
            form |= {"client_id": c.client_id, "client_secret": self.secret}
        if c.scope:
            form["scope"] = c.scope
        if c.audience:
            form["audience"] = c.audience
        try:
            answer = await http.call("POST", self.url, headers=headers, form=form, retry=True, authenticate=False)
        except AppUnavailable as exc:
            raise AppUnavailable(f"the token endpoint failed: {exc.detail}", retry_after=exc.retry_after) from None
        except AppError as exc:
            # Its 400/401 (invalid_client): the gateway's own configuration, never the IdP's request.
            raise AppUnavailable(
                f"the token endpoint refused the gateway's client credentials ({exc.detail})", retry_after=RETRY_AFTER
            ) from None
        body = answer.body
        token = body.get("access_token") if isinstance(body, Mapping) else None
        if not isinstance(token, str) or not token:
            raise AppBadResponse("the token endpoint answered no access_token")
        try:
            lifetime = max(0.0, float(body.get("expires_in", DEFAULT_TOKEN_LIFETIME)))
        except (TypeError, ValueError):
            lifetime = DEFAULT_TOKEN_LIFETIME
        self.token = http.secrets.add(SecretStr(token))
        self.expires_at = self.clock() + max(0.0, lifetime - min(60.0, lifetime / 10))


class ScimHttp:
    """One target's HTTP client."""

    def __init__(self, config: ScimConnectorConfig, app: str) -> None:
        self.config = config
        self.app = app
        self.secrets = Secrets()
        self.base = resolve_url(config.base_url, "base_url").rstrip("/")
        self.headers = {
            name: (self.secrets.add(resolve(value, f"headers.{name}")) if isinstance(value, SecretRef) else value)
            for name, value in config.headers.items()
        }
        self.auth_headers: dict[str, str] = {}
        self.oauth2: _OAuth2Token | None = None
        auth = config.auth
        if isinstance(auth, BasicAuthConfig):
            password = self.secrets.add(resolve(auth.password, "auth.password"))
            username = (
                auth.username if isinstance(auth.username, str) else self.secrets.add(resolve(auth.username, "auth.username"))
            )
            self.auth_headers["Authorization"] = basic_auth(username, password)
        elif isinstance(auth, BearerAuthConfig):
            token = self.secrets.add(resolve(auth.token, "auth.token"))
            self.auth_headers[auth.header] = f"{auth.scheme} {token}" if auth.scheme else token
        elif isinstance(auth, OAuth2ClientCredentialsConfig):
            token_url = resolve_url(auth.token_url, "auth.token_url")
            self.oauth2 = _OAuth2Token(auth, token_url, self.secrets.add(resolve(auth.client_secret, "auth.client_secret")))
        self.bucket = TokenBucket(config.rate_limit) if config.rate_limit else None
        self.session: aiohttp.ClientSession | None = None
        self.calls = 0  # HTTP requests sent to the target (tests count them)

    async def open(self) -> None:
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.config.max_connections, limit_per_host=0),
            timeout=aiohttp.ClientTimeout(total=self.config.timeout),
            headers={"Accept": "application/scim+json, application/json", "User-Agent": "scim-gateway"},
            raise_for_status=False,
        )

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()
        self.session = None

    def url(self, path: str, query: Mapping[str, str] | None = None) -> URL:
        url = URL(self.base + "/" + path.lstrip("/"), encoded=True)
        return url.update_query(dict(query)) if query else url

    async def call(
        self,
        method: str,
        url: URL,
        *,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
        form: Mapping[str, str] | None = None,
        retry: bool | None = None,
        authenticate: bool = True,
    ) -> Answer:
        """One call with its retries: the 2xx answer, or the AppError the target's failure means."""
        session = self.session
        if session is None:
            raise RuntimeError(f"the scim connector of app {self.app!r} is not open")
        idempotent = method in IDEMPOTENT if retry is None else retry
        data: bytes | Mapping[str, str] | None = form
        all_headers: dict[str, str] = dict(headers or {})
        if body is not None:
            data = json.dumps(body, ensure_ascii=False).encode("utf-8")
            all_headers["Content-Type"] = self.config.content_type
        if authenticate:
            all_headers = {**self.headers, **all_headers, **self.auth_headers}
        refreshed = False
        attempt = 0
        while True:
            attempt += 1
            used_token = None
            if authenticate and self.oauth2 is not None:
                used_token = await self.oauth2.get(self)
                all_headers["Authorization"] = f"Bearer {used_token}"
            if self.bucket is not None and authenticate:
                await self.bucket.acquire()
            failure: AppError
            wait: float | None = None
            unsent = False  # never received (no connection) or refused before anything was done (429): safe to repeat
            try:
                self.calls += 1
                async with session.request(method, url, headers=all_headers, data=data) as resp:
                    raw = await _read(resp)
                    status, resp_headers = resp.status, resp.headers
            except TimeoutError:
                failure = AppUnavailable(
                    f"the target did not answer {method} {url.path} within {self.config.timeout:g} s", retry_after=RETRY_AFTER
                )
            except aiohttp.ClientConnectorError as exc:
                reason = exc.os_error.strerror if exc.os_error is not None and exc.os_error.strerror else type(exc).__name__
                failure = AppUnavailable(f"cannot connect to the target ({reason})", retry_after=RETRY_AFTER)
                unsent = True
            except (aiohttp.ClientError, OSError) as exc:
                failure = AppUnavailable(f"the connection to the target failed ({type(exc).__name__})", retry_after=RETRY_AFTER)
            else:
                if 200 <= status < 300:
                    return Answer(status, resp_headers, self._parse(raw, method, url))
                if status in (401, 403) and used_token is not None and not refreshed and self.oauth2 is not None:
                    self.oauth2.invalidate(used_token)  # revoked or expired early: one fresh token, one more try
                    refreshed = True
                    attempt -= 1
                    continue
                retry_after = _retry_after(resp_headers)
                failure = self.failure(status, raw, method, url, retry_after)
                if not authenticate and status in (401, 403):
                    failure = AppInvalid(f"HTTP {status}")  # the token endpoint's: _OAuth2Token says what it means
                if not isinstance(failure, AppUnavailable) or status in (401, 403):
                    raise failure
                if status == 429:
                    unsent = True
                    if retry_after is not None:
                        if retry_after > self.config.max_retry_wait:
                            raise failure  # the IdP waits instead: Retry-After passes through
                        wait = float(retry_after)
            if attempt > self.config.retries or not (idempotent or unsent):
                raise failure
            if wait is None:
                wait = min(self.config.max_retry_wait, BACKOFF_BASE * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
            await asyncio.sleep(wait)

    @staticmethod
    def _parse(raw: bytes, method: str, url: URL) -> Any:
        if not raw.strip():
            return None
        try:
            return json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            looks = "HTML" if raw.lstrip()[:1] == b"<" else "not JSON (or cut short)"
            raise AppBadResponse(f"{method} {url.path} answered a body that is {looks}") from None

    def failure(self, status: int, raw: bytes, method: str, url: URL, retry_after: int | None) -> AppError:
        """The target's failure as an AppError whose detail carries its scimType and detail (short, secrets masked)."""
        scim_type, detail = target_said(raw)
        said = (f", scimType {scim_type}" if scim_type else "") + (f": {detail}" if detail else "")
        said = short(self.secrets.scrub(said))
        where = f"{method} {url.path}"
        if status in (401, 403):
            return AppUnavailable(
                f"the target refused the gateway's credentials (HTTP {status} on {where}){said}", retry_after=RETRY_AFTER
            )
        if status in (404, 410):
            return AppNotFound(f"{where}: HTTP {status}{said}")
        if status == 409:
            return AppConflict(f"the target answered HTTP 409{said}")
        if status in (400, 422):
            return AppInvalid(f"the target answered HTTP {status}{said}")
        if status == 429:
            return AppUnavailable(
                f"the target is rate limiting the gateway (HTTP 429 on {where})", retry_after=retry_after or RETRY_AFTER
            )
        if status == 501:
            return AppError(
                f"the target does not implement {where} (HTTP 501){said}: declare what it supports (patch, filter_ops)"
            )
        if status >= 500:
            # Not its detail: a failing server's words are often its internals (a traceback).
            return AppUnavailable(f"the target failed (HTTP {status} on {where})", retry_after=retry_after or RETRY_AFTER)
        return AppError(f"the target answered HTTP {status} on {where}{said}")


async def _read(resp: aiohttp.ClientResponse) -> bytes:
    chunks = []
    size = 0
    async for chunk in resp.content.iter_chunked(65536):
        size += len(chunk)
        if size > MAX_BODY:
            raise AppBadResponse(f"the target's answer is larger than {MAX_BODY // (1024 * 1024)} MiB")
        chunks.append(chunk)
    return b"".join(chunks)


__all__ = ["MASK", "Answer", "ScimHttp", "ScimSetupError", "Secrets", "short", "target_said"]
