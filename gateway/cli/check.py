"""`scim-gateway check [--connect] FILE|DIR...`: every problem of each mapping as FILE:LINE:COL: path: message.

With --connect, each app's connector is opened and what the live app lacks (tables, columns, endpoints,
fields) is named at the mapping's line.
"""

from __future__ import annotations

import argparse
import asyncio
import difflib
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from .common import mapping_files

if TYPE_CHECKING:
    from ..connectors.base import Connector
    from ..mapping.compile import CompiledMapping
    from ..mapping.loader import Document, Problem


def cmd_check(args: argparse.Namespace) -> int:
    from ..connectors.registry import load_registry
    from ..mapping.compile import compile_mapping
    from ..mapping.loader import MappingFileError, read_document

    registry = load_registry()
    files = mapping_files(args.files)
    hub_file = getattr(args, "hub", None)
    if not files and not hub_file:
        print("no mapping files given", file=sys.stderr)
        return 2
    problems = 0
    checked: list[CompiledMapping] = []
    for path in files:
        try:
            doc = read_document(path)
            compiled = compile_mapping(doc, registry, require_secrets=False)
        except MappingFileError as exc:
            for problem in exc.problems:
                print(problem)
            problems += len(exc.problems)
            continue
        if args.connect:
            live = asyncio.run(connect_problems(doc, compiled, Path(args.data_dir)))
            for problem in live:
                print(problem)
            problems += len(live)
            if live:
                continue
        kinds = ", ".join(compiled.resources)
        checked.append(compiled)
        print(f"{path}: ok (app {compiled.app}: {kinds}{'; the live app fits' if args.connect else ''})")
    if hub_file:
        problems += check_hub(Path(hub_file), checked if len(checked) == len(files) and files else None)
    return 1 if problems else 0


def check_hub(path: Path, mappings: list[CompiledMapping] | None) -> int:
    """The hub file's problems (and, given every mapping, whether each app it feeds exists and has no IdP of its own)."""
    from ..hub.config import fed_apps_problems, load_hub
    from ..mapping.loader import MappingFileError

    try:
        hub = load_hub(path, require_secrets=False)
    except MappingFileError as exc:
        for problem in exc.problems:
            print(problem)
        return len(exc.problems)
    found = fed_apps_problems(hub, mappings, {}) if mappings is not None else []
    for problem in found:
        print(problem)
    if not found:
        print(f"{path}: ok (hub feeding {', '.join(sorted(hub.config.apps))})")
    return len(found)


async def connect_problems(doc: Document, compiled: CompiledMapping, data_dir: Path) -> list[Problem]:
    """Open the app's connector and name what the live app lacks, at the mapping's lines."""
    from ..connectors.base import AppContext

    connector = compiled.connector_cls(compiled.connector_config, AppContext(compiled.app, data_dir))
    open_error: Exception | None = None
    try:
        try:
            await connector.open()
        except Exception as exc:  # a misfit schema fails open; check_schema below names each misfit
            open_error = exc
        try:
            found = await connector.check_schema()
        except Exception as exc:
            return [doc.problem(("connector",), f"cannot connect: {open_error or exc}")]
        problems = [doc.problem(("connector", *loc), message) for loc, message in found]
        if open_error is not None and not found:
            problems.append(doc.problem(("connector",), f"cannot open: {open_error}"))
        return problems + _field_problems(doc, compiled, connector)
    finally:
        await connector.close()


def _field_problems(doc: Document, compiled: CompiledMapping, connector: Connector) -> list[Problem]:
    """Mapped fields (computed ones and membership fields too) that the live app's records do not have."""
    problems = []
    for kind, rc in compiled.config.resources.items():
        known = connector.fields(kind)
        if known is None:
            continue
        for i, rule in enumerate(rc.attributes):
            if rule.field not in known:
                message = f"the app's {kind} records have no field {rule.field!r}"
                near = difflib.get_close_matches(rule.field, sorted(known), n=1)
                problems.append(
                    doc.problem(
                        ("resources", kind, "attributes", i, "field"), message + (f" (did you mean {near[0]}?)" if near else "")
                    )
                )
        members = rc.members
        if members is not None and members.field is not None:
            holder = "User" if members.via == "user_field" else kind
            holder_fields = connector.fields(holder)
            if holder_fields is not None and members.field not in holder_fields:
                problems.append(
                    doc.problem(
                        ("resources", kind, "members", "field"), f"the app's {holder} records have no field {members.field!r}"
                    )
                )
    return problems


__all__ = ["cmd_check", "connect_problems"]
