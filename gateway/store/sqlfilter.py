"""Translate a validated SCIM filter into a SQL condition over the store's tables.

The resource's gateway copy is JSON in `r.data`; columns hold id, unique key,
and timestamps. Only attributes the resource type declares reach here (the
filter was validated against it), and each is translated by an explicit rule;
anything without a rule is a 400 invalidFilter, never a dropped condition.
Every value is a bound parameter. Dialect differences (JSON access,
placeholders, text operators, case folding) live in the hook methods that
`PostgresFilter` overrides; the translation itself is shared.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from scim2_models.path import (
    AttrPath,
    CompareOperator,
    Comparison,
    FilterNode,
    LogicalExpr,
    LogicalOperator,
    Not,
    Present,
    ValuePath,
)

from ..scim.errors import invalid_filter
from ..scim.filter import resolve_attr_path
from ..scim.schema import UNIQUE_ATTRIBUTES, Attribute, Resolved, ResourceType

Op = CompareOperator
_SQL_OPS = {Op.eq: "=", Op.ne: "!=", Op.gt: ">", Op.ge: ">=", Op.lt: "<", Op.le: "<="}


def to_utc_iso(value: str) -> str:
    """A dateTime as the store writes it, so text comparison orders correctly."""
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _json_key(name: str) -> str:
    return '"' + name.replace('"', '\\"') + '"'


def _kind(attribute: Attribute) -> str:
    """How a dialect reads a JSON value of this attribute: "boolean", "number" or "text"."""
    return {"boolean": "boolean", "integer": "number", "decimal": "number"}.get(attribute.type, "text")


def _logical(node: FilterNode, term: Callable[[FilterNode], str]) -> str:
    """and / or / not around the terms that `term` translates."""
    if isinstance(node, LogicalExpr):
        joiner = " AND " if node.op == LogicalOperator.and_ else " OR "
        return "(" + joiner.join(_logical(t, term) for t in node.terms) + ")"
    if isinstance(node, Not):
        return f"(NOT {_logical(node.expr, term)})"
    return term(node)


class SqliteFilter:
    """Builds `WHERE` fragments for SQLite (JSON1); `params` collects bound values in order."""

    FALSE = "0"

    def __init__(self, rtype: ResourceType) -> None:
        self.rtype = rtype
        self.params: list[Any] = []

    # -- dialect hooks
    def ph(self, value: Any) -> str:
        self.params.append(value)
        return "?"

    def json_path(self, *names: str) -> str:
        return "$." + ".".join(_json_key(n) for n in names)

    def extract(self, source: str, *names: str, kind: str = "text") -> str:
        # json_extract returns SQL values of the JSON type already: `kind` is for dialects that must cast.
        return f"json_extract({source}, '{self.json_path(*names)}')"

    def element(self, kind: str = "text") -> str:
        """One element of a multi-valued attribute of simple values, inside `each`."""
        return "e.value"

    def each(self, source: str, *names: str) -> str:
        """A FROM item `e` over the elements of an array (`e.value` each element, `e.key` its index)."""
        return f"json_each({source}, '{self.json_path(*names)}') AS e"

    def primary_last(self) -> str:
        """An ORDER BY term over `e` putting the element marked primary first."""
        return f"{self.extract('e.value', 'primary')} IS NOT 1"

    def fold(self, expr: str) -> str:
        return f"scim_lower({expr})"

    def bool_literal(self, value: bool) -> Any:
        return 1 if value else 0

    def contains(self, expr: str, text: str) -> str:
        return f"COALESCE(instr({expr}, {self.ph(text)}) > 0, 0)"

    def starts_with(self, expr: str, text: str) -> str:
        return f"COALESCE(instr({expr}, {self.ph(text)}) = 1, 0)"

    def ends_with(self, expr: str, text: str) -> str:
        p1, p2 = self.ph(text), self.ph(text)
        return f"COALESCE(substr({expr}, length({expr}) - length({p1}) + 1) = {p2}, 0)"

    # -- translation
    def where(self, node: FilterNode) -> str:
        return _logical(node, self._term)

    def _term(self, node: FilterNode) -> str:
        if isinstance(node, ValuePath):
            resolved = resolve_attr_path(self.rtype, node.attr_path)
            return self._exists(resolved, node.val_filter)
        assert isinstance(node, (Comparison, Present))
        resolved = resolve_attr_path(self.rtype, node.attr_path)
        attribute = resolved.attribute
        if (
            isinstance(node, Comparison)
            and node.op == Op.eq
            and isinstance(node.value, str)
            and resolved.urn is None
            and resolved.sub is None
            and attribute.name == UNIQUE_ATTRIBUTES.get(self.rtype.name)
        ):
            # The IdP's lookup before every create (`userName eq "x"`): the indexed, lower-cased unique key, not a
            # scan of every resource's JSON. Same answer: the key is the value lower-cased, as the fold does.
            return f"(r.unique_key = {self.ph(node.value.lower())})"
        if self._is_membership(attribute) or attribute.multi_valued:
            # `emails.value eq "x"` / `emails eq "x"`: some element matches.
            sub = resolved.sub or attribute.sub("value")
            if sub is None:
                raise invalid_filter(f"{node.attr_path} is complex; name one of its sub-attributes")
            inner = Comparison(AttrPath(sub.name), node.op, node.value) if isinstance(node, Comparison) else Present(AttrPath(sub.name))
            return self._exists(Resolved(resolved.urn, attribute), inner)
        if attribute.type == "complex" and resolved.sub is None:
            value_sub = attribute.sub("value")
            if value_sub is None and isinstance(node, Comparison):
                raise invalid_filter(f"{node.attr_path} is complex; name one of its sub-attributes")
            if value_sub is not None:
                resolved = Resolved(resolved.urn, attribute, value_sub)
        expr = self._column(resolved)
        return self._condition(node, expr, resolved.target)

    def sort_expression(self, dotted: str) -> str:
        """The ORDER BY expression for sortBy (validated by the caller); a multi-valued attribute sorts by its primary or first value."""
        resolved = self.rtype.resolve_dotted(dotted)
        if resolved is None:
            raise invalid_filter(f"sortBy: {self.rtype.name} has no attribute {dotted!r}")
        attribute = resolved.attribute
        if self._is_membership(attribute):
            raise invalid_filter(f"sortBy: cannot sort by {dotted}")
        if attribute.multi_valued:
            sub = resolved.sub or attribute.sub("value")
            if sub is None:
                raise invalid_filter(f"sortBy: cannot sort by {dotted}")
            names = [n for n in (resolved.urn, attribute.name) if n]
            expr = (
                f"(SELECT {self.extract('e.value', sub.name, kind=_kind(sub))} FROM {self.each('r.data', *names)}"
                f" ORDER BY {self.primary_last()}, e.key LIMIT 1)"
            )
            target = sub
        else:
            if attribute.type == "complex" and resolved.sub is None:
                sub = attribute.sub("value")
                if sub is None:
                    raise invalid_filter(f"sortBy: {dotted} is complex; name one of its sub-attributes")
                resolved = Resolved(resolved.urn, attribute, sub)
            expr = self._column(resolved)
            target = resolved.target
        if target.type in ("string", "reference") and not target.case_exact:
            expr = self.fold(expr)
        return expr

    def _is_membership(self, attribute: Attribute) -> bool:
        return (self.rtype.name == "Group" and attribute.name == "members") or (
            self.rtype.name == "User" and attribute.name == "groups"
        )

    def _column(self, resolved: Resolved) -> str:
        attribute, sub = resolved.attribute, resolved.sub
        if resolved.urn is None:
            if attribute.name == "id":
                return "r.id"
            if attribute.name == "meta":
                assert sub is not None
                columns = {"created": "r.created", "lastModified": "r.last_modified", "resourceType": "r.type"}
                if sub.name not in columns:
                    raise invalid_filter(f"meta.{sub.name} cannot be filtered on")
                return columns[sub.name]
        names = [n for n in (resolved.urn, attribute.name, sub.name if sub else None) if n]
        return self.extract("r.data", *names, kind=_kind(resolved.target))

    def _condition(self, node: Comparison | Present, expr: str, target: Attribute) -> str:
        if isinstance(node, Present):
            if target.type in ("string", "reference", "binary"):
                return f"({expr} IS NOT NULL AND {expr} != '')"
            return f"({expr} IS NOT NULL)"
        value = node.value
        if value is None:
            return f"({expr} IS NULL)" if node.op == Op.eq else f"({expr} IS NOT NULL)"
        false = self.FALSE
        if target.type == "boolean":
            return f"COALESCE({expr} {_SQL_OPS[node.op]} {self.ph(self.bool_literal(value))}, {false})"
        if target.type in ("integer", "decimal"):
            return f"COALESCE({expr} {_SQL_OPS[node.op]} {self.ph(value)}, {false})"
        if target.type == "dateTime":
            return f"COALESCE({expr} {_SQL_OPS[node.op]} {self.ph(to_utc_iso(value))}, {false})"
        text = value if isinstance(value, str) else str(value)
        if not target.case_exact:
            expr, text = self.fold(expr), text.lower()
        if node.op == Op.co:
            return self.contains(expr, text)
        if node.op == Op.sw:
            return self.starts_with(expr, text)
        if node.op == Op.ew:
            return self.ends_with(expr, text)
        return f"COALESCE({expr} {_SQL_OPS[node.op]} {self.ph(text)}, {false})"

    def _exists(self, resolved: Resolved, val_filter: FilterNode) -> str:
        attribute = resolved.attribute
        if self._is_membership(attribute):
            own, other = ("group_id", "member_id") if attribute.name == "members" else ("member_id", "group_id")
            columns = {"value": f"m.{other}", "type": "m.member_type"} if attribute.name == "members" else {"value": f"m.{other}"}
            cond = _ElementFilter(self, attribute, columns=columns).where(val_filter)
            return f"EXISTS (SELECT 1 FROM members m WHERE m.app = r.app AND m.{own} = r.id AND {cond})"
        names = [n for n in (resolved.urn, attribute.name) if n]
        cond = _ElementFilter(self, attribute).where(val_filter)
        return f"EXISTS (SELECT 1 FROM {self.each('r.data', *names)} WHERE {cond})"


class _ElementFilter:
    """The condition inside `attr[...]`, over one element `e.value` (or a members row)."""

    def __init__(self, outer: SqliteFilter, attribute: Attribute, columns: dict[str, str] | None = None) -> None:
        self.outer = outer
        self.attribute = attribute
        self.columns = columns

    def where(self, node: FilterNode) -> str:
        return _logical(node, self._term)

    def _term(self, node: FilterNode) -> str:
        if isinstance(node, ValuePath):
            raise invalid_filter("a value filter cannot nest inside another value filter")
        assert isinstance(node, (Comparison, Present))
        sub = self.attribute.sub(node.attr_path.attr)
        if sub is None:
            raise invalid_filter(f"{self.attribute.name} has no sub-attribute {node.attr_path.attr!r}")
        if self.columns is not None:
            if sub.name not in self.columns:
                raise invalid_filter(f"{self.attribute.name}.{sub.name} cannot be filtered on")
            expr = self.columns[sub.name]
        elif self.attribute.type == "complex":
            expr = self.outer.extract("e.value", sub.name, kind=_kind(sub))
        else:
            expr = self.outer.element(_kind(sub))
        return self.outer._condition(node, expr, sub)


def _pg_path(names: tuple[str, ...]) -> str:
    """A text[] literal for #> / #>>, every key quoted (URNs hold ':' and '.')."""
    items = ",".join('"' + n.replace("\\", "\\\\").replace('"', '\\"') + '"' for n in names)
    return "'{" + items.replace("'", "''") + "}'"


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


class PostgresFilter(SqliteFilter):
    """The same translation for PostgreSQL: JSONB paths, `$n` placeholders, LIKE with escaped wildcards.

    Text compares and sorts in the "C" collation (code point order, as SQLite and
    the in-memory evaluator do); case folding uses `fold_collation` (a collation
    whose lower() knows more than ASCII).
    """

    FALSE = "false"

    def __init__(self, rtype: ResourceType, first_param: int = 1, fold_collation: str = "default") -> None:
        super().__init__(rtype)
        self.first_param = first_param
        self.fold_collation = fold_collation

    def ph(self, value: Any) -> str:
        self.params.append(value)
        return f"${self.first_param + len(self.params) - 1}"

    def extract(self, source: str, *names: str, kind: str = "text") -> str:
        path = _pg_path(names)
        if kind == "text":
            return f'(({source} #>> {path}) COLLATE "C")'
        raw = f"({source} #> {path})"
        cast = "numeric" if kind == "number" else "boolean"
        # A value of another JSON type reads as missing rather than failing the whole query on a cast.
        return f"(CASE WHEN jsonb_typeof{raw} = '{kind}' THEN {raw}::{cast} END)"

    def element(self, kind: str = "text") -> str:
        return self.extract("e.value", kind=kind)

    def each(self, source: str, *names: str) -> str:
        raw = f"({source} #> {_pg_path(names)})"
        array = f"CASE WHEN jsonb_typeof{raw} = 'array' THEN {raw} ELSE '[]'::jsonb END"
        return f"jsonb_array_elements({array}) WITH ORDINALITY AS e(value, key)"

    def primary_last(self) -> str:
        return "(e.value -> 'primary') IS DISTINCT FROM 'true'::jsonb"

    def fold(self, expr: str) -> str:
        return f'(lower(({expr}) COLLATE "{self.fold_collation}") COLLATE "C")'

    def bool_literal(self, value: bool) -> Any:
        return bool(value)

    def _like(self, expr: str, pattern: str) -> str:
        return f"COALESCE({expr} LIKE {self.ph(pattern)} ESCAPE '\\', false)"

    def contains(self, expr: str, text: str) -> str:
        return self._like(expr, f"%{_like_escape(text)}%")

    def starts_with(self, expr: str, text: str) -> str:
        return self._like(expr, f"{_like_escape(text)}%")

    def ends_with(self, expr: str, text: str) -> str:
        return self._like(expr, f"%{_like_escape(text)}")
