"""One app's SCIM service provider, below HTTP: each endpoint's request validated, run through the app's
provisioner, and answered as SCIM JSON.

The HTTP layer parses the request (route, headers, JSON body), authenticates it, and turns a `Reply` into a
response; everything SCIM about it happens here. Failures from below propagate as they are and are answered
through scim.failures (one place); a Bulk request answers each operation's failure itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..provisioning.errors import ProvisioningError
from ..provisioning.provisioner import Provisioner
from ..provisioning.resource import Resource
from ..schema import ResourceType
from ..settings import LimitsConfig
from .bulk import BulkEntry, BulkResult, path_segments, run_bulk
from .discovery import list_response, schemas_of, service_provider_config
from .errors import ScimError, invalid_path, invalid_syntax, mutability, not_found
from .etag import etag, parse_etag
from .failures import scim_error
from .listing import ListRequest, check_search_body, parse_list_request
from .patch import apply_patch
from .patchop import check_patch_limits, member_changes
from .projection import Projection
from .render import Renderer
from .resource import check_string_lengths, normalize_resource


@dataclass(frozen=True, slots=True)
class Reply:
    """What to answer: a SCIM body (None: none), its status, and the ETag / Location headers it carries;
    `resource_id`: the resource a write answered with (for the audit log)."""

    body: Any = None
    status: int = 200
    etag: str | None = None
    location: str | None = None
    resource_id: str | None = None


def _listed_or_one(docs: dict[str, dict[str, Any]], key: str | None, what: str) -> Reply:
    """A discovery endpoint: all its documents as a ListResponse, or the one `key` names (in any case)."""
    if key is None:
        return Reply(list_response(list(docs.values())))
    doc = next((d for k, d in docs.items() if k.lower() == key.lower()), None)
    if doc is None:
        raise not_found(f"no {what} {key!r} (valid: {', '.join(docs)})")
    return Reply(doc)


def _names_members(body: Any) -> bool:
    """Whether a PUT body speaks about membership at all (Okta sends `members: []` to empty a group)."""
    return isinstance(body, dict) and any(isinstance(k, str) and k.lower() == "members" for k in body)


class ScimService:
    def __init__(self, provisioner: Provisioner, limits: LimitsConfig) -> None:
        self.provisioner = provisioner
        self.limits = limits
        self.rtypes: dict[str, ResourceType] = {name: cres.rtype for name, cres in provisioner.mapping.resources.items()}
        self._by_endpoint = {rtype.endpoint.lstrip("/").lower(): rtype for rtype in self.rtypes.values()}

    def find_resource_type(self, endpoint: str) -> ResourceType | None:
        """The resource type served at `/{endpoint}` (any case), if any."""
        return self._by_endpoint.get(endpoint.lower())

    def resource_type(self, endpoint: str) -> ResourceType:
        rtype = self.find_resource_type(endpoint)
        if rtype is None:
            raise not_found(f"no resource endpoint /{endpoint} (valid: {', '.join(r.endpoint for r in self.rtypes.values())})")
        return rtype

    # ------------------------------------------------------------------ discovery (RFC 7644 §4)

    def service_provider_config(self, base: str) -> Reply:
        limits = self.limits
        return Reply(
            service_provider_config(
                base,
                bulk_max_operations=limits.bulk_max_operations,
                max_payload=limits.max_body_bytes,
                max_results=limits.max_page_size,
            )
        )

    def resource_types(self, base: str, name: str | None = None) -> Reply:
        docs = {r.name: r.to_json(f"{base}/ResourceTypes/{r.name}") for r in self.rtypes.values()}
        return _listed_or_one(docs, name, "resource type")

    def schemas(self, base: str, urn: str | None = None) -> Reply:
        docs = {s.id: s.to_json(f"{base}/Schemas/{s.id}") for s in schemas_of(list(self.rtypes.values()))}
        return _listed_or_one(docs, urn, "schema")

    # ------------------------------------------------------------------ resources

    async def get(
        self,
        base: str,
        rtype: ResourceType,
        rid: str,
        *,
        attributes: str | None = None,
        excluded: str | None = None,
        if_none_match: str | None = None,
    ) -> Reply:
        projection = Projection.parse(rtype, attributes, excluded)
        resource = await self.provisioner.get(rtype.name, rid, members=projection.shows_membership)
        version = resource.row.version
        if if_none_match is not None and (if_none_match.strip() == "*" or parse_etag(if_none_match) == version):
            return Reply(status=304, etag=etag(version))
        return Reply(Renderer(base, self.rtypes).resource(rtype, resource, projection), etag=etag(version))

    def list_request(self, rtype: ResourceType, params: Mapping[str, Any]) -> ListRequest:
        limits = self.limits
        return parse_list_request(
            params,
            rtype,
            default_count=limits.default_page_size,
            max_count=limits.max_page_size,
            max_attributes=limits.max_attribute_names,
        )

    async def search(self, base: str, rtype: ResourceType, params: Mapping[str, Any]) -> Reply:
        """GET /Users?filter=... (query parameters) and POST /Users/.search (a SearchRequest body)."""
        req = self.list_request(rtype, params)
        projection = Projection.parse(rtype, req.attributes, req.excluded)
        total, resources = await self.provisioner.query(rtype.name, req.query, req.lookup, members=projection.shows_membership)
        render = Renderer(base, self.rtypes)
        return Reply(list_response([render.resource(rtype, r, projection) for r in resources], total, req.query.start_index))

    async def search_request(self, base: str, rtype: ResourceType, body: Any) -> Reply:
        """POST /Users/.search: the list request in a SearchRequest body."""
        return await self.search(base, rtype, check_search_body(body))

    async def search_all(self, base: str, body: Any) -> Reply:
        """POST /.search: every resource type, one page across them (RFC 7644 §3.4.3).

        A filter naming an attribute that only some resource types have applies to those; the others
        contribute nothing (their resources cannot match).
        """
        body = check_search_body(body)
        render = Renderer(base, self.rtypes)
        found: list[dict[str, Any]] = []
        total = 0
        first_error: ScimError | None = None
        page_of: ListRequest | None = None
        for rtype in self.rtypes.values():
            try:
                req = self.list_request(rtype, body)
            except ScimError as exc:
                if exc.scim_type not in ("invalidFilter", "invalidValue"):
                    raise
                first_error = first_error or exc
                continue
            page_of = page_of or req
            n, resources = await self.provisioner.query(rtype.name, req.unpaged(), req.lookup)
            total += n
            projection = Projection.parse(rtype, req.attributes, req.excluded)
            found.extend(render.resource(rtype, r, projection) for r in resources)
        if page_of is None:
            assert first_error is not None
            raise first_error
        start, count = page_of.query.start_index, page_of.query.count
        page = found[start - 1 : start - 1 + (count if count is not None else len(found))]
        return Reply(list_response(page, total, start))

    async def create(
        self, base: str, rtype: ResourceType, body: Any, *, attributes: str | None = None, excluded: str | None = None
    ) -> Reply:
        created = await self.write("POST", rtype, None, body)
        assert created is not None
        return self._written(base, rtype, created, Projection.parse(rtype, attributes, excluded), 201)

    async def replace(
        self,
        base: str,
        rtype: ResourceType,
        rid: str,
        body: Any,
        *,
        if_match: str | None = None,
        attributes: str | None = None,
        excluded: str | None = None,
    ) -> Reply:
        updated = await self.write("PUT", rtype, rid, body, if_match)
        assert updated is not None
        return self._written(base, rtype, updated, Projection.parse(rtype, attributes, excluded))

    async def patch(
        self,
        base: str,
        rtype: ResourceType,
        rid: str,
        body: Any,
        *,
        if_match: str | None = None,
        attributes: str | None = None,
        excluded: str | None = None,
    ) -> Reply:
        projection = Projection.parse(rtype, attributes, excluded)
        updated = await self.write("PATCH", rtype, rid, body, if_match, with_members=projection.shows_membership)
        assert updated is not None
        return self._written(base, rtype, updated, projection)

    async def delete(self, rtype: ResourceType, rid: str, *, if_match: str | None = None) -> Reply:
        await self.write("DELETE", rtype, rid, None, if_match)
        return Reply(status=204)

    async def write(
        self,
        method: str,
        rtype: ResourceType,
        rid: str | None,
        body: Any,
        if_match: str | None = None,
        *,
        with_members: bool = True,
    ) -> Resource | None:
        """One write as POST, PUT, PATCH or DELETE ask it (a request alone, or one operation of a Bulk request).

        `rid` is None for POST only. The written resource, its membership read unless `with_members` is False;
        None for DELETE.
        """
        provisioner, kind = self.provisioner, rtype.name
        if method in ("POST", "PUT"):
            check_string_lengths(body, self.limits.max_string_chars)
        if method == "POST":
            return await provisioner.create(kind, normalize_resource(body, rtype))
        assert rid is not None
        version = parse_etag(if_match)
        if method == "PUT":
            if isinstance(body, dict) and body.get("id") not in (None, rid):
                raise mutability(f"the body's id {body.get('id')!r} does not match the URL's {rid!r}")
            return await provisioner.replace(
                kind, rid, normalize_resource(body, rtype), version, with_members=_names_members(body)
            )
        if method == "PATCH":
            if not isinstance(body, dict):
                raise invalid_syntax("a PATCH body must be a PatchOp JSON object")
            limits = self.limits
            check_patch_limits(
                body,
                max_operations=limits.max_patch_operations,
                max_values=limits.max_patch_values,
                max_chars=limits.max_string_chars,
            )
            return await provisioner.patch(
                kind,
                rid,
                lambda current: apply_patch(current, body, rtype, rid),
                version,
                member_changes=member_changes(body) if kind == "Group" else None,
                with_members=with_members,
            )
        assert method == "DELETE", method
        await provisioner.delete(kind, rid, version)
        return None

    def _written(self, base: str, rtype: ResourceType, resource: Resource, projection: Projection, status: int = 200) -> Reply:
        render = Renderer(base, self.rtypes)
        # Location from the row, not the body: `attributes=id` projects meta away.
        location = render.location(rtype, resource.id) if status == 201 else None
        return Reply(render.resource(rtype, resource, projection), status, etag(resource.row.version), location, resource.id)

    # ------------------------------------------------------------------ Bulk (RFC 7644 §3.7)

    async def bulk(self, base: str, body: Any, entries: list[BulkEntry | None]) -> Reply:
        """Run a BulkRequest; `entries` (filled in place) say what each operation did, also when this raises."""
        response = await run_bulk(
            _BulkOperations(self, base), body, max_operations=self.limits.bulk_max_operations, entries=entries
        )
        return Reply(response)


class _BulkOperations:
    """Runs a Bulk request's operations: each as the same request alone would run, answered as ScimError on failure."""

    def __init__(self, service: ScimService, base: str) -> None:
        self.service = service
        self.base = base

    def target(self, path: str) -> tuple[str | None, str | None]:
        parts = path_segments(path)
        rtype = self.service.find_resource_type(parts[0]) if parts else None
        return (rtype.name if rtype else None), (parts[1] if len(parts) > 1 else None)

    def _resource_path(self, method: str, path: str) -> tuple[ResourceType, str | None]:
        parts = path_segments(path)
        rtype = self.service.find_resource_type(parts[0]) if parts else None
        if rtype is None or len(parts) > 2 or (method == "POST") != (len(parts) == 1):
            raise invalid_path(f"{method} {path} is not a resource operation")
        return rtype, parts[1] if len(parts) == 2 else None

    async def operation(self, method: str, path: str, data: Any, version: str | None) -> BulkResult:
        try:
            return await self._operation(method, path, data, version)
        except ProvisioningError as exc:
            error = scim_error(exc)
            assert error is not None
            raise error from None

    async def _operation(self, method: str, path: str, data: Any, version: str | None) -> BulkResult:
        rtype, rid = self._resource_path(method, path)
        if method == "PATCH" and not isinstance(data, dict):
            raise invalid_syntax("a PATCH operation's data must be a PatchOp object")
        written = await self.service.write(method, rtype, rid, data, version if isinstance(version, str) else None)
        if written is None:
            return BulkResult(204)
        location = Renderer(self.base, self.service.rtypes).location(rtype, written.id)
        return BulkResult(201 if method == "POST" else 200, location, etag(written.row.version), written.id)

    async def create_many(self, path: str, datas: list[dict[str, Any]]) -> list[BulkResult | ScimError]:
        parts = path_segments(path)
        rtype = self.service.find_resource_type(parts[0]) if len(parts) == 1 else None
        if rtype is None:
            return [invalid_path(f"POST {path} is not a resource operation") for _ in datas]
        out: list[BulkResult | ScimError | None] = [None] * len(datas)
        valid: list[tuple[int, dict[str, Any]]] = []
        for k, data in enumerate(datas):
            try:
                check_string_lengths(data, self.service.limits.max_string_chars)
                valid.append((k, normalize_resource(data, rtype)))
            except ScimError as exc:
                out[k] = exc
        render = Renderer(self.base, self.service.rtypes)
        answers = await self.service.provisioner.create_many(rtype.name, [resource for _, resource in valid])
        for (k, _), answer in zip(valid, answers, strict=True):
            if isinstance(answer, ProvisioningError):
                error = scim_error(answer)
                assert error is not None
                out[k] = error
            else:
                out[k] = BulkResult(201, render.location(rtype, answer.id), etag(answer.row.version), answer.id)
        return [o for o in out if o is not None]


__all__ = ["Reply", "ScimService"]
