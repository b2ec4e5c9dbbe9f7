"""Inbound authentication of one app: static bearer tokens (as SHA-256 digests) and, optionally, signed JWTs (`auth.jwt`).

`AppAuth.authenticate` answers with the credential's identity (never the secret): a static token's name, `cli-<hex>`
for a `serve --token` token, `jwt:<issuer>:<client>` for a JWT. A refusal is `Refused` (the HTTP layer answers 401),
whose detail names the reason and never echoes the token; a JWKS that cannot be fetched (and no keys cached) is
`CannotJudge` (503: the client is not at fault).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import jwt
from pydantic import SecretStr

from .mapping.compile import CompiledMapping
from .mapping.model import JwtConfig

log = logging.getLogger(__name__)

# An unknown kid (key rotation) or a failed fetch allows another fetch only this long after the last one:
# forged kids cannot make the gateway hammer the IdP, and an outage is not retried on every request.
JWKS_MIN_REFETCH_SECONDS = 30.0
JWKS_FETCH_TIMEOUT_SECONDS = 10.0
JWKS_MAX_BYTES = 1_048_576
JWKS_RETRY_AFTER_SECONDS = 30

_CHALLENGE = 'Bearer realm="scim-gateway"'
_INVALID = 'Bearer realm="scim-gateway", error="invalid_token"'

# The key type each algorithm needs (a kid naming a key of another type is refused, whatever its alg says).
_KEY_TYPES = {
    "RS": ("RSA", None),
    "PS": ("RSA", None),
    "EdDSA": ("OKP", None),
    "ES256": ("EC", "P-256"),
    "ES384": ("EC", "P-384"),
    "ES512": ("EC", "P-521"),
}


class AuthError(Exception):
    """The request is not let in. `reason` is a short code for the audit log; `detail` never holds the credential."""

    reason: str

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class Refused(AuthError):
    """No credential, or one this app does not accept; `challenge` is the WWW-Authenticate to answer with."""

    def __init__(self, reason: str, detail: str, *, challenge: str = _INVALID) -> None:
        super().__init__(detail)
        self.reason = reason
        self.challenge = challenge


class JwksUnavailable(Exception):
    """The app's signing keys cannot be had: neither fetched nor cached."""


class CannotJudge(AuthError):
    """The gateway cannot check the token (no signing keys): the client is not at fault and should retry."""

    reason = "jwks_unavailable"
    retry_after = JWKS_RETRY_AFTER_SECONDS


@dataclass(frozen=True, slots=True)
class StaticToken:
    digest: bytes
    name: str


def token_digest(token: str) -> bytes:
    # surrogateescape: the header's bytes as sent, even when they are not UTF-8 (aiohttp decodes them so).
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


def match_token(tokens: list[StaticToken], secret: str) -> str | None:
    """The name of the token among `tokens` whose digest is `secret`'s, compared in constant time over the list."""
    digest = token_digest(secret)
    found: str | None = None
    for accepted in tokens:
        if hmac.compare_digest(digest, accepted.digest):  # no early exit: constant time over the list
            found = accepted.name
    return found


def default_token_name(digest: bytes, prefix: str = "token") -> str:
    return f"{prefix}-{digest.hex()[:8]}"


# ---------------------------------------------------------------- signing keys


class JwksKeys:
    """A JWKS (from a URL or a file), cached for `ttl` seconds; concurrent loads share one fetch.

    An unknown kid loads again (the IdP rotated its keys), but at most once per JWKS_MIN_REFETCH_SECONDS;
    so does a failed load. While loads fail, the keys last loaded are kept in use.
    """

    def __init__(self, load: Callable[[], Awaitable[Any]], describe: str, ttl: float, app: str) -> None:
        self._load = load
        self.describe = describe
        self.ttl = ttl
        self.app = app
        self._keys: list[dict[str, Any]] | None = None
        self._loaded_at = 0.0
        self._attempted_at: float | None = None
        self._failed = False
        self._inflight: asyncio.Future[None] | None = None
        self._prepared: dict[tuple[int, str], Any] = {}

    async def key_for(self, kid: str | None, alg: str) -> Any:
        """The public key to check a token signed with `alg` by key `kid`; Refused or JwksUnavailable otherwise."""
        now = time.monotonic()
        expired = self._keys is None or now - self._loaded_at >= self.ttl
        if expired and (not self._failed or self._may_refetch(now)):
            await self._refresh()
        if self._keys is None:
            raise JwksUnavailable("the gateway cannot fetch its token issuer's signing keys (JWKS) to check this token")
        index = self._find(kid)
        if index is None and kid is not None and self._may_refetch(time.monotonic()):
            await self._refresh()  # a kid we do not know: the IdP may have rotated its keys
            index = self._find(kid)
        if index is None:
            if kid is None:
                raise Refused("unknown_kid", "the token names no key id (kid) and the issuer has several keys")
            raise Refused("unknown_kid", "the token's key id (kid) is not among the issuer's signing keys")
        return self._prepare(index, alg)

    def _may_refetch(self, now: float) -> bool:
        return self._attempted_at is None or now - self._attempted_at >= JWKS_MIN_REFETCH_SECONDS

    def _find(self, kid: str | None) -> int | None:
        assert self._keys is not None
        if kid is None:
            return 0 if len(self._keys) == 1 else None
        return next((i for i, k in enumerate(self._keys) if k.get("kid") == kid), None)

    def _prepare(self, index: int, alg: str) -> Any:
        assert self._keys is not None
        cached = self._prepared.get((index, alg))
        if cached is not None:
            return cached
        jwk_data = self._keys[index]
        kty, crv = _KEY_TYPES.get(alg, _KEY_TYPES.get(alg[:2], (None, None)))
        declared = jwk_data.get("alg")
        if (
            jwk_data.get("kty") != kty
            or (crv is not None and jwk_data.get("crv") != crv)
            or (declared is not None and declared != alg)
        ):
            raise Refused("algorithm", f"the token's algorithm {alg} does not fit the key it names")
        try:
            key = jwt.PyJWK(jwk_data, algorithm=alg).key
        except jwt.PyJWTError:
            raise Refused("unknown_kid", "the key the token names is not a usable public key") from None
        self._prepared[(index, alg)] = key
        return key

    async def _refresh(self) -> None:
        if self._inflight is None:
            self._inflight = asyncio.ensure_future(self._load_once())
        # shield: a cancelled request must not cancel the fetch others wait for.
        await asyncio.shield(self._inflight)

    async def _load_once(self) -> None:
        self._attempted_at = time.monotonic()
        try:
            keys = parse_jwks(await self._load())
        except Exception as exc:  # any failure to load keeps the last keys; the request decides 503 or not
            self._failed = True
            kept = "keeping the keys loaded before" if self._keys is not None else "no keys: JWT requests get 503"
            log.error("app %s: cannot load the JWT signing keys from %s: %s (%s)", self.app, self.describe, exc, kept)
        else:
            self._keys, self._prepared = keys, {}
            self._loaded_at = time.monotonic()
            self._failed = False
        finally:
            self._inflight = None


def parse_jwks(data: Any) -> list[dict[str, Any]]:
    """The signature keys of a JWKS document. Symmetric (`oct`) keys are dropped: a JWKS is public."""
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise ValueError("not a JWKS (a JSON object with a `keys` list)")
    keys = [
        k for k in data["keys"] if isinstance(k, dict) and k.get("kty") in ("RSA", "EC", "OKP") and k.get("use", "sig") == "sig"
    ]
    if not keys:
        raise ValueError("the JWKS holds no public signature keys")
    return keys


def fetch_url(url: str) -> Callable[[], Awaitable[Any]]:
    async def fetch() -> Any:
        # A session per fetch: fetches are rare (once per TTL), and nothing is left to close at shutdown.
        timeout = aiohttp.ClientTimeout(total=JWKS_FETCH_TIMEOUT_SECONDS)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            async with session.get(url, headers={"Accept": "application/json"}, allow_redirects=False) as resp:
                if resp.status != 200:
                    raise ValueError(f"HTTP {resp.status}")
                body = await resp.content.read(JWKS_MAX_BYTES + 1)
                if len(body) > JWKS_MAX_BYTES:
                    raise ValueError(f"the JWKS is larger than {JWKS_MAX_BYTES} bytes")
                return json.loads(body)

    return fetch


def read_file(path: str) -> Callable[[], Awaitable[Any]]:
    async def read() -> Any:
        return json.loads(Path(path).read_bytes())

    return read


def jwks_file_problem(config: JwtConfig) -> str | None:
    """Why the configured JWKS file is unusable, checked when the mapping loads (None: it is fine, or a URL is used)."""
    if config.jwks_file is None:
        return None
    try:
        parse_jwks(json.loads(Path(config.jwks_file).read_bytes()))
    except OSError as exc:
        return f"cannot read the JWKS file {config.jwks_file}: {exc.strerror}"
    except ValueError as exc:
        return f"the JWKS file {config.jwks_file} is unusable: {exc}"
    return None


# ---------------------------------------------------------------- JWT


_ALG_SHOWN = re.compile(r"^[A-Za-z0-9]{1,16}$")


class JwtVerifier:
    """Checks a JWT's signature (keys from the JWKS) and its claims: iss, aud, exp, nbf, iat."""

    def __init__(self, config: JwtConfig, keys: JwksKeys) -> None:
        self.config = config
        self.keys = keys
        self.audience = [config.audience] if isinstance(config.audience, str) else list(config.audience)

    async def verify(self, token: str) -> str:
        """The credential `jwt:<iss>:<client>`; Refused or JwksUnavailable otherwise."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Refused("malformed", "the bearer token is a malformed JWT") from None
        alg, kid = header.get("alg"), header.get("kid")
        if not isinstance(alg, str) or alg not in self.config.algorithms:
            shown = f" {alg}" if isinstance(alg, str) and _ALG_SHOWN.match(alg) else ""
            raise Refused(
                "algorithm", f"the token's algorithm{shown} is not allowed (allowed: {', '.join(self.config.algorithms)})"
            )
        if kid is not None and not isinstance(kid, str):
            raise Refused("malformed", "the token's key id (kid) is not a string")
        key = await self.keys.key_for(kid, alg)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=self.audience,
                issuer=self.config.issuer,
                leeway=self.config.leeway_seconds,
                options={"require": ["exp", "iss", "aud"], "enforce_minimum_key_length": True},
            )
        except jwt.ExpiredSignatureError:
            raise Refused("expired", "the token has expired") from None
        except jwt.ImmatureSignatureError:
            raise Refused("not_yet_valid", "the token is not yet valid (nbf or iat in the future)") from None
        except jwt.InvalidAudienceError:
            raise Refused("audience", "the token is for another audience (aud)") from None
        except jwt.InvalidIssuerError:
            raise Refused("issuer", "the token is from another issuer (iss)") from None
        except jwt.InvalidSignatureError:
            raise Refused("signature", "the token's signature is not valid") from None
        except jwt.MissingRequiredClaimError as exc:
            raise Refused("claims", f"the token lacks the {exc.claim} claim") from None
        except jwt.InvalidKeyError:
            raise Refused("weak_key", "the token's signing key is too short to be trusted") from None
        except jwt.PyJWTError:
            raise Refused("malformed", "the bearer token is a malformed JWT") from None
        client = next((claims[c] for c in self.config.client_id_claims if isinstance(claims.get(c), str) and claims[c]), None)
        if client is None:
            raise Refused("claims", f"the token names no client (none of the claims {', '.join(self.config.client_id_claims)})")
        if self.config.allowed_clients and client not in self.config.allowed_clients:
            raise Refused("client", "the token's client is not allowed for this app")
        return f"jwt:{claims['iss']}:{client}"


def create_jwt_verifier(config: JwtConfig, app: str) -> JwtVerifier:
    if config.jwks_url is not None:
        keys = JwksKeys(fetch_url(config.jwks_url), config.jwks_url, config.jwks_ttl_seconds, app)
    else:
        assert config.jwks_file is not None
        keys = JwksKeys(read_file(config.jwks_file), f"file {config.jwks_file}", config.jwks_ttl_seconds, app)
    return JwtVerifier(config, keys)


# ---------------------------------------------------------------- one app


class AppAuth:
    """Everything one app accepts. A request passes with a static token OR a valid JWT for this app."""

    def __init__(self, app: str, tokens: list[StaticToken], verifier: JwtVerifier | None = None) -> None:
        self.app = app
        self.tokens = tokens
        self.verifier = verifier

    @property
    def accepts_anything(self) -> bool:
        return bool(self.tokens) or self.verifier is not None

    async def authenticate(self, header: str) -> str:
        """The identity of the credential in an Authorization header; Refused (401) or CannotJudge (503)."""
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Refused("no_token", "a bearer token is required", challenge=_CHALLENGE)
        name = self.static_match(token)
        if name is not None:
            return name
        if self.verifier is not None and token.count(".") == 2:
            try:
                return await self.verifier.verify(token)
            except JwksUnavailable as exc:
                # The gateway cannot judge the token; the client is not at fault: retry, not re-authenticate.
                raise CannotJudge(f"{exc}; retry later") from None
        raise Refused("unknown_token", "the bearer token is not valid for this app")

    def static_match(self, token: str) -> str | None:
        return match_token(self.tokens, token)


def create_app_auth(mapping: CompiledMapping, cli_tokens: list[SecretStr]) -> AppAuth:
    """The app's static tokens (mapping `auth.bearer`, then `serve --token`) and its JWT verifier, if configured."""
    tokens: list[StaticToken] = []
    configured = mapping.config.auth.bearer
    # compile_mapping keeps one digest per configured token, in order, when it resolved them all (serving).
    names = [t.name for t in configured] if len(configured) == len(mapping.token_digests) else [None] * len(mapping.token_digests)
    for digest, name in zip(mapping.token_digests, names, strict=True):
        tokens.append(StaticToken(digest, name or default_token_name(digest)))
    for secret in cli_tokens:
        digest = token_digest(secret.get_secret_value())
        tokens.append(StaticToken(digest, default_token_name(digest, "cli")))
    jwt_config = mapping.config.auth.jwt
    verifier = create_jwt_verifier(jwt_config, mapping.app) if jwt_config is not None else None
    return AppAuth(mapping.app, tokens, verifier)


__all__ = [
    "AppAuth",
    "AuthError",
    "CannotJudge",
    "JwksKeys",
    "JwtVerifier",
    "Refused",
    "StaticToken",
    "create_app_auth",
    "jwks_file_problem",
    "match_token",
    "token_digest",
    "parse_jwks",
]
