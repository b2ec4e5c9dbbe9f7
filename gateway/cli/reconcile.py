"""`scim-gateway reconcile APP` (the app against the correlation table, and fixes) and `scim-gateway review` (who
has an account where, as CSV, from the store alone). The comparison and the fixes are the provisioner's
(provisioning/reconcile.py, reconcile_fix.py), the review provisioning/review.py; here: options, output, exit status.

reconcile exits 0 when it found nothing, 1 when it found something, 2 when it could not run.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import json
import logging
import os
import sys
from contextlib import AsyncExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import SecretStr

from .common import STORE_ENV, Stop, audit_log_setting, mapping_files
from .tools import select_app

if TYPE_CHECKING:
    from ..mapping.compile import CompiledMapping
    from ..settings import GatewaySettings
    from ..store import Store

CSV_COLUMNS = ("finding", "type", "id", "native_id", "name", "attribute", "app", "gateway", "plan", "detail")


def _settings(args: argparse.Namespace) -> GatewaySettings:
    from ..settings import GatewaySettings

    store_url = args.store or os.environ.get(STORE_ENV) or None
    return GatewaySettings(
        mappings=[],
        data_dir=Path(args.data_dir),
        store_url=SecretStr(store_url) if store_url else None,
        **audit_log_setting(getattr(args, "audit_log", None)),
    )


def cmd_reconcile(args: argparse.Namespace) -> int:
    from ..connectors.errors import AppError
    from ..provisioning.errors import ProvisioningError
    from ..store import StoreError

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.apply and not args.fix:
        print("reconcile: --apply goes with --fix (--fix alone prints the plan)", file=sys.stderr)
        return 2
    if args.last and args.fix:
        print("reconcile: --last shows the kept report; it fixes nothing (drop --fix)", file=sys.stderr)
        return 2
    try:
        mapping = select_app(args)
        report = asyncio.run(_last(args, mapping.app) if args.last else _reconcile(args, mapping))
    except Stop as stop:
        print(f"reconcile: {stop}", file=sys.stderr)
        return 2
    except (ProvisioningError, AppError) as exc:  # the app is down, or refused to be read
        print(f"reconcile {args.app}: could not run: {exc.detail}", file=sys.stderr)
        return 2
    except StoreError as exc:
        print(f"reconcile {args.app}: cannot use the correlation store: {exc}", file=sys.stderr)
        return 2
    if "error" in report:  # a kept scheduled run that could not run
        print(f"reconcile {args.app}: the run at {report['ran_at']} could not run: {report['error']}", file=sys.stderr)
        return 2
    text = {"json": as_json, "csv": as_csv}.get(args.format, as_table)(report)
    try:
        _write(args.output, text)
    except OSError as exc:
        print(f"reconcile: cannot write {args.output}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    if args.output:
        print(summary(report), file=sys.stderr)
    return 1 if report["found"] else 0


async def _reconcile(args: argparse.Namespace, mapping: CompiledMapping) -> dict[str, Any]:
    from ..app import create_store
    from ..audit import AuditLog
    from ..connectors.base import AppContext
    from ..connectors.errors import AppError
    from ..provisioning.provisioner import Provisioner
    from ..provisioning.reconcile import for_keeping
    from ..provisioning.reconcile_fix import plan

    settings = _settings(args)
    async with AsyncExitStack() as stack:
        store = create_store(settings)
        await store.open()
        stack.push_async_callback(store.close)
        connector = mapping.connector_cls(mapping.connector_config, AppContext(mapping.app, settings.data_dir))
        try:
            await connector.open()
        except AppError as exc:
            raise Stop(2, f"the app {mapping.app} cannot be reached: {exc.detail}") from None
        stack.push_async_callback(connector.close)
        provisioner = Provisioner(mapping, connector, store)
        bar = _Bar() if sys.stderr.isatty() else None
        report = await provisioner.reconcile(bar)
        if bar is not None:
            bar.done()
        report["trigger"] = "cli"
        if args.fix:
            if args.apply:
                audit = AuditLog(settings.audit_file)
                audit.open()
                stack.callback(audit.close)
                report["fixes"] = await provisioner.apply_fixes(report, audit, "cli")
            else:
                report["fixes"] = plan(report)
        await store.save_report(mapping.app, for_keeping(report), report["ran_at"])
        return report


async def _last(args: argparse.Namespace, app: str) -> dict[str, Any]:
    """The newest report the store keeps for the app (a scheduled run's, or the command line's); no app call."""
    from ..app import create_store

    store: Store = create_store(_settings(args))
    await store.open()
    try:
        saved = await store.last_report(app)
    finally:
        await store.close()
    if saved is None:
        raise Stop(2, f"the store keeps no report of {app} yet (run reconcile, or set reconcile.interval)")
    return saved.report


class _Bar:
    """A progress bar on stderr (a terminal only) for long runs: records read of those the table links."""

    def __init__(self) -> None:
        self.shown = False

    def __call__(self, kind: str, read: int, expected: int) -> None:
        if read % 50 and read != expected:
            return
        total = max(expected, read, 1)
        filled = int(30 * min(read, total) / total)
        print(f"\r{kind:<6} [{'#' * filled}{'.' * (30 - filled)}] {read}/{total}", end="", file=sys.stderr, flush=True)
        self.shown = True

    def done(self) -> None:
        if self.shown:
            print("\r" + " " * 60 + "\r", end="", file=sys.stderr, flush=True)


def _write(output: str | None, text: str) -> None:
    if output in (None, "-"):
        sys.stdout.write(text)
        return
    assert output is not None
    Path(output).write_text(text, encoding="utf-8")


# ---------------------------------------------------------------------- output


def summary(report: dict[str, Any]) -> str:
    counts = ", ".join(
        f"{kind}: {c['in_app'] if c['in_app'] >= 0 else '?'} in the app, {c['linked']} linked"
        for kind, c in report["counts"].items()
    )
    found = (
        f"{len(report['orphans'])} orphans, {len(report['vanished'])} vanished, {len(report['drift'])} drifted attributes, "
        f"{len(report['membership'])} groups whose members differ"
    )
    return f"reconcile {report['app']} at {report['ran_at']}: {found} ({counts})"


def as_json(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2, ensure_ascii=False, default=str) + "\n"


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def csv_rows(report: dict[str, Any]) -> list[dict[str, str]]:
    """One row per finding (a membership difference: one per member), then one per fix."""
    rows: list[dict[str, Any]] = []
    for o in report["orphans"]:
        rows.append(
            {"finding": "orphan", "type": o["type"], "id": o.get("resource"), "native_id": o["native_id"], "name": o["name"],
             "attribute": o["match"]["attribute"], "app": o["match"]["value"], "plan": o["plan"], "detail": o["why"]}
        )  # fmt: skip
    for v in report["vanished"]:
        rows.append({"finding": "vanished", "type": v["type"], "id": v["id"], "native_id": v["native_id"], "name": v["name"]})
    for d in report["drift"]:
        rows.append(
            {"finding": "drift", "type": d["type"], "id": d["id"], "native_id": d["native_id"], "name": d["name"],
             "attribute": d["attribute"], "app": d["app"], "gateway": d["gateway"]}
        )  # fmt: skip
    for m in report["membership"]:
        base = {"finding": "membership", "type": "Group", "id": m["group"], "native_id": m["native_id"], "name": m["name"]}
        names = m.get("names", {})
        rows += [{**base, "attribute": "members", "app": member, "detail": names.get(member)} for member in m["only_in_app"]]
        rows += [
            {**base, "attribute": "members", "gateway": member, "detail": names.get(member)} for member in m["only_in_gateway"]
        ]
    for f in report.get("fixes", []):
        rows.append(
            {"finding": "fix", "type": f["type"], "id": f.get("id"), "native_id": f["native_id"], "name": f.get("name"),
             "attribute": f["outcome"], "plan": f["fix"], "detail": f.get("detail")}
        )  # fmt: skip
    return [{column: _text(row.get(column)) for column in CSV_COLUMNS} for row in rows]


def as_csv(report: dict[str, Any]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(CSV_COLUMNS), lineterminator="\n")
    writer.writeheader()
    writer.writerows(csv_rows(report))
    return out.getvalue()


def _table(title: str, header: list[str], rows: list[list[Any]]) -> list[str]:
    if not rows:
        return []
    cells = [header, *[[_text(c) for c in row] for row in rows]]
    widths = [min(40, max(len(r[i]) for r in cells)) for i in range(len(header))]

    def line(row: list[str]) -> str:
        return "  ".join((c if len(c) <= 40 else c[:37] + "...").ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()

    return ["", title, line(header), line(["-" * w for w in widths]), *[line(r) for r in cells[1:]]]


def _names(finding: dict[str, Any], side: str) -> str:
    names = finding.get("names", {})
    return ", ".join(str(names.get(rid) or rid) for rid in finding[side])


def as_table(report: dict[str, Any]) -> str:
    lines = [summary(report)]
    lines += _table(
        "Orphans: accounts in the app that no SCIM resource manages",
        ["type", "native id", "name", "match", "plan", "why"],
        [[o["type"], o["native_id"], o["name"], f"{o['match']['attribute']}={_text(o['match']['value'])}", o["plan"], o["why"]]
         for o in report["orphans"]],
    )  # fmt: skip
    lines += _table(
        "Vanished: linked resources whose record the app no longer has",
        ["type", "id", "native id", "name"],
        [[v["type"], v["id"], v["native_id"], v["name"]] for v in report["vanished"]],
    )
    lines += _table(
        "Drift: attributes the app holds otherwise than the gateway's copy",
        ["type", "id", "name", "attribute", "in the app", "in the gateway"],
        [[d["type"], d["id"], d["name"], d["attribute"], d["app"], d["gateway"]] for d in report["drift"]],
    )
    lines += _table(
        "Membership: group members in the app and in the gateway's table",
        ["group", "name", "only in the app", "only in the gateway"],
        [[m["group"], m["name"], _names(m, "only_in_app"), _names(m, "only_in_gateway")] for m in report["membership"]],
    )
    inactive = report.get("inactive", [])
    if inactive:
        names = ", ".join(f"{o['type']} {o['name'] or o['native_id']}" for o in inactive[:10])
        lines += ["", f"Unmanaged but inactive (not findings): {len(inactive)}: {names}{' ...' if len(inactive) > 10 else ''}"]
    for skipped in report["skipped"]:
        lines.append(f"not checked: {skipped['type']} {skipped['check']}: {skipped['why']}")
    if "fixes" in report:
        applied = any(f["outcome"] != "planned" for f in report["fixes"])
        lines += _table(
            "Fixes" + ("" if applied else " (dry run: nothing was changed; --fix --apply carries them out)"),
            ["fix", "type", "id", "native id", "name", "outcome", "detail"],
            [[f["fix"], f["type"], f.get("id"), f["native_id"], f.get("name"), f["outcome"], f.get("detail")]
             for f in report["fixes"]],
        )  # fmt: skip
        if not report["fixes"]:
            lines.append("no fixes to make")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------- review


def cmd_review(args: argparse.Namespace) -> int:
    from ..store import StoreError

    apps: list[str] | None = None
    try:
        if args.config:
            apps = _app_names(args.config)
        text = asyncio.run(_review(args, apps))
        _write(args.output, text)
    except Stop as stop:
        print(f"review: {stop}", file=sys.stderr)
        return stop.status
    except StoreError as exc:
        print(f"review: cannot use the correlation store: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"review: cannot write {args.output}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    return 0


def _app_names(configs: list[str]) -> list[str]:
    from ..connectors.registry import load_registry
    from ..mapping.compile import load_mapping
    from ..mapping.loader import MappingFileError

    registry = load_registry()
    try:
        return [load_mapping(path, registry, require_secrets=False).app for path in mapping_files(configs)]
    except MappingFileError as exc:
        raise Stop(2, str(exc)) from None


async def _review(args: argparse.Namespace, apps: list[str] | None) -> str:
    from ..app import create_store
    from ..provisioning.review import access_review, write_review_csv

    store: Store = create_store(_settings(args))
    await store.open()
    try:
        if args.who is not None:
            return await _footprint(store, args.who, apps)
        out = io.StringIO()
        write_review_csv(await access_review(store, apps), out)
        return out.getvalue()
    finally:
        await store.close()


async def _footprint(store: Store, who: str, apps: list[str] | None) -> str:
    """One person's accounts across the apps, as JSON; Stop(1) when no account matches."""
    from dataclasses import asdict

    from ..provisioning.review import footprint

    found = await footprint(store, who)
    if found.person is None:
        raise Stop(1, f"no account of any app matches {who!r} (a userName, an externalId or a SCIM id)")
    person = asdict(found.person)
    person["accounts"] = [a for a in person["accounts"] if apps is None or a["app"] in apps]
    return json.dumps({"who": who, "person": person}, indent=2, ensure_ascii=False) + "\n"


def add_commands(sub: Any) -> None:
    """The `reconcile` and `review` subcommands."""
    rec = sub.add_parser("reconcile", help="compare the app with the gateway's table: orphans, vanished, drift (exit 1: found)")
    rec.add_argument("app", help="the app's name (its mapping's `app`)")
    rec.add_argument("--config", action="append", metavar="FILE", help="mapping files or folders (default: the demo)")
    rec.add_argument("--data-dir", default="data", help="where the SQLite store lives (default ./data)")
    rec.add_argument("--store", metavar="URL", help=f"a postgresql:// store (default: ${STORE_ENV}, else SQLite in --data-dir)")
    rec.add_argument("--format", choices=["table", "csv", "json"], default="table", help="output format (default: table)")
    rec.add_argument("--output", metavar="FILE", help="write the report here (default: standard output)")
    rec.add_argument("--fix", action="store_true", help="also print the fixes the findings call for (a dry run)")
    rec.add_argument("--apply", action="store_true", help="with --fix: carry the fixes out, each journaled and audited")
    rec.add_argument("--audit-log", metavar="PATH", help="with --apply: the audit log (default DATA_DIR/audit.log; off: none)")
    rec.add_argument(
        "--last", action="store_true", help="show the newest report the store keeps (e.g. a scheduled run's); no app call"
    )
    rec.set_defaults(func=cmd_reconcile)

    review = sub.add_parser("review", help="access review: every person's accounts and groups in every app, as CSV")
    review.add_argument("--config", action="append", metavar="FILE", help="only the apps of these mappings (default: every app)")
    review.add_argument("--data-dir", default="data", help="where the SQLite store lives (default ./data)")
    review.add_argument(
        "--store", metavar="URL", help=f"a postgresql:// store (default: ${STORE_ENV}, else SQLite in --data-dir)"
    )
    review.add_argument("--output", metavar="FILE", help="write the CSV here (default: standard output)")
    review.add_argument(
        "--who", metavar="NAME", help="one person's footprint instead, as JSON: a userName, an externalId or a SCIM id"
    )
    review.set_defaults(func=cmd_review)


__all__ = ["add_commands", "as_csv", "as_json", "as_table", "cmd_reconcile", "cmd_review", "csv_rows"]
