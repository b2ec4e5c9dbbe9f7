"""What the HTTP connectors (rest, scim) share of talking to an app: the secrets they scrub from anything they
report, reading an answer within a size bound, a Retry-After, a reference resolved at open, and an OAuth2
client-credentials token fetched through the connector's own client."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Mapping
from email.utils import parsedate_to_datetime
from typing import Any, Protocol
from urllib.parse import quote

import aiohttp
from pydantic import SecretStr
from yarl import URL

from gateway.connectors.errors import AppBadResponse, AppError, AppUnavailable, ConnectorSetupError
from gateway.secrets import SecretRef

from .config import OAuth2ClientCredentialsConfig

MASK = "***"
RETRY_AFTER = 5  # seconds the IdP is asked to wait when the app names no time itself
MAX_BODY = 16 * 1024 * 1024  # bytes of one answer; more is not a record list, it is a fault
DEFAULT_TOKEN_LIFETIME = 3600.0


class Secrets:
    """Every secret value a connector holds, to scrub from anything it reports."""

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


def basic_auth(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode("ascii")


def short(text: str, limit: int) -> str:
    """One line of at most `limit` characters."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def retry_after(headers: Mapping[str, str]) -> int | None:
    """Seconds a Retry-After header asks for (a number or an HTTP date), or None."""
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


async def read_body(resp: aiohttp.ClientResponse, who: str) -> bytes:
    """The answer's body, AppBadResponse past MAX_BODY (`who`: "the app", "the target")."""
    length = resp.content_length
    if length is not None and length <= MAX_BODY and not resp.headers.get("Content-Encoding"):
        return await resp.read()  # its size said up front, within the bound: one read
    chunks = []
    size = 0
    async for chunk in resp.content.iter_chunked(65536):
        size += len(chunk)
        if size > MAX_BODY:
            raise AppBadResponse(f"{who}'s answer is larger than {MAX_BODY // (1024 * 1024)} MiB")
        chunks.append(chunk)
    return b"".join(chunks)


def resolve(ref: SecretRef, where: str, error: type[ConnectorSetupError]) -> SecretStr:
    try:
        return ref.resolve()
    except ValueError as exc:
        raise error(f"{where}: {exc}") from None


def resolve_url(value: str | SecretRef, where: str, error: type[ConnectorSetupError]) -> str:
    """An inline URL as it is (checked at load), or the absolute http(s) URL a reference holds."""
    if isinstance(value, str):
        return value
    raw = resolve(value, where, error).get_secret_value()
    try:
        url = URL(raw)
    except (ValueError, TypeError):
        raise error(f"{where}: {value.describe()} holds no URL") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise error(f"{where}: {value.describe()} holds no absolute http(s) URL")
    return raw


class TokenBucket:
    """At most `rate` calls per second on average, bursts up to `rate` (at least one)."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.capacity = max(1.0, rate)
        self.tokens = self.capacity
        self.updated = time.monotonic()
        self.lock = asyncio.Lock()

    async def acquire(self) -> None:
        async with self.lock:  # callers queue in order; each waits for its own token
            while True:
                now = time.monotonic()
                self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
                self.updated = now
                if self.tokens >= 1:
                    self.tokens -= 1
                    return
                await asyncio.sleep((1 - self.tokens) / self.rate)


class TokenClient(Protocol):
    """The connector's HTTP client, as the token needs it: one call, and the secrets it scrubs."""

    secrets: Secrets

    async def call(
        self,
        method: str,
        url: URL,
        *,
        headers: Mapping[str, str] | None = None,
        form: Mapping[str, str] | None = None,
        retry: bool | None = None,
        authenticate: bool = True,
    ) -> Any: ...


class OAuth2Token:
    """A client-credentials access token, fetched on demand, cached, refreshed shortly before it expires."""

    def __init__(self, config: OAuth2ClientCredentialsConfig, url: str, secret: str) -> None:
        self.config = config
        self.url = URL(url)
        self.secret = secret
        self.token: str | None = None
        self.expires_at = 0.0
        self.lock = asyncio.Lock()
        self.clock = time.monotonic  # a test may wind it forward

    def valid(self) -> bool:
        return self.token is not None and self.clock() < self.expires_at

    async def get(self, http: TokenClient) -> str:
        if self.valid():
            assert self.token is not None
            return self.token
        async with self.lock:  # one refresh for every caller waiting on it
            if not self.valid():
                await self._fetch(http)
            assert self.token is not None
            return self.token

    def invalidate(self, used: str) -> None:
        if self.token == used:  # a concurrent caller may already have refreshed it
            self.token = None

    async def _fetch(self, http: TokenClient) -> None:
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
            # Its 400/401 (invalid_client, invalid_scope): the gateway's own configuration, never the IdP's request.
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
        # Refresh before it runs out: a token that expires in flight is a refused call.
        margin = min(60.0, lifetime / 10)
        self.token = http.secrets.add(SecretStr(token))
        self.expires_at = self.clock() + max(0.0, lifetime - margin)


__all__ = [
    "MASK",
    "MAX_BODY",
    "RETRY_AFTER",
    "OAuth2Token",
    "Secrets",
    "TokenBucket",
    "TokenClient",
    "basic_auth",
    "read_body",
    "resolve",
    "resolve_url",
    "retry_after",
    "short",
]
