"""The `connector:` block of an app reached through its SQL database (type: sql)."""

from __future__ import annotations

import re
import string
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator, model_validator
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from gateway.secrets import SecretRef

# Errors and reprs must never show a DSN that might carry a password.
_STRICT = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

#: The bind parameters a named statement may use: what the connector can supply when it runs one.
STATEMENT_PARAMS = {"id": "the record's native id (its key)"}

Scalar = str | int | float | bool


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


def template_fields(template: str) -> list[str]:
    """The record fields a key template names, in order; ValueError when it is not a plain str.format template."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"not a str.format template: {exc}") from None
    fields: list[str] = []
    for _literal, name, spec, _conversion in parsed:
        if name is None:
            continue
        if spec and ("{" in spec or "}" in spec):
            raise ValueError(f"{{{name}:{spec}}}: a format spec may not name another field")
        if not _NAME.fullmatch(name):
            # "{}" / "{0}" name no field; "{a.b}" / "{a[0]}" would reach into a value's attributes.
            raise ValueError(f"{{{name}}}: name a record field, e.g. {{emp_code}}")
        fields.append(name)
    if not fields:
        raise ValueError("the template names no record field: every key would be the same")
    return fields


def statement_params(sql: str) -> set[str]:
    """The `:name` bind parameters of a statement, as SQLAlchemy's text() reads them."""
    return set(text(sql).compile().params)


class SqlMembersConfig(BaseModel):
    """A join table holding a group's members: one row per (group, member)."""

    model_config = _STRICT

    table: str = Field(min_length=1, description="The join table")
    group_column: str = Field(min_length=1, description="Column holding the group's key")
    member_column: str = Field(min_length=1, description="Column holding the member's key")
    member_kind: str = Field(min_length=1, description="The kind (a key of `tables`) the member keys belong to")


class SqlChildConfig(BaseModel):
    """One row of a child table, seen as a scalar field of the record (e.g. the work address in employee_emails)."""

    model_config = _STRICT

    field: str = Field(min_length=1, description="The record field it appears as (what the mapping's `field:` names)")
    table: str = Field(min_length=1, description="The child table")
    parent_column: str = Field(min_length=1, description="Its column holding the record's key")
    value_column: str = Field(min_length=1, description="Its column holding the value")
    where: dict[str, Scalar] = Field(
        default_factory=dict, description="Column values that select this field's row (and are written into a new one)"
    )


class SqlSoftDeleteConfig(BaseModel):
    """Deleting marks the row instead of removing it; marked rows are gone for the gateway."""

    model_config = _STRICT

    column: str = Field(min_length=1, description="The column that marks a deleted row")
    value: Scalar | None = Field(
        None,
        description="What delete writes into it; omitted: the current time (a deleted_at column), any non-NULL value marking a deleted row",
    )


class SqlTableConfig(BaseModel):
    """Where the records of one kind live."""

    model_config = _STRICT

    table: str = Field(min_length=1, description="The table")
    key: str = Field(min_length=1, description="Its primary key column; its value is the record's native id")
    key_strategy: Literal["autoincrement", "sequence", "uuid", "template"] = Field(
        "autoincrement",
        description="autoincrement: the database assigns the key; sequence: the next value of `sequence`; "
        "uuid: the connector generates a uuid4 string; template: `key_template` formatted over the record",
    )
    sequence: str | None = Field(None, min_length=1, description="key_strategy sequence: the database sequence to draw keys from")
    key_template: str | None = Field(
        None, min_length=1, description='key_strategy template: a str.format template over record fields, e.g. "E{emp_code}"'
    )
    members: SqlMembersConfig | None = Field(None, description="The membership join table, for group kinds")
    children: list[SqlChildConfig] = Field(
        default_factory=list, description="Child-table rows exposed as scalar fields of the record"
    )
    soft_delete: SqlSoftDeleteConfig | None = Field(None, description="Delete marks the row instead of removing it")
    statements: dict[str, str] = Field(
        default_factory=dict,
        description="Named statements run by action(), e.g. disable / enable; bind parameters only (:id is the key)",
    )

    @field_validator("key_template")
    @classmethod
    def _template(cls, value: str | None) -> str | None:
        if value is not None:
            template_fields(value)
        return value

    @field_validator("children")
    @classmethod
    def _children(cls, value: list[SqlChildConfig]) -> list[SqlChildConfig]:
        seen: set[str] = set()
        for child in value:
            if child.field in seen:
                raise ValueError(f"field {child.field!r} is given twice")
            seen.add(child.field)
        return value

    @field_validator("statements")
    @classmethod
    def _statements(cls, value: dict[str, str]) -> dict[str, str]:
        valid = ", ".join(f":{name}" for name in sorted(STATEMENT_PARAMS))
        for name, sql in value.items():
            if not _NAME.fullmatch(name):
                raise ValueError(f"{name!r}: a statement's name is an identifier, e.g. disable")
            if not sql.strip():
                raise ValueError(f"{name}: the statement is empty")
            unknown = sorted(statement_params(sql) - set(STATEMENT_PARAMS))
            if unknown:
                raise ValueError(f"{name}: unknown parameter :{unknown[0]} (valid: {valid})")
        return value

    @model_validator(mode="after")
    def _strategy(self) -> SqlTableConfig:
        if (self.key_strategy == "sequence") != (self.sequence is not None):
            raise ValueError("give `sequence` exactly when key_strategy is sequence")
        if (self.key_strategy == "template") != (self.key_template is not None):
            raise ValueError("give `key_template` exactly when key_strategy is template")
        if self.key_template is not None and self.key in template_fields(self.key_template):
            raise ValueError(f"key_template: the key {self.key!r} cannot be built from itself")
        return self


class SqlConnectorConfig(BaseModel):
    """An app reached through its database: one table per kind, optional membership join tables."""

    model_config = _STRICT

    type: Literal["sql"]
    dsn: Dsn = Field(
        description='SQLAlchemy URL; "{data_dir}" becomes the app\'s data directory; '
        "sqlite:///, postgresql:// and mysql:// use aiosqlite, asyncpg and aiomysql; "
        "with a password, give it by reference: {env: NAME} or {file: PATH}"
    )
    pool_size: int = Field(5, ge=1, le=100, description="Connections kept open")
    timeout: float = Field(
        5.0, gt=0, le=300, description="Seconds to wait for a connection or a lock before the app counts as unavailable"
    )
    statement_timeout: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="Seconds one statement may run (or the server stay silent) before the app counts as unavailable:"
        " PostgreSQL statement_timeout plus a client-side limit, MariaDB max_statement_time; not for SQLite (local)",
    )
    sqlite_synchronous: Literal["off", "normal", "full", "extra"] | None = Field(
        None,
        description="SQLite only: PRAGMA synchronous for the gateway's connections; default: leave SQLite's own (full)."
        " normal in WAL mode syncs at checkpoints instead of at every commit, much faster, and a power loss may lose"
        " the last commits",
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
