"""Gateway settings: where the mappings are, where state lives, limits. Built by the CLI, passed to create_app."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

# prometheus_client's multiprocess directory (gateway/metrics.py): `serve --workers N` sets it for its workers only.
METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"


class LimitsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    max_body_bytes: int = Field(1_048_576, description="Largest request body (also Bulk maxPayloadSize)")
    bulk_max_operations: int = Field(1000, description="Bulk maxOperations")
    default_page_size: int = Field(100, description="count when a list request gives none")
    max_page_size: int = Field(1000, description="Largest count honoured (ServiceProviderConfig filter.maxResults)")
    # Entra sends group membership changes in batches of PATCH operations: keep these generous.
    max_patch_operations: int = Field(1000, ge=1, description="Most Operations in one PATCH request (else 413)")
    max_patch_values: int = Field(
        10_000,
        ge=1,
        description="Most values (members, emails, ... list entries) across one PATCH request's operations (else 413)",
    )
    max_attribute_names: int = Field(
        200, ge=1, description="Most names in an attributes or excludedAttributes parameter (else 400)"
    )
    # Half the filter's 4096 characters: any value kept can still be found by a filter, escaped or not.
    max_string_chars: int = Field(
        2048, ge=64, description="Longest string value (characters) in a write's body, any attribute (else 400)"
    )
    max_url_bytes: int = Field(16_384, ge=1024, description="Longest request path and query string, percent-encoded (else 414)")


class AdminCredential(BaseModel):
    """One credential the admin page accepts: a bearer token or a Basic user's password, as its SHA-256 only."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["bearer", "basic"]
    name: str = Field(min_length=1, description="The token's name, or the Basic user name")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="Hex SHA-256 of the token or password")


class GatewaySettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    mappings: list[Path] = Field(description="Mapping files, one per app")
    data_dir: Path = Field(Path("data"), description="Where the SQLite store (and the demo app's database) live")
    store_path: Path | None = Field(None, description="SQLite store file; default DATA_DIR/gateway.db")
    store_url: SecretStr | None = Field(
        None,
        description="PostgreSQL store (postgresql://user:password@host:port/db) shared by several gateway processes;"
        " default None: the SQLite file. A secret: it may hold a password",
    )
    store_pool_size: int = Field(10, ge=1, le=1000, description="Connections each process keeps to the PostgreSQL store")
    extra_tokens: dict[str, list[SecretStr]] = Field(
        default_factory=dict, description="Bearer tokens given on the command line, per app (the demo's)"
    )
    public_url: str | None = Field(None, description="Base URL as the IdP reaches it, for Location and meta.location")
    audit_log: Path | None = Field(
        Path("audit.log"),
        description="The append-only audit log (JSON lines); a relative path is under data_dir; None: no audit log",
    )
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    metrics_token: SecretStr | None = Field(
        None, description="A bearer token /metrics requires (from $SCIM_GATEWAY_METRICS_TOKEN); None: /metrics is open"
    )
    admin: list[AdminCredential] = Field(
        default_factory=list, description="Credentials of the admin page under /admin; none: the page is off (404)"
    )
    hub_file: Path | None = Field(None, description="The hub file: serve /hub/scim/v2 and feed the apps it names (docs/hub.md)")
    recovery_interval: float = Field(30.0, gt=0, description="Seconds between sweeps for writes left unsettled while serving")
    shared_store: bool = Field(
        False,
        description="Other live processes may write to this store (--workers, or a PostgreSQL store): recovery at start-up"
        " then takes only entries older than two sweep intervals, never a peer's write in flight",
    )

    @property
    def startup_recovery_age(self) -> float | None:
        """How old a pending write must be for start-up recovery to take it (None: every one, this process is alone)."""
        return 2 * self.recovery_interval if self.shared_store or self.store_url is not None else None

    @field_validator("store_url")
    @classmethod
    def _postgresql_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith(("postgresql://", "postgres://")):
            # Not echoing the value: it may hold a password.
            raise ValueError("the store URL must be a postgresql:// URL")
        return value

    @property
    def store_file(self) -> Path:
        return self.store_path or self.data_dir / "gateway.db"

    @property
    def audit_file(self) -> Path | None:
        """Where audit records go (default DATA_DIR/audit.log), None when auditing is off."""
        return None if self.audit_log is None else self.data_dir / self.audit_log
