"""The hub file: which apps the hub feeds and who goes where; loaded like a mapping file (line marks, every
problem as FILE:LINE:COL: path: message), validated by the pydantic models below (their JSON Schema is
`scim-gateway schema --hub`), compiled once (expressions included) at start-up and by `check --hub`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..mapping.compile import CompiledMapping, Transform, compile_template
from ..mapping.loader import Document, MappingFileError, Problem, read_document
from ..mapping.model import AuthConfig
from ..mapping.transforms import create_environment
from ..mapping.validate import validation_problems
from .directory import compile_directory
from .rules import AppRule, Rules


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class UsersConfig(_Strict):
    """Which hub users an app gets: any of the three that holds assigns the user."""

    everyone: bool = Field(False, description="Every hub user")
    member_of: list[str] = Field(default_factory=list, description="Members of these hub groups (by displayName, in any case)")
    when: str | None = Field(
        None,
        description="A sandboxed Jinja2 expression over `user` (its attributes, the enterprise extension's flattened in), "
        "e.g. user.department == 'Sales'",
    )

    @model_validator(mode="after")
    def _some(self) -> UsersConfig:
        if not (self.everyone or self.member_of or self.when):
            raise ValueError("say which users the app gets: everyone: true, member_of: [groups], or when: <expression>")
        return self


class HubAppConfig(_Strict):
    """One app fed by the hub (its name is a mapping's `app`)."""

    users: UsersConfig
    groups: Literal["all", "none"] | list[str] = Field(
        "all", description="Which hub groups are pushed to the app: all, none, or a list of displayNames"
    )
    leave: Literal["deactivate", "delete"] = Field(
        "deactivate",
        description="What leaving the assignment does in the app: deactivate the account (the app's own deactivate), "
        "or delete it (what the app's mapping says a delete is)",
    )


class DeliveryConfig(_Strict):
    concurrency: int = Field(4, ge=1, le=256, description="Entries delivered at once, per app")
    max_attempts: int = Field(10, ge=1, le=10_000, description="Failed deliveries before an entry is dead-lettered")
    backoff: float = Field(1.0, gt=0, le=3600, description="Seconds before the first retry; each retry doubles it (with jitter)")
    max_backoff: float = Field(300.0, gt=0, le=86_400, description="Longest wait between retries")
    lease: float = Field(
        30.0,
        ge=3,
        le=86_400,
        description="Seconds a process holds an entry it delivers (renewed while it works on it); a dead process's "
        "entries are taken by another after this",
    )
    poll_interval: float = Field(1.0, gt=0, le=60, description="Seconds between looks for due entries when idle")


class HubConfig(_Strict):
    """The hub: its own IdP credentials, delivery settings, and the apps it feeds."""

    description: str = ""
    auth: AuthConfig = Field(default_factory=AuthConfig, description="Credentials the IdP uses at /hub/scim/v2")
    delivery: DeliveryConfig = Field(default_factory=DeliveryConfig)
    apps: dict[str, HubAppConfig] = Field(description="The apps the hub feeds, by their mapping's app name")

    @field_validator("apps")
    @classmethod
    def _names(cls, value: dict[str, HubAppConfig]) -> dict[str, HubAppConfig]:
        if not value:
            raise ValueError("name at least one app")
        return value


@dataclass(slots=True)
class CompiledHub:
    file: str
    config: HubConfig
    rules: Rules
    mapping: CompiledMapping  # the hub directory's own (gateway/hub/directory.py)
    doc: Document

    def problem(self, path: tuple[str | int, ...], message: str) -> Problem:
        return self.doc.problem(path, message, at_key=True)


def _user_variables() -> set[str]:
    return {"user"}


def compile_hub(doc: Document, *, require_secrets: bool = True) -> CompiledHub:
    """Validate and compile a parsed hub file; MappingFileError lists every problem."""
    if not isinstance(doc.data, dict):
        raise MappingFileError([doc.problem((), "a hub file must be a YAML mapping (key: value)")])
    problems: list[Problem] = []
    config: HubConfig | None = None
    try:
        config = HubConfig.model_validate(doc.data)
    except ValidationError as exc:
        problems.extend(validation_problems(exc, HubConfig, doc))
    mapping: CompiledMapping | None = None
    try:
        mapping = compile_directory(doc, require_secrets=require_secrets)
    except MappingFileError as exc:
        seen = {(p.path, p.message) for p in problems}  # the auth block is validated by both: say it once
        problems.extend(p for p in exc.problems if (p.path, p.message) not in seen)
    # The expressions are compiled from the document itself: their problems are listed with the others.
    env = create_environment({})
    whens: dict[str, Transform | None] = {}
    raw_apps = doc.data.get("apps")
    for name, raw in (raw_apps if isinstance(raw_apps, dict) else {}).items():
        users = raw.get("users") if isinstance(raw, dict) else None
        source = users.get("when") if isinstance(users, dict) else None
        if isinstance(source, str):
            whens[name] = compile_template(env, source, _user_variables(), doc, ("apps", name, "users", "when"), problems)
    if config is None or mapping is None or problems:
        raise MappingFileError(problems)
    rules: dict[str, AppRule] = {}
    for name, app in config.apps.items():
        groups = app.groups if isinstance(app.groups, str) else frozenset(g.lower() for g in app.groups)
        member_of = frozenset(g.lower() for g in app.users.member_of)
        rules[name] = AppRule(name, app.users.everyone, member_of, whens.get(name), groups, app.leave)
    if problems:
        raise MappingFileError(problems)
    return CompiledHub(doc.file, config, Rules(rules), mapping, doc)


def load_hub(path: Path, *, require_secrets: bool = True) -> CompiledHub:
    return compile_hub(read_document(path), require_secrets=require_secrets)


def fed_apps_problems(hub: CompiledHub | None, mappings: list[CompiledMapping], cli_tokens: dict[str, Any]) -> list[Problem]:
    """An app is fed by the hub or by its own IdP, never both: the apps the hub names must exist and accept
    no IdP credentials of their own. And no mapping may take the hub's reserved name."""
    from .directory import HUB_APP

    problems: list[Problem] = []
    by_name = {m.app: m for m in mappings}
    for m in mappings:
        if m.app == HUB_APP:
            problems.append(Problem(m.file, None, ("app",), f"the app name {HUB_APP!r} is reserved for the hub's directory"))
    if hub is None:
        return problems
    for name in hub.config.apps:
        mapping = by_name.get(name)
        if mapping is None:
            known = ", ".join(sorted(by_name)) or "none"
            problems.append(hub.problem(("apps", name), f"no mapping defines app {name!r} (valid: {known})"))
            continue
        auth = mapping.config.auth
        if auth.bearer or auth.jwt is not None or cli_tokens.get(name):
            problems.append(
                hub.problem(
                    ("apps", name),
                    f"app {name!r} is fed by the hub but also accepts its own IdP credentials ({mapping.file}: auth"
                    " or --token): both would write the same app; remove them from one",
                )
            )
    return problems


def hub_json_schema() -> dict[str, Any]:
    return HubConfig.model_json_schema()


__all__ = ["CompiledHub", "HubConfig", "compile_hub", "fed_apps_problems", "hub_json_schema", "load_hub"]
