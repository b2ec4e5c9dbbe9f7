"""The schema of a mapping file, as pydantic models (exported as JSON Schema by `scim-gateway schema`)."""

from __future__ import annotations

import hashlib
import re
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator, model_validator

from ..secrets import SecretRef


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BearerTokenConfig(_Strict):
    """One accepted inbound bearer token: a reference to it, or its SHA-256 hash."""

    env: str | None = None
    file: str | None = None
    sha256: str | None = Field(None, description="Hex SHA-256 of the token (`scim-gateway hash-token` prints it)")

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
            secret = SecretRef(env=self.env, file=self.file).resolve()
        except ValueError:
            return None
        return hashlib.sha256(secret.get_secret_value().encode()).digest()


class AuthConfig(_Strict):
    bearer: list[BearerTokenConfig] = Field(default_factory=list, description="Tokens accepted from the IdP")


class AttributeRule(_Strict):
    """One SCIM attribute <-> one app field, with optional value transforms."""

    scim: str = Field(description='SCIM attribute path: userName, name.givenName, emails[type eq "work"].value, URN-qualified')
    field: str = Field(description="The app's field (column, JSON key)")
    to_app: str | None = Field(None, description="Jinja2 expression turning the SCIM `value` into the app's (also `resource`)")
    to_scim: str | None = Field(None, description="Jinja2 expression turning the app's `value` into SCIM (also `record`)")
    ref: Literal["User", "Group"] | None = Field(None, description="The value is an id of this resource type: SCIM id <-> native id")
    direction: Literal["both", "to_app", "to_scim"] = "both"


class MembersConfig(_Strict):
    """How the app models group membership."""

    via: Literal["connector"] = Field("connector", description="connector: the connector's add/remove member calls")


class ResourceConfig(_Strict):
    extensions: list[str] = Field(default_factory=list, description="Extension schema URNs this resource type carries")
    match: str | None = Field(
        None, description="SCIM attribute that identifies an existing app record (adoption, recovery); default userName / displayName"
    )
    attributes: list[AttributeRule]
    members: MembersConfig | None = None
    delete: Literal["delete", "deactivate"] = Field("delete", description="What a SCIM DELETE does in the app")

    @field_validator("attributes")
    @classmethod
    def _some(cls, value: list[AttributeRule]) -> list[AttributeRule]:
        if not value:
            raise ValueError("map at least one attribute")
        return value


class MappingConfig(_Strict):
    """One app: its name, inbound auth, connector, and resource types."""

    app: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$", description="The app's name, used in its base URL /apps/{app}/scim/v2")
    description: str = ""
    auth: AuthConfig = Field(default_factory=AuthConfig)
    connector: dict[str, Any] = Field(description="The connector block; `type` selects the connector, the rest is its own")
    resources: dict[Literal["User", "Group"], ResourceConfig]

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
    union: Any = connector_configs[0] if len(connector_configs) == 1 else Annotated[Union[tuple(connector_configs)], Field(discriminator="type")]  # noqa: UP007
    model = create_model("MappingConfig", __base__=MappingConfig, connector=(union, ...))
    return model.model_json_schema()
