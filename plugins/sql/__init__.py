"""The built-in SQL connector (`type: sql`): app records are rows of the app's own tables."""

from .config import SecretRef, SqlConnectorConfig, SqlMembersConfig, SqlTableConfig
from .connector import SqlConnector, SqlSetupError

__all__ = ["SecretRef", "SqlConnector", "SqlConnectorConfig", "SqlMembersConfig", "SqlSetupError", "SqlTableConfig"]
