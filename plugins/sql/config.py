"""The `connector:` block of an app reached through its SQL database (type: sql)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from gateway.secrets import SecretRef

# Errors and reprs must never show a DSN that might carry a password.
_STRICT = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)


def _dsn_source(value: Any) -> str:
    return "ref" if isinstance(value, dict | SecretRef) else "inline"


def _no_inline_password(dsn: str) -> str:
    try:
        url = make_url(dsn.replace("{data_dir}", "data_dir"))
    except ArgumentError:
        raise ValueError("not a database URL (dialect+driver://user@host/database or sqlite:///path)") from None
    if url.password:
        raise ValueError("the DSN carries a password: give the whole DSN by reference ({env: NAME} or {file: PATH})")
    return dsn


Dsn = Annotated[
    Annotated[str, Tag("inline")] | Annotated[SecretRef, Tag("ref")],
    Discriminator(_dsn_source),
]


class SqlMembersConfig(BaseModel):
    """A join table holding a group's members: one row per (group, member)."""

    model_config = _STRICT

    table: str = Field(min_length=1, description="The join table")
    group_column: str = Field(min_length=1, description="Column holding the group's key")
    member_column: str = Field(min_length=1, description="Column holding the member's key")
    member_kind: str = Field(min_length=1, description="The kind (a key of `tables`) the member keys belong to")


class SqlTableConfig(BaseModel):
    """Where the records of one kind live."""

    model_config = _STRICT

    table: str = Field(min_length=1, description="The table")
    key: str = Field(min_length=1, description="Its primary key column; its value is the record's native id")
    key_strategy: Literal["autoincrement", "uuid"] = Field(
        "autoincrement", description="autoincrement: the database assigns the key; uuid: the connector generates a uuid4 string"
    )
    members: SqlMembersConfig | None = Field(None, description="The membership join table, for group kinds")


class SqlConnectorConfig(BaseModel):
    """An app reached through its database: one table per kind, optional membership join tables."""

    model_config = _STRICT

    type: Literal["sql"]
    dsn: Dsn = Field(
        description='SQLAlchemy URL; "{data_dir}" becomes the app\'s data directory; '
        "sqlite:/// uses aiosqlite; with a password, give it by reference: {env: NAME} or {file: PATH}"
    )
    pool_size: int = Field(5, ge=1, le=100, description="Connections kept open")
    timeout: float = Field(
        5.0, gt=0, le=300, description="Seconds to wait for a connection or a lock before the app counts as unavailable"
    )
    tables: dict[str, SqlTableConfig] = Field(description="Per kind (the mapping's resource type name, e.g. User): its table")

    @field_validator("dsn")
    @classmethod
    def _inline_dsn(cls, value: str | SecretRef) -> str | SecretRef:
        return _no_inline_password(value) if isinstance(value, str) else value

    @field_validator("tables")
    @classmethod
    def _tables(cls, value: dict[str, SqlTableConfig]) -> dict[str, SqlTableConfig]:
        if not value:
            raise ValueError("name the table of at least one kind")
        for kind, table in value.items():
            if table.members is not None and table.members.member_kind not in value:
                valid = ", ".join(sorted(value))
                raise ValueError(f"{kind}.members.member_kind: unknown kind {table.members.member_kind!r} (valid: {valid})")
        return value
