"""A query over an app's stored resources, in the store's own terms: which rows, in which order, which page.

Plain values, built once per request and not changed after (not frozen: they are built on every list request).

The protocol layer compiles a SCIM filter and sortBy into this once (gateway/scim/search.py); the store renders
it as SQL for its dialect (sqlquery.py). Nothing here is SCIM: a condition names row columns, keys of the
stored attributes (JSON), elements of a stored list, and membership rows. Values arrive ready to compare
(folded to lower case where `fold` is set, dateTimes in the store's UTC form).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["text", "number", "boolean"]
Operator = Literal["eq", "ne", "gt", "ge", "lt", "le", "co", "sw", "ew"]
Value = str | int | float | bool | None


@dataclass(slots=True)
class Column:
    """A column of the resource row (text)."""

    name: Literal["id", "unique_key", "created", "last_modified", "type"]
    kind: Kind = "text"


@dataclass(slots=True)
class Field:
    """A value among the stored attributes, by its key path (`("name", "givenName")`)."""

    keys: tuple[str, ...]
    kind: Kind = "text"


@dataclass(slots=True)
class Element:
    """Inside `AnyElement`: the list element itself (`keys` empty) or a key of it."""

    keys: tuple[str, ...] = ()
    kind: Kind = "text"


@dataclass(slots=True)
class Link:
    """Inside `Related`: the other end of a membership row (its id) or the member's type."""

    name: Literal["id", "type"]
    kind: Kind = "text"


Operand = Column | Field | Element | Link


@dataclass(slots=True)
class Compare:
    """`operand op value`; a missing operand (or one of another kind) compares false. `value` None: is (not) null."""

    operand: Operand
    op: Operator
    value: Value
    fold: bool = False  # compare lower-cased (the value is given lower-cased)


@dataclass(slots=True)
class Present:
    """The operand has a value; with `nonempty`, a text that is not empty."""

    operand: Operand
    nonempty: bool = False


@dataclass(slots=True)
class AnyElement:
    """Some element of the stored list at `keys` satisfies `where` (over `Element` operands)."""

    keys: tuple[str, ...]
    where: Condition


@dataclass(slots=True)
class Related:
    """Some membership row of the resource satisfies `where` (over `Link` operands).

    `members`: the resource is the group and the rows name its members; `groups`: it is the member.
    """

    side: Literal["members", "groups"]
    where: Condition


@dataclass(slots=True)
class All:
    terms: tuple[Condition, ...]


@dataclass(slots=True)
class AnyOf:
    terms: tuple[Condition, ...]


@dataclass(slots=True)
class Not:
    term: Condition


Condition = Compare | Present | AnyElement | Related | All | AnyOf | Not


@dataclass(slots=True)
class FirstElement:
    """For sorting: `key` of the list at `keys`, from its element marked primary, else its first."""

    keys: tuple[str, ...]
    key: str
    kind: Kind = "text"


@dataclass(slots=True)
class Sort:
    """Order by `operand` (resources without it last ascending, first descending), then creation order."""

    operand: Column | Field | FirstElement
    descending: bool = False
    fold: bool = False


@dataclass(slots=True)
class Query:
    """Rows of one app and type: those matching `where`, ordered by `sort` (else creation), one page of them."""

    where: Condition | None = None
    sort: Sort | None = None
    start_index: int = 1
    count: int | None = None  # None: every row from start_index on


__all__ = [
    "All",
    "AnyElement",
    "AnyOf",
    "Column",
    "Compare",
    "Condition",
    "Element",
    "Field",
    "FirstElement",
    "Kind",
    "Link",
    "Not",
    "Operand",
    "Operator",
    "Present",
    "Query",
    "Related",
    "Sort",
    "Value",
]
