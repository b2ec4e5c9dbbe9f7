"""What a provisioning operation refuses or fails with, in the provisioner's own terms.

The protocol layer decides what each means to a SCIM client (gateway/scim/errors.py: `scim_error`); nothing
here knows a status code. A detail names the problem and never carries a secret or the app's raw answer.
"""

from __future__ import annotations

from ..connectors.errors import AppError


class ProvisioningError(Exception):
    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class NotFound(ProvisioningError):
    """No such resource (or resource type) in this app."""


class Invalid(ProvisioningError):
    """The resource cannot be written as given: a required name missing, a reference to nothing, a transform refusing it."""


class Taken(ProvisioningError):
    """Its unique name is held by another resource of the app."""


class Stale(ProvisioningError):
    """The write named a version (If-Match) the resource is no longer at."""

    def __init__(self, detail: str, version: int | None = None) -> None:
        super().__init__(detail)
        self.version = version


class Unavailable(ProvisioningError):
    """Not now: the resource is busy, the app's circuit is open, or the app is down. Retry after `retry_after` seconds."""

    def __init__(self, detail: str, retry_after: int) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class Unsupported(ProvisioningError):
    """The app's connector cannot do this at all (list its records, say)."""


class AppFailed(ProvisioningError):
    """The app refused or failed the call made for `what`; `cause` says how."""

    def __init__(self, what: str, cause: AppError) -> None:
        super().__init__(f"{what}: {cause.detail}")
        self.what = what
        self.cause = cause


class BadAnswer(ProvisioningError):
    """The app answered, but with something the write cannot stand on (another resource's id, an untranslatable record)."""


__all__ = ["AppFailed", "BadAnswer", "Invalid", "NotFound", "ProvisioningError", "Stale", "Taken", "Unavailable", "Unsupported"]
