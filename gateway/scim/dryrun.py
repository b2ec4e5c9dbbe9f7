"""`scim-gateway translate`: the app calls a SCIM request would make, calling nothing.

The request goes through the same protocol layer (validation, PATCH) and the
same compiled mapping as when serving; references and the current resource
come from the request file instead of the correlation store, and the
connector renders its calls with `plan()` without opening anything.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from ..connectors.base import AppContext, Connector
from ..mapping.compile import CompiledMapping, CompiledResource, TemplateError
from ..mapping.translate import UnresolvedReference, create_body, to_record, update_body
from ..provisioning.membership import create_membership
from .bulk import path_segments
from .errors import ScimError, invalid_value
from .patch import apply_patch
from .resource import normalize_resource

MASK = "***"
METHODS = ("POST", "PUT", "PATCH", "DELETE")


class _PlaceholderRefs:
    """References shown as the native id they would become: `<native id of User 2819c223>`."""

    async def to_native(self, kind: str, scim_ids: list[str]) -> dict[str, str]:
        return {i: f"<native id of {kind} {i}>" for i in scim_ids}

    async def to_scim(self, kind: str, native_ids: list[str]) -> dict[str, str]:
        return {n: n for n in native_ids}

    async def waiting(self, kind: str, scim_ids: list[str]) -> set[str]:
        return set()


def _kind_of(mapping: CompiledMapping, path: str) -> tuple[CompiledResource, str | None]:
    parts = path_segments(path)
    endpoints = {cres.rtype.endpoint.lstrip("/").lower(): cres for cres in mapping.resources.values()}
    if not parts or parts[0].lower() not in endpoints or len(parts) > 2:
        valid = ", ".join(cres.rtype.endpoint for cres in mapping.resources.values())
        raise invalid_value(f"path {path!r}: expected /Users, /Groups, /Users/ID or /Groups/ID (valid here: {valid})")
    return endpoints[parts[0].lower()], parts[1] if len(parts) == 2 else None


def _mask_secrets(cres: CompiledResource, record: dict[str, Any]) -> dict[str, Any]:
    out = dict(record)
    for field in cres.write_only:
        if out.get(field) is not None:
            out[field] = MASK
    return out


async def plan_request(mapping: CompiledMapping, request: dict[str, Any], data_dir: Path) -> dict[str, Any]:
    """What `request` would do in the app: {operation, record, calls}. Raises ScimError as serving would."""
    if "schemas" in request and "method" not in request:  # a bare resource: a create
        kinds = [
            k
            for k, c in mapping.resources.items()
            if any(s.lower() == c.rtype.schema.id.lower() for s in request.get("schemas", []))
        ]
        if not kinds:
            raise invalid_value("the resource's schemas name no resource type of this app")
        request = {"method": "POST", "path": f"/{kinds[0]}s", "body": request}
    method = str(request.get("method", "")).upper()
    if method not in METHODS:
        raise invalid_value(f"method {request.get('method')!r}: expected one of {', '.join(METHODS)}")
    cres, rid = _kind_of(mapping, str(request.get("path", "")))
    if (method == "POST") != (rid is None):
        raise invalid_value(f"{method} {request.get('path')}: POST goes to the collection, the others to one resource")
    connector: Connector = mapping.connector_cls(mapping.connector_config, AppContext(mapping.app, data_dir))
    membership = create_membership(connector, cres.name, cres.members)
    native_id = None if rid is None else f"<native id of {cres.name} {rid}>"
    if method == "DELETE":
        calls = connector.plan("delete" if cres.delete_mode == "delete" else "update", cres.name, native_id)
        return {"app": mapping.app, "operation": f"delete {cres.name}", "record": None, "calls": calls}
    body = request.get("body")
    given = request.get("current")  # the resource as it is now: an update then shows only what it changes
    current = normalize_resource(given, cres.rtype) if isinstance(given, dict) else None
    if method == "PATCH":
        before = current or normalize_resource({"schemas": [cres.rtype.schema.id], cres.unique_attr: "<current>"}, cres.rtype)
        resource = apply_patch(copy.deepcopy(before), body, cres.rtype, rid)
    else:
        resource = normalize_resource(body, cres.rtype)
    try:
        record = await to_record(cres, resource, _PlaceholderRefs())
        if method == "POST":
            record = create_body(cres, record)
        else:
            old = await to_record(cres, current, _PlaceholderRefs()) if current is not None else None
            record = update_body(cres, old, record)
    except UnresolvedReference as exc:
        raise invalid_value(str(exc)) from None
    except TemplateError as exc:
        raise invalid_value(f"a transform of this app's mapping failed on the value: {exc}") from None
    members = [
        ("User", f"<native id of member {m['value']}>")
        for m in resource.get("members") or []
        if isinstance(m, dict) and m.get("value")
    ]
    record = _mask_secrets(cres, record)
    calls = (
        membership.plan(native_id, record, members, [])
        if cres.name == "Group" and cres.members
        else connector.plan("create" if native_id is None else "update", cres.name, native_id, record)
    )
    if cres.deactivate.via == "action" and resource.get("active") is False:
        calls += connector.plan(cres.deactivate.disable or "", cres.name, native_id or "<new id>")
    verb = {"POST": "create", "PUT": "replace", "PATCH": "patch"}[method]
    return {"app": mapping.app, "operation": f"{verb} {cres.name}", "record": record, "calls": calls}


__all__ = ["ScimError", "plan_request"]
