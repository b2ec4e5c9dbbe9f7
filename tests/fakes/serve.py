"""Run a fake legacy app as its own process: `python -m tests.fakes.serve hr|crm|desk|staff|fresh PORT [--slow-writes SECONDS]`.

For tests that start the gateway as a real process against a fake app (the
external conformance suites on REST-backed apps, the crash tests). With
`--slow-writes` the hr fake answers every write (POST, PATCH, PUT, DELETE) only
after that many seconds, so a test can catch the gateway with writes in flight; with `--late-writes` it
performs each write at once and answers it only after that many seconds (a gateway killed meanwhile never
learns it happened). `--members-unlisted STATUS`: the hr fake refuses to list a group's members (with that HTTP status), except
to a caller sending the header `X-Test-Reader` (the test itself).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from aiohttp import web

from tests.fakes.crm_app import create_crm_app
from tests.fakes.desk_app import create_desk_app
from tests.fakes.fresh_app import create_fresh_app
from tests.fakes.hr_app import HR_STATE, create_hr_app
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
    else:
        if args.slow_writes or args.late_writes or args.members_unlisted:
            parser.error("--slow-writes, --late-writes and --members-unlisted are for the hr fake")
        factories: dict[str, Callable[[], web.Application]] = {
            "crm": create_crm_app,
            "desk": create_desk_app,
            "staff": create_staff_app,
            "fresh": create_fresh_app,
        }
        app = factories[args.name]()
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main(sys.argv[1:])
