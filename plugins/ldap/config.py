"""The `connector:` block of an app kept in a directory (type: ldap): OpenLDAP or Active Directory."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gateway.secrets import SecretRef

# Errors and reprs must never show what was given: a secret may have been put in the wrong place.
_STRICT = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)


class LdapPlacementConfig(BaseModel):
    """Where a new entry goes, by one of its fields (department -> OU); a change of that field moves it."""

    model_config = _STRICT

    field: str = Field(min_length=1, description="The entry's attribute that decides its parent (e.g. departmentNumber)")
    parents: dict[str, str] = Field(description="Attribute value -> parent DN; values compare case-insensitively")
    default: str | None = Field(None, description="The parent DN for any other value (default: the resource's parent)")


class LdapMembersConfig(BaseModel):
    """How a group entry lists its members."""

    model_config = _STRICT

    attribute: str = Field(
        "member", min_length=1, description="member (groupOfNames, AD groups), uniqueMember, memberUid (posixGroup)"
    )
    values: Literal["dn", "name"] = Field(
        "dn", description="dn: the members' DNs; name: the value of each member's `name_attribute` (posixGroup's memberUid)"
    )
    name_attribute: str = Field("uid", min_length=1, description="With values: name, the member attribute that is listed (uid)")
    member_kind: str = Field("User", description="The resource type members are (its entries are looked up by DN or name)")
    placeholder: str | None = Field(
        None,
        description="A DN that stands for no member: groupOfNames and groupOfUniqueNames must have one. Never shown as a member",
    )


class LdapResourceConfig(BaseModel):
    """Entries of one resource type: where they are, what they are, how they are named."""

    model_config = _STRICT

    base: str = Field(
        min_length=1, description="The subtree holding these entries: searched (scope sub) for lists, lookups and ids"
    )
    object_classes: list[str] = Field(
        min_length=1, description="The object classes of a new entry; entries having them all are this kind"
    )
    rdn: str = Field(
        min_length=1, description="The naming attribute (uid, cn): a new entry is `rdn=value,parent`; a change renames it"
    )
    parent: str | None = Field(None, description="Where new entries go (default: base)")
    placement: LdapPlacementConfig | None = Field(None, description="Parent by an attribute, instead of one parent for all")
    filter: str | None = Field(
        None, description="An extra LDAP filter every entry of this kind matches, e.g. (!(isCriticalSystemObject=TRUE))"
    )
    multi_valued: list[str] = Field(
        default_factory=list, description="Attributes read and written as lists (the others: one value)"
    )
    binary: list[str] = Field(default_factory=list, description="Attributes holding bytes (jpegPhoto): base64 text in records")
    references: dict[str, str] = Field(
        default_factory=dict,
        description="Attribute -> resource type, for attributes holding another managed entry's DN (manager: User): "
        "records carry that entry's native id, as `ref:` rules expect",
    )
    members: LdapMembersConfig | None = Field(None, description="For groups: the attribute listing the members")

    @field_validator("filter")
    @classmethod
    def _parenthesized(cls, value: str | None) -> str | None:
        if value is not None and not (value.startswith("(") and value.endswith(")")):
            raise ValueError("an LDAP filter in parentheses, e.g. (department=*)")
        return value


class ActiveDirectoryConfig(BaseModel):
    """Active Directory's conventions, declared here rather than written in the mapping."""

    model_config = _STRICT

    enabled_field: str | None = Field(
        "enabled",
        description="A field (true/false) that reads and sets the ACCOUNTDISABLE bit of userAccountControl; map `active` to it. "
        "None: no such field",
    )
    password_field: str | None = Field(
        "unicodePwd",
        description="The field a password is written to (map `password` to it): sent as AD wants it (quoted UTF-16LE), "
        "over an encrypted connection only, never read back, logged or shown",
    )
    new_password: Literal["random", "none"] = Field(
        "random",
        description="An account created enabled without a password (Entra sends none): random: given a random password "
        "no one knows, as AD requires (the user's first password is a reset); none: sent without one",
    )


class LdapConnectorConfig(BaseModel):
    model_config = _STRICT

    type: Literal["ldap"]
    url: str | SecretRef = Field(description="ldap://host:389 or ldaps://host:636, inline or by reference ({env: NAME})")
    start_tls: bool = Field(False, description="With ldap://: upgrade the connection with StartTLS before binding")
    ca_file: Path | None = Field(
        None, description="CA certificate(s) (PEM) to verify the server's certificate (default: the system's)"
    )
    verify_hostname: bool = Field(True, description="Whether the certificate must name the host in the URL")
    bind_dn: str = Field(min_length=1, description="The DN the gateway binds as (AD: also user@domain)")
    bind_password: SecretRef = Field(description="Its password, by reference: {env: NAME} or {file: PATH}")
    directory: Literal["openldap", "active_directory"] = Field(
        "openldap", description="openldap: ids are entryUUID; active_directory: ids are objectGUID, AD's conventions apply"
    )
    active_directory: ActiveDirectoryConfig = Field(default_factory=ActiveDirectoryConfig)
    pool_size: int = Field(4, ge=1, le=64, description="Connections (each used by one request at a time)")
    timeout: float = Field(10.0, gt=0, le=300, description="Seconds to connect, and to wait for each answer")
    page_size: int = Field(500, ge=1, le=10_000, description="Entries per page of a paged search (RFC 2696): lists and import")
    resources: dict[str, LdapResourceConfig] = Field(min_length=1, description="Per resource type (User, Group): its entries")

    @field_validator("url")
    @classmethod
    def _ldap_url(cls, value: str | SecretRef) -> str | SecretRef:
        if isinstance(value, str):
            check_ldap_url(value)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> LdapConnectorConfig:
        if self.start_tls and isinstance(self.url, str) and self.url.startswith("ldaps://"):
            raise ValueError("start_tls is for ldap:// URLs; ldaps:// is encrypted from the start")
        for kind, resource in self.resources.items():
            if resource.members is not None and resource.members.member_kind not in self.resources:
                raise ValueError(f"resources.{kind}.members.member_kind: no resource {resource.members.member_kind!r} here")
            for attribute, target in resource.references.items():
                if target not in self.resources:
                    raise ValueError(f"resources.{kind}.references.{attribute}: no resource {target!r} here")
        return self

    def resolved_url(self) -> str:
        """The URL, its reference resolved (ValueError naming what is wrong)."""
        url = self.url if isinstance(self.url, str) else self.url.resolve().get_secret_value()
        return check_ldap_url(url)

    def encrypted(self, url: str) -> bool:
        return self.start_tls or url.startswith("ldaps://")


def check_ldap_url(value: str) -> str:
    if not value.startswith(("ldap://", "ldaps://")):
        raise ValueError("give an ldap:// or ldaps:// URL")
    return value


__all__ = ["ActiveDirectoryConfig", "LdapConnectorConfig", "LdapMembersConfig", "LdapPlacementConfig", "LdapResourceConfig"]
