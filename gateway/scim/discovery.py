"""Discovery documents (RFC 7644 §4): ServiceProviderConfig, ResourceTypes, Schemas."""

from __future__ import annotations

from typing import Any

from ..schema import LIST_RESPONSE, SPC_SCHEMA, ResourceType, Schema


def service_provider_config(base_url: str, *, bulk_max_operations: int, max_payload: int, max_results: int) -> dict[str, Any]:
    return {
        "schemas": [SPC_SCHEMA],
        "documentationUri": "https://github.com/scim-gateway/scim-gateway",
        "patch": {"supported": True},
        "bulk": {"supported": True, "maxOperations": bulk_max_operations, "maxPayloadSize": max_payload},
        "filter": {"supported": True, "maxResults": max_results},
        "changePassword": {"supported": False},
        "sort": {"supported": True},
        "etag": {"supported": True},
        "authenticationSchemes": [
            {
                "type": "oauthbearertoken",
                "name": "OAuth Bearer Token",
                "description": "A per-app bearer token in the Authorization header",
                "specUri": "https://www.rfc-editor.org/info/rfc6750",
                "primary": True,
            }
        ],
        "meta": {"resourceType": "ServiceProviderConfig", "location": f"{base_url}/ServiceProviderConfig"},
    }


def schemas_of(rtypes: list[ResourceType]) -> list[Schema]:
    seen: dict[str, Schema] = {}
    for rtype in rtypes:
        seen.setdefault(rtype.schema.id, rtype.schema)
        for schema, _required in rtype.extensions:
            seen.setdefault(schema.id, schema)
    return list(seen.values())


def list_response(resources: list[dict[str, Any]], total: int | None = None, start_index: int = 1) -> dict[str, Any]:
    return {
        "schemas": [LIST_RESPONSE],
        "totalResults": len(resources) if total is None else total,
        "startIndex": start_index,
        "itemsPerPage": len(resources),
        "Resources": resources,
    }
