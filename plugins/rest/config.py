"""The `connector:` block of an app reached through its own REST API (type: rest)."""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator, model_validator
from yarl import URL

from gateway.secrets import SecretRef

# Errors and reprs must never show what was given: a secret may have been put in the wrong place.
_STRICT = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True, populate_by_name=True)

Method = Literal["GET", "POST", "PUT", "PATCH", "DELETE"]
PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
# An exact body/query string "{id}" / "{member}" becomes the id; ":int" sends it as a JSON number.
VALUE_PLACEHOLDER = re.compile(r"\{(id|member)(:int)?\}")


def _source(value: Any) -> str:
    return "ref" if isinstance(value, dict | SecretRef) else "inline"


StrOrRef = Annotated[
    Annotated[str, Tag("inline")] | Annotated[SecretRef, Tag("ref")],
    Discriminator(_source),
]


def check_base_url(value: str) -> str:
    """An absolute http(s) URL without credentials in it; ValueError naming what is wrong (never the value)."""
    try:
        url = URL(value)
    except (ValueError, TypeError):
        raise ValueError("not a URL") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError("give an absolute http:// or https:// URL")
    if url.user or url.password:
        raise ValueError("the URL carries credentials: use auth, or give the whole URL by reference ({env: NAME})")
    if url.query_string or url.fragment:
        raise ValueError("the base URL takes no query or fragment: put query parameters on the operations")
    return value


def _check_placeholders(path: str, allowed: frozenset[str], where: str) -> None:
    for name in PLACEHOLDER.findall(path):
        if name not in allowed:
            valid = ", ".join("{" + a + "}" for a in sorted(allowed)) or "none here"
            raise ValueError(f"{where}: unknown placeholder {{{name}}} (valid: {valid})")


def _check_body(template: Any, allowed: frozenset[str], where: str) -> None:
    """A body string that looks like a placeholder must be one this operation has: "{mmber}" is a typo, not data."""
    if isinstance(template, str):
        if re.fullmatch(r"\{[^{}]*\}", template):
            match = VALUE_PLACEHOLDER.fullmatch(template)
            if match is None or match.group(1) not in allowed:
                valid = ", ".join(f'"{{{a}}}", "{{{a}:int}}"' for a in sorted(allowed)) or "none here"
                raise ValueError(f"{where}: unknown placeholder {template} (valid: {valid})")
    elif isinstance(template, dict):
        for key, value in template.items():
            _check_body(value, allowed, f"{where}.{key}")
    elif isinstance(template, list):
        for i, value in enumerate(template):
            _check_body(value, allowed, f"{where}.{i}")


# ---------------------------------------------------------------- auth


class NoAuthConfig(BaseModel):
    model_config = _STRICT

    type: Literal["none"]


class BasicAuthConfig(BaseModel):
    model_config = _STRICT

    type: Literal["basic"]
    username: StrOrRef = Field(
        description="The user name, inline or by reference (a per-tenant name, or an API key used as the name)"
    )
    password: SecretRef = Field(description="The password, by reference")


class BearerAuthConfig(BaseModel):
    model_config = _STRICT

    type: Literal["bearer"]
    token: SecretRef = Field(description="The static token, by reference: the secret alone, without its scheme")
    scheme: str = Field(
        "Bearer",
        pattern=r"^[A-Za-z0-9!#$%&'*+.^_`|~-]*$",
        description='The word before the token: Bearer, Token (Django REST), SSWS (Okta), ... ("": the token alone)',
    )
    header: str = Field("Authorization", min_length=1, description="The header carrying it")


class ApiKeyAuthConfig(BaseModel):
    model_config = _STRICT

    type: Literal["api_key"]
    in_: Literal["header", "query"] = Field("header", alias="in", description="Where the key goes: a header or a query parameter")
    name: str = Field("X-API-Key", min_length=1, description="The header or query parameter's name")
    key: SecretRef = Field(description="The API key, by reference")
    prefix: str = Field("", description='Text sent before the key, e.g. "Key " (default none)')


class OAuth2ClientCredentialsConfig(BaseModel):
    model_config = _STRICT

    type: Literal["oauth2_client_credentials"]
    token_url: StrOrRef = Field(description="The token endpoint (absolute http(s) URL), inline or by reference")
    client_id: str = Field(min_length=1, description="The client id")
    client_secret: SecretRef = Field(description="The client secret, by reference")
    scope: str | None = Field(None, description="Space-separated scopes asked for")
    audience: str | None = Field(None, description="The audience asked for (Auth0 and others)")
    client_auth: Literal["basic", "body"] = Field(
        "basic", description="basic: client id and secret in an HTTP Basic header (RFC 6749 2.3.1); body: as form fields"
    )

    @field_validator("token_url")
    @classmethod
    def _url(cls, value: str | SecretRef) -> str | SecretRef:
        if isinstance(value, SecretRef):
            return value
        try:
            url = URL(value)
        except (ValueError, TypeError):
            raise ValueError("not a URL") from None
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError("give an absolute http:// or https:// URL")
        return value


AuthConfig = Annotated[
    NoAuthConfig | BasicAuthConfig | BearerAuthConfig | ApiKeyAuthConfig | OAuth2ClientCredentialsConfig,
    Field(discriminator="type"),
]


# ---------------------------------------------------------------- operations


class _Operation(BaseModel):
    """One HTTP call: method, path under base_url, extra query parameters and headers, an optional JSON body template."""

    model_config = _STRICT

    method: Method
    path: str = Field(min_length=1, description='Path under base_url; "{id}" and "{member}" are replaced (URL-quoted)')
    query: dict[str, str] = Field(default_factory=dict, description="Extra query parameters (values may hold {id} / {member})")
    headers: dict[str, str] = Field(default_factory=dict, description="Extra headers of this call")
    body: Any = Field(None, description='JSON body template: a string exactly "{id}" or "{member}" becomes that id')

    #: The placeholders this operation's path and query may use.
    PLACEHOLDERS: ClassVar[frozenset[str]] = frozenset({"id"})

    @model_validator(mode="after")
    def _placeholders(self) -> _Operation:
        allowed = type(self).PLACEHOLDERS
        _check_placeholders(self.path, allowed, "path")
        for key, value in self.query.items():
            _check_placeholders(value, allowed, f"query.{key}")
        _check_body(self.body, allowed, "body")
        return self


class CreateOperation(_Operation):
    method: Method = "POST"
    idempotency_header: str | None = Field(
        None,
        min_length=1,
        description="A header the app takes as an idempotency key (e.g. Idempotency-Key): each create carries one, the"
        " same when it is sent again (the SCIM id), so the app makes one record however often it gets it",
    )
    PLACEHOLDERS: ClassVar[frozenset[str]] = frozenset()


class GetOperation(_Operation):
    method: Method = "GET"
    PLACEHOLDERS: ClassVar[frozenset[str]] = frozenset({"id"})


class UpdateOperation(_Operation):
    method: Literal["PATCH", "PUT", "POST"] = Field(
        "PATCH", description="PATCH or POST send the changed fields; PUT sends the whole record (read, merged, written)"
    )
    send: Literal["changed", "whole"] | None = Field(
        None,
        description="What the body holds: changed (the changed fields) or whole (the record read with get, the changes "
        "merged in); default: whole for PUT, changed otherwise. A PUT that the app takes as a partial update: changed",
    )
    PLACEHOLDERS: ClassVar[frozenset[str]] = frozenset({"id"})

    @property
    def sends_whole(self) -> bool:
        return self.send == "whole" if self.send is not None else self.method == "PUT"


class DeleteOperation(_Operation):
    method: Method = "DELETE"
    PLACEHOLDERS: ClassVar[frozenset[str]] = frozenset({"id"})


class ActionOperation(_Operation):
    method: Method = "POST"
    PLACEHOLDERS: ClassVar[frozenset[str]] = frozenset({"id"})


class AddMemberOperation(_Operation):
    method: Method = "POST"
    PLACEHOLDERS: ClassVar[frozenset[str]] = frozenset({"id", "member"})


class RemoveMemberOperation(_Operation):
    method: Method = "DELETE"
    PLACEHOLDERS: ClassVar[frozenset[str]] = frozenset({"id", "member"})


# ---------------------------------------------------------------- pagination


class NoPagination(BaseModel):
    model_config = _STRICT

    type: Literal["none"]


class OffsetPagination(BaseModel):
    model_config = _STRICT

    type: Literal["offset"]
    offset_param: str = Field("offset", min_length=1, description="Query parameter of the first item's offset (from 0)")
    limit_param: str = Field("limit", min_length=1, description="Query parameter of the page size")
    size: int = Field(100, ge=1, le=10_000, description="Items asked for per page")
    total: str | None = Field(None, description="Dotted path of the app's total item count in each answer: no call past it")
    has_more: str | None = Field(None, description="Dotted path of the app's more-pages flag: false ends the list")
    short_page_ends: bool = Field(
        False,
        description="A page with fewer items than asked for is the last (only for apps that never answer fewer before the end)",
    )


class PagePagination(BaseModel):
    model_config = _STRICT

    type: Literal["page"]
    page_param: str = Field("page", min_length=1, description="Query parameter of the page number")
    size_param: str | None = Field("per_page", description="Query parameter of the page size (null: send none)")
    size: int = Field(100, ge=1, le=10_000, description="Items asked for per page")
    start: int = Field(1, ge=0, description="The first page's number (1, or 0 for zero-based apps)")
    total_pages: str | None = Field(None, description="Dotted path of the app's page count in each answer: no call past it")
    total: str | None = Field(None, description="Dotted path of the app's total item count in each answer: no call past it")
    has_more: str | None = Field(None, description="Dotted path of the app's more-pages flag: false ends the list")
    short_page_ends: bool = Field(
        False,
        description="A page with fewer items than asked for is the last (only for apps that never answer fewer before the end)",
    )


class CursorPagination(BaseModel):
    model_config = _STRICT

    type: Literal["cursor"]
    cursor_param: str = Field("cursor", min_length=1, description="Query parameter carrying the cursor")
    next_cursor: str = Field(min_length=1, description="Dotted path of the next cursor in the response body")
    size_param: str | None = Field(None, description="Query parameter of the page size (null: send none)")
    size: int = Field(100, ge=1, le=10_000, description="Items asked for per page")
    has_more: str | None = Field(None, description="Dotted path of the app's more-pages flag: false ends the list")


class NextLinkPagination(BaseModel):
    model_config = _STRICT

    type: Literal["next_link"]
    next: str = Field(min_length=1, description="Dotted path of the next page's URL in the response body")
    size_param: str | None = Field(None, description="Query parameter of the page size, sent on the first call")
    size: int = Field(100, ge=1, le=10_000, description="Items asked for per page")


class LinkHeaderPagination(BaseModel):
    model_config = _STRICT

    type: Literal["link_header"]
    size_param: str | None = Field(None, description="Query parameter of the page size, sent on the first call")
    size: int = Field(100, ge=1, le=10_000, description="Items asked for per page")


PaginationConfig = Annotated[
    NoPagination | OffsetPagination | PagePagination | CursorPagination | NextLinkPagination | LinkHeaderPagination,
    Field(discriminator="type"),
]


class ListCallConfig(BaseModel):
    """A GET answering many records, possibly in pages."""

    model_config = _STRICT

    path: str = Field(min_length=1, description="Path under base_url")
    query: dict[str, str] = Field(default_factory=dict, description="Extra query parameters")
    headers: dict[str, str] = Field(default_factory=dict, description="Extra headers of this call")
    items: str | None = Field(None, description="Dotted path of the array of records in the body (null: the body is the array)")
    pagination: PaginationConfig = Field(default_factory=lambda: NoPagination(type="none"), description="How pages follow")

    @field_validator("path")
    @classmethod
    def _no_placeholders(cls, value: str) -> str:
        _check_placeholders(value, frozenset(), "path")
        return value


class SearchConfig(ListCallConfig):
    params: dict[str, str] = Field(description="App field -> the query parameter that finds records by it (equality)")

    @field_validator("params")
    @classmethod
    def _some(cls, value: dict[str, str]) -> dict[str, str]:
        if not value:
            raise ValueError("name at least one searchable field")
        return value


class MembersListConfig(ListCallConfig):
    member_id: str | None = Field(
        "id",
        min_length=1,
        description='Dotted path of the member\'s native id in each item; null: each item is the id itself ({"uids": [7, 9]})',
    )

    @field_validator("path")
    @classmethod
    def _no_placeholders(cls, value: str) -> str:
        _check_placeholders(value, frozenset({"id"}), "path")
        return value


class RestMembersConfig(BaseModel):
    """A group's members as the app's own sub-resource calls."""

    model_config = _STRICT

    member_kind: str = Field(min_length=1, description="The kind (a key of `resources`) the members are")
    add: AddMemberOperation = Field(description="Adds one member")
    remove: RemoveMemberOperation = Field(description="Removes one member")
    list: MembersListConfig = Field(description="Lists the group's members")


class RestResourceConfig(BaseModel):
    """The calls that reach the records of one kind."""

    model_config = _STRICT

    id: str = Field("id", min_length=1, description="Dotted path of the native id inside a record")
    envelope: str | None = Field(None, min_length=1, description='Request bodies go wrapped as {"<envelope>": record}')
    record: str | None = Field(None, min_length=1, description="Dotted path of the record inside single-record responses")
    create: CreateOperation = Field(description="Creates a record; the answer carries its id")
    get: GetOperation | None = Field(None, description="Reads one record (without it, records cannot be read back)")
    update: UpdateOperation = Field(description="Writes changes to a record")
    delete: DeleteOperation = Field(description="Deletes a record")
    search: SearchConfig | None = Field(None, description="Finds records by a field's value")
    list: ListCallConfig | None = Field(None, description="Lists every record")
    members: RestMembersConfig | None = Field(None, description="Group kinds: the member calls")
    actions: dict[str, ActionOperation] = Field(default_factory=dict, description="Named calls, e.g. disable / enable")

    @model_validator(mode="after")
    def _put_needs_get(self) -> RestResourceConfig:
        if self.update.sends_whole and self.get is None:
            raise ValueError("an update that sends the whole record (PUT, or send: whole) needs get to read it first")
        return self


class RestConnectorConfig(BaseModel):
    """An app reached through its REST API: per kind, the calls that create, read, update, delete, search and list."""

    model_config = _STRICT

    type: Literal["rest"]
    base_url: StrOrRef = Field(description="The API's base URL; by reference ({env: NAME}) when it differs per environment")
    timeout: float = Field(10.0, gt=0, le=300, description="Seconds per call before the app counts as unavailable")
    max_connections: int = Field(10, ge=1, le=1000, description="Pooled connections to the app")
    rate_limit: float | None = Field(None, gt=0, description="Calls per second at most, shared by all requests to this app")
    retries: int = Field(
        2, ge=0, le=10, description="Extra attempts of idempotent calls (GET, PUT, DELETE) on failures worth retrying"
    )
    max_retry_wait: float = Field(
        10.0, ge=0, le=300, description="Longest wait before a retry; a 429 asking for longer answers 503 with its Retry-After"
    )
    headers: dict[str, StrOrRef] = Field(
        default_factory=dict, description="Headers sent on every call (values may be references)"
    )
    auth: AuthConfig = Field(default_factory=lambda: NoAuthConfig(type="none"), description="How the gateway authenticates")
    resources: dict[str, RestResourceConfig] = Field(description="Per kind (the mapping's resource type name): its calls")

    @field_validator("base_url")
    @classmethod
    def _inline_url(cls, value: str | SecretRef) -> str | SecretRef:
        return check_base_url(value) if isinstance(value, str) else value

    @field_validator("resources")
    @classmethod
    def _resources(cls, value: dict[str, RestResourceConfig]) -> dict[str, RestResourceConfig]:
        if not value:
            raise ValueError("give the calls of at least one kind")
        for kind, resource in value.items():
            if resource.members is not None and resource.members.member_kind not in value:
                valid = ", ".join(sorted(value))
                raise ValueError(f"{kind}.members.member_kind: unknown kind {resource.members.member_kind!r} (valid: {valid})")
        return value
