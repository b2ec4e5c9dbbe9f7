"""The `connector:` block of an app kept in one JSON file (type: jsonfile)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway.secrets import SecretRef

# Errors and reprs must never show a value given in the wrong place: it may be a secret.
_STRICT = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)


class JsonFileKindConfig(BaseModel):
    """One kind of record (the mapping's resource type name: User, Group)."""

    model_config = _STRICT

    unique: str | None = Field(None, description="A field no two records may share, compared case-insensitively")
    fields: list[str] | None = Field(None, description="The fields a record may have; any other is refused")
    member_kind: str | None = Field(None, description="Records of this kind are groups whose members are of that kind")
    actions: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Named calls (e.g. disable): the field values each one writes"
    )


class JsonFileConnectorConfig(BaseModel):
    """Every record of the app in one JSON file, written whole (atomically) after each change."""

    model_config = _STRICT

    type: Literal["jsonfile"]
    path: str = Field("{data_dir}/{app}.json", min_length=1, description='The file; "{data_dir}" and "{app}" are the app\'s own')
    signing_key: SecretRef | None = Field(
        None, description="By reference: the file carries an HMAC of its records under this key, checked on open"
    )
    kinds: dict[str, JsonFileKindConfig] = Field(description="Per kind of record: its rules")

    @model_validator(mode="after")
    def _members_known(self) -> JsonFileConnectorConfig:
        for name, kind in self.kinds.items():
            if kind.member_kind is not None and kind.member_kind not in self.kinds:
                valid = ", ".join(sorted(self.kinds))
                raise ValueError(f"kinds.{name}.member_kind: no kind {kind.member_kind!r} (valid: {valid})")
            if kind.fields is not None and kind.unique is not None and kind.unique not in kind.fields:
                raise ValueError(f"kinds.{name}.unique: {kind.unique!r} is not one of its fields")
        return self
