"""`serve --log-format json`: one JSON object per line on stderr, a line per request with its id, app,
operation, resource, status, duration and the credential's name; never a secret."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx2

from tests.conftest import TOKEN, USER_URN, LiveGateway

PASSWORD = "Log-Sup3r-Secret-PW!"


def test_json_request_lines(tmp_path: Path) -> None:
    gateway = LiveGateway(tmp_path)
    gateway.start("--log-format", "json")
    try:
        with httpx2.Client(base_url=gateway.base_url, headers={"Authorization": f"Bearer {TOKEN}"}) as http:
            created = http.post(
                "/Users",
                json={"schemas": [USER_URN], "userName": "logged", "password": PASSWORD},
                headers={"Content-Type": "application/scim+json", "X-Request-Id": "trace-log-0001"},
            )
            assert created.status_code == 201, created.text
            assert created.headers["X-Request-Id"] == "trace-log-0001"
            assert http.get(f"/Users/{created.json()['id']}").status_code == 200
            assert http.get("/Users", headers={"Authorization": "Bearer not-the-token-at-all"}).status_code == 401
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and gateway.log.read_text().count("scim_gateway.access") < 3:
            time.sleep(0.05)
    finally:
        gateway.stop()
    text = gateway.log.read_text()
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    access = [line for line in lines if line["logger"] == "scim_gateway.access"]
    assert [(a["method"], a["operation"], a["status"]) for a in access] == [
        ("POST", "create", 201),
        ("GET", "read", 200),
        ("GET", "auth", 401),
    ], access
    post = access[0]
    assert post["request_id"] == "trace-log-0001" and post["app"] == "demo" and post["resource_type"] == "User"
    assert post["resource_id"] == access[1]["path"].rsplit("/", 1)[1] and post["credential"] and post["duration_ms"] >= 0
    assert access[2]["credential"] is None
    assert PASSWORD not in text and TOKEN not in text and "not-the-token-at-all" not in text
