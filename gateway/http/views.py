"""The views under one app's SCIM base URL: each parses what HTTP carries, calls the app's SCIM service,
and answers. The router answers 405 for a method a view lacks (the error middleware words it)."""

from __future__ import annotations

from typing import Any, ClassVar

from aiohttp import web

from ..auth import CannotJudge, Refused
from ..hub.runtime import status_document
from ..runtime import AppRuntime
from ..schema import ResourceType
from ..scim.bulk import BulkEntry
from ..scim.errors import ScimError, not_found
from ..scim.service import Reply, ScimService
from .body import read_json, reply_response
from .keys import AUDIT, AUDIT_NOTE, HUB, RUNTIME, SETTINGS


class ScimView(web.View):
    #: What the audit log records of a write to this view: "resource" (the operation on its resource),
    #: "bulk" (each operation, then the request), or None (nothing: a search is a read).
    audited: ClassVar[str | None] = "resource"
    #: What a request here that writes nothing is, in logs and metrics: "read", "search" or "discovery".
    reads: ClassVar[str] = "read"

    @property
    def runtime(self) -> AppRuntime:
        return self.request[RUNTIME]

    @property
    def service(self) -> ScimService:
        return self.runtime.service

    @property
    def base(self) -> str:
        """The app's base URL as the IdP reaches it (for Location and meta.location)."""
        public = self.request.app[SETTINGS].public_url
        root = public.rstrip("/") if public else f"{self.request.scheme}://{self.request.host}"
        if self.request.match_info.get("hub") is not None:
            return f"{root}/hub/scim/v2"
        return f"{root}/apps/{self.runtime.name}/scim/v2"

    def serving(self) -> ScimService:
        """The service, once the app's connector is open (until then, only discovery answers)."""
        refusal = self.runtime.refusal()
        if refusal is not None:
            raise refusal
        return self.service

    async def json(self) -> Any:
        return await read_json(self.request, self.request.app[SETTINGS].limits.max_body_bytes)

    def param(self, name: str) -> str | None:
        return self.request.query.get(name)

    def projection(self) -> dict[str, str | None]:
        return {"attributes": self.param("attributes"), "excluded": self.param("excludedAttributes")}

    def resource_type(self) -> ResourceType:
        return self.service.resource_type(self.request.match_info["endpoint"])

    def answer(self, reply: Reply) -> web.StreamResponse:
        note = self.request[AUDIT_NOTE]
        if note.resource_id is None and reply.resource_id is not None:
            note.resource_id = reply.resource_id  # a create: the id it was given
        return reply_response(reply)


# ---------------------------------------------------------------- discovery (answers while the app is not connected)


class ServiceProviderConfigView(ScimView):
    reads = "discovery"

    async def get(self) -> web.StreamResponse:
        return reply_response(self.service.service_provider_config(self.base))


class ResourceTypesView(ScimView):
    reads = "discovery"

    async def get(self) -> web.StreamResponse:
        return reply_response(self.service.resource_types(self.base, self.request.match_info.get("name")))


class SchemasView(ScimView):
    reads = "discovery"

    async def get(self) -> web.StreamResponse:
        return reply_response(self.service.schemas(self.base, self.request.match_info.get("urn")))


# ---------------------------------------------------------------- resources


class ResourcesView(ScimView):
    """/Users, /Groups: list (GET) and create (POST)."""

    reads = "search"

    async def get(self) -> web.StreamResponse:
        service = self.serving()
        return reply_response(await service.search(self.base, self.resource_type(), self.request.query))

    async def post(self) -> web.StreamResponse:
        service = self.serving()
        rtype = self.resource_type()
        return self.answer(await service.create(self.base, rtype, await self.json(), **self.projection()))


class ResourceSearchView(ScimView):
    """/Users/.search: a list request in a SearchRequest body."""

    audited = None
    reads = "search"

    async def post(self) -> web.StreamResponse:
        service = self.serving()
        rtype = self.resource_type()
        return reply_response(await service.search_request(self.base, rtype, await self.json()))


class ResourceView(ScimView):
    """/Users/{id}: read, replace, patch, delete."""

    @property
    def rid(self) -> str:
        return self.request.match_info["id"]

    async def get(self) -> web.StreamResponse:
        service = self.serving()
        reply = await service.get(
            self.base,
            self.resource_type(),
            self.rid,
            **self.projection(),
            if_none_match=self.request.headers.get("If-None-Match"),
        )
        return reply_response(reply)

    async def put(self) -> web.StreamResponse:
        service = self.serving()
        rtype = self.resource_type()
        body = await self.json()
        return reply_response(
            await service.replace(
                self.base, rtype, self.rid, body, if_match=self.request.headers.get("If-Match"), **self.projection()
            )
        )

    async def patch(self) -> web.StreamResponse:
        service = self.serving()
        rtype = self.resource_type()
        body = await self.json()
        return reply_response(
            await service.patch(
                self.base, rtype, self.rid, body, if_match=self.request.headers.get("If-Match"), **self.projection()
            )
        )

    async def delete(self) -> web.StreamResponse:
        service = self.serving()
        return reply_response(await service.delete(self.resource_type(), self.rid, if_match=self.request.headers.get("If-Match")))


class SearchAllView(ScimView):
    """/.search: every resource type at once."""

    audited = None
    reads = "search"

    async def post(self) -> web.StreamResponse:
        service = self.serving()
        return reply_response(await service.search_all(self.base, await self.json()))


class BulkView(ScimView):
    audited = "bulk"

    async def post(self) -> web.StreamResponse:
        service = self.serving()
        body = await self.json()
        entries: list[BulkEntry | None] = []
        try:
            return reply_response(await service.bulk(self.base, body, entries))
        finally:  # what ran, also when the request fails as a whole after it
            audit = self.request.app[AUDIT]
            for record in self.request[AUDIT_NOTE].bulk_records(entries):
                audit.write(record)


# ---------------------------------------------------------------- what is not an endpoint


async def base_url(request: web.Request) -> web.StreamResponse:
    raise not_found("this is the SCIM base URL; see /ServiceProviderConfig, /ResourceTypes, /Schemas")


async def me(request: web.Request) -> web.StreamResponse:
    refusal = request[RUNTIME].refusal()
    if refusal is not None:
        raise refusal
    raise ScimError(501, "/Me is not supported: the gateway authenticates IdPs, not users")


async def hub_status(request: web.Request) -> web.StreamResponse:
    """GET /hub/status[?user=U][&app=A]: delivery per resource and app (`scim-gateway hub status --json`), with the hub's credentials."""
    hub = request.app.get(HUB)
    if hub is None:
        raise not_found("no hub is served (serve --hub FILE)")
    try:
        await hub.runtime.auth.authenticate(request.headers.get("Authorization", ""))
    except Refused as exc:
        raise ScimError(401, exc.detail, headers={"WWW-Authenticate": exc.challenge}) from None
    except CannotJudge as exc:
        raise ScimError(503, exc.detail, headers={"Retry-After": str(exc.retry_after)}) from None
    states = await hub.store.status(request.query.get("user"), request.query.get("app"))
    return web.json_response(status_document(states))


async def no_endpoint(request: web.Request) -> web.StreamResponse:
    raise not_found(f"no SCIM endpoint at /{request.match_info.get('tail', '')}")


__all__ = [
    "BulkView",
    "ResourceSearchView",
    "ResourceTypesView",
    "ResourceView",
    "ResourcesView",
    "SchemasView",
    "ScimView",
    "SearchAllView",
    "ServiceProviderConfigView",
    "base_url",
    "hub_status",
    "me",
    "no_endpoint",
]
