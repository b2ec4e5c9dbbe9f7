"""A store Query as SQL over the resources table (`r`), for one dialect.

The stored attributes are JSON in `r.data`. Every value is a bound parameter (`?`); JSON key paths are
literals the dialect quotes. Comparisons that meet a missing value are false, never null, so NOT and OR
behave as the in-memory evaluator does.
"""

from __future__ import annotations

from typing import Any

from .dialect import Dialect
from .query import (
    All,
    AnyElement,
    AnyOf,
    Column,
    Compare,
    Condition,
    Element,
    Field,
    FirstElement,
    Link,
    Not,
    Operand,
    Present,
    Related,
    Sort,
)

_SQL_OPS = {"eq": "=", "ne": "!=", "gt": ">", "ge": ">=", "lt": "<", "le": "<="}
_COLUMNS = {
    "id": "r.id",
    "unique_key": "r.unique_key",
    "created": "r.created",
    "last_modified": "r.last_modified",
    "type": "r.type",
}
# Membership rows as seen from the resource: (its own column, the other end's column).
_SIDES = {"members": ("group_id", "member_id"), "groups": ("member_id", "group_id")}


class SqlQuery:
    """The WHERE and ORDER BY of one statement; `params` collects the bound values in order."""

    def __init__(self, dialect: Dialect) -> None:
        self.d = dialect
        self.params: list[Any] = []
        self._side: str | None = None  # inside Related: which end of the membership row is the resource

    def ph(self, value: Any) -> str:
        self.params.append(value)
        return "?"

    def where(self, condition: Condition) -> str:
        if isinstance(condition, All):
            return "(" + " AND ".join(self.where(t) for t in condition.terms) + ")"
        if isinstance(condition, AnyOf):
            return "(" + " OR ".join(self.where(t) for t in condition.terms) + ")"
        if isinstance(condition, Not):
            return f"(NOT {self.where(condition.term)})"
        if isinstance(condition, Compare):
            return self._compare(condition)
        if isinstance(condition, Present):
            expr = self.operand(condition.operand)
            if condition.operand.kind == "text" and condition.nonempty:
                return f"({expr} IS NOT NULL AND {expr} != '')"
            return f"({expr} IS NOT NULL)"
        if isinstance(condition, AnyElement):
            return f"EXISTS (SELECT 1 FROM {self.d.each('r.data', condition.keys)} WHERE {self.where(condition.where)})"
        assert isinstance(condition, Related)
        own = _SIDES[condition.side][0]
        outer, self._side = self._side, condition.side
        try:
            inner = self.where(condition.where)
        finally:
            self._side = outer
        return f"EXISTS (SELECT 1 FROM members m WHERE m.app = r.app AND m.{own} = r.id AND {inner})"

    def order(self, sort: Sort | None) -> str:
        """ORDER BY terms: creation order, after `sort` (RFC 7644 §3.4.2.3: without the attribute last ascending)."""
        if sort is None:
            return "r.seq"
        operand = sort.operand
        if isinstance(operand, FirstElement):
            value = self.d.extract("e.value", (operand.key,), operand.kind)
            expr = f"(SELECT {value} FROM {self.d.each('r.data', operand.keys)} ORDER BY {self.d.primary_last()}, e.key LIMIT 1)"
        else:
            expr = self.operand(operand)
        if sort.fold:
            expr = self.d.fold(expr)
        direction = "DESC" if sort.descending else "ASC"
        return f"({expr}) IS NULL {direction}, {expr} {direction}, r.seq"

    def operand(self, operand: Operand) -> str:
        if isinstance(operand, Column):
            return _COLUMNS[operand.name]
        if isinstance(operand, Field):
            return self.d.extract("r.data", operand.keys, operand.kind)
        if isinstance(operand, Element):
            return self.d.extract("e.value", operand.keys, operand.kind) if operand.keys else self.d.element(operand.kind)
        assert isinstance(operand, Link) and self._side is not None, "a Link outside Related"
        return f"m.{_SIDES[self._side][1]}" if operand.name == "id" else "m.member_type"

    def _compare(self, node: Compare) -> str:
        expr = self.operand(node.operand)
        if node.value is None:
            return f"({expr} IS NULL)" if node.op == "eq" else f"({expr} IS NOT NULL)"
        kind = node.operand.kind
        value: Any = self.d.bool_literal(bool(node.value)) if kind == "boolean" else node.value
        if kind == "text":
            if node.fold:
                expr = self.d.fold(expr)
            if node.op in ("co", "sw", "ew"):
                match = {"co": self.d.contains, "sw": self.d.starts_with, "ew": self.d.ends_with}[node.op]
                return match(expr, str(value), self.ph)
        condition = f"{expr} {_SQL_OPS[node.op]} {self.ph(value)}"
        if isinstance(node.operand, Column):
            return f"({condition})"  # never null; bare, so an index on the column serves it
        return f"COALESCE({condition}, {self.d.false})"


__all__ = ["SqlQuery"]
