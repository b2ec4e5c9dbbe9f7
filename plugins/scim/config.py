"""The `connector:` block of an app that itself speaks SCIM 2.0, imperfectly (type: scim)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gateway.secrets import SecretRef

from ..rest.config import (
    BasicAuthConfig,
    BearerAuthConfig,
    NoAuthConfig,
    OAuth2ClientCredentialsConfig,
    StrOrRef,
    check_base_url,
)

# Errors and reprs must never show what was given: a secret may have been put in the wrong place.
_STRICT = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

FilterOp = Literal["eq", "co", "sw", "ew", "pr"]
CORE_SCHEMAS = {
    "User": "urn:ietf:params:scim:schemas:core:2.0:User",
    "Group": "urn:ietf:params:scim:schemas:core:2.0:Group",
}

# The same auth blocks as the rest connector (one meaning of `bearer` and `oauth2_client_credentials` everywhere).
ScimAuthConfig = Annotated[
    NoAuthConfig | BasicAuthConfig | BearerAuthConfig | OAuth2ClientCredentialsConfig,
    Field(discriminator="type"),
]


class ScimMembersConfig(BaseModel):
    """A group kind's `members` attribute: [{value: native id}], changed by PATCH add / remove, or by PUT of the group."""

    model_config = _STRICT

    member_kind: str = Field("User", min_length=1, description="The kind (a key of `resources`) the members are")
    remove: Literal["filter", "value"] = Field(
        "filter",
        description='How a PATCH removes members: filter: one `remove` op per member with path members[value eq "id"] '
        "(RFC 7644); value: one `remove` op on path members with a value list (Entra's form, for targets that want it)",
    )
    prune_on_delete: bool = Field(
        True,
        description="When a member is deleted, remove it from the groups that still list it (for targets that keep "
        "dangling members, as many do); false for a target that does it itself",
    )


class ScimResourceConfig(BaseModel):
    """Where the target serves records of one kind."""

    model_config = _STRICT

    endpoint: str = Field(min_length=1, description="The path under base_url, e.g. /Users")
    schema_: str | None = Field(
        None,
        alias="schema",
        description="The core schema URN sent in `schemas` (default: SCIM's User or Group schema for those kinds)",
    )
    members: ScimMembersConfig | None = Field(None, description="Group kinds: membership through the `members` attribute")

    @field_validator("endpoint")
    @classmethod
    def _path(cls, value: str) -> str:
        if not value.startswith("/") or "?" in value or "{" in value:
            raise ValueError("a path under base_url, starting with / (e.g. /Users), without query or placeholders")
        return value.rstrip("/") or value


def _default_resources() -> dict[str, ScimResourceConfig]:
    return {
        "User": ScimResourceConfig(endpoint="/Users"),
        "Group": ScimResourceConfig(endpoint="/Groups", members=ScimMembersConfig()),
    }


class ScimConnectorConfig(BaseModel):
    """An app that speaks SCIM 2.0 itself: its base URL, credentials, and what of SCIM it actually supports."""

    model_config = _STRICT

    type: Literal["scim"]
    base_url: StrOrRef = Field(description="The target's SCIM base URL (…/scim/v2); by reference when it differs per environment")
    auth: ScimAuthConfig = Field(default_factory=lambda: NoAuthConfig(type="none"), description="How the gateway authenticates")
    headers: dict[str, StrOrRef] = Field(
        default_factory=dict, description="Headers sent on every call (values may be references)"
    )
    content_type: str = Field(
        "application/scim+json",
        min_length=1,
        description="Content-Type of request bodies (application/json for targets that want it)",
    )
    patch: bool = Field(
        True, description="The target supports PATCH; false: every update is GET, merge, PUT of the whole resource"
    )
    filter_ops: list[FilterOp] = Field(
        default_factory=lambda: list[FilterOp](["eq"]),
        description="The filter operators the target supports ([]: no filter at all, lookups list and compare locally)",
    )
    page_size: int = Field(100, ge=1, le=10_000, description="`count` asked for per page of a list")
    scan_pages: int = Field(
        50, ge=1, le=10_000, description="Pages read at most by a lookup the target cannot filter; more is an error, not a guess"
    )
    timeout: float = Field(10.0, gt=0, le=300, description="Seconds per call before the target counts as unavailable")
    max_connections: int = Field(10, ge=1, le=1000, description="Pooled connections to the target")
    rate_limit: float | None = Field(None, gt=0, description="Calls per second at most, shared by all requests to this app")
    retries: int = Field(
        2, ge=0, le=10, description="Extra attempts of idempotent calls (GET, PUT, DELETE) on failures worth retrying"
    )
    max_retry_wait: float = Field(
        10.0, ge=0, le=300, description="Longest wait before a retry; a 429 asking for longer answers 503 with its Retry-After"
    )
    resources: dict[str, ScimResourceConfig] = Field(
        default_factory=_default_resources,
        description="Per kind (the mapping's resource type name): its endpoint (default User at /Users, Group at /Groups with members)",
    )

    @field_validator("base_url")
    @classmethod
    def _inline_url(cls, value: str | SecretRef) -> str | SecretRef:
        return check_base_url(value) if isinstance(value, str) else value

    @field_validator("filter_ops")
    @classmethod
    def _distinct(cls, value: list[FilterOp]) -> list[FilterOp]:
        return list(dict.fromkeys(value))

    @model_validator(mode="after")
    def _consistent(self) -> ScimConnectorConfig:
        if not self.resources:
            raise ValueError("resources: give at least one kind")
        for kind, resource in self.resources.items():
            if resource.schema_ is None and kind not in CORE_SCHEMAS:
                raise ValueError(
                    f"resources.{kind}.schema: give the schema URN of kind {kind} (SCIM's are known for User, Group)"
                )
            if resource.members is not None and resource.members.member_kind not in self.resources:
                valid = ", ".join(sorted(self.resources))
                raise ValueError(
                    f"resources.{kind}.members.member_kind: unknown kind {resource.members.member_kind!r} (valid: {valid})"
                )
        return self

    def schema_of(self, kind: str) -> str:
        resource = self.resources[kind]
        return resource.schema_ or CORE_SCHEMAS[kind]


__all__ = ["ScimConnectorConfig", "ScimMembersConfig", "ScimResourceConfig"]
