"""Run a fake legacy app as its own process: `python -m tests.fakes.serve hr|crm|desk|staff|fresh PORT [--slow-writes SECONDS]`.

For tests that start the gateway as a real process against a fake app (the
external conformance suites on REST-backed apps, the crash tests). With
`--slow-writes` the hr fake answers every write (POST, PATCH, PUT, DELETE) only
after that many seconds, so a test can catch the gateway with writes in flight.
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


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.fakes.serve")
    parser.add_argument("name", choices=["hr", "crm", "desk", "staff", "fresh"])
    parser.add_argument("port", type=int)
    parser.add_argument("--slow-writes", type=float, default=0.0, metavar="SECONDS", help="hr only: delay every write")
    args = parser.parse_args(argv)
    if args.name == "hr":
        app = create_hr_app(api_key=HR_API_KEY)
        if args.slow_writes:
            for method in WRITES:
                app[HR_STATE].fault(method, ".*", status=None, delay=args.slow_writes, times=sys.maxsize)
    else:
        if args.slow_writes:
            parser.error("--slow-writes is for the hr fake")
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
