"""The soak, CI-sized (issue 16): 25 s of Entra-shaped traffic from four clients into two workers on PostgreSQL, the
REST app failing 3% of its calls and restarted twice. The documented ten-minute run is `python -m tests.soak`
(docs/operations.md, "Soak"); both assert the same."""

from __future__ import annotations

from pathlib import Path

from tests.services import pg_database, pg_url
from tests.soak import run_soak

__all__ = ["pg_database"]  # the fixture, for this module's tests

MEMORY_GROWTH_MIB = 16.0  # per process, after a warm-up of a quarter of the run


async def test_a_soak_loses_nothing_and_answers_no_5xx_but_the_apps(pg_database: str, tmp_path: Path) -> None:
    report = await run_soak(tmp_path, 25.0, store_url=pg_url(pg_database), clients=4, fail_rate=0.03, seed=7)
    summary = report.summary()
    print(summary)
    assert report.violations == [], summary
    assert report.restarts == 2 and report.app_503 > 0, summary  # the app failed and went away, for real
    assert report.users > 100 and report.groups > 0, summary  # traffic really ran
    assert set(report.requests) <= {200, 201, 204, 404, 503}, summary
    assert len(report.rss_warm) >= 2, summary
    for pid, growth in summary["rss_growth_mib"].items():
        assert growth <= MEMORY_GROWTH_MIB, (pid, summary)
