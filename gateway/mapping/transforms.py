"""The template language of value transforms: sandboxed Jinja2 expressions with our filters.

An expression is compiled once, at load, in an immutable sandbox with
StrictUndefined. On top of the sandbox, `check` refuses at load what the
sandbox would only stop at request time, each with its own message:
statements smuggled into an expression, private attributes (`x.__class__`),
Jinja2's globals (`range`, `lipsum`, `cycler`, `joiner`, `namespace`, `dict`:
removed, so they are undefined names) and `self`, calls of methods outside a
short list (`value.format(...)`), `%` string formatting, the filters that pad
or repeat (`center`, `indent`, `wordwrap`, `format`, `batch`, `slice`) or
reach Python (`attr`, `pprint`) or are not a function of the value
(`random`), unknown lookup tables, and any constant part that fails or grows
too large (`'a' * 10**9`, `10 ** 10 ** 10`).

What passes is bounded at run time: a string or list an operation builds
holds at most MAX_SIZE items (`*`, `+`, `replace`, `join`), an integer at most
MAX_INT_BITS bits, and one evaluation builds at most BUDGET items in all (so
`map` cannot repeat a bounded step without bound). There are no loops: no
statements, no `range`, and filters only walk what they are given.
"""

from __future__ import annotations

import contextvars
import datetime as _dt
import difflib
import functools
import unicodedata
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime
from typing import Any

from jinja2 import StrictUndefined, TemplateSyntaxError, Undefined, nodes
from jinja2.environment import TemplateExpression
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

MAX_SIZE = 100_000  # longest string or list one operation may build
MAX_INT_BITS = 128  # largest integer an operation may build
MAX_POWER = 64
BUDGET = 2_000_000  # items (characters, list entries) one evaluation may build in all

# The methods an expression may call, by the type of the value they belong to (anything else: refused).
_STR_METHODS = frozenset(
    {
        "capitalize",
        "casefold",
        "count",
        "endswith",
        "find",
        "index",
        "isalnum",
        "isalpha",
        "isascii",
        "isdecimal",
        "isdigit",
        "islower",
        "isnumeric",
        "isspace",
        "istitle",
        "isupper",
        "join",
        "lower",
        "lstrip",
        "partition",
        "removeprefix",
        "removesuffix",
        "replace",
        "rfind",
        "rindex",
        "rpartition",
        "rsplit",
        "rstrip",
        "split",
        "splitlines",
        "startswith",
        "strip",
        "swapcase",
        "title",
        "upper",
    }
)
_METHODS: tuple[tuple[type | tuple[type, ...], frozenset[str]], ...] = (
    (str, _STR_METHODS),
    ((list, tuple), frozenset({"count", "index"})),
    (dict, frozenset({"get", "items", "keys", "values"})),
    ((_dt.date, _dt.time), frozenset({"isoformat", "strftime", "date", "weekday", "isoweekday"})),
)
ALLOWED_METHODS = frozenset().union(*(names for _, names in _METHODS))
# Filters that pad or repeat by an argument, reach Python objects, or are not a function of their input.
REFUSED_FILTERS = {
    "attr": "it reads attributes by a computed name; write value.name",
    "batch": "it pads by its arguments",
    "center": "it pads by its argument",
    "format": "it is %-formatting; join strings with ~",
    "indent": "it pads by its argument",
    "pprint": "it prints Python objects",
    "random": "a transform must give the same answer for the same value",
    "slice": "it pads by its arguments",
    "wordwrap": "it repeats its wrapstring",
}

_budget: contextvars.ContextVar[list[int]] = contextvars.ContextVar("template_budget")


def weight(value: Any, cap: int) -> int:
    """How many items (characters, list and dict entries) `value` holds, counting shared parts each time; stops past `cap`."""
    total = 0
    stack = [value]
    while stack and total <= cap:
        item = stack.pop()
        if isinstance(item, str | bytes):
            total += len(item)
        elif isinstance(item, list | tuple | set | frozenset):
            total += len(item)
            stack.extend(item)
        elif isinstance(item, dict):
            total += len(item)
            stack.extend(item.keys())
            stack.extend(item.values())
        else:
            total += 1
    return total


def _charge(value: Any) -> Any:
    """Count what an operation built against the evaluation's budget (without one, e.g. at load: against a whole budget)."""
    remaining = _budget.get(None)
    cap = remaining[0] if remaining is not None else BUDGET
    used = weight(value, cap)
    if used > cap:
        raise SecurityError(f"the expression builds more than {BUDGET} items in all")
    if remaining is not None:
        remaining[0] -= used
    return value


def _too_large(size: int) -> None:
    if size > MAX_SIZE:
        raise SecurityError(f"the result would be too large (over {MAX_SIZE} items)")


def _check_replace(text: Any, old: Any, new: Any, count: Any = None) -> None:
    if isinstance(text, str) and isinstance(old, str) and isinstance(new, str) and len(new) > len(old):
        hits = text.count(old) if old else len(text) + 1
        if isinstance(count, int) and count >= 0:
            hits = min(hits, count)
        _too_large(len(text) + hits * (len(new) - len(old)))


def _check_join(separator: Any, items: list[Any]) -> None:
    if isinstance(separator, str) and items:
        _too_large(len(separator) * (len(items) - 1) + weight(items, MAX_SIZE))


class BudgetedExpression(TemplateExpression):
    """A compiled expression whose every call runs under a fresh budget of BUDGET items (it delegates to jinja2's)."""

    def __init__(self, inner: TemplateExpression) -> None:
        self._inner = inner

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        token = _budget.set([BUDGET])
        try:
            return self._inner(*args, **kwargs)
        finally:
            _budget.reset(token)


class TemplateEnvironment(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self, lookups: Mapping[str, Mapping[str, Any]]) -> None:
        super().__init__(undefined=StrictUndefined, autoescape=False)
        self.lookups = {name: dict(table) for name, table in lookups.items()}
        # range, dict, lipsum, cycler, joiner, namespace: none is a transform; gone, each is an undefined name at load.
        self.globals.clear()
        self.filters.update(
            lookup=self._lookup,
            parse_date=parse_date,
            format_date=format_date,
            ascii=to_ascii,
            replace=_bounded_replace(self.filters["replace"]),
            join=_bounded_join(self.filters["join"]),
        )
        for name, why in REFUSED_FILTERS.items():
            self.filters[name] = _refused_filter(name, why)  # kept defined: map('center') fails as clearly as center
        self.filters = {name: _charging(fn) for name, fn in self.filters.items()}

    # -------------------------------------------------------------- parsing and compiling

    def parse(self, source: str, name: str | None = None, filename: str | None = None) -> nodes.Template:
        try:
            return super().parse(source, name, filename)
        except RecursionError:
            raise TemplateSyntaxError("the expression nests too deeply", 1) from None
        except TemplateSyntaxError:
            if _has_statement(self, source):
                raise TemplateSyntaxError(
                    "{% %} statements (include, import, for, macro, set, ...) are not allowed: write one expression", 1
                ) from None
            raise

    def compile_expression(self, source: str, undefined_to_none: bool = True) -> TemplateExpression:
        """The compiled expression; each call runs under a fresh budget of BUDGET items."""
        try:
            return BudgetedExpression(super().compile_expression(source, undefined_to_none))
        except (RecursionError, SyntaxError):  # the compiler, or Python compiling its output, out of depth
            raise TemplateSyntaxError("the expression nests too deeply", 1) from None

    # -------------------------------------------------------------- load-time checks

    def check(self, parsed: nodes.Template) -> list[str]:
        """What is wrong with an expression beyond syntax: each a message."""
        problems: list[str] = []
        body = parsed.body
        if not (len(body) == 1 and isinstance(body[0], nodes.Output) and len(body[0].nodes) == 1):
            return ["only one expression is allowed (no {% %} statements, no text around it)"]
        for node in parsed.find_all((nodes.Getattr, nodes.Getitem)):
            name = (
                node.attr
                if isinstance(node, nodes.Getattr)
                else getattr(node.arg, "value", None)
                if isinstance(node, nodes.Getitem)
                else None
            )
            if isinstance(name, str) and name.startswith("_"):
                problems.append(f"private attribute {name!r} is not allowed")
        for node in parsed.find_all(nodes.Name):
            if node.name == "self":
                problems.append("the name 'self' (the template object) is not allowed")
        for node in parsed.find_all(nodes.Call):
            called = node.node
            name = called.attr if isinstance(called, nodes.Getattr) else getattr(getattr(called, "arg", None), "value", None)
            if isinstance(name, str) and not name.startswith("_") and name not in ALLOWED_METHODS:
                near = difflib.get_close_matches(name, sorted(ALLOWED_METHODS), n=1, cutoff=0.85)
                hint = f" (did you mean {near[0]}?)" if near else ""
                problems.append(f"calling .{name}() is not allowed{hint} (methods: {', '.join(sorted(ALLOWED_METHODS))})")
        for node in parsed.find_all(nodes.Mod):
            if isinstance(node.left, nodes.Const) and isinstance(node.left.value, str):
                problems.append("string formatting with % is not allowed; join strings with ~")
        for node in parsed.find_all(nodes.Filter):
            if node.name in REFUSED_FILTERS:
                problems.append(f"filter {node.name!r} is not allowed: {REFUSED_FILTERS[node.name]}")
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
        if not problems:
            problems.extend(self._constant_problems(body[0].nodes[0]))
        return problems

    def _constant_problems(self, expr: nodes.Expr) -> list[str]:
        """Run, once at load, each largest part that uses no variable: what fails there fails for every value."""
        if not isinstance(expr, nodes.Name) and not any(True for _ in expr.find_all(nodes.Name)):
            if isinstance(expr, nodes.Const | nodes.Slice):  # a slice (`[:20]`) is no expression on its own
                return []
            template = nodes.Template([nodes.Assign(nodes.Name("result", "store"), expr, lineno=1)], lineno=1)
            template.set_environment(self)
            token = _budget.set([BUDGET])
            try:
                compiled = self.from_string(template)
                context = compiled.new_context({})
                for _ in compiled.root_render_func(context):
                    pass
            except SecurityError as exc:
                return [f"{exc} (in a part that uses no variable)"]
            except Exception as exc:  # whatever it is, it fails for every value
                return [f"fails for every value: {exc}"]
            finally:
                _budget.reset(token)
            return []
        problems: list[str] = []
        for child in expr.iter_child_nodes():
            if isinstance(child, nodes.Expr):
                problems.extend(self._constant_problems(child))
        return problems

    # -------------------------------------------------------------- bounded operations

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "%" and isinstance(left, str):
            raise SecurityError("string formatting with % is not allowed; join strings with ~")
        both_int = isinstance(left, int) and isinstance(right, int) and not isinstance(left, bool) and not isinstance(right, bool)
        if operator == "**":
            if isinstance(right, int | float) and abs(right) > MAX_POWER:
                raise SecurityError(f"exponent {right} is too large (the limit is {MAX_POWER})")
            if both_int and right > 0 and abs(left).bit_length() * right > MAX_INT_BITS:
                raise SecurityError(f"the result would be larger than {MAX_INT_BITS} bits")
        if operator == "*":
            if both_int and abs(left).bit_length() + abs(right).bit_length() > MAX_INT_BITS:
                raise SecurityError(f"the result would be larger than {MAX_INT_BITS} bits")
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, str | list | tuple) and isinstance(times, int) and times > 0:
                    _too_large(weight(seq, MAX_SIZE) * times)
        if operator == "+" and isinstance(left, str | list | tuple) and isinstance(right, str | list | tuple):
            _too_large(weight(left, MAX_SIZE) + weight(right, MAX_SIZE))
        return _charge(super().call_binop(context, operator, left, right))

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # jinja's signature: __ names
        """Only the methods in _METHODS may be called, on values of their own type."""
        if isinstance(__obj, Undefined):
            return super().call(__context, __obj, *args, **kwargs)  # StrictUndefined: its own error, naming the attribute
        owner = getattr(__obj, "__self__", None)
        name = getattr(__obj, "__name__", None)
        allowed = next(
            (names for kind, names in _METHODS if isinstance(owner, kind) and not isinstance(owner, type)), frozenset()
        )
        if name not in allowed:
            what = f"{type(owner).__name__}.{name}()" if owner is not None and name else repr(__obj)
            raise SecurityError(f"calling {what} is not allowed")
        if name == "replace" and isinstance(owner, str):
            _check_replace(owner, *args, **kwargs)
        elif name == "join" and isinstance(owner, str) and args:
            args = (list(args[0]), *args[1:])
            _check_join(owner, args[0])
        return _charge(super().call(__context, __obj, *args, **kwargs))

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


def _charging(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A filter whose every result counts against the evaluation's budget (functools.wraps keeps Jinja's pass_* marks)."""

    @functools.wraps(fn)
    def charged(*args: Any, **kwargs: Any) -> Any:
        return _charge(fn(*args, **kwargs))

    return charged


def _bounded_replace(replace: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(replace)
    def bounded(eval_ctx: Any, s: Any, old: Any, new: Any, count: Any = None) -> Any:
        _check_replace(str(s), old, new, count)
        return replace(eval_ctx, s, old, new, count)

    return bounded


def _bounded_join(join: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(join)
    def bounded(eval_ctx: Any, value: Any, d: Any = "", attribute: Any = None) -> Any:
        items = list(value)
        _check_join(d, items)
        return join(eval_ctx, items, d, attribute)

    return bounded


def _refused_filter(name: str, why: str) -> Callable[..., Any]:
    def refused(*_args: Any, **_kwargs: Any) -> Any:
        raise SecurityError(f"filter {name!r} is not allowed: {why}")

    return refused


def _has_statement(env: TemplateEnvironment, source: str) -> bool:
    """Whether `{{ expression }}` failed to parse because the expression holds {% %} (lexed as text, where {% opens a block)."""
    inner = source[3:-3] if source.startswith("{{ ") and source.endswith(" }}") else source
    try:
        return any(token == "block_begin" for _, token, _ in env.lex(inner))
    except TemplateSyntaxError:
        return "{%" in source
