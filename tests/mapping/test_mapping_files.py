"""Mapping files: the shipped examples pass `check`; every bad file is refused with its exact message."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.connectors.registry import load_registry
from gateway.mapping.compile import compile_mapping
from gateway.mapping.loader import MappingFileError, parse_yaml

ROOT = Path(__file__).resolve().parents[2]
BAD = Path(__file__).parent / "bad"
SHIPPED = sorted((ROOT / "mappings").glob("*.yaml"))


def expectations(path: Path) -> list[str]:
    # "{connector types}" is the installed ones: a plugin (the tests' own example among them) adds to the list.
    types = ", ".join(load_registry().names())
    return [
        m.group(1).strip().replace("{connector types}", types) for m in re.finditer(r"^# expect: (.+)$", path.read_text(), re.M)
    ]


@pytest.mark.parametrize("path", sorted(BAD.glob("*.yaml")), ids=lambda p: p.stem)
def test_bad_mapping_is_refused_with_its_message(path: Path) -> None:
    expected = expectations(path)
    assert expected, f"{path.name} declares no '# expect:' line"
    with pytest.raises(MappingFileError) as info:
        compile_mapping(parse_yaml(path.read_text(), str(path)), load_registry(), require_secrets=False)
    messages = [str(p) for p in info.value.problems]
    for want in expected:
        assert any(want in m for m in messages), f"{want!r} not in {messages}"
    # Every message leads with FILE:LINE:COL.
    for message in messages:
        assert re.match(rf"^{re.escape(str(path))}:\d+:\d+: ", message), message


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_mappings_pass_check(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(path)]) == 0
    assert "ok" in capsys.readouterr().out


def test_check_reports_every_problem_and_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(BAD / "two_problems.yaml"), str(BAD / "unknown_top_key.yaml")]) == 1
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) >= 3


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_loading_never_mutates_its_input(path: Path) -> None:
    doc = parse_yaml(path.read_text(), str(path))
    before = copy.deepcopy(doc.data)
    compile_mapping(doc, load_registry(), require_secrets=False)
    assert doc.data == before


def test_schema_command_prints_the_mapping_json_schema(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert set(schema["properties"]) >= {"app", "auth", "connector", "resources"}
    assert schema["additionalProperties"] is False


def test_secret_tokens_resolve_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import hashlib

    text = (ROOT / "mappings" / "demo.yaml").read_text().replace("bearer: []", "bearer:\n    - env: DEMO_TEST_TOKEN")
    doc = parse_yaml(text, "demo.yaml")
    with pytest.raises(MappingFileError, match="environment variable DEMO_TEST_TOKEN is not set"):
        compile_mapping(doc, load_registry())
    monkeypatch.setenv("DEMO_TEST_TOKEN", "s3cret")
    compiled = compile_mapping(doc, load_registry())
    assert compiled.token_digests == [hashlib.sha256(b"s3cret").digest()]
    assert "s3cret" not in repr(compiled.config)


def test_the_editor_schema_accepts_every_shipped_mapping_and_refuses_typos(capsys: pytest.CaptureFixture[str]) -> None:
    """`scim-gateway schema` is what editors validate with: it must accept every real mapping and flag a misspelt key."""
    import json

    import jsonschema
    import yaml

    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    validator = jsonschema.Draft202012Validator(schema)
    for path in SHIPPED:
        document = yaml.safe_load(path.read_text())
        errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(document)]
        assert errors == [], (path.name, errors)
    typo = yaml.safe_load((ROOT / "mappings" / "hr_rest.yaml").read_text())
    typo["connector"]["resources"]["User"]["creat"] = typo["connector"]["resources"]["User"].pop("create")
    assert any("creat" in e.message for e in validator.iter_errors(typo))
