"""The external conformance suites from PyPI, run against a live gateway process on the demo app.

scim2-tester (Apache-2.0) and scim-sanity (MIT) were written by others: they
check what our own tests might take for granted. Zero ERROR/CRITICAL from the
first, zero failed/errors from the second.
"""

from __future__ import annotations

from collections import Counter

import httpx2
from scim2_client.engines.httpx2 import SyncSCIMClient
from scim2_tester import check_server
from scim_sanity.probe.runner import run_probe_api

from tests.conftest import LiveGateway


def test_scim2_tester_finds_no_error(live_gateway: LiveGateway) -> None:
    http = httpx2.Client(base_url=live_gateway.base_url, headers={"Authorization": f"Bearer {live_gateway.token}"})
    with http:
        client = SyncSCIMClient(http)
        client.discover()
        results = check_server(client)
    statuses = Counter(r.status.name for r in results)
    bad = [f"{r.status.name} {r.title}: {r.reason}" for r in results if r.status.name in ("ERROR", "CRITICAL")]
    assert not bad, "\n".join(bad)
    # Discovery must have let the suite run its CRUD checks, not stop early.
    assert statuses["SUCCESS"] >= 120, statuses


def test_scim_sanity_probe_passes(live_gateway: LiveGateway) -> None:
    report = run_probe_api(live_gateway.base_url, token=live_gateway.token)
    failures = [r for r in report["results"] if str(r.get("status", "")).lower() in ("fail", "error")]
    assert report["summary"]["failed"] == 0 and report["summary"]["errors"] == 0, failures
    assert report["summary"]["passed"] >= 25, report["summary"]
