"""SCIM schemas and resource types (RFC 7643 §7): the vocabulary the protocol layer and the mapping share.

The core User, Group and enterprise extension schemas ship as JSON data (dumped
from the RFC definitions) and are loaded once. A resource type joins a core
schema with its extensions. All name lookups are case-insensitive, as RFC 7643
§2.1 requires, and return the canonical attribute.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from importlib import resources as importlib_resources
from typing import Any

CORE_USER = "urn:ietf:params:scim:schemas:core:2.0:User"
CORE_GROUP = "urn:ietf:params:scim:schemas:core:2.0:Group"
ENTERPRISE_USER = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
SCHEMA_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:Schema"
RESOURCE_TYPE_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:ResourceType"
SPC_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:ServiceProviderConfig"
LIST_RESPONSE = "urn:ietf:params:scim:api:messages:2.0:ListResponse"
PATCH_OP = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
SEARCH_REQUEST = "urn:ietf:params:scim:api:messages:2.0:SearchRequest"
BULK_REQUEST = "urn:ietf:params:scim:api:messages:2.0:BulkRequest"
BULK_RESPONSE = "urn:ietf:params:scim:api:messages:2.0:BulkResponse"
ERROR = "urn:ietf:params:scim:api:messages:2.0:Error"

# Attributes every resource carries (RFC 7643 §3.1); not part of any schema's list.
COMMON_ATTRIBUTES = ("id", "externalId", "meta", "schemas")


@dataclass(frozen=True, slots=True)
class Attribute:
    name: str
    type: str = "string"
    multi_valued: bool = False
    required: bool = False
    case_exact: bool = False
    mutability: str = "readWrite"
    returned: str = "default"
    uniqueness: str = "none"
    description: str = ""
    canonical_values: tuple[str, ...] = ()
    reference_types: tuple[str, ...] = ()
    sub_attributes: tuple[Attribute, ...] = ()
    _index: dict[str, Attribute] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        self._index.update({a.name.lower(): a for a in self.sub_attributes})

    def sub(self, name: str) -> Attribute | None:
        return self._index.get(name.lower())

    @property
    def write_only(self) -> bool:
        """A password: set by writes, never returned, read back, kept in a copy, filtered or sorted on."""
        return self.mutability == "writeOnly" or self.returned == "never"

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Attribute:
        return cls(
            name=data["name"],
            type=data.get("type", "string"),
            multi_valued=data.get("multiValued", False),
            required=data.get("required", False),
            case_exact=data.get("caseExact", False),
            mutability=data.get("mutability", "readWrite"),
            returned=data.get("returned", "default"),
            uniqueness=data.get("uniqueness", "none"),
            description=data.get("description", ""),
            canonical_values=tuple(data.get("canonicalValues", ())),
            reference_types=tuple(data.get("referenceTypes", ())),
            sub_attributes=tuple(cls.from_json(s) for s in data.get("subAttributes", ())),
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "type": self.type,
            "multiValued": self.multi_valued,
            "description": self.description,
            "required": self.required,
            "caseExact": self.case_exact,
            "mutability": self.mutability,
            "returned": self.returned,
            "uniqueness": self.uniqueness,
        }
        if self.canonical_values:
            out["canonicalValues"] = list(self.canonical_values)
        if self.reference_types:
            out["referenceTypes"] = list(self.reference_types)
        if self.sub_attributes:
            out["subAttributes"] = [s.to_json() for s in self.sub_attributes]
        return out


@dataclass(frozen=True, slots=True)
class Schema:
    id: str
    name: str
    description: str
    attributes: tuple[Attribute, ...]
    _index: dict[str, Attribute] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        self._index.update({a.name.lower(): a for a in self.attributes})

    def attr(self, name: str) -> Attribute | None:
        return self._index.get(name.lower())

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Schema:
        return cls(
            id=data["id"],
            name=data.get("name", ""),
            description=data.get("description", ""),
            attributes=tuple(Attribute.from_json(a) for a in data["attributes"]),
        )

    def to_json(self, location: str | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "schemas": [SCHEMA_SCHEMA],
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "attributes": [a.to_json() for a in self.attributes],
        }
        if location is not None:
            out["meta"] = {"resourceType": "Schema", "location": location}
        return out


# Pseudo-attributes for the common attributes, so filters, sorting and
# projection resolve them the same way as schema attributes.
ID_ATTRIBUTE = Attribute("id", case_exact=True, mutability="readOnly", returned="always", uniqueness="server")
EXTERNAL_ID_ATTRIBUTE = Attribute("externalId", case_exact=True)
META_ATTRIBUTE = Attribute(
    "meta",
    type="complex",
    mutability="readOnly",
    sub_attributes=(
        Attribute("resourceType", case_exact=True, mutability="readOnly"),
        Attribute("created", type="dateTime", mutability="readOnly"),
        Attribute("lastModified", type="dateTime", mutability="readOnly"),
        Attribute("location", type="reference", case_exact=True, mutability="readOnly"),
        Attribute("version", case_exact=True, mutability="readOnly"),
    ),
)
_COMMON = {a.name.lower(): a for a in (ID_ATTRIBUTE, EXTERNAL_ID_ATTRIBUTE, META_ATTRIBUTE)}


# The attribute each resource type is unique on, case-insensitively (RFC 7643 §4.1 userName; DESIGN: group
# displayName per app, as Entra matches groups on it). The store keeps it lower-cased as the resource's unique key.
UNIQUE_ATTRIBUTES = {"User": "userName", "Group": "displayName"}

# What a member or a group is shown as in `members[].display` / `groups[].display`: the first of these it has.
DISPLAY_ATTRIBUTES = ("displayName", "userName")


@dataclass(frozen=True, slots=True)
class Resolved:
    """An attribute path resolved against a resource type.

    `urn` is the extension URN the attribute lives under in the JSON body, or
    None for core and common attributes. `sub` is set for `name.givenName`.
    """

    urn: str | None
    attribute: Attribute
    sub: Attribute | None = None

    @property
    def target(self) -> Attribute:
        return self.sub or self.attribute

    @property
    def dotted(self) -> str:
        base = self.attribute.name if self.urn is None else f"{self.urn}:{self.attribute.name}"
        return f"{base}.{self.sub.name}" if self.sub else base

    @property
    def keys(self) -> tuple[str, ...]:
        """Where the value sits in a resource held as a dict: (extension URN,) attribute name (, sub-attribute name)."""
        names = (self.urn, self.attribute.name, self.sub.name if self.sub else None)
        return tuple(n for n in names if n is not None)


@dataclass(frozen=True, slots=True)
class ResourceType:
    """A SCIM resource type: endpoint, core schema, and its extensions."""

    name: str
    endpoint: str
    schema: Schema
    extensions: tuple[tuple[Schema, bool], ...] = ()
    description: str = ""
    # resolve()'s answers: every request resolves the same few paths again and again.
    _resolved: dict[tuple[str, str | None, str | None], Resolved | None] = field(default_factory=dict, compare=False, repr=False)

    @property
    def schema_ids(self) -> tuple[str, ...]:
        return (self.schema.id, *(s.id for s, _ in self.extensions))

    def extension(self, urn: str) -> Schema | None:
        for schema, _required in self.extensions:
            if schema.id.lower() == urn.lower():
                return schema
        return None

    def schema_for(self, urn: str) -> Schema | None:
        if urn.lower() == self.schema.id.lower():
            return self.schema
        return self.extension(urn)

    def resolve(self, attr: str, sub: str | None = None, uri: str | None = None) -> Resolved | None:
        """Resolve `[uri:]attr[.sub]`; None when the resource type has no such attribute."""
        key = (attr, sub, uri)
        try:
            return self._resolved[key]
        except KeyError:
            pass
        found = self._resolve(attr, sub, uri)
        if len(self._resolved) < 10_000:  # bounded: names a client invents are not kept for ever
            self._resolved[key] = found
        return found

    def _resolve(self, attr: str, sub: str | None, uri: str | None) -> Resolved | None:
        urn: str | None = None
        if uri is None:
            found = _COMMON.get(attr.lower()) or self.schema.attr(attr)
        else:
            schema = self.schema_for(uri)
            if schema is None:
                return None
            found = schema.attr(attr)
            if found is None and schema is self.schema:
                found = _COMMON.get(attr.lower())
            if schema is not self.schema:
                urn = schema.id
        if found is None:
            return None
        if sub is None:
            return Resolved(urn, found)
        sub_attr = found.sub(sub)
        if sub_attr is None:
            return None
        return Resolved(urn, found, sub_attr)

    def split_urn(self, text: str) -> tuple[str | None, str] | None:
        """Split a schema URN prefix off `text`: (canonical schema id, rest).

        Accepts `URN:attr` (RFC 7644 §3.10), `URN.attr` (Entra's `ENT.attr`) and
        the bare URN (rest ""). Text that is not a URN gives (None, text); a URN
        of a schema this resource type does not have gives None.
        """
        if text[:4].lower() != "urn:":
            return None, text
        lowered = text.lower()
        best: tuple[str, str] | None = None
        for urn in self.schema_ids:
            prefix = urn.lower()
            if lowered == prefix:
                found = (urn, "")
            elif lowered.startswith(prefix) and lowered[len(prefix)] in ":.":
                found = (urn, text[len(prefix) + 1 :])
            else:
                continue
            # An extension URN may extend another schema's URN; the longest one is meant.
            if best is None or len(found[0]) > len(best[0]):
                best = found
        return best

    def resolve_dotted(self, path: str) -> Resolved | None:
        """Resolve `attr`, `attr.sub`, `URN:attr[.sub]` or `URN.attr[.sub]`; None when unknown."""
        split = self.split_urn(path.strip())
        if split is None or not split[1]:
            return None
        urn, rest = split
        attr, _, sub = rest.partition(".")
        return self.resolve(attr, sub or None, urn)

    def walk(self) -> Iterator[Resolved]:
        """Every attribute and sub-attribute, core first then each extension."""
        for urn, schema in ((None, self.schema), *((s.id, s) for s, _ in self.extensions)):
            for attribute in schema.attributes:
                yield Resolved(urn, attribute)
                for sub in attribute.sub_attributes:
                    yield Resolved(urn, attribute, sub)

    def to_json(self, location: str | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "schemas": [RESOURCE_TYPE_SCHEMA],
            "id": self.name,
            "name": self.name,
            "endpoint": self.endpoint,
            "description": self.description or self.name,
            "schema": self.schema.id,
            "schemaExtensions": [{"schema": s.id, "required": r} for s, r in self.extensions],
        }
        if location is not None:
            out["meta"] = {"resourceType": "ResourceType", "location": location}
        return out


@cache
def builtin_schema(name: str) -> Schema:
    """One of the RFC schemas shipped as package data: user, group, enterprise_user."""
    text = importlib_resources.files(__package__).joinpath(f"data/{name}.json").read_text("utf-8")
    return Schema.from_json(json.loads(text))


def user_resource_type(extensions: tuple[tuple[Schema, bool], ...] | None = None) -> ResourceType:
    if extensions is None:
        extensions = ((builtin_schema("enterprise_user"), False),)
    return ResourceType("User", "/Users", builtin_schema("user"), extensions, "User Account")


def group_resource_type(extensions: tuple[tuple[Schema, bool], ...] = ()) -> ResourceType:
    return ResourceType("Group", "/Groups", builtin_schema("group"), extensions, "Group")
