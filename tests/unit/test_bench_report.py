"""bench/report.py: issue 17's targets judged from a run's figures, and the RESULTS.md they go into."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench import report


def _rate(rps: float, **more: Any) -> dict[str, Any]:
    return {"rps": rps, "p50_ms": 1.0, "p99_ms": 2.0, "peak_rss_mib": 100.0} | more


def _results(**rates: float) -> dict[str, Any]:
    base = {
        "baseline": _rate(10_000),
        "get": _rate(1_800, directory=100_000),
        "cached": _rate(3_600, directory=100_000),
        "post": _rate(950, directory=100_000),
        "patch": _rate(850, directory=100_000),
        "put": _rate(820, directory=100_000),
        "get_first": _rate(1_850, directory=10_000),
        "cached_first": _rate(3_700, directory=10_000),
        "post_first": _rate(1_000, directory=10_000),
        "patch_first": _rate(900, directory=10_000),
        "put_first": _rate(850, directory=10_000),
        "rest_gateway": _rate(3_000),
        "rest_direct": _rate(10_000),
        "rest_post_gateway": _rate(500, app_users_start=200, app_users_end=1_700),
        "rest_post_direct": _rate(4_000, app_users_start=1_700, app_users_end=13_700),
        "bulk": {
            "users": 100_000,
            "created": 100_000,
            "wall_s": 24.0,
            "users_per_s": 4_166.0,
            "peak_rss_mib": 200.0,
            "requests": 100,
            "batch": 1000,
            "concurrency": 4,
            "request_p50_s": 0.9,
            "request_max_s": 1.2,
            "parts": [
                {"created": 10_000, "wall_s": 2.4, "peak_rss_mib": 150.0},
                {"created": 90_000, "wall_s": 21.6, "peak_rss_mib": 200.0},
            ],
        },
        "workers_1": _rate(1_000),
        "workers_2": _rate(1_800),
        "soak": _rate(
            1_500,
            growth_mib=1.0,
            requests=1_000_000,
            growth_bytes_per_request=1.0,
            rss_warm_mib=190.0,
            rss_end_mib=191.0,
            samples=[{"rss_mib": 190.0}, {"rss_mib": 191.0}],
        ),
    }
    return base | {name: _rate(rps, **{k: v for k, v in base[name].items() if k == "directory"}) for name, rps in rates.items()}


def _verdicts(results: dict[str, Any], users: int = 100_000) -> dict[str, str]:
    return {t["target"]: t["verdict"] for t in report.evaluate_17(results, users)}


def test_every_issue_17_target_is_judged() -> None:
    verdicts = _verdicts(_results())
    assert verdicts == {
        "POST /Users >= 0.09× baseline req/s": "pass",
        "PATCH /Users/{id} >= 0.08× baseline req/s": "pass",
        "PUT /Users/{id} >= 0.08× baseline req/s": "pass",
        "live GET /Users/{id} >= 0.17× baseline req/s": "pass",
        "copy GET /Users/{id} (`reads: cached`) >= 0.35× baseline req/s": "pass",
        "Bulk import of 100,000 users < 25 s, peak RSS < 300 MB": "pass",
        "req/s at 100,000 users within 10% of those at 10,000 (get, cached, post, patch, put)": "pass",
        "REST live GET >= 25% of the fake app's own GET rate": "pass",
        "REST POST, as % of the fake app's own POST rate (reported)": "n/a",
        "--workers 2 >= 1.7× one worker (live GET)": "pass",
        "memory flat after warm-up (growth <= 10 MiB over the run)": "pass",
    }


def test_a_figure_below_its_target_fails_it() -> None:
    verdicts = _verdicts(_results(put=790, rest_gateway=2_400, get=1_600))
    assert verdicts["PUT /Users/{id} >= 0.08× baseline req/s"] == "FAIL"
    assert verdicts["REST live GET >= 25% of the fake app's own GET rate"] == "FAIL"
    assert verdicts["live GET /Users/{id} >= 0.17× baseline req/s"] == "FAIL"
    # 1,600 against 1,850 at 10,000 users: 13.5% slower at the larger size
    assert verdicts["req/s at 100,000 users within 10% of those at 10,000 (get, cached, post, patch, put)"] == "FAIL"


def test_a_scenario_with_no_figure_at_one_size_leaves_the_scale_target_open() -> None:
    target = "req/s at 100,000 users within 10% of those at 10,000 (get, cached, post, patch, put)"
    results = _results()
    results["put_first"] = _rate(0.0, directory=10_000)  # no request completed in the run
    judged = {t["target"]: t for t in report.evaluate_17(results, 100_000)}[target]
    assert judged["verdict"] == "n/a"
    assert "not measured at both sizes: put" in judged["note"]
    results["get"] = _rate(1_000, directory=100_000)
    assert _verdicts(results)[target] == "FAIL"


def test_a_slow_or_large_bulk_import_fails() -> None:
    slow = _results()
    slow["bulk"] = slow["bulk"] | {"wall_s": 26.0}
    assert _verdicts(slow)["Bulk import of 100,000 users < 25 s, peak RSS < 300 MB"] == "FAIL"
    large = _results()
    large["bulk"] = large["bulk"] | {"peak_rss_mib": 300.0}  # 314 MB
    assert _verdicts(large)["Bulk import of 100,000 users < 25 s, peak RSS < 300 MB"] == "FAIL"


def test_a_quick_run_measures_one_size_and_says_so() -> None:
    results = {k: v for k, v in _results().items() if not k.endswith("_first")}
    targets = {t["target"]: t for t in report.evaluate_17(results, 10_000)}
    scale = targets["req/s at 100,000 users within 10% of those at 10,000 (get, cached, post, patch, put)"]
    assert scale["verdict"] == "n/a"
    assert "indicative" in scale["note"]
    assert "get 1,800 req/s" in scale["measured"]
    assert "indicative" in targets["Bulk import of 100,000 users < 25 s, peak RSS < 300 MB"]["note"]


def test_results_md_has_both_target_tables_and_keeps_what_is_outside_the_markers(tmp_path: Path) -> None:
    results = _results()
    doc = {
        "command": "python -m bench",
        "date": "2026-12-03 15:00 UTC",
        "mode": "full",
        "machine": {"cores": 2, "cpu_model": "x", "memory": "1 GiB", "python": "3.11", "aiohttp": "3", "kernel": "6"},
        "load_average_before": "1 1 1",
        "load_average_after": "1 1 1",
        "elapsed_min": 1.0,
        "generator": "wrk",
        "connections": 32,
        "duration_s": 15.0,
        "warmup_s": 3.0,
        "pinning": "none",
        "store": "SQLite",
        "sizes": {
            "users": 100_000,
            "first_users": 10_000,
            "bulk_batch": 1000,
            "bulk_concurrency": 4,
            "big_group": 10_000,
            "small_groups": 100,
            "hr_users": 1000,
            "soak_requests": 1_000_000,
        },
        "scenarios": results,
        "errors": {},
        "targets": report.evaluate(results, 100_000),
        "targets_17": report.evaluate_17(results, 100_000),
    }
    path = tmp_path / "RESULTS.md"
    path.write_text(report.START + "\nstale figures\n" + report.END + "\n\n## Issue 17: the REST connector\n\nkept\n")
    report.write_markdown(path, doc)
    text = path.read_text()
    assert "## Targets (issue 17)" in text and "## Targets (issue 6)" in text
    assert "| PUT /Users/{id} (the whole user, its own userName, a new title) | 820 |" in text
    assert "12.5% of the fake's own POST rate" in text
    assert "measured first at 10,000 users, then again at 100,000" in text
    assert "stale figures" not in text and text.endswith("## Issue 17: the REST connector\n\nkept\n")
