"""The schema of a mapping file, as pydantic models (exported as JSON Schema by `scim-gateway schema`)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator, model_validator

from ..secrets import SecretRef


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BearerTokenConfig(_Strict):
    """One accepted inbound bearer token: a reference to it, or its SHA-256 hash."""

    env: str | None = None
    file: str | None = None
    sha256: str | None = Field(None, description="Hex SHA-256 of the token (`scim-gateway hash-token` prints it)")
    name: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
        description="The credential's name in the audit log; default token-<first 8 hex digits of its SHA-256>",
    )

    @model_validator(mode="after")
    def _one_source(self) -> BearerTokenConfig:
        given = [x for x in (self.env, self.file, self.sha256) if x is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of env, file or sha256")
        if self.sha256 is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", self.sha256):
            raise ValueError("sha256 must be 64 hex digits")
        return self

    def digest(self) -> bytes | None:
        """The token's SHA-256 digest; None when its reference resolves to nothing."""
        if self.sha256 is not None:
            return bytes.fromhex(self.sha256)
        try:
            secret = SecretRef(env=self.env, file=Path(self.file) if self.file else None).resolve()
        except ValueError:
            return None
        return hashlib.sha256(secret.get_secret_value().encode()).digest()


# Public-key signatures only: an HMAC algorithm would let anyone holding the (public) JWKS forge tokens
# (alg confusion), and "none" is no signature at all.
JwtAlgorithm = Literal["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"]
_LOOPBACK_HOSTS = ("127.0.0.1", "::1", "[::1]", "localhost")


class JwtConfig(_Strict):
    """Signed OAuth2 access tokens (JWT) the IdP may send instead of a static token (Entra ID, Okta)."""

    issuer: str = Field(min_length=1, description="The exact `iss` the tokens carry, e.g. https://sts.windows.net/{tenant}/")
    audience: str | list[str] = Field(
        description="The `aud` the tokens must carry: one value, or a list of which any one will do"
    )
    jwks_url: str | None = Field(
        None, description="https URL of the IdP's signing keys (JWKS): fetched, cached, fetched again on an unknown kid"
    )
    jwks_file: str | None = Field(None, description="A JWKS file (JSON) instead of a URL; read again every jwks_ttl_seconds")
    algorithms: list[JwtAlgorithm] = Field(
        default_factory=lambda: list[JwtAlgorithm](["RS256"]),
        min_length=1,
        description="Signature algorithms accepted (public-key ones only)",
    )
    leeway_seconds: int = Field(60, ge=0, le=600, description="Clock skew allowed when checking exp, nbf and iat")
    jwks_ttl_seconds: int = Field(
        3600, ge=1, le=7 * 86400, description="How long fetched keys are used before they are fetched again"
    )
    client_id_claims: list[str] = Field(
        default_factory=lambda: ["azp", "appid", "sub"],
        min_length=1,
        description="Claims naming the client, first present wins (Entra v2 azp, v1 appid); the audit log shows jwt:<iss>:<client>",
    )
    allowed_clients: list[str] = Field(
        default_factory=list, description="If given, only tokens whose client (see client_id_claims) is one of these are accepted"
    )

    @field_validator("algorithms", mode="before")
    @classmethod
    def _public_key_only(cls, value: Any) -> Any:
        for alg in value if isinstance(value, list) else []:
            if isinstance(alg, str) and (alg.lower() == "none" or alg.upper().startswith("HS")):
                raise ValueError(
                    f"{alg} is refused: only public-key algorithms are accepted (an HMAC or 'none' token could be forged)"
                )
        return value

    @field_validator("audience")
    @classmethod
    def _some_audience(cls, value: str | list[str]) -> str | list[str]:
        if not value or (isinstance(value, list) and not all(value)):
            raise ValueError("give the audience the tokens carry (a non-empty string, or a list of them)")
        return value

    @model_validator(mode="after")
    def _one_key_source(self) -> JwtConfig:
        if (self.jwks_url is None) == (self.jwks_file is None):
            raise ValueError("give exactly one of jwks_url or jwks_file")
        if self.jwks_url is not None:
            url = urlsplit(self.jwks_url)
            # Keys fetched over plain http could be swapped in transit, and with them every token accepted.
            if not (url.scheme == "https" or (url.scheme == "http" and url.hostname in _LOOPBACK_HOSTS)) or not url.hostname:
                raise ValueError("jwks_url must be an https:// URL (http only on loopback)")
        return self


class AuthConfig(_Strict):
    bearer: list[BearerTokenConfig] = Field(default_factory=list, description="Tokens accepted from the IdP")
    jwt: JwtConfig | None = Field(None, description="Also accept signed JWT access tokens from this issuer (below)")

    @field_validator("bearer")
    @classmethod
    def _unique_names(cls, value: list[BearerTokenConfig]) -> list[BearerTokenConfig]:
        names = [t.name for t in value if t.name is not None]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"token names must be unique within an app: {', '.join(twice)}")
        return value


class AttributeRule(_Strict):
    """One SCIM attribute <-> one app field, with optional value transforms; or a computed field (no `scim`)."""

    scim: str | None = Field(
        None,
        description='SCIM attribute path: userName, name.givenName, emails[type eq "work"].value, URN-qualified; '
        "omitted for a computed field or a constant (then `to_app` gives the value from `resource`)",
    )
    field: str = Field(description="The app's field (column, JSON key; dotted for a nested JSON key)")
    to_app: str | None = Field(None, description="Jinja2 expression turning the SCIM `value` into the app's (also `resource`)")
    to_scim: str | None = Field(None, description="Jinja2 expression turning the app's `value` into SCIM (also `record`)")
    ref: Literal["User", "Group"] | None = Field(
        None, description="The value is an id of this resource type: SCIM id <-> native id"
    )
    direction: Literal["both", "to_app", "to_scim"] = "both"
    absent: Literal["omit", "null"] = Field(
        "omit",
        description="A create whose resource has no value for this field: omit (default) leaves the field out of the "
        "app's record, so the app's own default applies; null sends it as null",
    )
    cleared: Any = Field(
        None,
        description='What an update sends when the value is cleared (PATCH remove, replace with null, Entra\'s ""): '
        'null (default), "" or any value the app understands as none',
    )

    @model_validator(mode="after")
    def _computed(self) -> AttributeRule:
        if self.scim is None:
            if self.to_app is None:
                raise ValueError("a rule without `scim` is a computed field: give `to_app` (e.g. to_app: \"'constant'\")")
            if self.direction == "to_scim" or self.ref is not None or self.to_scim is not None:
                raise ValueError("a computed field (no `scim`) is written to the app only: drop direction/ref/to_scim")
        return self


class MembersConfig(_Strict):
    """How the app models group membership."""

    via: Literal["connector", "group_field", "user_field"] = Field(
        "connector",
        description="connector: the connector's own add/remove member calls (a join table, member sub-resources); "
        "group_field: a list of member ids on the group record; user_field: a list of group ids on each user record",
    )
    field: str | None = Field(None, description="group_field / user_field: the record field holding the id list")
    separator: str | None = Field(
        None,
        min_length=1,
        description='When the field is text (a column), the ids are joined by this, e.g. ","; default: a JSON list',
    )
    id_type: Literal["auto", "number", "text"] = Field(
        "auto",
        description='How the ids in a JSON list are sent: number (apps that refuse "7" for 7), text, or auto '
        "(numbers where the list the app holds has numbers; text when it holds none yet)",
    )

    @model_validator(mode="after")
    def _field(self) -> MembersConfig:
        if self.via != "connector" and not self.field:
            raise ValueError(f"via: {self.via} needs `field`: the record field that holds the id list")
        if self.via == "connector" and (self.field or self.separator):
            raise ValueError("`field` and `separator` are only for via: group_field or user_field")
        return self


class DeactivateConfig(_Strict):
    """What `active: false` does in the app."""

    via: Literal["field", "action", "delete"] = Field(
        "field",
        description="field: the `active` rule writes a field value; action: the connector's named calls below; "
        "delete: the app's record is deleted (the SCIM resource stays, inactive) and created again on reactivation",
    )
    disable: str | None = Field(None, description="via: action: the connector action that disables the account")
    enable: str | None = Field(None, description="via: action: the connector action that re-enables it")

    @model_validator(mode="after")
    def _actions(self) -> DeactivateConfig:
        if self.via == "action" and not (self.disable and self.enable):
            raise ValueError("via: action needs both `disable` and `enable` (names of connector actions)")
        if self.via == "field" and (self.disable or self.enable):
            raise ValueError("`disable` / `enable` are only for via: action")
        return self


class SchemaAttributeConfig(_Strict):
    """One attribute of a custom schema, in RFC 7643 §7 form."""

    name: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_-]{0,63}$", description="The attribute's name")
    type: Literal["string", "boolean", "decimal", "integer", "dateTime", "reference", "complex"] = "string"
    multiValued: bool = False
    required: bool = False
    caseExact: bool = False
    mutability: Literal["readOnly", "readWrite", "immutable", "writeOnly"] = "readWrite"
    returned: Literal["always", "never", "default", "request"] = "default"
    uniqueness: Literal["none", "server", "global"] = "none"
    description: str = ""
    canonicalValues: list[str] = Field(default_factory=list)
    referenceTypes: list[str] = Field(default_factory=list)
    subAttributes: list[SchemaAttributeConfig] = Field(default_factory=list, description="complex only: its sub-attributes")

    @model_validator(mode="after")
    def _subs(self) -> SchemaAttributeConfig:
        if self.type == "complex" and not self.subAttributes:
            raise ValueError("a complex attribute needs subAttributes")
        if self.type != "complex" and self.subAttributes:
            raise ValueError("only a complex attribute has subAttributes")
        return self


class SchemaConfig(_Strict):
    """A custom extension schema this mapping declares (shown in /Schemas; listed by a resource's `extensions`)."""

    id: str = Field(pattern=r"^urn:[A-Za-z0-9][A-Za-z0-9-]{0,31}:\S+$", description="The schema URN")
    name: str = Field(min_length=1, description="A short name")
    description: str = ""
    attributes: list[SchemaAttributeConfig] = Field(min_length=1)


class ResourceConfig(_Strict):
    extensions: list[str] = Field(default_factory=list, description="Extension schema URNs this resource type carries")
    match: str | None = Field(
        None,
        description="SCIM attribute that identifies an existing app record (adoption, recovery); default userName / displayName",
    )
    attributes: list[AttributeRule]
    members: MembersConfig | None = None
    deactivate: DeactivateConfig = Field(default_factory=DeactivateConfig, description="What `active: false` does in the app")
    delete: Literal["delete", "deactivate"] = Field(
        "delete", description="What a SCIM DELETE does in the app: delete the record, or only deactivate it"
    )
    reads: Literal["live", "cached"] = Field(
        "live",
        description="live: GET by id and every write read the app's record; cached: answer from the gateway's "
        "last-known copy (for apps that cannot be read back)",
    )
    updates: Literal["changed", "whole"] = Field(
        "changed",
        description="changed: an update sends the app the fields whose value changed; whole: every mapped field, "
        "for an app that resets what a write leaves out",
    )
    pushdown: list[str] = Field(
        default_factory=list,
        description="SCIM attributes whose filters (eq; co/sw/ew where the connector can) are asked of the app "
        "before answering, so a list shows the app's current records, including ones never provisioned",
    )

    @field_validator("attributes")
    @classmethod
    def _some(cls, value: list[AttributeRule]) -> list[AttributeRule]:
        if not value:
            raise ValueError("map at least one attribute")
        return value


class BreakerConfig(_Strict):
    """When the gateway stops calling an app that keeps failing, and when it tries again."""

    failures: int = Field(
        5,
        ge=1,
        le=1000,
        description="Consecutive failures meaning the app is unavailable (down, timed out, 5xx, 429, an unreadable answer) "
        "that open the circuit: the app's SCIM requests then answer 503 at once, without calling it",
    )
    reset_after: float = Field(
        10.0, gt=0, le=3600, description="Seconds the circuit stays open before one probe call is let through"
    )
    max_reset_after: float = Field(
        300.0, gt=0, le=86400, description="Longest cool-down: each failed probe doubles the previous one, up to this"
    )

    @model_validator(mode="after")
    def _ordered(self) -> BreakerConfig:
        if self.max_reset_after < self.reset_after:
            raise ValueError(f"max_reset_after ({self.max_reset_after:g}) must be at least reset_after ({self.reset_after:g})")
        return self


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def duration_seconds(value: str | float) -> float:
    """`90`, `"90s"`, `"30m"`, `"6h"`, `"1d"` in seconds; ValueError otherwise."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    found = _DURATION.match(value) if isinstance(value, str) else None
    if found is None:
        raise ValueError(f"{value!r} is no duration: give seconds or a number with s, m, h or d (e.g. 6h)")
    return float(found.group(1)) * _UNIT_SECONDS[found.group(2)]


class ReconcileConfig(_Strict):
    """`scim-gateway reconcile`: what it does with accounts no SCIM resource manages, and a scheduled run."""

    interval: str | float | None = Field(
        None,
        description="While serving, reconcile the app every interval (seconds, or e.g. 30m, 6h, 1d; at least 60 s) and "
        "keep the report for the admin page; report-only: a scheduled run fixes nothing. One process runs it "
        "when several share the store. None: only on the command line",
    )
    orphans: Literal["as_delete", "deactivate", "delete", "adopt", "report"] = Field(
        "as_delete",
        description="What `reconcile --fix` does with an app account no SCIM resource manages and none matches "
        "(one that matches a resource's match attribute is linked to it): as_delete: what this resource "
        "type's `delete` says (delete the record, or deactivate it); deactivate; delete; adopt: link it as "
        "a new resource (as `import` does); report: nothing",
    )

    drift: Literal["revert", "accept", "report"] = Field(
        "revert",
        description="What `reconcile --fix` does with attributes and group members changed in the app behind the "
        "gateway's back: revert: write the gateway's copy (what the IdP provisioned) to the app, through the "
        "ordinary write path; accept: take the app's values into the copy; report: nothing",
    )

    @field_validator("interval")
    @classmethod
    def _interval(cls, value: str | float | None) -> str | float | None:
        if value is not None and duration_seconds(value) < 60:
            raise ValueError("the interval is at least 60 seconds")
        return value

    @property
    def interval_seconds(self) -> float | None:
        return None if self.interval is None else duration_seconds(self.interval)


class MappingConfig(_Strict):
    """One app: its name, inbound auth, connector, and resource types."""

    app: str = Field(
        pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$", description="The app's name, used in its base URL /apps/{app}/scim/v2"
    )
    description: str = ""
    auth: AuthConfig = Field(default_factory=AuthConfig)
    connector: dict[str, Any] = Field(description="The connector block; `type` selects the connector, the rest is its own")
    lookups: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Named value tables for templates: `value | lookup('departments')` (and reverse=true for reads)",
    )
    schemas: list[SchemaConfig] = Field(default_factory=list, description="Custom extension schemas (RFC 7643 §7 form)")
    resources: dict[Literal["User", "Group"], ResourceConfig]
    breaker: BreakerConfig = Field(
        default_factory=BreakerConfig,
        description="The circuit breaker in front of the app: after repeated failures its requests fail fast with 503 "
        "until a probe call succeeds; also the back-off of opening an app unreachable at start-up",
    )
    reconcile: ReconcileConfig = Field(
        default_factory=ReconcileConfig,
        description="`scim-gateway reconcile` (orphan fixes) and a scheduled report-only reconcile while serving",
    )

    @field_validator("connector")
    @classmethod
    def _typed(cls, value: dict[str, Any]) -> dict[str, Any]:
        if "type" not in value:
            raise ValueError("the connector block needs a type")
        return value


def mapping_json_schema(connector_configs: list[type[BaseModel]]) -> dict[str, Any]:
    """The JSON Schema of mapping files, with each installed connector's block tagged by `type`."""
    if not connector_configs:
        return MappingConfig.model_json_schema()
    union: Any = (
        connector_configs[0]
        if len(connector_configs) == 1
        else Annotated[Union[tuple(connector_configs)], Field(discriminator="type")]  # noqa: UP007 - a union built at run time
    )
    model = create_model("MappingConfig", __base__=MappingConfig, connector=(union, ...))
    return model.model_json_schema()
