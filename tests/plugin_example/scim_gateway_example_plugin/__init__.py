"""An example third-party connector for scim-gateway (`type: jsonfile`): each app's records in one JSON file.

Registered through the entry point group `scim_gateway.connectors` in this package's pyproject.toml;
docs/connectors/writing.md walks through it.
"""

from .config import JsonFileConnectorConfig, JsonFileKindConfig
from .connector import JsonFileConnector

__all__ = ["JsonFileConnector", "JsonFileConnectorConfig", "JsonFileKindConfig"]
