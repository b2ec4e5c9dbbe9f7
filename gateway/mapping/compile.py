"""Validate and compile a mapping file once, at start-up (and by `scim-gateway check`).

Three steps, each one function: `parse_yaml` (loader.py), `validate_document`
(pydantic models, connector options), `compile_mapping` (attribute paths
resolved against the resource types, templates compiled in a sandbox). Every
problem is collected and reported as FILE:LINE:COL: dotted.path: message.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from scim2_models.path import AttrPath, CompareOperator, Comparison, LogicalExpr, LogicalOperator, ValuePath
from scim2_models.path import Path as ScimPath

from ..connectors.base import Capabilities, Connector
from ..connectors.registry import ConnectorRegistry
from ..schema import (
    CORE_GROUP,
    CORE_USER,
    ENTERPRISE_USER,
    UNIQUE_ATTRIBUTES,
    Attribute,
    Resolved,
    ResourceType,
    Schema,
    builtin_schema,
    group_resource_type,
    user_resource_type,
)
from ..secrets import SecretRef
from .access import Getter, Setter, getter, setter
from .loader import Document, Loc, MappingFileError, Problem, read_document
from .model import AttributeRule, DeactivateConfig, MappingConfig, MembersConfig, ResourceConfig
from .template import TemplateError, Transform, compile_template
from .transforms import TemplateEnvironment, create_environment
from .validate import validate_document

KNOWN_EXTENSIONS: dict[str, Callable[[], Schema]] = {ENTERPRISE_USER: lambda: builtin_schema("enterprise_user")}
DEFAULT_MATCH = UNIQUE_ATTRIBUTES
READ_ONLY_TOP = {"id", "meta", "groups"}


@dataclass(slots=True)
class CompiledRule:
    rule: AttributeRule
    resolved: Resolved
    selector: dict[str, Any] | None  # emails[type eq "work"] -> {"type": "work"}
    to_app: Transform | None
    to_scim: Transform | None
    # Where the rule's value sits in a resource, compiled once (access.py): get(resource), put(resource, value).
    get: Getter = field(init=False, repr=False, compare=False)
    put: Setter = field(init=False, repr=False, compare=False)
    writes: bool = field(init=False, repr=False, compare=False)  # the rule's direction: to the app, or both
    reads: bool = field(init=False, repr=False, compare=False)  # to SCIM, or both

    def __post_init__(self) -> None:
        self.get = getter(self.resolved, self.selector)
        self.put = setter(self.resolved, self.selector)
        self.writes = self.rule.direction in ("both", "to_app")
        self.reads = self.rule.direction in ("both", "to_scim")

    @property
    def field(self) -> str:
        return self.rule.field


@dataclass(slots=True)
class ComputedField:
    """An app field computed from the whole resource (a login built from names, a constant)."""

    field: str
    to_app: Transform


@dataclass(slots=True)
class CompiledResource:
    name: str
    rtype: ResourceType
    rules: list[CompiledRule]
    match_rule: CompiledRule
    unique_attr: str
    delete_mode: str
    members: MembersConfig | None
    deactivate: DeactivateConfig = field(default_factory=DeactivateConfig)
    reads_live: bool = True
    pushdown: list[CompiledRule] = field(default_factory=list)
    computed: list[ComputedField] = field(default_factory=list)
    # What writes send (translate.create_body / update_body): fields sent as null when absent from a create,
    # the value a cleared field is sent as, and whether updates send every field.
    null_when_absent: frozenset[str] = frozenset()
    # The fields of write-only attributes (a password): sent only when the request carries a value.
    write_only: frozenset[str] = frozenset()
    cleared: dict[str, Any] = field(default_factory=dict)
    whole_updates: bool = False


@dataclass(slots=True)
class CompiledMapping:
    file: str
    config: MappingConfig
    connector_cls: type[Connector]
    connector_config: BaseModel
    resources: dict[str, CompiledResource]
    token_digests: list[bytes] = field(default_factory=list)

    @property
    def app(self) -> str:
        return self.config.app


# ---------------------------------------------------------------- step 3: compile


def _custom_schemas(config: MappingConfig, doc: Document, problems: list[Problem]) -> dict[str, Schema]:
    """The mapping's own extension schemas, by lower-cased URN."""
    out: dict[str, Schema] = {}
    reserved = {u.lower() for u in (*KNOWN_EXTENSIONS, CORE_USER, CORE_GROUP)}
    for i, declared in enumerate(config.schemas):
        key = declared.id.lower()
        if key in reserved or key in out:
            problems.append(doc.problem(("schemas", i, "id"), f"schema {declared.id!r} is already defined"))
            continue
        out[key] = Schema.from_json(declared.model_dump())
    return out


def _resource_type(
    name: str, rc: ResourceConfig, custom: dict[str, Schema], doc: Document, problems: list[Problem]
) -> ResourceType:
    extensions = []
    for i, urn in enumerate(rc.extensions):
        factory = next((f for known, f in KNOWN_EXTENSIONS.items() if known.lower() == urn.lower() and name == "User"), None)
        schema = factory() if factory is not None else custom.get(urn.lower())
        if schema is None:
            valid = [*(KNOWN_EXTENSIONS if name == "User" else ()), *(s.id for s in custom.values())]
            message = f"unknown extension schema {urn!r} (valid: {', '.join(valid) or 'none; declare it under schemas'})"
            problems.append(doc.problem(("resources", name, "extensions", i), message))
            continue
        extensions.append((schema, False))
    if name == "User":
        return user_resource_type(tuple(extensions))
    return group_resource_type(tuple(extensions))


def _all_names(rtype: ResourceType) -> list[str]:
    return [r.dotted for r in rtype.walk()]


def _compile_rule(
    env: TemplateEnvironment, rule: AttributeRule, rtype: ResourceType, doc: Document, loc: Loc, problems: list[Problem]
) -> CompiledRule | None:
    assert rule.scim is not None
    scim_loc = (*loc, "scim")
    try:
        node = ScimPath(rule.scim).ast
    except Exception as exc:  # scim2-models raises one exception type per failure
        problems.append(doc.problem(scim_loc, f"invalid attribute path {rule.scim!r}: {exc}"))
        return None
    selector: dict[str, Any] | None = None
    if isinstance(node, ValuePath):
        attr_path = node.attr_path
        sub = node.sub_attr
        resolved = rtype.resolve(attr_path.attr, sub, attr_path.uri)
        if resolved is not None:
            selector = _selector(node, resolved.attribute, doc, scim_loc, problems)
            if selector is None:
                return None
    elif isinstance(node, AttrPath):
        resolved = rtype.resolve(node.attr, node.sub_attr, node.uri)
    else:
        problems.append(doc.problem(scim_loc, f"{rule.scim!r} is a filter, not an attribute path"))
        return None
    if resolved is None:
        names = _all_names(rtype)
        message = f"{rtype.name} has no attribute {rule.scim!r}"
        near = difflib.get_close_matches(rule.scim.split("[")[0], names, n=1, cutoff=0.6)
        if near:
            message += f" (did you mean {near[0]}?)"
        problems.append(doc.problem(scim_loc, message))
        return None
    target = resolved.target
    if target.type == "complex":
        value_sub = target.sub("value")
        if value_sub is None or resolved.attribute.multi_valued and selector is None:
            problems.append(doc.problem(scim_loc, f"{resolved.dotted} is complex: map one of its sub-attributes"))
            return None
    if resolved.attribute.multi_valued and resolved.sub is None and resolved.attribute.type == "complex":
        problems.append(
            doc.problem(scim_loc, f"{resolved.dotted} is multi-valued: map a sub-attribute such as {rule.scim}.value")
        )
        return None
    if resolved.urn is None and resolved.attribute.name in READ_ONLY_TOP and rule.direction != "to_scim":
        problems.append(doc.problem(scim_loc, f"{resolved.dotted} is read-only in SCIM; use direction: to_scim"))
        return None
    if resolved.target.write_only and rule.direction != "to_app":
        # RFC 7643 `returned: never`: read back from the app, it would reach the gateway's copy and filters.
        where = (*loc, "direction") if "direction" in rule.model_fields_set else scim_loc
        problems.append(
            doc.problem(where, f"{resolved.dotted} is write-only: it is never read back from the app; use direction: to_app")
        )
        return None
    if rule.ref is not None and target.type not in ("string", "reference"):
        problems.append(doc.problem((*loc, "ref"), f"{resolved.dotted} is not an id-valued attribute"))
        return None
    to_app = compile_template(env, rule.to_app, {"value", "resource"}, doc, (*loc, "to_app"), problems) if rule.to_app else None
    to_scim = compile_template(env, rule.to_scim, {"value", "record"}, doc, (*loc, "to_scim"), problems) if rule.to_scim else None
    return CompiledRule(rule, resolved, selector, to_app, to_scim)


def _selector(node: ValuePath, attribute: Attribute, doc: Document, loc: Loc, problems: list[Problem]) -> dict[str, Any] | None:
    """`emails[type eq "work"]` selects (and, when writing, creates) the element {"type": "work"}."""
    terms = (
        node.val_filter.terms
        if isinstance(node.val_filter, LogicalExpr) and node.val_filter.op == LogicalOperator.and_
        else (node.val_filter,)
    )
    out: dict[str, Any] = {}
    for term in terms:
        if not (
            isinstance(term, Comparison)
            and term.op == CompareOperator.eq
            and term.attr_path.uri is None
            and term.attr_path.sub_attr is None
        ):
            problems.append(doc.problem(loc, "a mapped value filter may only join `sub eq value` terms with and"))
            return None
        sub = attribute.sub(term.attr_path.attr)
        if sub is None:
            problems.append(doc.problem(loc, f"{attribute.name} has no sub-attribute {term.attr_path.attr!r}"))
            return None
        out[sub.name] = term.value
    return out


def compile_mapping(doc: Document, registry: ConnectorRegistry, *, require_secrets: bool = True) -> CompiledMapping:
    """Validate and compile one parsed mapping document; raises MappingFileError listing every problem.

    `require_secrets=False` (the `check` command on a machine without the app's
    environment) skips resolving secret references.
    """
    config, connector_config, connector_cls, problems = validate_document(doc, registry)
    if config is None or connector_config is None or connector_cls is None:
        raise MappingFileError(problems)
    step = _ResourceCompiler(
        doc, config, create_environment(config.lookups), connector_cls.capabilities_for(connector_config), problems
    )
    custom = _custom_schemas(config, doc, problems)
    resources: dict[str, CompiledResource] = {}
    for name, rc in config.resources.items():
        compiled = step.compile(name, rc, _resource_type(name, rc, custom, doc, problems))
        if compiled is not None:
            resources[name] = compiled
    if require_secrets:
        problems.extend(_secret_problems(connector_config, doc))
    digests = _token_digests(config, doc, require_secrets, problems)
    if problems:
        raise MappingFileError(problems)
    return CompiledMapping(doc.file, config, connector_cls, connector_config, resources, digests)


@dataclass(slots=True)
class _ResourceCompiler:
    """Compiles one resource type's block of a mapping; every problem goes to `problems`."""

    doc: Document
    config: MappingConfig
    env: TemplateEnvironment
    caps: Capabilities
    problems: list[Problem]

    @property
    def connector_type(self) -> str:
        return str(self.config.connector["type"])

    def compile(self, name: str, rc: ResourceConfig, rtype: ResourceType) -> CompiledResource | None:
        base: Loc = ("resources", name)
        rules, computed = self._rules(rc, rtype, base)
        match_rule = self._match_rule(name, rc, rtype, rules, base)
        if match_rule is None:
            return None
        self._check_members(name, rc, base)
        self._check_deactivate(rc, base)
        pushdown = self._pushdown(name, rc, rtype, rules, base)
        return CompiledResource(
            name,
            rtype,
            rules,
            match_rule,
            DEFAULT_MATCH[name],
            rc.delete,
            rc.members,
            deactivate=rc.deactivate,
            reads_live=rc.reads == "live" and self.caps.read,
            pushdown=pushdown,
            computed=computed,
            null_when_absent=frozenset(a.field for a in rc.attributes if a.absent == "null"),
            cleared={a.field: a.cleared for a in rc.attributes if a.cleared is not None},
            whole_updates=rc.updates == "whole",
            write_only=frozenset(r.field for r in rules if r.resolved.target.write_only),
        )

    def _rules(self, rc: ResourceConfig, rtype: ResourceType, base: Loc) -> tuple[list[CompiledRule], list[ComputedField]]:
        """Attribute rules and computed fields, each app field written by one rule at most."""
        rules: list[CompiledRule] = []
        computed: list[ComputedField] = []
        fields_seen: dict[str, int] = {}
        for i, rule in enumerate(rc.attributes):
            loc = (*base, "attributes", i)
            if rule.direction != "to_scim":
                if rule.field in fields_seen:
                    message = f"field {rule.field!r} is already written by attributes[{fields_seen[rule.field]}]"
                    self.problems.append(self.doc.problem((*loc, "field"), message))
                fields_seen.setdefault(rule.field, i)
            if rule.scim is None:
                assert rule.to_app is not None
                transform = compile_template(self.env, rule.to_app, {"resource"}, self.doc, (*loc, "to_app"), self.problems)
                if transform is not None:
                    computed.append(ComputedField(rule.field, transform))
                continue
            compiled = _compile_rule(self.env, rule, rtype, self.doc, loc, self.problems)
            if compiled is not None:
                rules.append(compiled)
        return rules, computed

    def _match_rule(
        self, name: str, rc: ResourceConfig, rtype: ResourceType, rules: list[CompiledRule], base: Loc
    ) -> CompiledRule | None:
        """The rule of the attribute that finds the app's record (adoption, recovery); it must be mapped."""
        match_name = rc.match or DEFAULT_MATCH[name]
        match_resolved = rtype.resolve_dotted(match_name)
        found = next(
            (r for r in rules if match_resolved is not None and r.resolved == match_resolved and r.selector is None), None
        )
        if found is None:
            where = (*base, "match") if rc.match else (*base, "attributes")
            self.problems.append(
                self.doc.problem(
                    where,
                    f"{match_name} must be mapped to an app field: it finds the app's record for adoption and crash recovery",
                )
            )
        return found

    def _check_members(self, name: str, rc: ResourceConfig, base: Loc) -> None:
        if rc.members is None:
            return
        if name != "Group":
            self.problems.append(self.doc.problem((*base, "members"), "only Group has members"))
        elif rc.members.via == "connector" and not self.caps.membership:
            message = f"connector {self.connector_type!r} has no member calls (valid: group_field, user_field)"
            self.problems.append(self.doc.problem((*base, "members", "via"), message))
        elif rc.members.via == "user_field" and "User" not in self.config.resources:
            self.problems.append(
                self.doc.problem((*base, "members", "via"), "user_field keeps membership on user records: map User too")
            )

    def _check_deactivate(self, rc: ResourceConfig, base: Loc) -> None:
        if rc.deactivate.via != "action":
            return
        for key in ("disable", "enable"):
            action = getattr(rc.deactivate, key)
            if action not in self.caps.actions:
                valid = ", ".join(sorted(self.caps.actions)) or "none: declare actions in the connector block"
                self.problems.append(
                    self.doc.problem((*base, "deactivate", key), f"the connector has no action {action!r} (valid: {valid})")
                )

    def _pushdown(
        self, name: str, rc: ResourceConfig, rtype: ResourceType, rules: list[CompiledRule], base: Loc
    ) -> list[CompiledRule]:
        """The rules of the attributes whose filters are first asked of the app."""
        pushdown: list[CompiledRule] = []
        for i, attr in enumerate(rc.pushdown):
            resolved = rtype.resolve_dotted(attr)
            target = next(
                (r for r in rules if resolved is not None and r.resolved == resolved and r.selector is None and r.reads), None
            )
            if target is None:
                valid = ", ".join(r.resolved.dotted for r in rules if r.selector is None)
                self.problems.append(
                    self.doc.problem((*base, "pushdown", i), f"{attr!r} is not a mapped {name} attribute (valid: {valid})")
                )
            elif not self.caps.search:
                self.problems.append(
                    self.doc.problem((*base, "pushdown", i), f"connector {self.connector_type!r} cannot search the app")
                )
            else:
                pushdown.append(target)
        return pushdown


def _secret_problems(connector_config: BaseModel, doc: Document) -> list[Problem]:
    """Every secret reference of the connector's options that resolves to nothing."""
    problems = []
    for loc, ref in _secret_refs(connector_config, ("connector",)):
        try:
            ref.resolve()
        except ValueError as exc:
            problems.append(doc.problem(loc, str(exc)))
    return problems


def _token_digests(config: MappingConfig, doc: Document, require_secrets: bool, problems: list[Problem]) -> list[bytes]:
    """The SHA-256 of each inbound bearer token (only the configured digests when secrets are not resolved)."""
    digests = []
    for i, token in enumerate(config.auth.bearer):
        digest = token.digest() if require_secrets or token.sha256 else b""
        if digest == b"":
            continue
        if digest is not None:
            digests.append(digest)
        else:
            where = f"environment variable {token.env}" if token.env else f"file {token.file}"
            problems.append(doc.problem(("auth", "bearer", i), f"the token's {where} is not set"))
    return digests


def _secret_refs(value: Any, loc: Loc) -> list[tuple[Loc, SecretRef]]:
    """Every secret reference inside a connector's options, with where it sits (checked at load, never at request time)."""
    if isinstance(value, SecretRef):
        return [(loc, value)]
    if isinstance(value, BaseModel):
        return [found for name in type(value).model_fields for found in _secret_refs(getattr(value, name), (*loc, name))]
    if isinstance(value, dict):
        return [found for key, item in value.items() for found in _secret_refs(item, (*loc, key))]
    if isinstance(value, list | tuple):
        return [found for i, item in enumerate(value) for found in _secret_refs(item, (*loc, i))]
    return []


def load_mapping(path: Path, registry: ConnectorRegistry, *, require_secrets: bool = True) -> CompiledMapping:
    return compile_mapping(read_document(path), registry, require_secrets=require_secrets)


__all__ = [
    "CompiledMapping",
    "CompiledResource",
    "CompiledRule",
    "ComputedField",
    "TemplateError",
    "Transform",
    "compile_mapping",
    "compile_template",
    "load_mapping",
]
