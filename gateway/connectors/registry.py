"""Connector types by name, discovered through the `scim_gateway.connectors` entry-point group.

Built-in connectors (plugins/) register through the same entry points as
third-party ones; the registry says which exist when a name is unknown.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib.metadata import entry_points

from .base import Connector

ENTRY_POINT_GROUP = "scim_gateway.connectors"


@dataclass
class ConnectorRegistry:
    types: dict[str, type[Connector]] = field(default_factory=dict)

    def register(self, name: str, cls: type[Connector]) -> None:
        self.types[name] = cls

    def get(self, name: str) -> type[Connector]:
        try:
            return self.types[name]
        except KeyError:
            known = ", ".join(sorted(self.types)) or "none installed"
            raise LookupError(f"unknown connector type {name!r} (valid: {known})") from None

    def names(self) -> list[str]:
        return sorted(self.types)


def load_registry() -> ConnectorRegistry:
    """Every connector installed as an entry point, built-ins included."""
    registry = ConnectorRegistry()
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        registry.register(ep.name, ep.load())
    return registry
