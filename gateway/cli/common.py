"""What the commands share: environment variable names, mapping files from the command line, a clean stop."""

from __future__ import annotations

from pathlib import Path
from typing import Any

TOKEN_ENV = "SCIM_GATEWAY_TOKEN"
DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 8080  # where `serve` listens, and `status` asks, by default
STORE_ENV = "SCIM_GATEWAY_STORE"
METRICS_TOKEN_ENV = "SCIM_GATEWAY_METRICS_TOKEN"  # a bearer token /metrics then requires (serve) and sends (status)


class Stop(Exception):
    """A command cannot go on: print the message, exit with `status` (2: the command line is wrong; 1: it failed)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def audit_log_setting(value: str | None) -> dict[str, Any]:
    """`--audit-log` as the settings take it: nothing given, the default (DATA_DIR/audit.log); `off`, none; else the
    path, relative to the working directory as any path given on the command line."""
    if value is None:
        return {}
    return {"audit_log": None if value == "off" else Path(value).expanduser().absolute()}


def mapping_files(configs: list[str]) -> list[Path]:
    """The mapping files named on the command line, a folder standing for its *.yaml / *.yml files."""
    files: list[Path] = []
    for item in configs:
        path = Path(item)
        if path.is_dir():
            files.extend(sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml")))
        else:
            files.append(path)
    return files


__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "METRICS_TOKEN_ENV",
    "STORE_ENV",
    "TOKEN_ENV",
    "Stop",
    "audit_log_setting",
    "mapping_files",
]
