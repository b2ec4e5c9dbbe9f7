"""The HTTP protocol under the gateway: what aiohttp's own parser refuses is answered as a SCIM Error too.

A request line or a header too long for aiohttp's parser (or a request that is no HTTP at all) never reaches
the application: aiohttp's RequestHandler.handle_error answers it, in text/plain. aiohttp has no setting for
that answer, so the gateway serves through a RequestHandler of its own whose handle_error answers the same
statuses as application/scim+json with a SCIM Error body (RFC 7644 §3.12): 414 for the request line, 431 for a
header, 400 for the rest. The parser's limits stay what bounds the memory a request can take.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import LineTooLong
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from ..scim.errors import ScimError
from ..settings import LimitsConfig
from .body import error_response

# aiohttp's parser: the longest header line it reads. A request line may be longer (parser_limits).
MAX_FIELD_SIZE = 16_384


def parser_limits(limits: LimitsConfig) -> dict[str, int]:
    """aiohttp's parser limits (handler_args): request lines well past max_url_bytes, so a long URL is usually
    answered by the gateway's own 414 (with the setting's name); past these, ScimRequestHandler answers."""
    return {"max_line_size": max(65_536, 4 * limits.max_url_bytes), "max_field_size": MAX_FIELD_SIZE}


def parser_error(status: int, exc: BaseException | None) -> ScimError:
    """What the gateway answers for a request aiohttp could not parse or serve (never the request's bytes)."""
    if isinstance(exc, LineTooLong):
        limit = exc.args[1] if len(exc.args) > 1 else "?"
        if limit == MAX_FIELD_SIZE:
            return ScimError(431, f"a request header line is longer than the {MAX_FIELD_SIZE} bytes this server reads")
        return ScimError(
            414,
            f"the request line is longer than the {limit} bytes this server reads: send long filters by POST .../.search",
        )
    if status == 400:
        return ScimError(400, "the request is not valid HTTP/1.1 (its request line or headers cannot be read)")
    if status >= 500:
        return ScimError(status, "internal error; the request may be retried")
    return ScimError(status, "the request could not be served")


class ScimRequestHandler(RequestHandler):
    """aiohttp's RequestHandler, its own error answers as SCIM Error bodies."""

    __slots__ = ()

    def handle_error(
        self, request: BaseRequest, status: int = 500, exc: BaseException | None = None, message: str | None = None
    ) -> web.StreamResponse:
        super().handle_error(request, status, exc, message)  # logs it, and refuses when a response was started
        response = error_response(parser_error(status, exc))
        response.force_close()
        return response


class ScimServer(web.Server):
    """web.Server whose connections are handled by ScimRequestHandler."""

    def __call__(self) -> RequestHandler:
        return ScimRequestHandler(self, loop=self._loop, **self._kwargs)


class ScimAppRunner(web.AppRunner):
    """web.AppRunner serving through ScimServer (aiohttp's own runner has no hook for the handler class)."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # The server the app made, its settings and handlers as they are; only its connections' class differs.
        server.__class__ = ScimServer
        return server


def serve(
    app: web.Application,
    *,
    host: str,
    port: int,
    loop: asyncio.AbstractEventLoop,
    ssl_context: ssl.SSLContext | None = None,
    reuse_port: bool | None = None,
    shutdown_timeout: float = 30,
) -> None:
    """web.run_app's life cycle (signals, graceful shutdown) with ScimAppRunner; returns once stopped by a signal.
    Failures at start-up (the store, a bind) are raised as run_app raises them."""

    async def main() -> None:
        runner = ScimAppRunner(app, handle_signals=True, access_log=None, shutdown_timeout=shutdown_timeout)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port, ssl_context=ssl_context, reuse_port=reuse_port).start()
            while True:
                await asyncio.sleep(3600)
        finally:
            await runner.cleanup()

    asyncio.set_event_loop(loop)
    task = loop.create_task(main())
    try:
        loop.run_until_complete(task)
    except (web.GracefulExit, KeyboardInterrupt):
        pass
    finally:
        try:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    loop.run_until_complete(task)
        finally:
            _cancel_all(loop)
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()


def _cancel_all(loop: asyncio.AbstractEventLoop) -> None:
    tasks: set[asyncio.Task[Any]] = asyncio.all_tasks(loop)
    for task in tasks:
        task.cancel()
    if tasks:
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))


__all__ = ["MAX_FIELD_SIZE", "ScimAppRunner", "ScimRequestHandler", "parser_error", "parser_limits", "serve"]
