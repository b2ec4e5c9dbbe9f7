"""The installed package carries what `scim-gateway serve` needs in an empty folder (not only the checkout)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if proc.returncode != 0:
        pytest.fail(f"building the wheel failed:\n{proc.stderr[-3000:]}")
    (path,) = out.glob("scim_gateway-*.whl")
    return zipfile.ZipFile(path)


def test_wheel_ships_the_demo_and_schemas(wheel: zipfile.ZipFile) -> None:
    names = set(wheel.namelist())
    for needed in (
        "gateway/demo/demo.yaml",
        "gateway/demo/schema.sql",
        "gateway/schema/data/user.json",
        "gateway/schema/data/group.json",
        "gateway/schema/data/enterprise_user.json",
        "scim_gateway_plugins/sql/connector.py",
        # The admin page's templates, loaded by jinja2's PackageLoader from the installed package.
        *(
            f"gateway/http/templates/admin/{t}.html"
            for t in ("base", "_records", "overview", "audit", "person", "reconcile", "message")
        ),
    ):
        assert needed in names, needed
    # The packaged demo mapping is the one in mappings/ (a symlink in the tree), not a stale copy.
    assert wheel.read("gateway/demo/demo.yaml").decode() == (ROOT / "mappings" / "demo.yaml").read_text()


def test_wheel_registers_the_builtin_connector(wheel: zipfile.ZipFile) -> None:
    (entry_points,) = [n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt")]
    text = wheel.read(entry_points).decode()
    assert "[scim_gateway.connectors]" in text and "sql = scim_gateway_plugins.sql:SqlConnector" in text
    assert "scim-gateway = gateway.cli:main" in text


def test_every_package_directory_is_listed_in_pyproject(wheel: zipfile.ZipFile) -> None:
    # pyproject lists packages by hand (plugins/ installs as scim_gateway_plugins): a new one must not be forgotten.
    shipped = {str(Path(n).parent) for n in wheel.namelist() if n.endswith("__init__.py")}
    on_disk = {str(p.parent.relative_to(ROOT)) for p in (ROOT / "gateway").rglob("__init__.py")}
    on_disk |= {
        str(p.parent.relative_to(ROOT)).replace("plugins", "scim_gateway_plugins", 1)
        for p in (ROOT / "plugins").rglob("__init__.py")
    }
    assert on_disk <= shipped, on_disk - shipped
