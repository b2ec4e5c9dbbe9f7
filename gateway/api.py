"""HTTP: routing under /apps/{app}/scim/v2, bearer auth, SCIM bodies, ETags, and the one error middleware."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from .app import APPS, SETTINGS, AppRuntime
from .provisioning.provisioner import Provisioner
from .scim import bulk as scim_bulk
from .scim.discovery import list_response, schemas_of, service_provider_config
from .scim.errors import ScimError, invalid_syntax, invalid_value, not_found, unavailable
from .scim.listing import ListRequest, check_search_body, parse_list_request
from .scim.patch import apply_patch
from .scim.projection import parse_attribute_list, project
from .scim.query import Query
from .scim.resource import normalize_resource
from .scim.schema import ResourceType
from .store.base import StoreUnavailable

log = logging.getLogger(__name__)

SCIM_CONTENT_TYPE = "application/scim+json"
BASE_PATH = "/apps/{app}/scim/v2"
_BASE_RE = re.compile(r"^/apps/([^/]+)/scim/v2(?=/|$)")
_ETAG_RE = re.compile(r'^(?:W/)?"(\d+)"$')


def scim_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        # backslashreplace: a lone surrogate (only possible inside a JSON string) goes out as its \\u escape, not a 500.
        body=json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "backslashreplace"),
        status=status,
        content_type=SCIM_CONTENT_TYPE,
        charset="utf-8",
        headers=headers,
    )


def error_response(error: ScimError) -> web.Response:
    return scim_response(error.to_json(), error.status, error.headers)


@web.middleware
async def error_middleware(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    try:
        return await handler(request)
    except ScimError as exc:
        return error_response(exc)
    except StoreUnavailable as exc:
        log.error("%s %s: %s", request.method, request.path, exc)
        return error_response(unavailable("the gateway's correlation store is unavailable; retry later", 5))
    except web.HTTPRequestEntityTooLarge:
        limit = request.app[SETTINGS].limits.max_body_bytes
        return error_response(ScimError(413, f"the request body is larger than the limit of {limit} bytes (maxPayloadSize)"))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(ScimError(exc.status, exc.reason))
    except Exception:
        log.exception("unexpected error on %s %s", request.method, request.path)
        return error_response(ScimError(500, "internal error; the request may be retried"))


def setup_routes(app: web.Application) -> None:
    app.router.add_route("*", "/apps/{app}/scim/v2{tail:(/.*)?}", dispatch)
    app.router.add_route("*", "/{tail:.*}", not_under_base)


async def not_under_base(request: web.Request) -> web.Response:
    known = ", ".join(f"/apps/{name}/scim/v2" for name in sorted(request.app[APPS]))
    raise not_found(f"no SCIM endpoint at {request.path} (apps are served under {known or '/apps/{app}/scim/v2'})")


# ---------------------------------------------------------------- request helpers


def base_url(request: web.Request, app_name: str) -> str:
    public = request.app[SETTINGS].public_url
    root = public.rstrip("/") if public else f"{request.scheme}://{request.host}"
    return f"{root}/apps/{app_name}/scim/v2"


def authenticate(request: web.Request, runtime: AppRuntime) -> None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ScimError(401, "a bearer token is required", headers={"WWW-Authenticate": 'Bearer realm="scim-gateway"'})
    # surrogateescape: the header's bytes as sent, even when they are not UTF-8 (aiohttp decodes them so).
    digest = hashlib.sha256(token.strip().encode("utf-8", "surrogateescape")).digest()
    ok = False
    for accepted in runtime.token_digests:
        ok |= hmac.compare_digest(digest, accepted)  # no early exit: constant time over the list
    if not ok:
        raise ScimError(401, "the bearer token is not valid for this app", headers={"WWW-Authenticate": 'Bearer realm="scim-gateway", error="invalid_token"'})


async def read_json(request: web.Request) -> Any:
    content_type = request.headers.get("Content-Type", "")
    if content_type and "json" not in content_type.lower():
        raise ScimError(415, f"send application/scim+json or application/json, not {content_type.split(';')[0]}")
    raw = await request.read()
    if not raw.strip():
        raise invalid_syntax("the request body is empty")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise invalid_syntax(f"the request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise invalid_syntax(f"the request body nests deeper than {MAX_JSON_DEPTH} levels") from None
    check_json(body)
    return body


MAX_JSON_DEPTH = 64
_SURROGATE_RE = re.compile(r"[\ud800-\udfff]")


def check_json(body: Any) -> None:
    """Refuse what parses as JSON but is no SCIM body and would break later layers.

    Nesting deeper than MAX_JSON_DEPTH (no SCIM message comes close; recursive
    code further in would hit Python's recursion limit) and unpaired UTF-16
    surrogates (JSON's \\ud800 escapes decode to text that is not Unicode and
    cannot be stored). Iterative, so hostile depth cannot blow the stack here.
    """
    stack: list[tuple[Any, str, int]] = [(body, "", 0)]
    while stack:
        value, where, depth = stack.pop()
        if isinstance(value, str):
            if _SURROGATE_RE.search(value):
                raise invalid_syntax(f"the request body has an unpaired UTF-16 surrogate (\\ud800-\\udfff) in the value at {_where(where)}: text must be valid Unicode")
            if "\x00" in value:
                raise invalid_value(f"the value at {_where(where)} holds a NUL character (\\u0000), which no store or app keeps as text")
            continue
        if not isinstance(value, (dict, list)):
            continue
        if depth >= MAX_JSON_DEPTH:
            raise invalid_syntax(f"the request body nests deeper than {MAX_JSON_DEPTH} levels (at {_where(where)})")
        if isinstance(value, dict):
            for key, item in value.items():
                if _SURROGATE_RE.search(key) or "\x00" in key:
                    raise invalid_syntax(f"the request body has an unpaired UTF-16 surrogate (\\ud800-\\udfff) or a NUL character in a member name at {_where(where)}")
                stack.append((item, f"{where}.{key}" if where else key, depth + 1))
        else:
            stack.extend((item, f"{where}[{i}]", depth + 1) for i, item in enumerate(value))


def _where(path: str) -> str:
    if not path:
        return "the top level"
    return path if len(path) <= 120 else path[:60] + "..." + path[-57:]


def parse_etag(header: str | None) -> int | None:
    if header is None or header.strip() == "*":
        return None
    match = _ETAG_RE.match(header.strip())
    if match is None:
        # An ETag we never issued cannot match the current version.
        return -1
    return int(match.group(1))


def etag_of(resource: dict[str, Any]) -> str:
    return str(resource["meta"]["version"])


# ---------------------------------------------------------------- the SCIM endpoints of one app


class Endpoint:
    """One request to one app's base URL."""

    def __init__(self, request: web.Request, runtime: AppRuntime, base: str) -> None:
        self.request = request
        self.runtime = runtime
        self.base = base
        self.provisioner: Provisioner = runtime.provisioner
        self.limits = request.app[SETTINGS].limits

    @property
    def rtypes(self) -> dict[str, ResourceType]:
        return {name: res.rtype for name, res in self.runtime.mapping.resources.items()}

    def rtype_for_endpoint(self, segment: str) -> ResourceType | None:
        for rtype in self.rtypes.values():
            if rtype.endpoint.lstrip("/").lower() == segment.lower():
                return rtype
        return None

    def finish(self, rtype: ResourceType, resource: dict[str, Any], attributes: str | None = None, excluded: str | None = None) -> dict[str, Any]:
        """Add schemas and meta.location, then apply attributes / excludedAttributes."""
        out = {"schemas": [rtype.schema.id, *(s.id for s, _ in rtype.extensions if s.id in resource)], **resource}
        out["meta"] = {**resource["meta"], "location": f"{self.base}{rtype.endpoint}/{resource['id']}"}
        for name in ("members", "groups"):
            if name in out:
                out[name] = [{**m, "$ref": self.ref_url(m)} for m in out[name]]
        return project(out, rtype, parse_attribute_list(attributes, rtype), parse_attribute_list(excluded, rtype))

    def ref_url(self, member: dict[str, Any]) -> str:
        kind = "Group" if member.get("type") in ("Group", "direct", "indirect") else member.get("type", "User")
        rtype = self.rtypes.get(kind)
        endpoint = rtype.endpoint if rtype else f"/{kind}s"
        return f"{self.base}{endpoint}/{member['value']}"

    def resource_response(self, rtype: ResourceType, resource: dict[str, Any], status: int = 200) -> web.Response:
        params = self.request.query
        body = self.finish(rtype, resource, params.get("attributes"), params.get("excludedAttributes"))
        headers = {"ETag": etag_of(resource)}
        if status == 201:
            headers["Location"] = body["meta"]["location"]
        return scim_response(body, status, headers)

    async def route(self, tail: str) -> web.StreamResponse:
        method = self.request.method
        parts = [p for p in tail.split("/") if p]
        if not parts:
            raise not_found("this is the SCIM base URL; see /ServiceProviderConfig, /ResourceTypes, /Schemas")
        head = parts[0]
        lowered = head.lower()
        if lowered == "serviceproviderconfig" and len(parts) == 1:
            self.allow(method, "GET")
            return scim_response(self.spc())
        if lowered == "resourcetypes" and len(parts) <= 2:
            self.allow(method, "GET")
            return self.resource_types(parts[1] if len(parts) == 2 else None)
        if lowered == "schemas" and len(parts) <= 2:
            self.allow(method, "GET")
            return self.schemas(parts[1] if len(parts) == 2 else None)
        if lowered == "bulk" and len(parts) == 1:
            self.allow(method, "POST")
            return await self.bulk()
        if lowered == ".search" and len(parts) == 1:
            self.allow(method, "POST")
            return await self.search_all()
        if lowered == "me":
            raise ScimError(501, "/Me is not supported: the gateway authenticates IdPs, not users")
        rtype = self.rtype_for_endpoint(head)
        if rtype is None:
            raise not_found(f"no resource endpoint /{head} (valid: {', '.join(r.endpoint for r in self.rtypes.values())})")
        if len(parts) == 1:
            self.allow(method, "GET", "POST")
            return await (self.list(rtype) if method == "GET" else self.create(rtype))
        if len(parts) == 2 and parts[1] == ".search":
            self.allow(method, "POST")
            return await self.search(rtype)
        if len(parts) == 2:
            self.allow(method, "GET", "PUT", "PATCH", "DELETE")
            rid = parts[1]
            if method == "GET":
                return await self.get(rtype, rid)
            if method == "PUT":
                return await self.replace(rtype, rid)
            if method == "PATCH":
                return await self.patch(rtype, rid)
            return await self.delete(rtype, rid)
        raise not_found(f"no SCIM endpoint at {tail}")

    @staticmethod
    def allow(method: str, *allowed: str) -> None:
        if method not in allowed:
            raise ScimError(405, f"{method} is not allowed here (allowed: {', '.join(allowed)})", headers={"Allow": ", ".join(allowed)})

    # -- discovery

    def spc(self) -> dict[str, Any]:
        return service_provider_config(
            self.base,
            bulk_max_operations=self.limits.bulk_max_operations,
            max_payload=self.limits.max_body_bytes,
            max_results=self.limits.max_page_size,
        )

    def resource_types(self, name: str | None) -> web.Response:
        docs = {r.name: r.to_json(f"{self.base}/ResourceTypes/{r.name}") for r in self.rtypes.values()}
        if name is None:
            return scim_response(list_response(list(docs.values())))
        doc = next((d for n, d in docs.items() if n.lower() == name.lower()), None)
        if doc is None:
            raise not_found(f"no resource type {name!r} (valid: {', '.join(docs)})")
        return scim_response(doc)

    def schemas(self, urn: str | None) -> web.Response:
        docs = {s.id: s.to_json(f"{self.base}/Schemas/{s.id}") for s in schemas_of(list(self.rtypes.values()))}
        if urn is None:
            return scim_response(list_response(list(docs.values())))
        doc = next((d for i, d in docs.items() if i.lower() == urn.lower()), None)
        if doc is None:
            raise not_found(f"no schema {urn!r}")
        return scim_response(doc)

    # -- resources

    def _if_match(self) -> int | None:
        return parse_etag(self.request.headers.get("If-Match"))

    async def get(self, rtype: ResourceType, rid: str) -> web.Response:
        members = _wants_membership(rtype, self.request.query.get("attributes"), self.request.query.get("excludedAttributes"))
        row, resource = await self.provisioner.get(rtype.name, rid, members=members)
        none_match = self.request.headers.get("If-None-Match")
        if none_match is not None and (none_match.strip() == "*" or parse_etag(none_match) == row.version):
            return web.Response(status=304, headers={"ETag": etag_of(resource)})
        return self.resource_response(rtype, resource)

    async def list(self, rtype: ResourceType) -> web.Response:
        return await self._list(rtype, self.request.query)

    async def search(self, rtype: ResourceType) -> web.Response:
        return await self._list(rtype, check_search_body(await read_json(self.request)))

    async def _list(self, rtype: ResourceType, params: Any) -> web.Response:
        req = parse_list_request(params, rtype, default_count=self.limits.default_page_size, max_count=self.limits.max_page_size)
        members = _wants_membership(rtype, req.attributes, req.excluded)
        total, resources = await self.provisioner.query(rtype.name, req.query, members=members)
        body = list_response([self.finish(rtype, r, req.attributes, req.excluded) for r in resources], total, req.query.start_index)
        return scim_response(body)

    async def search_all(self) -> web.Response:
        """POST /.search: every resource type, one page across them (RFC 7644 §3.4.3).

        A filter naming an attribute that only some resource types have applies to
        those; the others contribute nothing (their resources cannot match).
        """
        body = check_search_body(await read_json(self.request))
        found: list[dict[str, Any]] = []
        total = 0
        first_error: ScimError | None = None
        searched = 0
        page_of: ListRequest | None = None
        for rtype in self.rtypes.values():
            try:
                req = parse_list_request(body, rtype, default_count=self.limits.default_page_size, max_count=self.limits.max_page_size)
            except ScimError as exc:
                if exc.scim_type != "invalidFilter" and exc.scim_type != "invalidValue":
                    raise
                first_error = first_error or exc
                continue
            searched += 1
            page_of = page_of or req
            query = Query(filter=req.query.filter, sort_by=req.query.sort_by, descending=req.query.descending)
            n, resources = await self.provisioner.query(rtype.name, query)
            total += n
            found.extend(self.finish(rtype, r, req.attributes, req.excluded) for r in resources)
        if not searched:
            assert first_error is not None
            raise first_error
        assert page_of is not None
        start, count = page_of.query.start_index, page_of.query.count
        page = found[start - 1 : start - 1 + (count if count is not None else len(found))]
        return scim_response(list_response(page, total, start))

    async def create(self, rtype: ResourceType) -> web.Response:
        body = await read_json(self.request)
        resource = normalize_resource(body, rtype)
        _row, created = await self.provisioner.create(rtype.name, resource)
        return self.resource_response(rtype, created, 201)

    async def replace(self, rtype: ResourceType, rid: str) -> web.Response:
        body = await read_json(self.request)
        if isinstance(body, dict) and body.get("id") not in (None, rid):
            raise ScimError(400, f"the body's id {body.get('id')!r} does not match the URL's {rid!r}", "mutability")
        resource = normalize_resource(body, rtype)
        _row, updated = await self.provisioner.replace(rtype.name, rid, resource, self._if_match(), with_members=_names_members(body))
        return self.resource_response(rtype, updated)

    async def patch(self, rtype: ResourceType, rid: str) -> web.Response:
        body = await read_json(self.request)
        if not isinstance(body, dict):
            raise invalid_syntax("a PATCH body must be a PatchOp JSON object")
        _row, updated = await self.provisioner.patch(rtype.name, rid, lambda current: apply_patch(current, body, rtype), self._if_match())
        return self.resource_response(rtype, updated)

    async def delete(self, rtype: ResourceType, rid: str) -> web.Response:
        await self.provisioner.delete(rtype.name, rid, self._if_match())
        return web.Response(status=204)

    async def bulk_operation(self, method: str, path: str, data: Any, version: str | None) -> scim_bulk.BulkResult:
        parts = [p for p in path.split("/") if p]
        rtype = self.rtype_for_endpoint(parts[0]) if parts else None
        if rtype is None or len(parts) > 2 or (method == "POST") != (len(parts) == 1):
            raise ScimError(400, f"{method} {path} is not a resource operation", "invalidPath")
        if_match = parse_etag(version) if isinstance(version, str) else None
        if method == "POST":
            _row, resource = await self.provisioner.create(rtype.name, normalize_resource(data, rtype))
        elif method == "PUT":
            resource_in = normalize_resource(data, rtype)
            _row, resource = await self.provisioner.replace(rtype.name, parts[1], resource_in, if_match, with_members=_names_members(data))
        elif method == "PATCH":
            if not isinstance(data, dict):
                raise invalid_syntax("a PATCH operation's data must be a PatchOp object")
            _row, resource = await self.provisioner.patch(rtype.name, parts[1], lambda current: apply_patch(current, data, rtype), if_match)
        else:
            await self.provisioner.delete(rtype.name, parts[1], if_match)
            return scim_bulk.BulkResult(204)
        location = f"{self.base}{rtype.endpoint}/{resource['id']}"
        return scim_bulk.BulkResult(201 if method == "POST" else 200, location, etag_of(resource), resource["id"])

    async def bulk(self) -> web.Response:
        body = await read_json(self.request)
        result = await scim_bulk.run_bulk(self, body, max_operations=self.limits.bulk_max_operations)
        return scim_response(result)


def _wants_membership(rtype: ResourceType, attributes: str | None, excluded: str | None) -> bool:
    """Whether the answer will show members / groups, so the store is not asked for them in vain."""
    requested = parse_attribute_list(attributes, rtype)
    if requested is not None:
        return any(r.attribute.name in ("members", "groups") for r in requested)
    dropped = parse_attribute_list(excluded, rtype) or []
    return not any(r.attribute.name in ("members", "groups") and r.sub is None for r in dropped)


def _names_members(body: Any) -> bool:
    """Whether a PUT body speaks about membership at all (Okta sends `members: []` to empty a group)."""
    return isinstance(body, dict) and any(isinstance(k, str) and k.lower() == "members" for k in body)


async def dispatch(request: web.Request) -> web.StreamResponse:
    app_name = request.match_info["app"]
    runtime = request.app[APPS].get(app_name)
    if runtime is None:
        raise not_found(f"no app named {app_name!r}")
    authenticate(request, runtime)
    if "\x00" in request.path or "\x00" in request.query_string:
        # No id, filter or parameter holds U+0000; PostgreSQL cannot even compare text with it.
        raise invalid_value("the URL holds a NUL character (%00)")
    endpoint = Endpoint(request, runtime, base_url(request, app_name))
    return await endpoint.route(request.match_info.get("tail") or "")


__all__ = ["BASE_PATH", "dispatch", "error_middleware", "setup_routes"]
