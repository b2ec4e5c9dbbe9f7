"""The SCIM connector: the app itself speaks SCIM 2.0, as many SaaS apps do, with gaps.

Records are the target's resources, field names its attribute paths (records.py); the native id is the
target's `id`. What the target lacks is declared, not discovered per request: `patch: false` writes by GET,
merge, PUT; `filter_ops` says which filters it answers, and a lookup it cannot filter lists and compares
locally, at most `scan_pages` pages. Lists page by startIndex/count and stop on totalResults (or, without one,
on a short page): no call for an empty page. A group's `members` are [{value: native id}], changed by PATCH
add / remove ops or by PUT of the group with the new list.
"""

from __future__ import annotations

import difflib
from collections.abc import AsyncIterator, Mapping
from typing import Any, ClassVar
from urllib.parse import quote

from pydantic import BaseModel
from yarl import URL

from gateway.connectors.base import AppContext, Capabilities, Connector, NativeId, Record
from gateway.connectors.errors import AppBadResponse, AppError, AppInvalid, AppNotFound
from gateway.secrets import SecretRef

from .client import MASK, Answer, ScimHttp
from .config import ScimConnectorConfig, ScimResourceConfig
from .records import (
    filter_expression,
    matches,
    merged,
    needs_current,
    parse_field,
    patch_ops,
    to_record,
    to_resource,
)

PATCH_URN = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
LIST_URN = "urn:ietf:params:scim:api:messages:2.0:ListResponse"
MAX_PAGES = 100_000  # a guard against a target whose pagination never ends
ALL_OPS = frozenset({"eq", "co", "sw", "ew", "pr"})
# Attributes every resource has besides its schema's (RFC 7643 §3.1): fields a mapping may use.
COMMON = frozenset({"externalId"})


class _Fields(set[str]):
    """The fields of a kind, as `check --connect` asks: an element field is there when its attribute's sub-attribute is."""

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        if super().__contains__(name):
            return True
        try:
            field = parse_field(name)
        except AppInvalid:
            return False
        if field.element is None:
            return False
        return super().__contains__(f"{field.attribute}.{field.element[1]}")


class ScimConnector(Connector):
    Config: ClassVar[type[ScimConnectorConfig]] = ScimConnectorConfig
    # The most any configuration can do; what one can do is capabilities_for(config).
    capabilities: ClassVar[Capabilities] = Capabilities(membership=True, search=True, search_ops=ALL_OPS, list_all=True)
    config: ScimConnectorConfig

    def __init__(self, config: ScimConnectorConfig, context: AppContext) -> None:
        super().__init__(config, context)
        self._http: ScimHttp | None = None
        self._fields: dict[str, set[str]] = {}  # per kind, from the target's /Schemas (check_schema)

    @classmethod
    def capabilities_for(cls, config: BaseModel) -> Capabilities:
        assert isinstance(config, ScimConnectorConfig)
        return Capabilities(
            membership=any(r.members is not None for r in config.resources.values()),
            search=True,
            # eq always (listed and compared here when the target cannot filter); the others where the target filters.
            search_ops=frozenset({"eq", *config.filter_ops}),
            list_all=True,
            read=True,
        )

    # ------------------------------------------------------------ lifetime

    async def open(self) -> None:
        if self._http is not None:
            raise RuntimeError(f"the scim connector of app {self.context.name!r} is already open")
        http = ScimHttp(self.config, self.context.name)  # resolves every secret: ScimSetupError before any socket
        await http.open()
        self._http = http

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
        self._http = None

    @property
    def http(self) -> ScimHttp:
        if self._http is None:
            raise RuntimeError(f"the scim connector of app {self.context.name!r} is not open")
        return self._http

    def resource(self, kind: str) -> ScimResourceConfig:
        try:
            return self.config.resources[kind]
        except KeyError:
            valid = ", ".join(sorted(self.config.resources))
            raise LookupError(f"the scim connector has no endpoint for kind {kind!r} (valid: {valid})") from None

    # ------------------------------------------------------------ calls

    def _path(self, kind: str, native_id: NativeId | None = None) -> str:
        endpoint = self.resource(kind).endpoint
        return endpoint if native_id is None else f"{endpoint}/{quote(native_id, safe='')}"

    async def _call(self, method: str, path: str, body: Any = None, query: Mapping[str, str] | None = None) -> Answer:
        http = self.http
        return await http.call(method, http.url(path, query), body=body)

    def _skip(self, kind: str) -> frozenset[str]:
        return frozenset({"members"}) if self.resource(kind).members is not None else frozenset()

    def _record(self, kind: str, raw: Any, what: str) -> tuple[NativeId, Record]:
        if not isinstance(raw, Mapping):
            raise AppBadResponse(f"{what}: the target answered a {type(raw).__name__}, not a {kind} resource")
        native_id = raw.get("id")
        if not isinstance(native_id, str) or not native_id:
            raise AppBadResponse(f"{what}: the target's {kind} resource carries no id")
        return native_id, to_record(raw, self._skip(kind))

    async def _raw(self, kind: str, native_id: NativeId) -> dict[str, Any]:
        """The target's whole resource (AppNotFound when there is none)."""
        answer = await self._call("GET", self._path(kind, native_id))
        if not isinstance(answer.body, dict):
            raise AppBadResponse(f"GET {self._path(kind)}/...: the target answered no {kind} resource")
        return answer.body

    # ------------------------------------------------------------ records

    async def create(self, kind: str, record: Record) -> NativeId:
        return await self.create_with_members(kind, record, [])

    async def create_with_members(self, kind: str, record: Record, members: list[tuple[str, NativeId]]) -> NativeId:
        """One POST: the resource with its first members."""
        r = self.resource(kind)
        body = to_resource(record, [self.config.schema_of(kind)])
        if members:
            if r.members is None:
                raise AppInvalid(f"{kind} records have no members here")
            body["members"] = [{"value": m} for m in self._member_ids(r, members, strict=True)]
        answer = await self._call("POST", self._path(kind), body)
        native_id = answer.body.get("id") if isinstance(answer.body, Mapping) else None
        if native_id is None and answer.body is None and "Location" in answer.headers:
            native_id = URL(answer.headers["Location"]).name or None  # 201 with an empty body: the Location names it
        if not isinstance(native_id, str) or not native_id:
            raise AppBadResponse(f"POST {self._path(kind)}: the target's answer carries no id")
        return native_id

    async def get(self, kind: str, native_id: NativeId) -> Record | None:
        try:
            answer = await self._call("GET", self._path(kind, native_id))
        except AppNotFound:
            return None
        return self._record(kind, answer.body, f"GET {self._path(kind)}/...")[1]

    async def update(self, kind: str, native_id: NativeId, changes: Record) -> None:
        if not changes:
            await self._raw(kind, native_id)  # nothing to write: only say whether it exists
            return
        await self.write(kind, native_id, changes, [], [])

    async def delete(self, kind: str, native_id: NativeId) -> None:
        try:
            await self._call("DELETE", self._path(kind, native_id))
        except AppNotFound:
            return  # already gone
        for group_kind, g in self.config.resources.items():
            if g.members is not None and g.members.member_kind == kind and g.members.prune_on_delete:
                async for group_id in self._groups_listing(group_kind, native_id):
                    await self.remove_members(group_kind, group_id, [(kind, native_id)])

    async def _groups_listing(self, group_kind: str, member_id: NativeId) -> AsyncIterator[NativeId]:
        """The groups whose members list this id: by a filter where the target has one, else by listing them."""
        query = {"filter": f"members[value eq {_quoted(member_id)}]"} if "eq" in self.config.filter_ops else {}
        async for raw in self._pages(group_kind, query, self.config.scan_pages if not query else MAX_PAGES):
            members = raw.get("members")
            if isinstance(members, list) and any(isinstance(m, Mapping) and m.get("value") == member_id for m in members):
                yield str(raw["id"])

    async def write(
        self,
        kind: str,
        native_id: NativeId,
        changes: Record,
        add_members: list[tuple[str, NativeId]],
        remove_members: list[tuple[str, NativeId]],
    ) -> None:
        """The fields and the membership in one call: one PATCH, or one GET and one PUT."""
        r = self.resource(kind)
        adds = self._member_ids(r, add_members, strict=True) if add_members else []
        removes = self._member_ids(r, remove_members, strict=False) if remove_members else []
        if not (changes or adds or removes):
            return
        if (adds or removes) and r.members is None:
            raise AppInvalid(f"{kind} records have no members here")
        if self.config.patch:
            current = await self._raw(kind, native_id) if needs_current(changes) else None
            ops = patch_ops(changes, current) + self._member_ops(r, removes, adds)
            try:
                await self._patch(kind, native_id, ops)
            except AppInvalid as exc:
                if not removes or "noTarget" not in exc.detail:
                    raise
                # The target refuses to remove a member it does not list: remove only the ones it lists.
                listed = {m for _k, m in await self.list_members(kind, native_id)}
                ops = patch_ops(changes, current) + self._member_ops(r, [m for m in removes if m in listed], adds)
                if ops:
                    await self._patch(kind, native_id, ops)
            return
        current = await self._raw(kind, native_id)
        body = merged(current, changes)
        if adds or removes:
            held = body.get("members")
            held = held if isinstance(held, list) else []
            kept = [m for m in held if not (isinstance(m, Mapping) and m.get("value") in removes)]
            present = {m.get("value") for m in kept if isinstance(m, Mapping)}
            body["members"] = kept + [{"value": m} for m in adds if m not in present]
        await self._call("PUT", self._path(kind, native_id), body)

    async def _patch(self, kind: str, native_id: NativeId, ops: list[dict[str, Any]]) -> None:
        await self._call("PATCH", self._path(kind, native_id), {"schemas": [PATCH_URN], "Operations": ops})

    @staticmethod
    def _member_ops(r: ScimResourceConfig, removes: list[NativeId], adds: list[NativeId]) -> list[dict[str, Any]]:
        ops: list[dict[str, Any]] = []
        style = r.members.remove if r.members is not None else "filter"
        if removes:
            if style == "value":
                ops.append({"op": "remove", "path": "members", "value": [{"value": m} for m in removes]})
            else:
                ops += [{"op": "remove", "path": f"members[value eq {_quoted(m)}]"} for m in removes]
        if adds:
            ops.append({"op": "add", "path": "members", "value": [{"value": m} for m in adds]})
        return ops

    # ------------------------------------------------------------ search and lists

    async def find(self, kind: str, field: str, value: Any, op: str = "eq") -> list[tuple[NativeId, Record]]:
        if op not in ALL_OPS:
            raise LookupError(f"the scim connector has no operator {op!r} (valid: {', '.join(sorted(ALL_OPS))})")
        if op in self.config.filter_ops:
            query = {"filter": filter_expression(field, op, value)}
            pages = self._pages(kind, query, MAX_PAGES)
        elif op == "eq":
            pages = self._pages(kind, {}, self.config.scan_pages)  # the target cannot filter: compare here
        else:
            raise AppError(f"{kind}: the target answers no {op!r} filter (filter_ops: {self.config.filter_ops})")
        out = []
        async for raw in pages:
            native_id, record = self._record(kind, raw, f"GET {self._path(kind)}")
            # The target's filter may be looser (or ignored): keep exact matches only.
            if matches(record, field, op, value):
                out.append((native_id, record))
        return out

    async def list_all(self, kind: str) -> AsyncIterator[tuple[NativeId, Record]]:
        async for raw in self._pages(kind, {}, MAX_PAGES):
            yield self._record(kind, raw, f"GET {self._path(kind)}")

    async def _pages(self, kind: str, query: Mapping[str, str], max_pages: int) -> AsyncIterator[dict[str, Any]]:
        """Every resource of a list, page after page by startIndex / count, until totalResults (or a short page)."""
        size = self.config.page_size
        start = 1
        seen = 0
        previous: list[Any] | None = None
        path = self._path(kind)
        for _ in range(max_pages):
            answer = await self._call("GET", path, query={**query, "startIndex": str(start), "count": str(size)})
            body = answer.body
            if not isinstance(body, Mapping):
                raise AppBadResponse(f"GET {path} answered no ListResponse")
            items = body.get("Resources", [])
            if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
                raise AppBadResponse(f"GET {path} answered a ListResponse whose Resources is not a list of resources")
            total = body.get("totalResults")
            total = total if isinstance(total, int) and not isinstance(total, bool) and total >= 0 else None
            if not items:
                return
            ids = [item.get("id") for item in items]
            if ids == previous:
                raise AppBadResponse(f"GET {path} answered the same page twice: the target ignores startIndex")
            previous = ids
            for item in items:
                yield item
            seen += len(items)
            if (total is not None and seen >= total) or (total is None and len(items) < size):
                return  # the last page, by the target's own count: no call for an empty one
            start += len(items)  # what it gave, not what was asked: a target may cap count
        if max_pages == self.config.scan_pages:
            raise AppError(
                f"GET {path}: more than {max_pages} pages of {size} to compare here, as the target cannot filter "
                "(raise scan_pages, or declare the target's filter_ops)"
            )
        raise AppBadResponse(f"GET {path}: more than {max_pages} pages")

    # ------------------------------------------------------------ membership

    async def add_members(self, kind: str, group_id: NativeId, members: list[tuple[str, NativeId]]) -> None:
        await self.write(kind, group_id, {}, members, [])

    async def remove_members(self, kind: str, group_id: NativeId, members: list[tuple[str, NativeId]]) -> None:
        await self.write(kind, group_id, {}, [], members)

    async def list_members(self, kind: str, group_id: NativeId) -> list[tuple[str, NativeId]]:
        r = self.resource(kind)
        if r.members is None:
            return []
        members = (await self._raw(kind, group_id)).get("members") or []
        if not isinstance(members, list):
            raise AppBadResponse(f"{kind} {group_id}: the target's members is not a list")
        member_kind = r.members.member_kind
        out: list[tuple[str, NativeId]] = []
        for member in members:
            value = member.get("value") if isinstance(member, Mapping) else None
            if not isinstance(value, str) or not value:
                raise AppBadResponse(f"{kind} {group_id}: a member in the target's list carries no value")
            kind_of = member.get("type")
            if isinstance(kind_of, str) and kind_of.casefold() != member_kind.casefold():
                continue  # a nested group, or another kind: not one of this group's members here
            if (member_kind, value) not in out:
                out.append((member_kind, value))
        return out

    @staticmethod
    def _member_ids(r: ScimResourceConfig, members: list[tuple[str, NativeId]], *, strict: bool) -> list[NativeId]:
        member_kind = r.members.member_kind if r.members is not None else None
        ids: list[NativeId] = []
        for kind, native_id in members:
            if kind != member_kind:
                if strict:
                    raise AppInvalid(f"the group holds members of kind {member_kind}, not {kind}")
                continue
            ids.append(native_id)
        return list(dict.fromkeys(ids))

    # ------------------------------------------------------------ check --connect

    async def check_schema(self) -> list[tuple[tuple[str | int, ...], str]]:
        """Each kind's endpoint and schema among the target's /ResourceTypes; its attributes from /Schemas, for fields()."""
        problems: list[tuple[tuple[str | int, ...], str]] = []
        types = await self._discovery("/ResourceTypes", problems)
        schemas = await self._discovery("/Schemas", problems)
        by_endpoint = {str(t.get("endpoint", "")).rstrip("/").lower(): t for t in types}
        by_urn = {str(s.get("id", "")).lower(): s for s in schemas}
        for kind, r in self.config.resources.items():
            urns = [self.config.schema_of(kind)]
            if types:
                found = by_endpoint.get(r.endpoint.lower())
                if found is None:
                    near = difflib.get_close_matches(r.endpoint.lower(), list(by_endpoint), n=1)
                    hint = f" (did you mean {by_endpoint[near[0]].get('endpoint')}?)" if near else ""
                    problems.append((("resources", kind, "endpoint"), f"the target has no resource type at {r.endpoint}{hint}"))
                    continue
                served = str(found.get("schema", ""))
                if served.lower() != urns[0].lower():
                    where: tuple[str | int, ...] = ("resources", kind, "schema")
                    problems.append((where, f"the target's {r.endpoint} serves schema {served!r}, not {urns[0]!r}"))
                urns = [served] + [str(e.get("schema")) for e in found.get("schemaExtensions") or [] if isinstance(e, Mapping)]
            if schemas:
                self._fields[kind] = self._schema_fields(urns, by_urn, core=urns[0])
        return problems

    async def _discovery(self, path: str, problems: list[tuple[tuple[str | int, ...], str]]) -> list[Mapping[str, Any]]:
        try:
            answer = await self._call("GET", path)
        except AppNotFound:
            return []  # many targets serve no discovery endpoints: nothing to check against
        except AppError as exc:
            problems.append((("base_url",), f"GET {path}: {exc.detail}"))
            return []
        body = answer.body
        items = (
            body.get("Resources", [])
            if isinstance(body, Mapping) and ("Resources" in body or LIST_URN in str(body.get("schemas")))
            else body
        )
        if not isinstance(items, list):
            problems.append((("base_url",), f"GET {path} answered neither a ListResponse nor a list"))
            return []
        return [item for item in items if isinstance(item, Mapping)]

    @staticmethod
    def _schema_fields(urns: list[str], by_urn: Mapping[str, Mapping[str, Any]], core: str) -> set[str]:
        names: set[str] = set(COMMON)
        for urn in urns:
            schema = by_urn.get(urn.lower())
            if schema is None:
                continue
            prefix = "" if urn == core else f"{schema.get('id', urn)}:"
            for attribute in schema.get("attributes") or []:
                if not isinstance(attribute, Mapping) or not isinstance(attribute.get("name"), str):
                    continue
                name = prefix + attribute["name"]
                names.add(name)
                for sub in attribute.get("subAttributes") or []:
                    if isinstance(sub, Mapping) and isinstance(sub.get("name"), str):
                        names.add(f"{name}.{sub['name']}")
        return _Fields(names)

    def fields(self, kind: str) -> set[str] | None:
        """The target's attribute paths for `kind` (from /Schemas; None when it serves none)."""
        return self._fields.get(kind)

    # ------------------------------------------------------------ dry run

    def plan(
        self,
        op: str,
        kind: str,
        native_id: NativeId | None = None,
        record: Record | None = None,
        members: list[tuple[str, NativeId]] | None = None,
    ) -> list[dict[str, Any]]:
        """The HTTP calls `op` would make: method, URL, headers (credentials masked) and body."""
        r = self.resource(kind)
        target = native_id if native_id is not None else "{id}"
        item = f"{r.endpoint}/{target}"  # shown as is: a dry run's id is a description
        if op == "create":
            body = to_resource(record or {}, [self.config.schema_of(kind)])
            if members:
                body["members"] = [{"value": m} for m in self._member_ids(r, members, strict=True)]
            return [self._plan_call("POST", r.endpoint, body)]
        if op == "get":
            return [self._plan_call("GET", item)]
        if op == "delete":
            calls = [self._plan_call("DELETE", item)]
            for group_kind, g in self.config.resources.items():
                if g.members is not None and g.members.member_kind == kind and g.members.prune_on_delete:
                    calls.append(
                        {
                            "note": f"then each {group_kind} still listing it loses it (prune_on_delete)",
                            **self._plan_call("GET", g.endpoint),
                        }
                    )
            return calls
        if op in ("update", "add_members", "remove_members"):
            changes = record or {} if op == "update" else {}
            adds = self._member_ids(r, members or [], strict=True) if op == "add_members" else []
            removes = self._member_ids(r, members or [], strict=False) if op == "remove_members" else []
            if self.config.patch:
                calls = []
                if needs_current(changes):
                    calls.append(
                        {"note": "read first: an element field replaces its attribute's list", **self._plan_call("GET", item)}
                    )
                ops = patch_ops(changes, None) + self._member_ops(r, removes, adds)
                calls.append(self._plan_call("PATCH", item, {"schemas": [PATCH_URN], "Operations": ops}))
                return calls
            put: dict[str, Any] = {"note": "the resource as read, with these fields", "fields": changes}
            if adds or removes:
                put["members"] = {"added": [{"value": m} for m in adds], "removed": [{"value": m} for m in removes]}
            return [
                {"note": "read first: PUT sends the whole resource (patch: false)", **self._plan_call("GET", item)},
                self._plan_call("PUT", item, put),
            ]
        valid = "create, get, update, delete, add_members, remove_members"
        raise LookupError(f"{kind}: the scim connector has no operation {op!r} (valid: {valid})")

    def _plan_call(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        config = self.config
        base = self._http.base if self._http is not None else _plan_base(config.base_url)
        headers: dict[str, str] = {"Accept": "application/scim+json, application/json"}
        headers |= {name: (MASK if isinstance(value, SecretRef) else value) for name, value in config.headers.items()}
        auth = config.auth
        if auth.type == "basic":
            headers["Authorization"] = f"Basic {MASK}"
        elif auth.type == "bearer":
            headers[auth.header] = f"{auth.scheme} {MASK}" if auth.scheme else MASK
        elif auth.type == "oauth2_client_credentials":
            headers["Authorization"] = f"Bearer {MASK}"
        call: dict[str, Any] = {"method": method, "url": base.rstrip("/") + path, "headers": headers}
        if body is not None:
            headers["Content-Type"] = config.content_type
            call["body"] = body
        return call


def _quoted(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _plan_base(value: str | SecretRef) -> str:
    return value if isinstance(value, str) else f"{{{value.describe()}}}"


__all__ = ["ScimConnector"]
