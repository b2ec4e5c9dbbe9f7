"""The baseline: a bare aiohttp handler answering a fixed SCIM User with a bearer check.

`python -m bench.baseline PORT TOKEN BODY.json` serves GET /apps/{app}/scim/v2/Users/{id} (and
/ServiceProviderConfig, for the readiness probe) with BODY's bytes, as the gateway would answer for one user.
What the gateway adds on top of this (routing, store, connector, mapping, projection) is what the ratio measures.
"""

from __future__ import annotations

import hmac
import sys
from pathlib import Path

from aiohttp import web


def create_baseline_app(token: str, body: bytes) -> web.Application:
    expected = f"Bearer {token}".encode()
    unauthorized = (
        b'{"schemas":["urn:ietf:params:scim:api:messages:2.0:Error"],"status":"401","detail":"a bearer token is required"}'
    )

    async def user(request: web.Request) -> web.Response:
        if not hmac.compare_digest(request.headers.get("Authorization", "").encode(), expected):
            return web.Response(body=unauthorized, status=401, content_type="application/scim+json")
        return web.Response(body=body, content_type="application/scim+json", headers={"ETag": 'W/"1"'})

    app = web.Application()
    app.router.add_get("/apps/{app}/scim/v2/Users/{id}", user)
    app.router.add_get("/apps/{app}/scim/v2/ServiceProviderConfig", user)
    return app


def main(argv: list[str]) -> None:
    port, token, body_file = int(argv[0]), argv[1], Path(argv[2])
    web.run_app(create_baseline_app(token, body_file.read_bytes()), host="127.0.0.1", port=port, print=None, access_log=None)


if __name__ == "__main__":
    main(sys.argv[1:])
