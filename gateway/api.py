"""HTTP: routing under /apps/{app}/scim/v2, bearer auth, SCIM bodies, ETags, and the one error middleware."""

from __future__ import annotations

import json
import logging
import os
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from .app import APPS, AUDIT, SETTINGS, AppRuntime
from .audit import clip
from .provisioning.provisioner import Provisioner
from .scim import bulk as scim_bulk
from .scim.discovery import list_response, schemas_of, service_provider_config
from .scim.errors import ScimError, invalid_syntax, invalid_value, not_found, unavailable
from .scim.listing import ListRequest, check_search_body, parse_list_request
from .scim.patch import apply_patch, check_patch_limits, member_changes
from .scim.projection import check_attribute_list_size, parse_attribute_list, project
from .scim.query import Query
from .scim.resource import normalize_resource
from .scim.schema import ResourceType
from .store.base import StoreUnavailable

log = logging.getLogger(__name__)

SCIM_CONTENT_TYPE = "application/scim+json"
BASE_PATH = "/apps/{app}/scim/v2"
_BASE_RE = re.compile(r"^/apps/([^/]+)/scim/v2(?=/|$)")
_ETAG_RE = re.compile(r'^(?:W/)?"(\d+)"$')


def dump_json(body: Any) -> bytes:
    """Compact UTF-8 JSON: orjson's, or the standard library's for what orjson refuses (a lone surrogate, a huge int)."""
    try:
        return orjson.dumps(body)
    except (orjson.JSONEncodeError, TypeError):
        # backslashreplace: a lone surrogate (only possible inside a JSON string) goes out as its \\u escape, not a 500.
        return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "backslashreplace")


_LONG_NUMBER = re.compile(rb"\d{19}")  # past 64 bits orjson gives a float where the standard library keeps the integer


def load_json(raw: bytes) -> Any:
    """orjson's parse, the standard library's answer: what orjson refuses or reads differently (NaN, a lone
    surrogate, an integer past 64 bits) goes to the standard library, which decides and words the errors."""
    if not _LONG_NUMBER.search(raw):
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
    return json.loads(raw)


def scim_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=dump_json(body), status=status, content_type=SCIM_CONTENT_TYPE, charset="utf-8", headers=headers)


def error_response(error: ScimError) -> web.Response:
    return scim_response(error.to_json(), error.status, error.headers)


@web.middleware
async def error_middleware(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    try:
        check_url_length(request)
        return await handler(request)
    except ScimError as exc:
        return error_response(exc)
    except StoreUnavailable as exc:
        log.error("%s %s: %s", request.method, request.path, exc)
        return error_response(unavailable("the gateway's correlation store is unavailable; retry later", 5))
    except web.HTTPRequestEntityTooLarge:
        return error_response(body_too_large(request))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(ScimError(exc.status, exc.reason))
    except Exception:
        log.exception("unexpected error on %s %s", request.method, request.path)
        return error_response(ScimError(500, "internal error; the request may be retried"))


def body_too_large(request: web.Request) -> ScimError:
    limit = request.app[SETTINGS].limits.max_body_bytes
    sent = f"{request.content_length} bytes" if request.content_length is not None else f"more than {limit} bytes (chunked)"
    return ScimError(413, f"the request body is {sent}, larger than max_body_bytes {limit} (maxPayloadSize)")


def check_url_length(request: web.Request) -> None:
    """Refuse a request line longer than max_url_bytes with a SCIM 414 (aiohttp's own cap, above it, answers in text/plain)."""
    limit = request.app[SETTINGS].limits.max_url_bytes
    size = len(request.raw_path)
    if size > limit:
        raise ScimError(414, f"the request URL is {size} bytes, longer than max_url_bytes {limit}: send long filters by POST .search")


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


async def authenticate(request: web.Request, runtime: AppRuntime) -> str:
    """The identity of the credential the request carries (a static token's name, or jwt:<iss>:<client>); 401 / 503 else."""
    return await runtime.auth.authenticate(request.headers.get("Authorization", ""))


# ---------------------------------------------------------------- audit


@dataclass(slots=True)
class AuditNote:
    """What the audit middleware records about one request to an app, filled in by dispatch (and by Bulk, per operation)."""

    app: str
    client: str | None
    method: str
    started: float = field(default_factory=time.monotonic)
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    credential: str | None = None
    op: str | None = None  # None: not recorded (a read)
    resource_type: str | None = None
    resource_id: str | None = None
    scim_type: str | None = None
    reason: str | None = None
    operations: int | None = None  # Bulk: how many operation records precede the request's own

    def record(
        self, op: str | None, resource_type: str | None, resource_id: Any, status: int | None, scim_type: str | None,
        method: str | None = None, duration_ms: float | None = None, **extra: Any,
    ) -> dict[str, Any]:
        """One audit line: who (credential, client), what (op on resource_type/id), how it ended (status, scim_type)."""
        out: dict[str, Any] = {
            "app": self.app, "credential": self.credential, "client": self.client, "method": method or self.method,
            "op": op, "resource_type": resource_type, "id": clip(resource_id), "status": status,
        }
        if scim_type:
            out["scim_type"] = scim_type
        out.update({k: v for k, v in extra.items() if v is not None})
        out["request_id"] = self.request_id
        if duration_ms is not None:
            out["duration_ms"] = duration_ms
        out["pid"] = os.getpid()  # which process of `serve --workers N`
        return out


AUDIT_NOTE = web.RequestKey("audit_note", AuditNote)
_WRITE_OPS = {"POST": "create", "PUT": "replace", "PATCH": "patch", "DELETE": "delete"}


@web.middleware
async def audit_middleware(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    """Record every write and every refused authentication with the status finally answered (outside error_middleware)."""
    status: int | None = None
    response: web.StreamResponse | None = None
    try:
        response = await handler(request)
        status = response.status
        return response
    finally:
        note = request.get(AUDIT_NOTE)
        if note is not None and note.op is not None:
            if note.op == "create" and note.resource_id is None and response is not None and "Location" in response.headers:
                note.resource_id = response.headers["Location"].rstrip("/").rsplit("/", 1)[-1]
            duration = round((time.monotonic() - note.started) * 1000, 1)
            request.app[AUDIT].write(
                note.record(
                    note.op, note.resource_type, note.resource_id, status, note.scim_type,
                    reason=note.reason, operations=note.operations, duration_ms=duration,
                )
            )


async def read_json(request: web.Request) -> Any:
    content_type = request.headers.get("Content-Type", "")
    if content_type and "json" not in content_type.lower():
        raise ScimError(415, f"send application/scim+json or application/json, not {content_type.split(';')[0]}")
    if request.content_length is not None and request.content_length > request.app[SETTINGS].limits.max_body_bytes:
        raise body_too_large(request)  # refused before a byte of it is read
    raw = await request.read()
    if not raw.strip():
        raise invalid_syntax("the request body is empty")
    try:
        body = load_json(raw)
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
        self.bulk_log: list[dict[str, Any]] = []  # the Bulk operations run so far, for the audit log

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
            # Not from the body: `attributes=id` projects meta away (was: a 500 after the create).
            headers["Location"] = f"{self.base}{rtype.endpoint}/{resource['id']}"
        return scim_response(body, status, headers)

    async def route(self, tail: str) -> web.StreamResponse:
        method = self.request.method
        for parameter in ("attributes", "excludedAttributes"):
            # Before anything runs: a write must not happen and then fail on its response's projection.
            check_attribute_list_size(self.request.query.get(parameter), parameter, self.limits.max_attribute_names)
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
        refusal = self.runtime.refusal()  # the app's connector is not open yet: discovery above answers, nothing else
        if refusal is not None:
            raise refusal
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

    def audit_target(self, tail: str) -> tuple[str | None, str | None, str | None]:
        """(op, resource type, SCIM id) to record for this request: every write attempt, whatever its fate; (None, ...) for a read."""
        method = self.request.method
        op = _WRITE_OPS.get(method)
        parts = [p for p in tail.split("/") if p]
        if op is None or (method == "POST" and parts and parts[-1].lower() == ".search"):
            return None, None, None
        if method == "POST" and len(parts) == 1 and parts[0].lower() == "bulk":
            return "bulk", None, None
        rtype = self.rtype_for_endpoint(parts[0]) if parts else None
        return op, rtype.name if rtype else None, parts[1] if len(parts) > 1 else None

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
        req = parse_list_request(
            params, rtype, default_count=self.limits.default_page_size, max_count=self.limits.max_page_size,
            max_attributes=self.limits.max_attribute_names,
        )
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
                req = parse_list_request(
                    body, rtype, default_count=self.limits.default_page_size, max_count=self.limits.max_page_size,
                    max_attributes=self.limits.max_attribute_names,
                )
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
        check_patch_limits(body, max_operations=self.limits.max_patch_operations, max_values=self.limits.max_patch_values)
        query = self.request.query
        _row, updated = await self.provisioner.patch(
            rtype.name, rid, lambda current: apply_patch(current, body, rtype), self._if_match(),
            member_changes=member_changes(body) if rtype.name == "Group" else None,
            with_members=_wants_membership(rtype, query.get("attributes"), query.get("excludedAttributes")),
        )
        return self.resource_response(rtype, updated)

    async def delete(self, rtype: ResourceType, rid: str) -> web.Response:
        await self.provisioner.delete(rtype.name, rid, self._if_match())
        return web.Response(status=204)

    async def bulk_operation(self, method: str, path: str, data: Any, version: str | None) -> scim_bulk.BulkResult:
        done: dict[str, Any] = {"method": method, "path": path, "status": None}
        self.bulk_log.append(done)  # what ran, in case the Bulk request fails as a whole after it
        try:
            outcome = await self._bulk_operation(method, path, data, version)
        except ScimError as exc:
            done.update(status=exc.status, scim_type=exc.scim_type)
            raise
        done.update(status=outcome.status, id=outcome.resource_id)
        return outcome

    async def bulk_create_many(self, path: str, datas: list[dict[str, Any]]) -> list[scim_bulk.BulkResult | ScimError]:
        parts = [p for p in path.split("/") if p]
        rtype = self.rtype_for_endpoint(parts[0]) if len(parts) == 1 else None
        out: list[scim_bulk.BulkResult | ScimError | None] = [None] * len(datas)
        if rtype is None:
            out = [ScimError(400, f"POST {path} is not a resource operation", "invalidPath") for _ in datas]
        else:
            valid: list[tuple[int, dict[str, Any]]] = []
            for k, data in enumerate(datas):
                try:
                    valid.append((k, normalize_resource(data, rtype)))
                except ScimError as exc:
                    out[k] = exc
            answers = await self.provisioner.create_many(rtype.name, [resource for _, resource in valid])
            for (k, _), answer in zip(valid, answers, strict=True):
                if isinstance(answer, ScimError):
                    out[k] = answer
                else:
                    out[k] = scim_bulk.BulkResult(201, f"{self.base}{rtype.endpoint}/{answer.id}", f'W/"{answer.version}"', answer.id)
        for outcome in out:
            assert outcome is not None
            done: dict[str, Any] = {"method": "POST", "path": path}
            if isinstance(outcome, ScimError):
                done.update(status=outcome.status, scim_type=outcome.scim_type)
            else:
                done.update(status=outcome.status, id=outcome.resource_id)
            self.bulk_log.append(done)  # what ran, in case the Bulk request fails as a whole after it
        return out  # type: ignore[return-value]

    async def _bulk_operation(self, method: str, path: str, data: Any, version: str | None) -> scim_bulk.BulkResult:
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
            check_patch_limits(data, max_operations=self.limits.max_patch_operations, max_values=self.limits.max_patch_values)
            _row, resource = await self.provisioner.patch(rtype.name, parts[1], lambda current: apply_patch(current, data, rtype), if_match)
        else:
            await self.provisioner.delete(rtype.name, parts[1], if_match)
            return scim_bulk.BulkResult(204)
        location = f"{self.base}{rtype.endpoint}/{resource['id']}"
        return scim_bulk.BulkResult(201 if method == "POST" else 200, location, etag_of(resource), resource["id"])

    async def bulk(self) -> web.Response:
        body = await read_json(self.request)
        marked, operations = _mark_bulk_operations(body)
        try:
            result = await scim_bulk.run_bulk(self, marked, max_operations=self.limits.bulk_max_operations)
        except BaseException:
            self._audit_bulk_log()  # the request fails as a whole: record what ran before it failed
            raise
        self._audit_bulk_results(operations, result)
        return scim_response(result)

    def _audit_bulk_results(self, operations: list[Any], result: dict[str, Any]) -> None:
        """One audit record per operation of a Bulk response (the marks put on by _mark_bulk_operations come off here)."""
        note, audit = self.request[AUDIT_NOTE], self.request.app[AUDIT]
        by_bulk_id = {str(op["bulkId"]): op for op in operations if isinstance(op, dict) and op.get("bulkId") is not None}
        unnamed = iter([op for op in operations if isinstance(op, dict) and op.get("bulkId") is None and _is_post(op)])
        matched: list[tuple[dict[str, Any], Any, dict[str, Any]]] = []  # (result, client's bulkId, operation)
        for outcome in result["Operations"]:
            bulk_id = outcome.get("bulkId")
            if isinstance(bulk_id, str) and bulk_id.startswith(_BULK_MARK):
                del outcome["bulkId"]
                matched.append((outcome, None, operations[int(bulk_id[len(_BULK_MARK) :])]))
            elif bulk_id is not None:
                matched.append((outcome, bulk_id, by_bulk_id.get(str(bulk_id), {})))
            else:  # a POST without a bulkId, refused for that
                matched.append((outcome, None, next(unnamed, {})))
        created = {str(b): o["location"].rsplit("/", 1)[-1] for o, b, _ in matched if b is not None and isinstance(o.get("location"), str)}
        for outcome, bulk_id, op in matched:
            parts = [p for p in op.get("path", "").split("/") if p] if isinstance(op.get("path"), str) else []
            rtype = self.rtype_for_endpoint(parts[0]) if parts else None
            if isinstance(outcome.get("location"), str):
                rid: str | None = outcome["location"].rsplit("/", 1)[-1]
            else:
                rid = parts[1] if len(parts) > 1 else None
                if rid is not None and rid.startswith("bulkId:"):
                    rid = created.get(rid[len("bulkId:") :], rid)
            method, response = outcome.get("method"), outcome.get("response")
            audit.write(
                note.record(
                    _WRITE_OPS.get(method.upper()) if isinstance(method, str) else None, rtype.name if rtype else None, rid,
                    int(outcome["status"]), response.get("scimType") if isinstance(response, dict) else None,
                    method=clip(method), bulk_id=clip(bulk_id),
                )
            )
        note.operations = len(matched)

    def _audit_bulk_log(self) -> None:
        note = self.request[AUDIT_NOTE]
        for done in self.bulk_log:
            parts = [p for p in done["path"].split("/") if p]
            rtype = self.rtype_for_endpoint(parts[0]) if parts else None
            rid = done.get("id") or (parts[1] if len(parts) > 1 else None)
            self.request.app[AUDIT].write(
                note.record(_WRITE_OPS.get(done["method"]), rtype.name if rtype else None, rid, done["status"], done.get("scim_type"),
                            method=done["method"])
            )
        note.operations = len(self.bulk_log)


# A private bulkId for the audit log: NUL never occurs in a client's (check_json refuses it), so it cannot clash.
_BULK_MARK = "\x00audit:"


def _is_post(op: dict[str, Any]) -> bool:
    return isinstance(op.get("method"), str) and op["method"].upper() == "POST"


def _mark_bulk_operations(body: Any) -> tuple[Any, list[Any]]:
    """The Bulk body with a private bulkId on each operation that has none (but POST, which must bring its own),
    so that each result in the response names its operation; and the operations as sent."""
    if not isinstance(body, dict) or not isinstance(body.get("Operations"), list):
        return body, []
    operations = body["Operations"]
    marked = [
        {**op, "bulkId": f"{_BULK_MARK}{i}"} if isinstance(op, dict) and op.get("bulkId") is None and not _is_post(op) else op
        for i, op in enumerate(operations)
    ]
    return {**body, "Operations": marked}, operations


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
    note = request[AUDIT_NOTE] = AuditNote(app_name, request.remote, request.method)
    try:
        note.credential = await authenticate(request, runtime)
    except Exception as exc:  # a refusal (401), keys not to be had (503), or the unexpected (500): all recorded
        note.op, note.reason = "auth", getattr(exc, "reason", None)
        raise
    endpoint = Endpoint(request, runtime, base_url(request, app_name))
    tail = request.match_info.get("tail") or ""
    note.op, note.resource_type, note.resource_id = endpoint.audit_target(tail)
    try:
        if "\x00" in request.path or "\x00" in request.query_string:
            # No id, filter or parameter holds U+0000; PostgreSQL cannot even compare text with it.
            raise invalid_value("the URL holds a NUL character (%00)")
        return await endpoint.route(tail)
    except ScimError as exc:
        note.scim_type = exc.scim_type
        raise


__all__ = ["BASE_PATH", "audit_middleware", "dispatch", "error_middleware", "setup_routes"]
