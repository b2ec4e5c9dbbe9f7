"""A resource as the provisioner answers it: its store row, its attributes, and its membership."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..store import Member, Row


@dataclass(frozen=True, slots=True)
class Resource:
    """`row`: the SCIM id, version and timestamps; `attributes`: the SCIM attributes (no id, no meta);
    `related`: a group's members or a user's groups, None when they were not asked for."""

    row: Row
    attributes: dict[str, Any]
    related: list[Member] | None = None

    @property
    def id(self) -> str:
        return self.row.id


__all__ = ["Resource"]
