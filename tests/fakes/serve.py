"""Run a fake legacy app as its own process: `python -m tests.fakes.serve hr|crm|desk|staff|fresh PORT [options]`.

For tests that start the gateway as a real process against a fake app (the
external conformance suites on REST-backed apps, the crash tests, the soak). hr only:
- `--slow-writes SECONDS`: every write (POST, PATCH, PUT, DELETE) is answered only after that many seconds, so a
  test can catch the gateway with writes in flight;
- `--late-writes SECONDS`: each write is performed at once and answered only after that many seconds (a gateway
  killed meanwhile never learns it happened);
- `--members-unlisted STATUS`: listing a group's members is refused with that HTTP status, except to a caller
  sending the header `X-Test-Reader` (the test itself);
- `--fail-rate P`: that fraction of calls (seeded, `--seed`) is answered 503 before the app does anything;
- `--outage-file FILE`: while FILE exists, every call (but those sending `X-Test-Reader`) is answered 503 before
  the app does anything: an outage the test starts and ends by creating and removing the file;
- `--state FILE`: the app's records are loaded from FILE at start and written to it after every write that
  changed them, so the app can be stopped and started again (a restart) without losing them.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web
from aiohttp.typedefs import Middleware

from tests.fakes.crm_app import create_crm_app
from tests.fakes.desk_app import create_desk_app
from tests.fakes.fresh_app import create_fresh_app
from tests.fakes.hr_app import HR_STATE, HrState, create_hr_app
from tests.fakes.staff_app import create_staff_app

HR_API_KEY = "hr-api-key-conformance-0123"
WRITES = ("POST", "PATCH", "PUT", "DELETE")
TEST_READER = "X-Test-Reader"


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.fakes.serve")
    parser.add_argument("name", choices=["hr", "crm", "desk", "staff", "fresh"])
    parser.add_argument("port", type=int)
    parser.add_argument("--slow-writes", type=float, default=0.0, metavar="SECONDS", help="hr only: delay every write")
    parser.add_argument("--late-writes", type=float, default=0.0, metavar="SECONDS", help="hr only: answer every write late")
    parser.add_argument(
        "--members-unlisted", type=int, default=0, metavar="STATUS", help="hr only: refuse to list group members, with STATUS"
    )
    parser.add_argument("--fail-rate", type=float, default=0.0, metavar="P", help="hr only: answer 503 to this fraction")
    parser.add_argument("--seed", type=int, default=0, help="the --fail-rate draws")
    parser.add_argument("--outage-file", type=Path, metavar="FILE", help="hr only: answer 503 while FILE exists")
    parser.add_argument("--state", type=Path, metavar="FILE", help="hr only: keep the records in FILE across restarts")
    args = parser.parse_args(argv)
    if args.name == "hr":
        app = create_hr_app(api_key=HR_API_KEY)
        state = app[HR_STATE]
        if args.members_unlisted:
            body = '{"error": "listing members is not allowed"}'
            status = args.members_unlisted
            state.fault("GET", r"/groups/[^/]+/members", status=status, body=body, times=sys.maxsize, unless=TEST_READER)
        for method in WRITES:
            if args.slow_writes:
                state.fault(method, ".*", status=None, delay=args.slow_writes, times=sys.maxsize)
            elif args.late_writes:
                state.fault(method, ".*", status=None, delay=args.late_writes, late=True, times=sys.maxsize)
        if args.state is not None:
            _load_state(state, args.state)
        if args.fail_rate or args.state is not None or args.outage_file is not None:
            draws = random.Random(args.seed)
            app.middlewares.append(_failing_and_kept(state, args.fail_rate, draws, args.state, args.outage_file))
    else:
        if args.slow_writes or args.late_writes or args.members_unlisted or args.fail_rate or args.state or args.outage_file:
            parser.error("--slow-writes, --late-writes, --members-unlisted, --fail-rate, --outage-file and --state are for hr")
        factories: dict[str, Callable[[], web.Application]] = {
            "crm": create_crm_app,
            "desk": create_desk_app,
            "staff": create_staff_app,
            "fresh": create_fresh_app,
        }
        app = factories[args.name]()
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, access_log=None)


_KEPT = ("users", "groups", "members", "next_user", "next_group")


def _load_state(state: HrState, path: Path) -> None:
    if not path.exists():
        return
    saved = json.loads(path.read_text())
    state.users = {int(k): v for k, v in saved["users"].items()}
    state.groups = {int(k): v for k, v in saved["groups"].items()}
    state.members = {int(k): v for k, v in saved["members"].items()}
    state.next_user, state.next_group = saved["next_user"], saved["next_group"]


def _save_state(state: HrState, path: Path) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps({name: getattr(state, name) for name in _KEPT}))
    os.replace(partial, path)  # a restart finds the last whole state, never half of one


def _failing_and_kept(
    state: HrState, rate: float, draws: random.Random, path: Path | None, outage: Path | None = None
) -> Middleware:
    @web.middleware
    async def middleware(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        down = outage is not None and TEST_READER not in request.headers and outage.exists()
        if down or (rate and draws.random() < rate):
            return web.json_response({"error": "service unavailable (injected)"}, status=503)
        answer = await handler(request)
        if path is not None and request.method in WRITES and answer.status < 400:
            _save_state(state, path)
        return answer

    return middleware


if __name__ == "__main__":
    main(sys.argv[1:])
