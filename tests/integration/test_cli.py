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
    assert f"Bearer token:  {live_gateway.token}" in log
    (line,) = re.findall(r"^Try:\s+(curl .+)$", log, re.M)
    args = shlex.split(line)
    header = args[args.index("-H") + 1]
    name, _, value = header.partition(": ")
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
