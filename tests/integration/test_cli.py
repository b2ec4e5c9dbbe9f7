"""The command line as a new user meets it: the demo banner's curl line works, bad mappings stop `serve`."""

from __future__ import annotations

import json
import re
import shlex
import urllib.request
from pathlib import Path

import pytest

from gateway.cli import main
from tests.conftest import LiveGateway

ROOT = Path(__file__).resolve().parents[2]


def test_serve_prints_a_curl_line_that_works(live_gateway: LiveGateway) -> None:
    log = live_gateway.log.read_text()
    assert f"SCIM base URL: {live_gateway.base_url}" in log
    # A real token (here by --token) is never printed: the curl line reads it from $SCIM_GATEWAY_TOKEN.
    assert live_gateway.token not in log and "Bearer token:  the one given by --token (not shown)" in log
    (line,) = re.findall(r"^Try:\s+(curl .+)$", log, re.M)
    args = shlex.split(line)
    header = args[args.index("-H") + 1]
    name, _, value = header.partition(": ")
    value = value.replace("$SCIM_GATEWAY_TOKEN", live_gateway.token)
    request = urllib.request.Request(args[-1], headers={name: value})
    with urllib.request.urlopen(request, timeout=10) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("application/scim+json")
        assert json.loads(resp.read())["schemas"] == ["urn:ietf:params:scim:api:messages:2.0:ListResponse"]


def test_serve_refuses_to_start_on_a_bad_mapping(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bad = ROOT / "tests" / "mapping" / "bad" / "unknown_attribute.yaml"
    assert main(["serve", "--config", str(bad), "--data-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "User has no attribute 'usrName' (did you mean userName?)" in err
    assert "not starting" in err


def test_the_demo_token_warning_is_loud(tmp_path: Path) -> None:
    # Without --token or SCIM_GATEWAY_TOKEN the demo runs on a fixed token, and says so.
    gateway = LiveGateway(tmp_path, token="")
    gateway.start()
    try:
        log = gateway.log.read_text()
        assert "DEMO token" in log and "demo-token-not-for-production" in log
    finally:
        gateway.stop()


def test_dockerfile_installs_like_the_readme_and_runs_serve() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    readme = (ROOT / "README.md").read_text()
    assert "pip install ." in dockerfile and "pip install ." in readme
    (cmd,) = re.findall(r"^CMD (\[.+\])$", dockerfile, re.M)
    assert json.loads(cmd)[:2] == ["scim-gateway", "serve"]


def test_a_busy_port_is_a_clear_message_not_a_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--port", str(port), "--data-dir", str(tmp_path), "--token", "t"]) == 1
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port}" in err and "--port" in err and "Traceback" not in err


def test_serve_names_every_unset_connector_secret_before_starting(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("HR_API_URL", "HR_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HR_SCIM_TOKEN", "t")
    assert main(["serve", "--config", str(ROOT / "mappings" / "hr_rest.yaml"), "--data-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert re.search(r"hr_rest.yaml:\d+:\d+: connector.base_url: environment variable HR_API_URL is not set", err), err
    assert re.search(r"hr_rest.yaml:\d+:\d+: connector.auth.key: environment variable HR_API_KEY is not set", err), err
    assert "2 problem(s): not starting" in err


def test_serve_stops_with_one_line_when_the_app_does_not_fit_its_mapping(tmp_path: Path) -> None:
    import sqlite3
    import subprocess
    import sys

    mapping = tmp_path / "typo.yaml"
    mapping.write_text(
        'app: typo\nconnector:\n  type: sql\n  dsn: "sqlite:///{data_dir}/typo.db"\n  tables:\n    User: {table: employes, key: id}\n'
        "resources:\n  User:\n    attributes:\n      - {scim: userName, field: login}\n"
    )
    (tmp_path / "data").mkdir()
    db = sqlite3.connect(tmp_path / "data" / "typo.db")
    db.executescript("CREATE TABLE employees (id INTEGER PRIMARY KEY, login TEXT);")
    db.close()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway.cli",
            "serve",
            "--config",
            str(mapping),
            "--data-dir",
            str(tmp_path / "data"),
            "--token",
            "t",
            "--port",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert done.returncode == 1
    assert "cannot start: app typo (" in done.stderr and "no table 'employes' (did you mean employees?)" in done.stderr, (
        done.stderr
    )
    assert "Traceback" not in done.stderr
