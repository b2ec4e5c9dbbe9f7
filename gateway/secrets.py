"""Secrets by reference: an environment variable or a file, never inline; values held as SecretStr."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

# Errors and reprs must never show what was given: it may be a secret put in the wrong place.
_STRICT = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)


class SecretRef(BaseModel):
    """A secret by reference (an environment variable or a file), resolved when the connector opens."""

    model_config = _STRICT

    env: str | None = Field(None, min_length=1, description="Name of an environment variable holding the value")
    file: Path | None = Field(None, description="Path of a file holding the value (surrounding whitespace stripped)")

    @model_validator(mode="after")
    def _one_source(self) -> SecretRef:
        if (self.env is None) == (self.file is None):
            raise ValueError("give exactly one of env or file")
        return self

    def describe(self) -> str:
        return f"environment variable {self.env}" if self.env is not None else f"file {self.file}"

    def resolve(self) -> SecretStr:
        """The value; ValueError (naming the reference, never the value) when it cannot be read."""
        if self.env is not None:
            value = os.environ.get(self.env)
            if not value:
                raise ValueError(f"{self.describe()} is not set")
            return SecretStr(value)
        assert self.file is not None
        try:
            value = self.file.read_text("utf-8").strip()
        except OSError as exc:
            raise ValueError(f"cannot read {self.describe()}: {exc.strerror}") from None
        if not value:
            raise ValueError(f"{self.describe()} is empty")
        return SecretStr(value)
