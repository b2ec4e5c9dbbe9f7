"""The target's HTTP client: one session, the auth, retries of idempotent calls, and the translation of the
target's SCIM Error bodies (status, scimType, detail) into AppErrors, bounded and with every secret masked."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from yarl import URL

from gateway.connectors.errors import (
    AppBadResponse,
    AppConflict,
    AppCredentialsRefused,
    AppError,
    AppInvalid,
    AppNotFound,
    AppThrottled,
    AppUnavailable,
    ConnectorSetupError,
)
from gateway.secrets import SecretRef

from ..rest.config import BasicAuthConfig, BearerAuthConfig, OAuth2ClientCredentialsConfig
from ..rest.transport import (
    MASK,
    RETRY_AFTER,
    OAuth2Token,
    Secrets,
    TokenBucket,
    basic_auth,
    read_body,
    resolve,
    resolve_url,
    retry_after,
    short,
)
from .config import ScimConnectorConfig

DETAIL_CHARS = 200  # of the target's own words carried into an error
IDEMPOTENT = frozenset({"GET", "PUT", "DELETE"})
BACKOFF_BASE = 0.25  # seconds before the first retry; doubled each time, with jitter


class ScimSetupError(ConnectorSetupError):
    """The options cannot be used as given (a reference that resolves to nothing, a URL that is none): raised by open()."""


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: Mapping[str, str]
    body: Any  # parsed JSON; None for an empty body


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


class ScimHttp:
    """One target's HTTP client."""

    def __init__(self, config: ScimConnectorConfig, app: str) -> None:
        self.config = config
        self.app = app
        self.secrets = Secrets()
        self.base = resolve_url(config.base_url, "base_url", ScimSetupError).rstrip("/")
        self.headers = {
            name: (self.secrets.add(resolve(value, f"headers.{name}", ScimSetupError)) if isinstance(value, SecretRef) else value)
            for name, value in config.headers.items()
        }
        self.auth_headers: dict[str, str] = {}
        self.oauth2: OAuth2Token | None = None
        auth = config.auth
        if isinstance(auth, BasicAuthConfig):
            password = self.secrets.add(resolve(auth.password, "auth.password", ScimSetupError))
            username = (
                auth.username
                if isinstance(auth.username, str)
                else self.secrets.add(resolve(auth.username, "auth.username", ScimSetupError))
            )
            self.auth_headers["Authorization"] = basic_auth(username, password)
        elif isinstance(auth, BearerAuthConfig):
            token = self.secrets.add(resolve(auth.token, "auth.token", ScimSetupError))
            self.auth_headers[auth.header] = f"{auth.scheme} {token}" if auth.scheme else token
        elif isinstance(auth, OAuth2ClientCredentialsConfig):
            token_url = resolve_url(auth.token_url, "auth.token_url", ScimSetupError)
            self.oauth2 = OAuth2Token(
                auth, token_url, self.secrets.add(resolve(auth.client_secret, "auth.client_secret", ScimSetupError))
            )
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
                    raw = await read_body(resp, "the target")
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
                asked = retry_after(resp_headers)
                failure = self.failure(status, raw, method, url, asked)
                if not authenticate and status in (401, 403):
                    failure = AppInvalid(f"HTTP {status}")  # the token endpoint's: OAuth2Token says what it means
                if not isinstance(failure, AppUnavailable) or status in (401, 403):
                    raise failure
                if status == 429:
                    unsent = True
                    if asked is not None:
                        if asked > self.config.max_retry_wait:
                            raise failure  # the IdP waits instead: Retry-After passes through
                        wait = float(asked)
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
        said = short(self.secrets.scrub(said), DETAIL_CHARS)
        where = f"{method} {url.path}"
        if status in (401, 403):
            return AppCredentialsRefused(
                f"the target refused the gateway's credentials (HTTP {status} on {where}){said}", retry_after=RETRY_AFTER
            )
        if status in (404, 410):
            return AppNotFound(f"{where}: HTTP {status}{said}")
        if status == 409:
            return AppConflict(f"the target answered HTTP 409{said}")
        if status in (400, 422):
            return AppInvalid(f"the target answered HTTP {status}{said}")
        if status == 429:
            return AppThrottled(
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


__all__ = ["MASK", "Answer", "ScimHttp", "ScimSetupError", "target_said"]
