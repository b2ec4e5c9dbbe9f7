"""A mapping's value transforms as the requests run them: each expression compiled once, at load, and called
with its variables (`value`, `resource` or `record`).

Calling a compiled Jinja2 expression builds a render context every time. What does not need one skips it: a
constant (`'A'`, `none`) is its value, a bare name (`value`) is the variable, and an expression of `value` alone
is a function of that value (a transform must give the same answer for the same value; transforms.py refuses
what would not), so its answers for short scalar values are remembered.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jinja2
from jinja2 import meta, nodes

from .loader import Document, Loc, Problem
from .transforms import TemplateEnvironment

_SCALARS = frozenset({str, int, float, bool, type(None)})
MEMO_ENTRIES = 4096  # answers remembered per transform (then forgotten all at once)
MEMO_TEXT = 256  # the longest text value whose answer is remembered
_NOTHING = object()


class TemplateError(Exception):
    """A transform failed on a value at request time (e.g. a filter given the wrong type)."""


@dataclass(slots=True)
class Transform:
    source: str
    _fn: Callable[..., Any]
    #: How the expression runs: "jinja" (the compiled expression), "constant", "name" (one variable as it
    #: is), or "value" (a function of `value` alone, its answers remembered).
    kind: str = "jinja"
    constant: Any = None
    _memo: dict[tuple[type, Any], Any] = field(default_factory=dict, repr=False)

    def __call__(self, **variables: Any) -> Any:
        kind = self.kind
        if kind == "jinja":
            return self._run(variables)
        if kind == "constant":
            return self.constant
        if kind == "name":
            found = variables.get(self.constant, _NOTHING)
            return self._run(variables) if found is _NOTHING else found
        value = variables.get("value")
        if type(value) not in _SCALARS or (type(value) is str and len(value) > MEMO_TEXT):
            return self._run(variables)
        key = (type(value), value)
        answer = self._memo.get(key, _NOTHING)
        if answer is _NOTHING:
            answer = self._run(variables)
            if type(answer) in _SCALARS:  # never a list or dict a caller could change
                if len(self._memo) >= MEMO_ENTRIES:
                    self._memo.clear()
                self._memo[key] = answer
        return answer

    def _run(self, variables: dict[str, Any]) -> Any:
        try:
            return self._fn(**variables)
        except jinja2.UndefinedError as exc:
            # `resource.displayName` of a request without one: say how to read an attribute that may be absent.
            missing = re.search(r"has no attribute '([^']+)'", str(exc))
            hint = f" (an attribute the request may lack is read with get: resource.get('{missing.group(1)}'))" if missing else ""
            raise TemplateError(f"{self.source!r}: {exc}{hint}") from None
        except jinja2.TemplateError as exc:
            raise TemplateError(f"{self.source!r}: {exc}") from None
        except (TypeError, ValueError, ArithmeticError, LookupError) as exc:
            raise TemplateError(f"{self.source!r}: {exc}") from None


def compile_template(
    env: TemplateEnvironment, source: str, allowed: set[str], doc: Document, loc: Loc, problems: list[Problem]
) -> Transform | None:
    try:
        parsed = env.parse("{{ " + source + " }}")
    except jinja2.TemplateSyntaxError as exc:
        problems.append(doc.problem(loc, f"invalid expression: {exc.message}"))
        return None
    names = meta.find_undeclared_variables(parsed)
    undeclared = names - allowed
    if undeclared:
        listed = ", ".join(sorted(undeclared))
        problems.append(doc.problem(loc, f"undefined name {listed} (valid: {', '.join(sorted(allowed))})"))
        return None
    for problem in env.check(parsed):
        problems.append(doc.problem(loc, problem))
    try:
        fn = env.compile_expression(source, undefined_to_none=False)
    except jinja2.TemplateSyntaxError as exc:
        problems.append(doc.problem(loc, f"invalid expression: {exc.message}"))
        return None
    return _shaped(Transform(source, fn), parsed, names)


def _shaped(transform: Transform, parsed: nodes.Template, names: set[str]) -> Transform:
    """The transform, told how it may run without a render context (see the module's docstring)."""
    body = parsed.body
    if len(body) == 1 and isinstance(body[0], nodes.Output) and len(body[0].nodes) == 1:
        expr = body[0].nodes[0]
        if isinstance(expr, nodes.Const) and type(expr.value) in _SCALARS:
            transform.kind, transform.constant = "constant", expr.value
            return transform
        if isinstance(expr, nodes.Name) and expr.ctx == "load":
            transform.kind, transform.constant = "name", expr.name
            return transform
    if names <= {"value"}:
        transform.kind = "value"
    return transform


__all__ = ["MEMO_ENTRIES", "MEMO_TEXT", "TemplateError", "Transform", "compile_template"]
