"""The built-in LDAP connector (`type: ldap`): app records are directory entries, on OpenLDAP or Active Directory."""

from .config import ActiveDirectoryConfig, LdapConnectorConfig, LdapMembersConfig, LdapPlacementConfig, LdapResourceConfig
from .connector import LdapConnector, LdapSetupError

__all__ = [
    "ActiveDirectoryConfig",
    "LdapConnector",
    "LdapConnectorConfig",
    "LdapMembersConfig",
    "LdapPlacementConfig",
    "LdapResourceConfig",
    "LdapSetupError",
]
