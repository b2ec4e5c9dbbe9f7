"""Run a fake legacy app as its own process: `python -m tests.fakes.serve hr|crm PORT`.

For tests that start the gateway as a real process against a fake app (the
external conformance suites on REST-backed apps).
"""

from __future__ import annotations

import sys

from aiohttp import web

from tests.fakes.crm_app import create_crm_app
from tests.fakes.hr_app import create_hr_app

HR_API_KEY = "hr-api-key-conformance-0123"


def main(argv: list[str]) -> None:
    name, port = argv[0], int(argv[1])
    app = create_hr_app(api_key=HR_API_KEY) if name == "hr" else create_crm_app()
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


if __name__ == "__main__":
    main(sys.argv[1:])
