"""A list query as the protocol layer hands it to the store: a validated filter, sort, and page."""

from __future__ import annotations

from dataclasses import dataclass

from scim2_models.path import FilterNode


@dataclass(slots=True)
class Query:
    filter: FilterNode | None = None
    sort_by: str | None = None  # canonical dotted path, validated by the caller
    descending: bool = False
    start_index: int = 1
    count: int | None = None
