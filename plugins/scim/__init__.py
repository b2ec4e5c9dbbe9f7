"""The built-in SCIM connector (`type: scim`): the app itself speaks SCIM 2.0, with the gaps many SaaS apps have."""

from .client import ScimSetupError
from .config import ScimConnectorConfig, ScimMembersConfig, ScimResourceConfig
from .connector import ScimConnector

__all__ = ["ScimConnector", "ScimConnectorConfig", "ScimMembersConfig", "ScimResourceConfig", "ScimSetupError"]
