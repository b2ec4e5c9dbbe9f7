"""The seam between the correlation store and one SQL database: what differs between SQLite and PostgreSQL.

The store (correlation.py) writes every statement once, with `?` placeholders, and runs it through a Dialect:
how to connect, migrate and run a transaction; placeholders; JSON in and out of the `data` column; lists of
ids; the clock; row locks; how the database reports a taken unique key. The query renderer (sqlquery.py)
asks it for JSON access, case folding and text matching. A third database is one more subclass.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol, TypeVar

T = TypeVar("T")
K = TypeVar("K")


class Duplicate(Exception):
    """A statement would have broken a unique constraint; the store says which (UniqueConflict, NativeConflict)."""


class DbRow(Protocol):
    """A row a driver answers with, its columns by name."""

    def __getitem__(self, key: str, /) -> Any: ...


class Conn(Protocol):
    """One connection as the store uses it; `sql` has `?` placeholders. Unique violations raise Duplicate."""

    async def execute(self, sql: str, *params: Any) -> int:
        """Run one statement; the number of rows it changed."""
        ...

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...
    async def fetchrow(self, sql: str, *params: Any) -> DbRow | None: ...
    async def fetch(self, sql: str, *params: Any) -> list[DbRow]: ...


class Dialect(ABC):
    #: SQL for "false", for COALESCE around comparisons that meet a missing value.
    false: str = "0"
    #: The LIMIT that means "no limit".
    no_limit: Any = -1
    #: Appended to a SELECT that claims what it reads (a row lock where the database has them).
    for_update: str = ""
    #: The members table's column giving the order members joined in.
    member_order: str = "m.seq"
    #: SQL for the current time in seconds since the epoch, as the journal's `at` keeps it.
    clock: str

    # -- lifetime
    @abstractmethod
    async def open(self) -> None:
        """Connect and apply the migrations not applied yet."""

    @abstractmethod
    async def close(self) -> None: ...

    # -- running statements
    @abstractmethod
    def access(self) -> AbstractAsyncContextManager[Conn]:
        """A connection for reads (no transaction); a failing database raises StoreUnavailable."""

    @abstractmethod
    async def transaction(self, work: Callable[[Conn], Awaitable[T]]) -> T:
        """`work` in one transaction, committed when it returns, rolled back when it raises."""

    def batch(self) -> AbstractAsyncContextManager[None]:
        """Transactions of the calling task inside share one commit where that saves work (default: each its own)."""
        return _no_batch()

    # -- values
    def encode(self, data: dict[str, Any]) -> Any:
        """A JSON object as the `data` and `payload` columns take it."""
        return data

    def decode(self, value: Any) -> dict[str, Any]:
        result: dict[str, Any] = value
        return result

    def chunks(self, items: Sequence[K]) -> list[Sequence[K]]:
        """`items` in pieces small enough for one `among` each."""
        return [items] if items else []

    @abstractmethod
    def among(self, column: str, items: Sequence[str]) -> tuple[str, list[Any]]:
        """`column` is one of `items`: the condition and its parameters."""

    def among_numbers(self, column: str, items: Sequence[int]) -> tuple[str, list[Any]]:
        """`column` (an integer column, its index used) is one of `items`."""
        return f"{column} IN ({','.join('?' * len(items))})", list(items)

    # -- what the query renderer asks
    @abstractmethod
    def extract(self, source: str, keys: tuple[str, ...], kind: str = "text") -> str:
        """The JSON value at `keys` inside `source` (a column or `e.value`) as an SQL value of `kind`."""

    def element(self, kind: str = "text") -> str:
        """One element of a list of plain values, inside `each`."""
        return self.extract("e.value", (), kind)

    @abstractmethod
    def each(self, source: str, keys: tuple[str, ...]) -> str:
        """A FROM item `e` over the elements of the list at `keys` (`e.value` each element, `e.key` its position)."""

    @abstractmethod
    def primary_last(self) -> str:
        """An ORDER BY term over `e` that puts the element marked primary first."""

    @abstractmethod
    def fold(self, expr: str) -> str:
        """`expr` lower-cased, beyond ASCII."""

    def bool_literal(self, value: bool) -> Any:
        return value

    @abstractmethod
    def contains(self, expr: str, text: str, ph: Callable[[Any], str]) -> str: ...
    @abstractmethod
    def starts_with(self, expr: str, text: str, ph: Callable[[Any], str]) -> str: ...
    @abstractmethod
    def ends_with(self, expr: str, text: str, ph: Callable[[Any], str]) -> str: ...


class _NoBatch:
    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc: object) -> None:
        return None


def _no_batch() -> AbstractAsyncContextManager[None]:
    return _NoBatch()


__all__ = ["Conn", "DbRow", "Dialect", "Duplicate"]
