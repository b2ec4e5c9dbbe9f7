"""The connector contract (app records, never SCIM) and the registry of connector types."""

from .base import REQUEST_ID, AppContext, Capabilities, Connector, NativeId, Record
from .errors import AppBadResponse, AppConflict, AppError, AppInvalid, AppNotFound, AppUnavailable
from .registry import ConnectorRegistry, load_registry

__all__ = [
    "REQUEST_ID",
    "AppBadResponse",
    "AppConflict",
    "AppContext",
    "AppError",
    "AppInvalid",
    "AppNotFound",
    "AppUnavailable",
    "Capabilities",
    "Connector",
    "ConnectorRegistry",
    "NativeId",
    "Record",
    "load_registry",
]
