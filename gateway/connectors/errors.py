"""What a connector raises when the app fails; the provisioner translates these to SCIM errors.

Connectors speak app records, so they raise these (never ScimError): the
translation to status and scimType lives in one place, the provisioner.
"""

from __future__ import annotations


class ConnectorSetupError(RuntimeError):
    """open() cannot use the options as given (a reference that resolves to nothing, a table that is not there)."""


class AppError(Exception):
    """The app refused or failed an operation. `detail` must carry no secret."""

    def __init__(self, detail: str, *, retry_after: int | None = None, answer: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.retry_after = retry_after
        # The app's whole answer (bounded, the connector's secrets masked), for the operator's log; the
        # provisioner masks the request's write-only values in it too before anything logs it.
        self.answer = answer


class AppConflict(AppError):
    """The app already has a record with this unique value (its 409, a unique constraint)."""


class AppNotFound(AppError):
    """The app has no such record (its 404)."""


class AppInvalid(AppError):
    """The app rejected the values (its 400/422, a not-null or check constraint)."""


class AppUnavailable(AppError):
    """The app is down, timed out, or answered 5xx / 429: the IdP should retry later."""


class AppThrottled(AppUnavailable):
    """The app asks the gateway to slow down (its 429) for `retry_after` seconds: it is up, not down."""


class AppCredentialsRefused(AppUnavailable):
    """The app refused the gateway's own credentials (its 401 / 403, a failed bind): an operator must fix the
    connector's auth; the app is up, and no retry by the IdP alone will help until then."""


class AppBadResponse(AppError):
    """The app answered something the connector cannot read (HTML, truncated JSON, no id)."""
