"""The architecture as the code's own imports show it (DESIGN.md, "Layers"): each layer imports only layers
below it, the store knows no SCIM, connectors know no gateway internals, there is no import cycle, and no
module is longer than a reader can hold."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Top to bottom, as in DESIGN.md. A module may import its own layer and the layers below it.
LAYERS: list[set[str]] = [
    {"gateway.cli"},
    {"gateway.app"},
    {"gateway.http"},
    {"gateway.hub"},  # the hub: its directory's runtime and the delivery workers, over the apps' runtimes
    {"gateway.runtime"},
    {"gateway.scim"},  # the protocol: over the provisioner
    {"gateway.provisioning"},
    {
        "gateway.mapping",
        "gateway.store",
        "gateway.auth",
        "gateway.audit",
        "gateway.demo",
        "gateway.admin_auth",
        "gateway.audit_search",
    },
    {"gateway.connectors"},
    {"gateway.schema", "gateway.settings", "gateway.secrets", "gateway.inline_sqlite", "gateway.metrics"},
]
# What a connector (built-in or third-party) may use of the gateway: the contract and its helpers, nothing else.
CONNECTOR_MAY_IMPORT = {"gateway.connectors", "gateway.secrets", "gateway.inline_sqlite"}
MAX_MODULE_LINES = 500


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[0] == "plugins":
        parts[0] = "scim_gateway_plugins"
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules(top: str) -> dict[str, Path]:
    return {_module_name(p): p for p in sorted((ROOT / top).rglob("*.py"))}


def _imports(name: str, path: Path) -> set[str]:
    """Every module `name` imports (relative imports resolved), at any depth of the file (lazy imports too)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)  # `from . import views` names a module
    return found


def _layer(module: str) -> int | None:
    for index, layer in enumerate(LAYERS):
        if any(module == top or module.startswith(top + ".") for top in layer):
            return index
    return None


GATEWAY = _modules("gateway")
PLUGINS = _modules("plugins")


def _gateway_imports(name: str, path: Path) -> set[str]:
    """The gateway modules `name` imports."""
    return {m for m in _imports(name, path) if m in GATEWAY}


def test_every_gateway_module_has_a_layer() -> None:
    assert [name for name in GATEWAY if name != "gateway" and _layer(name) is None] == []


@pytest.mark.parametrize("name", sorted(GATEWAY))
def test_no_module_imports_a_layer_above_its_own(name: str) -> None:
    own = _layer(name)
    if own is None:
        return
    above = sorted(m for m in _gateway_imports(name, GATEWAY[name]) if (layer := _layer(m)) is not None and layer < own)
    assert above == [], f"{name} (layer {own}) imports layers above it: {above}"


def test_the_store_knows_no_scim() -> None:
    store = {n: p for n, p in GATEWAY.items() if n.startswith("gateway.store")}
    offenders = {
        n: sorted(m for m in _gateway_imports(n, p) if m.startswith(("gateway.scim", "gateway.schema", "gateway.mapping")))
        for n, p in store.items()
    }
    assert {n: found for n, found in offenders.items() if found} == {}
    for name, path in store.items():
        text = path.read_text(encoding="utf-8")
        for attribute in ("userName", "displayName"):
            assert attribute not in text, f"{name} names the SCIM attribute {attribute}"


@pytest.mark.parametrize("name", sorted(PLUGINS))
def test_connectors_use_only_the_connector_contract(name: str) -> None:
    used = {m for m in _imports(name, PLUGINS[name]) if m.startswith("gateway.")}
    assert sorted(m for m in used if not m.startswith(tuple(CONNECTOR_MAY_IMPORT))) == []


def test_only_the_shipped_conformance_class_imports_pytest() -> None:
    # Test code in the package, for plugin authors' tests: the gateway itself never imports it, nor pytest.
    conformance = "gateway.connectors.conformance"
    users = {n: p for n, p in GATEWAY.items() if n != conformance}
    assert sorted(n for n, p in users.items() if any(m.split(".")[0] == "pytest" for m in _imports(n, p))) == []
    assert sorted(n for n, p in users.items() if conformance in _imports(n, p)) == []


def test_no_import_cycle() -> None:
    graph = {name: _gateway_imports(name, path) - {name} for name, path in GATEWAY.items()}
    # A package's __init__ re-exporting its own modules is not a cycle between modules.
    graph = {name: {m for m in deps if not name.startswith(m + ".")} for name, deps in graph.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*stack[stack.index(nxt) :], nxt]))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_no_module_is_longer_than_a_reader_can_hold() -> None:
    long = {
        name: n for name, path in GATEWAY.items() if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES
    }
    assert long == {}
