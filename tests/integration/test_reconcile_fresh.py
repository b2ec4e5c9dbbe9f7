"""Reconcile against the fresh REST fake with its shipped mapping (tests/integration/reconcile_rest.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Scim
from tests.integration.reconcile_rest import nothing_found_then_one_vanished
from tests.integration.test_rest_fresh import MAPPING, scim, state

__all__ = ["scim", "state"]  # the fixtures, for this module's tests


async def test_nothing_found_after_provisioning_then_one_orphan(
    scim: Scim, state: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await nothing_found_then_one_vanished("fresh", MAPPING, scim, state.agents, tmp_path, capsys)
