"""What the layers below refuse or fail with, as a SCIM client is answered: the one place that decides it.

The provisioner raises provisioning errors, the store its store errors, connectors their app errors (which
the provisioner wraps in AppFailed, naming what it was doing). Everything else is the gateway's own bug.
"""

from __future__ import annotations

from ..connectors.errors import (
    AppBadResponse,
    AppConflict,
    AppCredentialsRefused,
    AppError,
    AppInvalid,
    AppNotFound,
    AppThrottled,
    AppUnavailable,
)
from ..provisioning.breaker import CircuitOpen
from ..provisioning.errors import (
    AppFailed,
    BadAnswer,
    Invalid,
    NotFound,
    ProvisioningError,
    Stale,
    Taken,
    Unavailable,
    Unsupported,
)
from ..store import StoreUnavailable
from .errors import ScimError, bad_gateway, invalid_value, not_found, precondition_failed, unavailable, uniqueness
from .etag import etag

STORE_RETRY_AFTER = 5


def scim_error(exc: BaseException) -> ScimError | None:
    """The SCIM answer to a failure from below; None for one that is no client's business (a bug: 500)."""
    if isinstance(exc, ScimError):
        return exc
    if isinstance(exc, AppFailed):
        return _app_failed(exc.what, exc.cause)
    if isinstance(exc, ProvisioningError):
        return _provisioning(exc)
    if isinstance(exc, StoreUnavailable):
        return unavailable("the gateway's correlation store is unavailable; retry later", STORE_RETRY_AFTER)
    return None


_APP_REASONS: tuple[tuple[type[AppError], str], ...] = (
    (CircuitOpen, "circuit_open"),
    (AppConflict, "app_conflict"),
    (AppNotFound, "app_not_found"),
    (AppInvalid, "app_invalid"),
    (AppBadResponse, "app_bad_response"),
    (AppUnavailable, "app_unavailable"),
)


def failure_reason(exc: BaseException) -> str | None:
    """The audit log's `reason` for a failure below the protocol: a code for what failed, never its detail
    (an app's message may quote the values it refused)."""
    if isinstance(exc, AppFailed):
        return next((code for kind, code in _APP_REASONS if isinstance(exc.cause, kind)), "app_error")
    if isinstance(exc, StoreUnavailable):
        return "store_unavailable"
    return None


def _provisioning(exc: ProvisioningError) -> ScimError:
    if isinstance(exc, NotFound):
        return not_found(exc.detail)
    if isinstance(exc, Invalid):
        return invalid_value(exc.detail)
    if isinstance(exc, Taken):
        return uniqueness(exc.detail)
    if isinstance(exc, Stale):
        return precondition_failed(exc.detail if exc.version is None else f"{exc.detail}: its version is {etag(exc.version)}")
    if isinstance(exc, Unavailable):
        return unavailable(exc.detail, exc.retry_after)
    if isinstance(exc, Unsupported):
        return ScimError(501, exc.detail)
    assert isinstance(exc, BadAnswer), exc
    return bad_gateway(exc.detail)


def _app_failed(what: str, exc: AppError) -> ScimError:
    """The app's failure as the IdP should see it; the detail never carries the app's raw body or secrets."""
    if isinstance(exc, CircuitOpen):  # the app was not called
        return unavailable(f"{what}: {exc.detail}", exc.retry_after or 1)
    if isinstance(exc, AppConflict):
        return uniqueness(f"{what}: the app already has a record with that value ({exc.detail})")
    if isinstance(exc, AppNotFound):
        return not_found(f"{what}: the app has no such record")
    if isinstance(exc, AppInvalid):
        return invalid_value(f"{what}: the app rejected the values ({exc.detail})")
    if isinstance(exc, AppBadResponse):
        return bad_gateway(f"{what}: the app answered something unreadable ({exc.detail})")
    if isinstance(exc, AppCredentialsRefused):  # the operator's to fix; the IdP's retry succeeds once it is
        return unavailable(
            f"{what}: the app refused the gateway's credentials ({exc.detail}): an operator must fix the connector's"
            " auth in this app's mapping",
            exc.retry_after or 60,
        )
    if isinstance(exc, AppThrottled):
        return unavailable(f"{what}: the app asks the gateway to slow down ({exc.detail})", exc.retry_after or 5)
    if isinstance(exc, AppUnavailable):
        return unavailable(f"{what}: the app is unavailable ({exc.detail})", exc.retry_after or 5)
    return bad_gateway(f"{what}: the app failed ({exc.detail})")


__all__ = ["failure_reason", "scim_error"]
