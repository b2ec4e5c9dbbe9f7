"""The template language of value transforms: sandboxed Jinja2 expressions with our filters.

An expression is compiled once, at load, in an immutable sandbox with
StrictUndefined. On top of the sandbox, `check` refuses at load what the
sandbox would only stop at request time: statements smuggled into an
expression, private attributes (`x.__class__`), unknown lookup tables. The
arithmetic that could build huge values (`'x' * 10**9`) is bounded.
"""

from __future__ import annotations

import difflib
import unicodedata
from collections.abc import Mapping
from datetime import UTC, date, datetime
from typing import Any

from jinja2 import StrictUndefined, nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

MAX_SIZE = 100_000  # longest string or list an expression may build
MAX_POWER = 64


class TemplateEnvironment(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**", "+"})

    def __init__(self, lookups: Mapping[str, Mapping[str, Any]]) -> None:
        super().__init__(undefined=StrictUndefined, autoescape=False)
        self.lookups = {name: dict(table) for name, table in lookups.items()}
        self.filters.update(
            lookup=self._lookup,
            parse_date=parse_date,
            format_date=format_date,
            ascii=to_ascii,
        )

    # -------------------------------------------------------------- load-time checks

    def check(self, parsed: nodes.Template) -> list[str]:
        """What is wrong with an expression beyond syntax: each a message."""
        problems: list[str] = []
        body = parsed.body
        if not (len(body) == 1 and isinstance(body[0], nodes.Output) and len(body[0].nodes) == 1):
            return ["only one expression is allowed (no {% %} statements, no text around it)"]
        for node in parsed.find_all((nodes.Getattr, nodes.Getitem)):
            name = node.attr if isinstance(node, nodes.Getattr) else getattr(node.arg, "value", None)
            if isinstance(name, str) and name.startswith("_"):
                problems.append(f"private attribute {name!r} is not allowed")
        for node in parsed.find_all(nodes.Filter):
            if node.name != "lookup":
                continue
            table = node.args[0] if node.args else None
            if not isinstance(table, nodes.Const) or not isinstance(table.value, str):
                problems.append("lookup needs the table's name as a quoted string: value | lookup('departments')")
            elif table.value not in self.lookups:
                valid = ", ".join(sorted(self.lookups)) or "none declared under lookups"
                near = difflib.get_close_matches(table.value, list(self.lookups), n=1)
                hint = f" (did you mean {near[0]}?)" if near else ""
                problems.append(f"unknown lookup table {table.value!r}{hint} (valid: {valid})")
        return problems

    # -------------------------------------------------------------- bounded arithmetic

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "**" and isinstance(right, int | float) and abs(right) > MAX_POWER:
            raise SecurityError(f"exponent {right} is too large")
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, str | list | tuple) and isinstance(times, int) and len(seq) * times > MAX_SIZE:
                    raise SecurityError("the result would be too large")
        if operator == "+" and isinstance(left, str | list | tuple) and isinstance(right, str | list | tuple):
            if len(left) + len(right) > MAX_SIZE:
                raise SecurityError("the result would be too large")
        return super().call_binop(context, operator, left, right)

    # -------------------------------------------------------------- filters

    def _lookup(self, value: Any, table: str, default: Any = ..., reverse: bool = False) -> Any:
        """`value | lookup('departments')`: the table's entry; reverse=true maps back (for to_scim)."""
        entries = self.lookups[table]
        if value is None:
            return None
        if reverse:
            for key, mapped in entries.items():
                if mapped == value or (isinstance(mapped, str) and str(value) == mapped):
                    return key
        else:
            if value in entries:
                return entries[value]
            folded = {str(k).casefold(): v for k, v in entries.items()}
            if str(value).casefold() in folded:
                return folded[str(value).casefold()]
        if default is not ...:
            return default
        raise ValueError(f"{value!r} is not in lookup table {table!r}")


def parse_date(value: Any, fmt: str | None = None) -> datetime | None:
    """A date/time from ISO 8601 (default) or from `fmt` (strptime codes); None stays None."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    text = str(value)
    parsed = datetime.strptime(text, fmt) if fmt else datetime.fromisoformat(text.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def format_date(value: Any, fmt: str = "%Y-%m-%dT%H:%M:%SZ") -> str | None:
    """`value | format_date('%d.%m.%Y')`: an ISO string or date formatted by strftime codes."""
    parsed = parse_date(value)
    if parsed is None:
        return None
    if fmt.endswith("Z"):
        parsed = parsed.astimezone(UTC)
    return parsed.strftime(fmt)


def to_ascii(value: Any) -> Any:
    """`'Zoë' | ascii` -> 'Zoe': accents dropped, for logins and e-mail local parts."""
    if not isinstance(value, str):
        return value
    return unicodedata.normalize("NFKD", value).encode("ascii", "ignore").decode("ascii")


def create_environment(lookups: Mapping[str, Mapping[str, Any]]) -> TemplateEnvironment:
    return TemplateEnvironment(lookups)
