"""The built-in REST connector (`type: rest`): app records are JSON objects behind the app's own HTTP API."""

from .config import RestConnectorConfig, RestMembersConfig, RestResourceConfig
from .connector import RestConnector, RestSetupError

__all__ = ["RestConnector", "RestConnectorConfig", "RestMembersConfig", "RestResourceConfig", "RestSetupError"]
