"""The connector contract (app records, never SCIM) and the registry of connector types."""

from .base import REQUEST_ID, AppContext, Capabilities, Connector, NativeId, Record
from .errors import (
    AppBadResponse,
    AppConflict,
    AppCredentialsRefused,
    AppError,
    AppInvalid,
    AppNotFound,
    AppThrottled,
    AppUnavailable,
)
from .registry import ConnectorRegistry, load_registry

__all__ = [
    "REQUEST_ID",
    "AppBadResponse",
    "AppConflict",
    "AppContext",
    "AppCredentialsRefused",
    "AppError",
    "AppInvalid",
    "AppNotFound",
    "AppThrottled",
    "AppUnavailable",
    "Capabilities",
    "Connector",
    "ConnectorRegistry",
    "NativeId",
    "Record",
    "load_registry",
]
