"""Resources as a SCIM client gets them: `schemas`, `id`, the attributes, `members` / `groups` with their
`$ref`, and `meta` (resourceType, created, lastModified, version, location), then the projection."""

from __future__ import annotations

from typing import Any

from ..provisioning.resource import Resource
from ..schema import ResourceType
from ..store import Member
from .etag import etag
from .projection import Projection


class Renderer:
    """Renders one app's resources under one base URL (`https://host/apps/demo/scim/v2`)."""

    def __init__(self, base: str, rtypes: dict[str, ResourceType]) -> None:
        self.base = base
        self.rtypes = rtypes

    def location(self, rtype: ResourceType, rid: str) -> str:
        return f"{self.base}{rtype.endpoint}/{rid}"

    def resource(self, rtype: ResourceType, resource: Resource, projection: Projection | None = None) -> dict[str, Any]:
        row, attributes = resource.row, resource.attributes
        out: dict[str, Any] = {
            "schemas": [rtype.schema.id, *(s.id for s, _ in rtype.extensions if s.id in attributes)],
            "id": row.id,
            **attributes,
        }
        if resource.related:
            if rtype.name == "Group":
                out["members"] = [self._member(m, m.type) for m in resource.related]
            elif rtype.name == "User":
                out["groups"] = [self._member(g, "direct") for g in resource.related]
        out["meta"] = {
            "resourceType": rtype.name,
            "created": row.created,
            "lastModified": row.last_modified,
            "version": etag(row.version),
            "location": self.location(rtype, row.id),
        }
        return out if projection is None else projection.apply(out, rtype)

    def _member(self, member: Member, type_: str) -> dict[str, Any]:
        """One entry of `members` (type: the member's resource type) or `groups` (type: direct)."""
        kind = "Group" if type_ in ("Group", "direct", "indirect") else type_
        rtype = self.rtypes.get(kind)
        endpoint = rtype.endpoint if rtype else f"/{kind}s"
        out: dict[str, Any] = {"value": member.id, "type": type_}
        if member.display:
            out["display"] = member.display
        out["$ref"] = f"{self.base}{endpoint}/{member.id}"
        return out


__all__ = ["Renderer"]
