"""A real SCIM 2.0 server behind the scim connector: scim2-server (PyPI, others' code), run as its own process.

One process per mode (full, without PATCH, without filters) serves a fresh in-memory tenant to every test
(`--dynamic-tenants`: /<tenant>/v2 is created on its first request), so tests never see each other's records.
Tests assert the server's own state over plain HTTP (`TargetTenant`), not through the connector.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from tests.conftest import free_port, need_service

TARGET_TOKEN = "target-scim-token-0123456789"
SERVICE_PROVIDER = "urn:ietf:params:scim:schemas:core:2.0:ServiceProviderConfig"


def service_provider_config(*, patch: bool = True, filter: bool = True) -> dict[str, Any]:
    return {
        "schemas": [SERVICE_PROVIDER],
        "patch": {"supported": patch},
        "bulk": {"supported": False, "maxOperations": 0, "maxPayloadSize": 0},
        "filter": {"supported": filter, "maxResults": 1000},
        "changePassword": {"supported": False},
        "sort": {"supported": True},
        "etag": {"supported": True},
        "authenticationSchemes": [
            {"type": "oauthbearertoken", "name": "bearer_token", "description": "HTTP Bearer Token"},
        ],
    }


class ScimTarget:
    """One scim2-server process on a loopback port."""

    def __init__(self, root: Path, *, patch: bool = True, filter: bool = True) -> None:
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = root / "scim2-server.log"
        self.config = root / "service-provider-config.json"
        self.config.write_text(json.dumps(service_provider_config(patch=patch, filter=filter)))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        command = shutil.which("scim2-server", path=str(Path(sys.executable).parent))
        if command is None:
            need_service("scim2-server is not installed (pip install scim2-server==0.8.3)")
        assert command is not None
        args = [command, "--port", str(self.port), "--bearer-token", TARGET_TOKEN, "--dynamic-tenants"]
        args += ["--service-provider-config", str(self.config)]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                need_service(f"scim2-server exited with {self.proc.returncode}: {self.log.read_text()[-500:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        need_service(f"scim2-server did not start on port {self.port}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def tenant(self, name: str | None = None) -> TargetTenant:
        """A fresh, empty tenant of its own."""
        return TargetTenant(f"{self.url}/{name or 't' + uuid.uuid4().hex[:12]}/v2")


@dataclass
class TargetTenant:
    """One tenant's base URL, and its state read over plain HTTP."""

    base_url: str

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base_url + path, data=data, method=method)
        request.add_header("Authorization", f"Bearer {TARGET_TOKEN}")
        if data is not None:
            request.add_header("Content-Type", "application/scim+json")
        try:
            with urllib.request.urlopen(request, timeout=10) as resp:
                raw = resp.read()
                return resp.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            return exc.code, json.loads(raw) if raw else None

    def all(self, endpoint: str = "/Users") -> list[dict[str, Any]]:
        status, body = self.request("GET", f"{endpoint}?count=1000")
        assert status == 200, body
        return list(body.get("Resources", []))

    def one(self, endpoint: str, native_id: str) -> dict[str, Any] | None:
        status, body = self.request("GET", f"{endpoint}/{quote(native_id, safe='')}")
        if status == 404:
            return None
        assert status == 200, body
        return dict(body)

    def user(self, user_name: str) -> dict[str, Any]:
        found = [u for u in self.all("/Users") if u["userName"].lower() == user_name.lower()]
        assert len(found) == 1, f"the target has {len(found)} users named {user_name}: {found}"
        return found[0]

    def group(self, display_name: str) -> dict[str, Any] | None:
        found = [g for g in self.all("/Groups") if g["displayName"] == display_name]
        return found[0] if found else None


__all__ = ["TARGET_TOKEN", "ScimTarget", "TargetTenant"]
