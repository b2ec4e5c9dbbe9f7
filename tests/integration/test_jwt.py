"""OAuth2 JWT bearer tokens (mapping `auth.jwt`): signature and claims checked against keys from a JWKS served by a
real loopback aiohttp server, cached, fetched again on rotation, never fetched in a storm; alg confusion refused.

The JWKS server runs in the test's own event loop: a fetch that blocked the loop (urllib, PyJWKClient) would hang
every test here, so each one also shows that fetching does not block.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gateway import auth as gateway_auth
from gateway.app import create_app, load_apps
from gateway.connectors.registry import load_registry
from gateway.demo import demo_mapping_path, ensure_demo_database
from gateway.mapping.loader import MappingFileError
from gateway.settings import GatewaySettings
from tests.conftest import TOKEN, USER_URN, demo_settings

TENANT = "3f1e2b7c-0000-4000-8000-00000000beef"
ISSUER = f"https://sts.windows.net/{TENANT}/"
# Entra ID's provisioning service, with the Secret Token left blank, sends its own tokens: iss is the tenant, and aud
# the application template id, which Microsoft documents as this one for every custom (non-gallery) app.
AUDIENCE = "8adf8e6e-67b2-4cf2-a259-e3dc5476c621"
ENTRA_APP_ID = "0a9c5e1b-provisioning-client"  # whatever client the token names (appid in v1 tokens)


@cache
def rsa_key(name: str) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@cache
def ec_key(name: str) -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def public_jwk(key: Any, kid: str, **extra: Any) -> dict[str, Any]:
    algorithm = jwt.algorithms.RSAAlgorithm if isinstance(key, rsa.RSAPrivateKey) else jwt.algorithms.ECAlgorithm
    return {**json.loads(algorithm.to_jwk(key.public_key())), "kid": kid, "use": "sig", **extra}


def mint(
    key: Any = None, kid: str | None = "k1", alg: str = "RS256", *, headers: dict[str, Any] | None = None, **claims: Any
) -> str:
    """A token as Entra ID issues it for the provisioning service (v1: appid; azp dropped), claims overridable (None drops one)."""
    now = int(time.time())
    body: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": now - 10,
        "nbf": now - 10,
        "exp": now + 3600,
        "appid": ENTRA_APP_ID,
        "sub": "0c5e8a0e-sub",
        "tid": TENANT,
        "roles": ["Provisioning"],
    }
    body.update(claims)
    body = {k: v for k, v in body.items() if v is not None}
    head = dict(headers or {})
    if kid is not None:
        head["kid"] = kid
    return jwt.encode(body, key if key is not None else rsa_key("k1"), algorithm=alg, headers=head)


class Jwks:
    """The IdP's key endpoint: a real aiohttp server on loopback whose key set, status and delay a test changes."""

    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = [public_jwk(rsa_key("k1"), "k1")]
        self.status = 200
        self.delay = 0.0
        self.fetches = 0
        self.server: TestServer | None = None

    async def handle(self, request: web.Request) -> web.Response:
        self.fetches += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.status != 200:
            return web.Response(status=self.status, text="down")
        return web.json_response({"keys": self.keys})

    @property
    def url(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("/discovery/v2.0/keys"))


class Clock:
    """The gateway's monotonic clock for JWKS caching, moved forward by a test instead of sleeping."""

    def __init__(self) -> None:
        self.offset = 0.0

    def monotonic(self) -> float:
        return time.monotonic() + self.offset


@pytest.fixture
def clock(monkeypatch: Any) -> Clock:
    fake = Clock()
    monkeypatch.setattr(gateway_auth, "time", fake)
    return fake


@pytest.fixture
async def jwks(aiohttp_server: Any) -> Jwks:
    idp = Jwks()
    app = web.Application()
    app.router.add_get("/discovery/v2.0/keys", idp.handle)
    idp.server = await aiohttp_server(app)
    return idp


def jwt_block(source: str, **options: Any) -> str:
    lines = [
        "  jwt:",
        f"    issuer: {json.dumps(ISSUER)}",
        f"    audience: {json.dumps(options.pop('audience', AUDIENCE))}",
        f"    {source}",
    ]
    lines += [f"    {key}: {json.dumps(value)}" for key, value in options.items()]
    return "\n".join(lines)


def jwt_mapping(tmp_path: Path, source: str, app: str = "demo", **options: Any) -> Path:
    """The demo mapping (as app `app`, on its own database) accepting JWTs as `source` and `options` say."""
    text = demo_mapping_path().read_text("utf-8")
    text = text.replace("  bearer: []", "  bearer: []\n" + jwt_block(source, **options))
    if app != "demo":
        text = text.replace("app: demo", f"app: {app}").replace("{data_dir}/demo.db", f"{{data_dir}}/{app}.db")
    path = tmp_path / f"{app}.yaml"
    path.write_text(text, "utf-8")
    return path


def jwt_settings(tmp_path: Path, source: str, **options: Any) -> GatewaySettings:
    base = demo_settings(tmp_path / "data")
    return base.model_copy(update={"mappings": [jwt_mapping(tmp_path, source, **options)]})


async def gateway(aiohttp_client: Any, tmp_path: Path, jwks: Jwks, **options: Any) -> Any:
    return await aiohttp_client(create_app(jwt_settings(tmp_path, f"jwks_url: {jwks.url}", **options)))


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def audit_lines(tmp_path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (tmp_path / "data" / "audit.log").read_text().splitlines()]


async def refused(client: Any, token: str, detail: str, reason: str, tmp_path: Path) -> None:
    resp = await client.get("/apps/demo/scim/v2/Users", headers=bearer(token))
    body = await resp.json(content_type=None)
    assert resp.status == 401, body
    assert resp.headers["WWW-Authenticate"] == 'Bearer realm="scim-gateway", error="invalid_token"'
    assert body["schemas"] == ["urn:ietf:params:scim:api:messages:2.0:Error"] and body["status"] == "401"
    assert detail in body["detail"], body["detail"]
    assert token not in json.dumps(body) and token[-20:] not in body["detail"]
    last = audit_lines(tmp_path)[-1]
    assert (last["op"], last["status"], last["reason"], last["credential"]) == ("auth", 401, reason, None)


# ---------------------------------------------------------------- accepted


async def test_an_entra_token_is_accepted_and_names_its_client(aiohttp_client: Any, tmp_path: Path, jwks: Jwks) -> None:
    client = await gateway(aiohttp_client, tmp_path, jwks)
    resp = await client.post(
        "/apps/demo/scim/v2/Users", json={"schemas": [USER_URN], "userName": "jwt.user"}, headers=bearer(mint())
    )
    assert resp.status == 201, await resp.text()
    resp = await client.get("/apps/demo/scim/v2/Users", headers=bearer(mint()))
    assert resp.status == 200
    # v2 tokens name the client in azp, which wins over appid; sub is the last resort.
    resp = await client.delete(
        f"/apps/demo/scim/v2/Users/{(await resp.json(content_type=None))['Resources'][0]['id']}",
        headers=bearer(mint(azp="v2-client", sub=None)),
    )
    assert resp.status == 204
    writes = [r for r in audit_lines(tmp_path) if r["op"] != "auth"]
    assert [(r["op"], r["credential"]) for r in writes] == [
        ("create", f"jwt:{ISSUER}:{ENTRA_APP_ID}"),
        ("delete", f"jwt:{ISSUER}:v2-client"),
    ]
    # The static token given on the "command line" still works next to JWTs.
    resp = await client.get("/apps/demo/scim/v2/Users", headers=bearer(TOKEN))
    assert resp.status == 200
    assert jwks.fetches == 1  # cached: one fetch for all of the above


async def test_an_ec_key_and_one_of_several_audiences(aiohttp_client: Any, tmp_path: Path, jwks: Jwks) -> None:
    jwks.keys.append(public_jwk(ec_key("e1"), "e1"))
    client = await gateway(aiohttp_client, tmp_path, jwks, audience=["api://other", AUDIENCE], algorithms=["RS256", "ES256"])
    within_leeway = mint(exp=int(time.time()) - 30, nbf=int(time.time()) + 30)  # clocks 30 s apart: leeway_seconds 60
    for token in (mint(ec_key("e1"), "e1", "ES256"), mint(aud=["api://other", "https://graph"]), mint(), within_leeway):
        resp = await client.get("/apps/demo/scim/v2/Users", headers=bearer(token))
        assert resp.status == 200, await resp.text()


async def test_allowed_clients_and_client_claims(aiohttp_client: Any, tmp_path: Path, jwks: Jwks) -> None:
    client = await gateway(aiohttp_client, tmp_path, jwks, allowed_clients=[ENTRA_APP_ID], client_id_claims=["appid"])
    assert (await client.get("/apps/demo/scim/v2/Users", headers=bearer(mint()))).status == 200
    await refused(client, mint(appid="some-other-app-in-the-tenant"), "client is not allowed", "client", tmp_path)
    await refused(client, mint(appid=None), "names no client (none of the claims appid)", "claims", tmp_path)


# ---------------------------------------------------------------- refused, each for its reason


def _unsigned(claims: dict[str, Any]) -> str:
    def b64(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    return f"{b64({'alg': 'none', 'typ': 'JWT', 'kid': 'k1'})}.{b64(claims)}."


def _hmac_with_the_public_key() -> str:
    """The classic alg confusion: HS256 'signed' with the RSA public key, which anyone can read from the JWKS."""
    pem = rsa_key("k1").public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    head = base64.urlsafe_b64encode(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "k1"}).encode()).rstrip(b"=")
    payload = base64.urlsafe_b64encode(
        json.dumps({"iss": ISSUER, "aud": AUDIENCE, "exp": int(time.time()) + 600, "appid": "x"}).encode()
    ).rstrip(b"=")
    signature = base64.urlsafe_b64encode(hmac.new(pem, head + b"." + payload, hashlib.sha256).digest()).rstrip(b"=")
    return (head + b"." + payload + b"." + signature).decode()


REFUSALS: list[tuple[str, Callable[[], str], str, str]] = [
    ("expired", lambda: mint(exp=int(time.time()) - 3600), "has expired", "expired"),
    ("expired beyond the leeway", lambda: mint(exp=int(time.time()) - 90), "has expired", "expired"),
    ("not yet valid", lambda: mint(nbf=int(time.time()) + 3600), "not yet valid", "not_yet_valid"),
    ("wrong audience", lambda: mint(aud="api://another-app"), "another audience", "audience"),
    ("no audience", lambda: mint(aud=None), "lacks the aud claim", "claims"),
    ("wrong issuer", lambda: mint(iss="https://sts.windows.net/another-tenant/"), "another issuer", "issuer"),
    ("no expiry", lambda: mint(exp=None), "lacks the exp claim", "claims"),
    ("bad signature", lambda: mint(rsa_key("attacker"), "k1"), "signature is not valid", "signature"),
    ("unknown key id", lambda: mint(rsa_key("attacker"), "k-unknown"), "key id (kid) is not among", "unknown_kid"),
    (
        "alg none",
        lambda: _unsigned({"iss": ISSUER, "aud": AUDIENCE, "exp": int(time.time()) + 600, "appid": "x"}),
        "algorithm none is not allowed",
        "algorithm",
    ),
    ("HS256 with the public key", _hmac_with_the_public_key, "algorithm HS256 is not allowed", "algorithm"),
    ("RS384 where only RS256 is configured", lambda: mint(alg="RS384"), "algorithm RS384 is not allowed", "algorithm"),
    ("malformed", lambda: "eyJub3QiOiJqc29u.eyJ9.c2ln", "malformed JWT", "malformed"),
    ("truncated", lambda: ".".join(mint().split(".")[:2]) + ".", "signature is not valid", "signature"),
]


@pytest.mark.parametrize(("case", "make", "detail", "reason"), REFUSALS, ids=[r[0] for r in REFUSALS])
async def test_a_bad_token_is_refused_naming_why(
    aiohttp_client: Any, tmp_path: Path, jwks: Jwks, case: str, make: Callable[[], str], detail: str, reason: str
) -> None:
    client = await gateway(aiohttp_client, tmp_path, jwks)
    await refused(client, make(), detail, reason, tmp_path)


async def test_a_token_naming_a_key_of_another_type_is_refused(aiohttp_client: Any, tmp_path: Path, jwks: Jwks) -> None:
    # The token says ES256 and names an RSA key (or the reverse): never verified with a key of the wrong kind.
    jwks.keys.append(public_jwk(ec_key("e1"), "e1"))
    client = await gateway(aiohttp_client, tmp_path, jwks, algorithms=["RS256", "ES256"])
    await refused(client, mint(ec_key("e1"), "k1", "ES256"), "does not fit the key", "algorithm", tmp_path)
    await refused(client, mint(rsa_key("k1"), "e1", "RS256"), "does not fit the key", "algorithm", tmp_path)


async def test_a_static_token_that_is_not_a_jwt_is_refused_plainly(aiohttp_client: Any, tmp_path: Path, jwks: Jwks) -> None:
    client = await gateway(aiohttp_client, tmp_path, jwks)
    await refused(client, "not-a-jwt-and-not-a-known-token", "not valid for this app", "unknown_token", tmp_path)
    resp = await client.get("/apps/demo/scim/v2/Users")
    assert resp.status == 401 and resp.headers["WWW-Authenticate"] == 'Bearer realm="scim-gateway"'
    assert jwks.fetches == 0  # nothing that is not a JWT makes the gateway fetch keys


# ---------------------------------------------------------------- the key set: cache, rotation, outage


async def test_concurrent_first_requests_share_one_fetch(aiohttp_client: Any, tmp_path: Path, jwks: Jwks) -> None:
    jwks.delay = 0.5
    client = await gateway(aiohttp_client, tmp_path, jwks)
    slow = [asyncio.ensure_future(client.get("/apps/demo/scim/v2/Users", headers=bearer(mint()))) for _ in range(10)]
    await asyncio.sleep(0.05)
    # While the keys are being fetched, a static-token request is answered: the loop is not blocked.
    resp = await client.get("/apps/demo/scim/v2/Users", headers=bearer(TOKEN))
    assert resp.status == 200 and not any(request.done() for request in slow)
    assert [r.status for r in await asyncio.gather(*slow)] == [200] * 10
    assert jwks.fetches == 1


async def test_key_rotation_is_followed_but_forged_kids_cause_no_storm(
    aiohttp_client: Any, tmp_path: Path, jwks: Jwks, clock: Clock
) -> None:
    client = await gateway(aiohttp_client, tmp_path, jwks)
    assert (await client.get("/apps/demo/scim/v2/Users", headers=bearer(mint()))).status == 200
    assert jwks.fetches == 1
    # An attacker sends tokens naming kids that do not exist: at most one fetch per interval, not one each.
    for _ in range(20):
        resp = await client.get("/apps/demo/scim/v2/Users", headers=bearer(mint(rsa_key("attacker"), f"forged-{uuid.uuid4()}")))
        assert resp.status == 401
    assert jwks.fetches == 1
    # The IdP rotates: a new key k2 is published and tokens use it; 30 s after the last fetch the gateway fetches again.
    jwks.keys = [public_jwk(rsa_key("k2"), "k2"), public_jwk(rsa_key("k1"), "k1")]
    clock.offset = 29
    assert (await client.get("/apps/demo/scim/v2/Users", headers=bearer(mint(rsa_key("k2"), "k2")))).status == 401
    assert jwks.fetches == 1
    clock.offset = 31
    resp = await client.get("/apps/demo/scim/v2/Users", headers=bearer(mint(rsa_key("k2"), "k2")))
    assert resp.status == 200, await resp.text()
    assert jwks.fetches == 2
    assert (await client.get("/apps/demo/scim/v2/Users", headers=bearer(mint()))).status == 200  # k1 still published
    assert jwks.fetches == 2


async def test_keys_are_fetched_again_after_their_ttl(aiohttp_client: Any, tmp_path: Path, jwks: Jwks, clock: Clock) -> None:
    client = await gateway(aiohttp_client, tmp_path, jwks, jwks_ttl_seconds=600)
    assert (await client.get("/apps/demo/scim/v2/Users", headers=bearer(mint()))).status == 200
    jwks.keys = [public_jwk(rsa_key("k2"), "k2")]  # k1 withdrawn
    clock.offset = 599
    assert (await client.get("/apps/demo/scim/v2/Users", headers=bearer(mint()))).status == 200  # still cached
    clock.offset = 601
    resp = await client.get("/apps/demo/scim/v2/Users", headers=bearer(mint()))
    assert resp.status == 401 and jwks.fetches == 2  # the withdrawn key is no longer trusted


async def test_jwks_outage_without_cached_keys_is_a_503_not_the_clients_fault(
    aiohttp_client: Any, tmp_path: Path, jwks: Jwks, clock: Clock, caplog: Any
) -> None:
    jwks.status = 500
    client = await gateway(aiohttp_client, tmp_path, jwks)
    for _ in range(5):
        resp = await client.get("/apps/demo/scim/v2/Users", headers=bearer(mint()))
        body = await resp.json(content_type=None)
        assert resp.status == 503 and resp.headers["Retry-After"] == "30", body
        assert "cannot fetch its token issuer's signing keys" in body["detail"]
    assert jwks.fetches == 1  # an outage is not retried on every request
    assert "cannot load the JWT signing keys" in caplog.text and "HTTP 500" in caplog.text
    assert audit_lines(tmp_path)[-1] | {"ts": None, "request_id": None, "pid": None, "duration_ms": None} == {
        "ts": None,
        "app": "demo",
        "credential": None,
        "client": "127.0.0.1",
        "method": "GET",
        "op": "auth",
        "resource_type": None,
        "id": None,
        "status": 503,
        "reason": "jwks_unavailable",
        "request_id": None,
        "pid": None,
        "duration_ms": None,
    }
    # Static tokens do not depend on the IdP.
    assert (await client.get("/apps/demo/scim/v2/Users", headers=bearer(TOKEN))).status == 200
    # The IdP recovers: after the retry interval the keys are fetched and the token accepted.
    jwks.status = 200
    clock.offset = 31
    assert (await client.get("/apps/demo/scim/v2/Users", headers=bearer(mint()))).status == 200
    assert jwks.fetches == 2


async def test_an_outage_after_keys_were_fetched_keeps_using_them(
    aiohttp_client: Any, tmp_path: Path, jwks: Jwks, clock: Clock, caplog: Any
) -> None:
    client = await gateway(aiohttp_client, tmp_path, jwks)
    assert (await client.get("/apps/demo/scim/v2/Users", headers=bearer(mint()))).status == 200
    assert jwks.server is not None
    await jwks.server.close()  # the IdP's endpoint is gone altogether (connection refused)
    clock.offset = 3601  # the keys' TTL (default an hour) is over
    assert (await client.get("/apps/demo/scim/v2/Users", headers=bearer(mint()))).status == 200
    assert "keeping the keys loaded before" in caplog.text


# ---------------------------------------------------------------- a JWKS file, and the mapping's checks


async def test_keys_from_a_jwks_file(aiohttp_client: Any, tmp_path: Path) -> None:
    keys = tmp_path / "jwks.json"
    keys.write_text(
        json.dumps(
            {
                "keys": [
                    public_jwk(rsa_key("k1"), "k1"),
                    {"kty": "oct", "k": base64.urlsafe_b64encode(b"s" * 32).decode().rstrip("="), "kid": "sym"},
                ]
            }
        )
    )
    client = await aiohttp_client(create_app(jwt_settings(tmp_path, f"jwks_file: {keys}")))
    assert (await client.get("/apps/demo/scim/v2/Users", headers=bearer(mint()))).status == 200
    # A symmetric key in the set is never used: a token naming it is refused as naming an unknown key.
    forged = jwt.encode(
        {"iss": ISSUER, "aud": AUDIENCE, "exp": int(time.time()) + 60, "appid": "x"}, "s" * 32, "HS256", headers={"kid": "sym"}
    )
    resp = await client.get("/apps/demo/scim/v2/Users", headers=bearer(forged))
    assert resp.status == 401


def test_an_unusable_jwks_file_stops_the_gateway_from_starting(tmp_path: Path) -> None:
    ensure_demo_database(tmp_path / "data")
    for content, message in (
        (None, "cannot read the JWKS file"),
        ('{"keys": []}', "no public signature keys"),
        ("{", "unusable"),
    ):
        keys = tmp_path / "jwks.json"
        keys.unlink(missing_ok=True)
        if content is not None:
            keys.write_text(content)
        settings = jwt_settings(tmp_path, f"jwks_file: {keys}")
        with pytest.raises(MappingFileError) as caught:
            load_apps(settings, load_registry())
        assert "auth.jwt.jwks_file" in str(caught.value) and message in str(caught.value), str(caught.value)


@pytest.mark.parametrize(
    ("source", "options", "message"),
    [
        ("jwks_url: https://login.example.com/keys", {"algorithms": ["HS256"]}, "HS256 is refused"),
        ("jwks_url: https://login.example.com/keys", {"algorithms": ["none"]}, "none is refused"),
        ("jwks_url: http://login.example.com/keys", {}, "must be an https:// URL"),
        ("jwks_url: https://login.example.com/keys", {"jwks_file": "/tmp/keys.json"}, "exactly one of jwks_url or jwks_file"),
        ("jwks_url: https://login.example.com/keys", {"audience": []}, "give the audience"),
        ("jwks_url: https://login.example.com/keys", {"leeway_seconds": -1}, "leeway_seconds"),
        ("jwks_url: https://login.example.com/keys", {"audiences": "x"}, "audiences"),
    ],
)
def test_a_bad_jwt_block_is_a_mapping_error(tmp_path: Path, source: str, options: dict[str, Any], message: str) -> None:
    ensure_demo_database(tmp_path / "data")
    with pytest.raises(MappingFileError) as caught:
        load_apps(jwt_settings(tmp_path, source, **options), load_registry())
    assert message in str(caught.value) and "auth.jwt" in str(caught.value), str(caught.value)
