"""The SCIM resource model (RFC 7643): attributes, schemas, resource types.

Shared by the protocol layer (validation, filters, projection) and the mapping
(which compiles attribute paths against it); it imports nothing of the gateway.
"""

from .core import (
    BULK_REQUEST,
    BULK_RESPONSE,
    COMMON_ATTRIBUTES,
    CORE_GROUP,
    CORE_USER,
    DISPLAY_ATTRIBUTES,
    ENTERPRISE_USER,
    ERROR,
    EXTERNAL_ID_ATTRIBUTE,
    ID_ATTRIBUTE,
    LIST_RESPONSE,
    META_ATTRIBUTE,
    PATCH_OP,
    RESOURCE_TYPE_SCHEMA,
    SCHEMA_SCHEMA,
    SEARCH_REQUEST,
    SPC_SCHEMA,
    UNIQUE_ATTRIBUTES,
    Attribute,
    Resolved,
    ResourceType,
    Schema,
    builtin_schema,
    group_resource_type,
    user_resource_type,
)
from .values import json_copy

__all__ = [
    "BULK_REQUEST",
    "BULK_RESPONSE",
    "COMMON_ATTRIBUTES",
    "CORE_GROUP",
    "CORE_USER",
    "DISPLAY_ATTRIBUTES",
    "ENTERPRISE_USER",
    "ERROR",
    "EXTERNAL_ID_ATTRIBUTE",
    "ID_ATTRIBUTE",
    "LIST_RESPONSE",
    "META_ATTRIBUTE",
    "PATCH_OP",
    "RESOURCE_TYPE_SCHEMA",
    "SCHEMA_SCHEMA",
    "SEARCH_REQUEST",
    "SPC_SCHEMA",
    "UNIQUE_ATTRIBUTES",
    "Attribute",
    "Resolved",
    "ResourceType",
    "Schema",
    "builtin_schema",
    "group_resource_type",
    "json_copy",
    "user_resource_type",
]
