"""The REST connector: an app's records are JSON objects behind its own HTTP API.

Every call goes through `_Http.call`: rate limit, auth, timeout, retries of
idempotent calls, and the translation of the app's answer into an AppError.
Records cross this module flattened: nested JSON objects become dotted field
names (`profile.name.first`) on the way in, and dotted fields nest again in
request bodies, so a mapping names nested fields directly.
"""

from __future__ import annotations

import asyncio
import difflib
import functools
import json
import logging
import random
import re
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import aclosing
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar
from urllib.parse import quote

import aiohttp
import orjson
from pydantic import BaseModel
from yarl import URL

from gateway.connectors.base import REQUEST_ID, WRITE_KEY, AppContext, Capabilities, Connector, NativeId, Record
from gateway.connectors.errors import (
    AppBadResponse,
    AppConflict,
    AppCredentialsRefused,
    AppError,
    AppInvalid,
    AppNotFound,
    AppThrottled,
    AppUnavailable,
    ConnectorSetupError,
)
from gateway.secrets import SecretRef

from .config import (
    VALUE_PLACEHOLDER,
    ApiKeyAuthConfig,
    BasicAuthConfig,
    BearerAuthConfig,
    CursorPagination,
    LinkHeaderPagination,
    ListCallConfig,
    NextLinkPagination,
    NoPagination,
    OAuth2ClientCredentialsConfig,
    OffsetPagination,
    PagePagination,
    PaginationConfig,
    RestConnectorConfig,
    RestMembersConfig,
    RestResourceConfig,
    _Operation,
)
from .transport import (
    MASK,
    RETRY_AFTER,
    OAuth2Token,
    Secrets,
    TokenBucket,
    basic_auth,
    read_body,
    resolve,
    resolve_url,
    retry_after,
    short,
)

MAX_PAGES = 100_000  # a guard against an app whose pagination never ends
log = logging.getLogger(__name__)

DETAIL_CHARS = 200
SAMPLE = 100  # records of each kind check --connect reads
SAMPLE_GROUPS = 5  # groups whose member lists it reads, for one that is not empty
LOGGED_BYTES = 4000  # of an app's error answer, in the log
IDEMPOTENT = frozenset({"GET", "PUT", "DELETE", "HEAD", "OPTIONS"})
BACKOFF_BASE = 0.25  # seconds before the first retry; doubled each time, with jitter


class RestSetupError(ConnectorSetupError):
    """The config cannot be used as given (a secret reference that resolves to nothing, a bad base URL): raised by open()."""


# ---------------------------------------------------------------- records: dotted fields <-> nested JSON


_SCALARS = frozenset({str, int, float, bool, type(None), list})  # what JSON values are when not objects


def flatten(obj: Mapping[str, Any], prefix: str = "") -> Record:
    """Nested objects become dotted keys; lists (and empty objects) stay values."""
    out: Record = {}
    for key, value in obj.items():
        name = prefix + key if prefix else key
        if type(value) not in _SCALARS and isinstance(value, Mapping) and value:  # the ABC check only when it may be one
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def nest(record: Mapping[str, Any]) -> dict[str, Any]:
    """Dotted keys become nested objects; AppInvalid when a field is both a value and an object."""
    out: dict[str, Any] = {}
    for name, value in record.items():
        *parents, leaf = name.split(".")
        node = out
        for i, part in enumerate(parents):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise AppInvalid(f"field {'.'.join(parents[: i + 1])!r} is a value, so {name!r} cannot be inside it")
            node = child
        if leaf in node and isinstance(node[leaf], dict) and not isinstance(value, dict):
            raise AppInvalid(f"field {name!r} is an object, so it cannot also be a value")
        node[leaf] = value
    return out


def dig(obj: Any, path: str | None) -> Any:
    """The value at a dotted path (None when any step is missing); no path: the object itself."""
    if path is None:
        return obj
    for part in path.split("."):
        if isinstance(obj, Mapping):
            obj = obj.get(part)
        elif isinstance(obj, list) and part.isdigit() and int(part) < len(obj):
            obj = obj[int(part)]
        else:
            return None
    return obj


def _native_id(value: Any) -> NativeId | None:
    if isinstance(value, bool) or value is None or isinstance(value, Mapping | list):
        return None
    text = str(value)
    return text or None


def _same(stored: Any, wanted: Any) -> bool:
    if isinstance(stored, list) and not isinstance(wanted, list):
        return any(_same(item, wanted) for item in stored)  # a list field matches a value it holds
    if isinstance(stored, str) and isinstance(wanted, str):
        return stored.casefold() == wanted.casefold()
    if stored is None or wanted is None or isinstance(stored, bool) or isinstance(wanted, bool):
        return stored == wanted
    return str(stored) == str(wanted)


def fill(template: Any, ids: Mapping[str, str]) -> Any:
    """A JSON body template with every string exactly "{id}" / "{member}" (":int" for a number) replaced."""
    if isinstance(template, str):
        match = VALUE_PLACEHOLDER.fullmatch(template)
        if match is None:
            return template
        value = ids[match.group(1)]
        if match.group(2):
            try:
                return int(value)
            except ValueError:
                raise AppInvalid(f"{match.group(1)} {value!r} is not a number") from None
        return value
    if isinstance(template, Mapping):
        return {key: fill(value, ids) for key, value in template.items()}
    if isinstance(template, list):
        return [fill(value, ids) for value in template]
    return template


@functools.cache
def _path_parts(path: str) -> tuple[str, ...]:
    """A path template split once: literal, placeholder name, literal, ... (a mapping has a handful of paths)."""
    parts = VALUE_PLACEHOLDER.split(path)
    return tuple(part for i, part in enumerate(parts) if i % 3 != 2)  # drop the ":int" group


def _path(path: str, ids: Mapping[str, str]) -> str:
    parts = _path_parts(path)
    if len(parts) == 1:
        return path
    out = [parts[0]]
    for i in range(1, len(parts), 2):
        name = parts[i]
        value = ids[name]
        if not (value.isascii() and value.isalnum()):  # what quote() would leave as it is: most ids
            value = value if value == "{" + name + "}" else quote(value, safe="")  # a plan's "{id}" stays readable
        out.append(value)
        out.append(parts[i + 1])
    return "".join(out)


def _query_value(value: str, ids: Mapping[str, str]) -> str:
    return VALUE_PLACEHOLDER.sub(lambda m: ids[m.group(1)], value)


# ---------------------------------------------------------------- answers and errors


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: Mapping[str, str]
    body: Any  # parsed JSON; None for an empty body
    url: URL
    links: Mapping[str, URL]  # rel -> URL from the Link header


_LONG_NUMBER = re.compile(rb"\d{19}")  # past 64 bits orjson reads an integer as a float; the standard library keeps it


def parse_json(raw: bytes) -> Any:
    """An answer's JSON (None for an empty body): orjson's parse, the standard library's where orjson refuses a body
    or would read it differently (an integer past 64 bits, NaN), so the values and the errors stay the standard
    library's; ValueError or UnicodeDecodeError for what is no JSON."""
    if not _LONG_NUMBER.search(raw):
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
    if not raw.strip():
        return None
    return json.loads(raw.decode("utf-8"))


def dump_json(body: Any) -> bytes:
    """A request body: orjson's compact UTF-8, the standard library's for what orjson refuses (an integer past 64 bits)."""
    try:
        return orjson.dumps(body)
    except (orjson.JSONEncodeError, TypeError):
        return json.dumps(body).encode("ascii")  # what aiohttp sent before: ASCII, every other character escaped


def _app_message(raw: bytes) -> str:
    """A short summary of the app's own error message: a JSON message field, or one plain-text line; never HTML."""
    text = raw.decode("utf-8", "replace").strip()
    if not text:
        return ""
    try:
        body = json.loads(text)
    except ValueError:
        if text.startswith("<") or "\n" in text[:DETAIL_CHARS]:
            return ""  # HTML or a stack trace: nothing an IdP should read
        return text
    return _message_in(body)


_MESSAGE_KEYS = ("message", "error_description", "detail", "error", "title", "errors", "description", "msg", "reason")
_FIELD_KEYS = ("field", "attribute", "param", "parameter", "property", "path", "loc", "pointer", "source")
_CODE_KEYS = ("code", "error_code", "errorCode", "key")


def _message_in(body: Any, depth: int = 0) -> str:
    """The app's own words in an error body: its message, with the field and code it names
    (`email: is invalid (invalid_format)`), in the shapes apps use: a message field, a list of errors,
    Rails' {"errors": {"email": ["is invalid"]}}, JSON:API's source.pointer, FastAPI's loc."""
    if depth > 4:
        return ""
    if isinstance(body, str):
        return body
    if isinstance(body, list):
        return "; ".join(filter(None, (_message_in(item, depth + 1) for item in body[:3])))
    if not isinstance(body, Mapping):
        return ""
    message, used = "", ""
    if isinstance(body.get("description"), str) and isinstance(body.get("error"), str) and " " not in body["error"]:
        # Zendesk's {"description": "Email: is invalid", "error": "InvalidFormat"}: the words, then the code
        message, used = f"{body['description']} ({body['error']})", "description"
    for key in _MESSAGE_KEYS:
        if message:
            break
        if key in body:
            message = _message_in(body[key], depth + 1)
            if message:
                used = key
    for detailed in ("errors", "details"):  # "Validation failed" / "RecordInvalid", and what failed
        if used and used != detailed and detailed in body:
            more = _message_in(body[detailed], depth + 1)
            if more and more != message:
                message = f"{message}: {more}"
    field = next((name for k in _FIELD_KEYS if k in body and (name := _field_name(body[k]))), "")
    code = next(
        (str(body[k]) for k in _CODE_KEYS if isinstance(body.get(k), str | int) and not isinstance(body.get(k), bool)), ""
    )
    if not message:
        if field or code:
            return f"{field}: {code}" if field and code else field or code
        # {"email": ["is invalid"], "name": "is required"}: field -> its messages
        named = [
            f"{key}: {_message_in(value, depth + 1)}"
            for key, value in list(body.items())[:3]
            if isinstance(value, str) or (isinstance(value, list) and value and all(isinstance(v, str | Mapping) for v in value))
        ]
        return "; ".join(named)
    if field and not message.lower().startswith(field.lower()):
        message = f"{field}: {message}"
    if code and code not in message:
        message = f"{message} ({code})"
    return message


def _field_name(value: Any) -> str:
    """A field an error names: "email", ["body", "email"] (FastAPI), {"pointer": "/data/attributes/email"} (JSON:API)."""
    if isinstance(value, Mapping):
        value = value.get("pointer") or value.get("parameter") or ""
    if isinstance(value, list):
        value = ".".join(str(v) for v in value if v not in ("body", "query"))
    if not isinstance(value, str):
        return ""
    return value.removeprefix("/data/attributes/").strip("/").replace("/", ".")


def _said(raw: bytes, secrets: Secrets) -> str:
    """ ": the app's message" (short, secrets masked), or nothing."""
    message = _app_message(raw)
    return f": {short(secrets.scrub(message), DETAIL_CHARS)}" if message else ""


# ---------------------------------------------------------------- rate limit


# ---------------------------------------------------------------- auth


# ---------------------------------------------------------------- HTTP


class _Http:
    """The app's HTTP client: one session, the auth, the retry policy and the error translation."""

    def __init__(self, config: RestConnectorConfig, app: str) -> None:
        self.config = config
        self.app = app
        self.secrets = Secrets()
        self.base = resolve_url(config.base_url, "base_url", RestSetupError)
        self.headers = {
            name: (self.secrets.add(resolve(value, f"headers.{name}", RestSetupError)) if isinstance(value, SecretRef) else value)
            for name, value in config.headers.items()
        }
        self.auth_headers: dict[str, str] = {}
        self.auth_query: dict[str, str] = {}
        self.oauth2: OAuth2Token | None = None
        auth = config.auth
        if isinstance(auth, BasicAuthConfig):
            password = self.secrets.add(resolve(auth.password, "auth.password", RestSetupError))
            username = (
                auth.username
                if isinstance(auth.username, str)
                else self.secrets.add(resolve(auth.username, "auth.username", RestSetupError))
            )
            self.auth_headers["Authorization"] = basic_auth(username, password)
        elif isinstance(auth, BearerAuthConfig):
            token = self.secrets.add(resolve(auth.token, "auth.token", RestSetupError))
            self.auth_headers[auth.header] = f"{auth.scheme} {token}" if auth.scheme else token
        elif isinstance(auth, ApiKeyAuthConfig):
            key = self.secrets.add(resolve(auth.key, "auth.key", RestSetupError))
            (self.auth_headers if auth.in_ == "header" else self.auth_query)[auth.name] = auth.prefix + key
        elif isinstance(auth, OAuth2ClientCredentialsConfig):
            token_url = resolve_url(auth.token_url, "auth.token_url", RestSetupError)
            self.oauth2 = OAuth2Token(
                auth, token_url, self.secrets.add(resolve(auth.client_secret, "auth.client_secret", RestSetupError))
            )
        self.bucket = TokenBucket(config.rate_limit) if config.rate_limit else None
        self.session: aiohttp.ClientSession | None = None
        base = URL(self.base.rstrip("/"), encoded=True)
        plain = not (base.raw_query_string or base.raw_fragment or "?" in self.base or "#" in self.base)
        self._origin = (base.scheme, base.raw_authority, base.raw_path.rstrip("/")) if plain and base.absolute else None

    async def open(self) -> None:
        connector = aiohttp.TCPConnector(limit=self.config.max_connections, limit_per_host=0)
        self.session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=self.config.timeout),
            headers={"Accept": "application/json", "User-Agent": "scim-gateway"},
            raise_for_status=False,
            json_serialize_bytes=dump_json,
        )

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()
        self.session = None

    def url(self, path: str, query: Mapping[str, str] | None = None) -> URL:
        if self._origin is not None and "?" not in path and "#" not in path:
            # The base parsed once at open: the same URL as parsing base + path, without parsing it each call.
            scheme, authority, prefix = self._origin
            url = URL.build(scheme=scheme, authority=authority, path=prefix + "/" + path.lstrip("/"), encoded=True)
        else:
            url = URL(self.base.rstrip("/") + "/" + path.lstrip("/"), encoded=True)
        return url.update_query(dict(query)) if query else url

    def same_origin(self, url: URL) -> bool:
        return url.origin() == URL(self.base).origin()

    async def call(
        self,
        method: str,
        url: URL,
        *,
        headers: Mapping[str, str] | None = None,
        json_body: Any = None,
        form: Mapping[str, str] | None = None,
        retry: bool | None = None,
        authenticate: bool = True,
    ) -> Answer:
        """One call with its retries; the 2xx answer, or the AppError the app's failure means."""
        session = self.session
        if session is None:
            raise RuntimeError(f"the rest connector of app {self.app!r} is not open")
        idempotent = method in IDEMPOTENT if retry is None else retry
        attempts = 1 + self.config.retries
        refreshed = False
        attempt = 0
        while True:
            attempt += 1
            # The app's own headers and credentials go to the app only, never to a token endpoint.
            all_headers = {**self.headers, **(headers or {}), **self.auth_headers} if authenticate else dict(headers or {})
            request_id = REQUEST_ID.get()
            if request_id is not None and authenticate:
                all_headers.setdefault("X-Request-Id", request_id)  # the SCIM request's id, for the app's logs
            target = url
            used_token = None
            if authenticate:
                if self.auth_query:
                    target = url.update_query(self.auth_query)
                if self.oauth2 is not None:
                    used_token = await self.oauth2.get(self)
                    all_headers["Authorization"] = f"Bearer {used_token}"
            if self.bucket is not None and authenticate:
                await self.bucket.acquire()
            failure: AppError
            wait: float | None = None
            # A call the app never received (no connection) or refused before doing anything (429) is safe to
            # repeat whatever its method; anything else is repeated only when repeating it cannot do it twice.
            unsent = False
            try:
                async with session.request(method, target, headers=all_headers, json=json_body, data=form) as resp:
                    raw = await read_body(resp, "the app")
                    status, resp_headers = resp.status, resp.headers
                    links = _links(resp) if "Link" in resp_headers else _NO_LINKS
            except TimeoutError:
                failure = AppUnavailable(
                    f"the app did not answer {method} {url.path} within {self.config.timeout:g} s", retry_after=RETRY_AFTER
                )
            except aiohttp.ClientConnectorError as exc:
                failure = AppUnavailable(f"cannot connect to the app ({_os_reason(exc)})", retry_after=RETRY_AFTER)
                unsent = True
            except (aiohttp.ClientError, OSError) as exc:
                failure = AppUnavailable(f"the connection to the app failed ({type(exc).__name__})", retry_after=RETRY_AFTER)
            else:
                if 200 <= status < 300:
                    return Answer(status, resp_headers, self._parse(raw, method, url), url, links)
                if status in (401, 403) and used_token is not None and not refreshed and self.oauth2 is not None:
                    # The token may have been revoked or expired early: one fresh token, one more try.
                    self.oauth2.invalidate(used_token)
                    refreshed = True
                    attempt -= 1
                    continue
                asked = retry_after(resp_headers)
                failure = self._failure(status, raw, method, url, asked)
                if not authenticate and status in (401, 403):
                    failure = AppInvalid(f"HTTP {status}{_said(raw, self.secrets)}")  # the token endpoint's: see OAuth2Token
                if not isinstance(failure, AppUnavailable) or status in (401, 403):
                    raise failure
                if status == 429:
                    unsent = True
                    if asked is not None:
                        if asked > self.config.max_retry_wait:
                            raise failure  # the IdP waits instead: Retry-After passes through
                        wait = float(asked)
            if attempt >= attempts or not (idempotent or unsent):
                raise failure
            if wait is None:
                wait = min(self.config.max_retry_wait, BACKOFF_BASE * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
            await asyncio.sleep(wait)

    def _parse(self, raw: bytes, method: str, url: URL) -> Any:
        try:
            return parse_json(raw)
        except (UnicodeDecodeError, ValueError):
            looks = "HTML" if raw.lstrip()[:1] == b"<" else "not JSON (or cut short)"
            raise AppBadResponse(f"{method} {url.path} answered a body that is {looks}") from None

    def _failure(self, status: int, raw: bytes, method: str, url: URL, retry_after: int | None) -> AppError:
        said = _said(raw, self.secrets)
        where = f"{method} {url.path}"
        if status in (401, 403):
            return AppCredentialsRefused(
                f"the app refused the gateway's credentials (HTTP {status} on {where})", retry_after=RETRY_AFTER
            )
        # The IdP gets the app's words in short; the operator's log its whole answer (bounded, secrets masked).
        answer = f"{where} HTTP {status}: " + self.secrets.scrub(raw[:LOGGED_BYTES].decode("utf-8", "replace"))
        if status == 404 or status == 410:
            return AppNotFound(f"{where}: HTTP {status}{said}", answer=answer)
        if status == 409:
            return AppConflict(f"the app answered HTTP 409{said}", answer=answer)
        if status in (400, 422):
            return AppInvalid(f"the app answered HTTP {status}{said}", answer=answer)
        if status == 429:
            return AppThrottled(
                f"the app is rate limiting the gateway (HTTP 429 on {where})", retry_after=retry_after or RETRY_AFTER
            )
        if status >= 500:
            return AppUnavailable(f"the app failed (HTTP {status} on {where})", retry_after=retry_after or RETRY_AFTER)
        return AppError(f"the app answered HTTP {status} on {where}{said}")


_NO_LINKS: Mapping[str, URL] = MappingProxyType({})


def _links(resp: aiohttp.ClientResponse) -> dict[str, URL]:
    out: dict[str, URL] = {}
    try:
        for rel, link in resp.links.items():
            out[str(rel)] = URL(str(link.get("url")))
    except (ValueError, TypeError):
        return {}
    return out


def _os_reason(exc: aiohttp.ClientConnectorError) -> str:
    return exc.os_error.strerror or type(exc.os_error).__name__ if exc.os_error is not None else type(exc).__name__


# ---------------------------------------------------------------- the connector


class RestConnector(Connector):
    """Records of each kind are JSON objects behind the app's calls; members are its sub-resource calls."""

    Config: ClassVar[type[RestConnectorConfig]] = RestConnectorConfig
    # The most any configuration can do; what one can do is capabilities_for(config).
    capabilities: ClassVar[Capabilities] = Capabilities(membership=True, search=True, list_all=True, read=True)

    config: RestConnectorConfig

    def __init__(self, config: RestConnectorConfig, context: AppContext) -> None:
        super().__init__(config, context)
        self._http: _Http | None = None
        self._seen_fields: dict[str, set[str]] = {}  # per kind, the fields check_schema saw on the app's records

    @classmethod
    def capabilities_for(cls, config: BaseModel) -> Capabilities:
        assert isinstance(config, RestConnectorConfig)
        kinds = config.resources.values()
        return Capabilities(
            membership=any(k.members is not None for k in kinds),
            search=any(k.search is not None for k in kinds),
            search_ops=frozenset({"eq"}),
            list_all=any(k.list is not None for k in kinds),
            read=all(k.get is not None for k in kinds),
            actions=frozenset(name for k in kinds for name in k.actions),
            idempotent_create=frozenset(kind for kind, k in config.resources.items() if k.create.idempotency_header),
        )

    # ------------------------------------------------------------ lifetime

    async def open(self) -> None:
        if self._http is not None:
            raise RuntimeError(f"the rest connector of app {self.context.name!r} is already open")
        http = _Http(self.config, self.context.name)  # resolves every secret: RestSetupError before any socket
        await http.open()
        self._http = http

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
        self._http = None

    # ------------------------------------------------------------ records

    async def create(self, kind: str, record: Record) -> NativeId:
        k = self._kind(kind)
        header, key = k.create.idempotency_header, WRITE_KEY.get()
        if header is not None and key is not None:
            # The app makes one record per key: the create may be retried like an idempotent call.
            answer = await self._op(k.create, {}, self._body(k, record), {header: key}, retry=True)
        else:
            answer = await self._op(k.create, {}, self._body(k, record))
        native_id = _native_id(dig(dig(answer.body, k.record), k.id))
        if native_id is None and answer.body is None and "Location" in answer.headers:
            # 201 with an empty body: the new record's URL names its id.
            native_id = _native_id(URL(answer.headers["Location"]).name)
        if native_id is None:
            raise AppBadResponse(f"{kind}: the app's answer to create carries no id at {k.id!r}")
        return native_id

    async def get(self, kind: str, native_id: NativeId) -> Record | None:
        k = self._kind(kind)
        if k.get is None:
            raise AppError(f"{kind}: the connector has no get call, so records cannot be read back")
        try:
            answer = await self._op(k.get, {"id": native_id})
        except AppNotFound:
            return None
        return self._record(kind, dig(answer.body, k.record))

    async def update(self, kind: str, native_id: NativeId, changes: Record) -> None:
        k = self._kind(kind)
        if k.update.sends_whole:
            current = await self.get(kind, native_id)
            if current is None:
                raise AppNotFound(f"{kind}: the app has no record {native_id!r}")
            record = {name: value for name, value in current.items() if not _covered(name, changes)} | changes
            body = self._body(k, record)
        elif not changes and k.get is not None:
            if await self.get(kind, native_id) is None:  # nothing to write: only say whether it exists
                raise AppNotFound(f"{kind}: the app has no record {native_id!r}")
            return
        else:
            body = self._body(k, changes)
        await self._op(k.update, {"id": native_id}, body)

    async def delete(self, kind: str, native_id: NativeId) -> None:
        k = self._kind(kind)
        try:
            await self._op(k.delete, {"id": native_id})
        except AppNotFound:
            return  # already gone

    async def find(self, kind: str, field: str, value: Any, op: str = "eq") -> list[tuple[NativeId, Record]]:
        k = self._kind(kind)
        if op != "eq":
            raise AppInvalid(f"the rest connector finds by equality only, not {op!r}")
        if k.search is not None and field in k.search.params:
            query = {k.search.params[field]: "" if value is None else str(value)}
            pages = self._pages(kind, k.search, query)
        elif k.list is not None:
            pages = self._pages(kind, k.list)  # no search by this field: read them all
        else:
            raise AppError(f"{kind}: the connector can neither search by {field!r} nor list records")
        # The app's search may be fuzzy or ignore an unknown parameter: keep exact matches only.
        return [(native_id, record) async for native_id, record in pages if _same(record.get(field), value)]

    def finds_by(self, kind: str, field: str) -> bool:
        k = self.config.resources.get(kind)
        return k is not None and k.search is not None and field in k.search.params

    async def list_all(self, kind: str) -> AsyncIterator[tuple[NativeId, Record]]:
        k = self._kind(kind)
        if k.list is None:
            raise AppError(f"{kind}: the connector has no list call")
        async for item in self._pages(kind, k.list):
            yield item

    # ------------------------------------------------------------ membership

    async def add_members(self, kind: str, group_id: NativeId, members: list[tuple[str, NativeId]]) -> None:
        m = self._members(kind)
        for member_id in self._member_ids(m.member_kind, members, strict=True):
            try:
                await self._op(
                    m.add, {"id": group_id, "member": member_id}, fill(m.add.body, {"id": group_id, "member": member_id})
                )
            except AppConflict:
                continue  # already a member

    async def remove_members(self, kind: str, group_id: NativeId, members: list[tuple[str, NativeId]]) -> None:
        m = self._members(kind)
        for member_id in self._member_ids(m.member_kind, members, strict=False):
            try:
                await self._op(
                    m.remove, {"id": group_id, "member": member_id}, fill(m.remove.body, {"id": group_id, "member": member_id})
                )
            except AppNotFound:
                continue  # not a member (any more)

    async def list_members(self, kind: str, group_id: NativeId) -> list[tuple[str, NativeId]]:
        m = self._members(kind)
        out: list[tuple[str, NativeId]] = []
        seen: set[NativeId] = set()
        async for item in self._items(m.list, {}, {"id": group_id}):
            member_id = _native_id(dig(item, m.list.member_id))
            if member_id is None:
                at = f"at {m.list.member_id!r}" if m.list.member_id else "(each item should be an id)"
                raise AppBadResponse(f"{kind}: a member in the app's list carries no id {at}")
            if member_id not in seen:
                seen.add(member_id)
                out.append((m.member_kind, member_id))
        return out

    async def action(self, kind: str, native_id: NativeId, name: str) -> None:
        k = self._kind(kind)
        if name not in k.actions:
            valid = ", ".join(sorted(k.actions)) or "none"
            raise LookupError(f"{kind}: the rest connector has no action {name!r} (valid: {valid})")
        operation = k.actions[name]
        await self._op(operation, {"id": native_id}, fill(operation.body, {"id": native_id}))

    async def check_schema(self) -> list[tuple[tuple[str | int, ...], str]]:
        """Read the first page of every list call, and where the app has records, check the mapping against one:
        its id path, the get call's record path, the member list's shape. A wrong path shows here, before an IdP
        request finds it (as a 502 after the app made a record). The fields the records carry are kept for fields()."""
        problems: list[tuple[tuple[str | int, ...], str]] = []
        self._seen_fields = {}
        for kind, k in self.config.resources.items():
            sample: list[Any] = []
            for name, call in (("list", k.list), ("search", k.search)):
                if call is None:
                    continue
                try:
                    async with aclosing(self._items(call, {}, {})) as items:
                        async for item in items:
                            sample.append(item)
                            if len(sample) >= SAMPLE:
                                break
                except AppNotFound:
                    problems.append((("resources", kind, name, "path"), f"the app has no {call.path} (HTTP 404)"))
                except AppError as exc:
                    problems.append((("resources", kind, name), exc.detail))
                if sample:
                    break
            if sample:
                problems += await self._check_records(kind, k, sample)
        return problems

    async def _check_records(
        self, kind: str, k: RestResourceConfig, sample: list[Any]
    ) -> list[tuple[tuple[str | int, ...], str]]:
        """The mapping's paths against records the app holds."""
        problems: list[tuple[tuple[str | int, ...], str]] = []
        records = [flatten(item) for item in sample if isinstance(item, Mapping)]
        if not records:
            return [(("resources", kind, "list", "items"), f"the app's {kind} list holds no objects: is `items` right?")]
        keys = sorted({key for record in records for key in record})
        ids = [_native_id(dig(item, k.id)) for item in sample]
        if not any(ids):
            problems.append((("resources", kind, "id"), _missing(f"the app's {kind} records have no id at {k.id!r}", k.id, keys)))
            return problems
        self._seen_fields[kind] = set(keys)
        native_id = next(i for i in ids if i)
        if k.get is not None:
            try:
                answer = await self._op(k.get, {"id": native_id})
                found = dig(answer.body, k.record)
                if not isinstance(found, Mapping):
                    top = sorted(answer.body) if isinstance(answer.body, Mapping) else []
                    where: tuple[str | int, ...] = ("resources", kind, "record") if k.record else ("resources", kind, "get")
                    problems.append(
                        (
                            where,
                            _missing(
                                f"GET {k.get.path} answers no record at {k.record or 'the top level'!r}", k.record or "", top
                            ),
                        )
                    )
                elif _native_id(dig(found, k.id)) != native_id:
                    problems.append(
                        (
                            ("resources", kind, "record"),
                            f"GET {k.get.path} answers a record without its id at {k.id!r}: is `record` right?",
                        )
                    )
                else:
                    self._seen_fields[kind] |= set(flatten(found))
            except AppNotFound:
                problems.append(
                    (("resources", kind, "get", "path"), f"GET {k.get.path} answers 404 for a listed record ({native_id})")
                )
            except AppError as exc:
                problems.append((("resources", kind, "get"), exc.detail))
        m = k.members
        if m is not None:
            for group_id in [i for i in ids if i][:SAMPLE_GROUPS]:
                try:
                    async with aclosing(self._items(m.list, {}, {"id": group_id})) as items:
                        item = await anext(aiter(items), None)
                except AppNotFound:
                    problems.append((("resources", kind, "members", "list", "path"), f"the app has no {m.list.path} (HTTP 404)"))
                    break
                except AppError as exc:
                    problems.append((("resources", kind, "members", "list"), exc.detail))
                    break
                if item is None:
                    continue  # an empty group says nothing of the shape
                where = ("resources", kind, "members", "list", "member_id")
                if m.list.member_id is None and isinstance(item, Mapping):
                    problems.append(
                        (
                            where,
                            f"the app's member list holds objects (keys: {', '.join(sorted(flatten(item)))}): name the id's path",
                        )
                    )
                elif m.list.member_id is not None and not isinstance(item, Mapping):
                    problems.append((where, "the app's member list holds the ids themselves: set member_id: null"))
                elif m.list.member_id is not None and _native_id(dig(item, m.list.member_id)) is None:
                    problems.append(
                        (
                            where,
                            _missing(
                                f"the app's member list items have no id at {m.list.member_id!r}",
                                m.list.member_id,
                                sorted(flatten(item)),
                            ),
                        )
                    )
                break
        return problems

    def fields(self, kind: str) -> set[str] | None:
        """The fields seen on the app's records by check_schema() (None when the app had no record to show)."""
        found = self._seen_fields.get(kind)
        return None if not found else found

    # ------------------------------------------------------------ dry run

    def plan(
        self,
        op: str,
        kind: str,
        native_id: NativeId | None = None,
        record: Record | None = None,
        members: list[tuple[str, NativeId]] | None = None,
    ) -> list[dict[str, Any]]:
        k = self._kind(kind, opened=False)
        ids = {"id": native_id if native_id is not None else "{id}"}
        if op == "create":
            return [self._plan_call(k.create, ids, self._body(k, record or {}))]
        if op in ("get", "delete"):
            operation = k.get if op == "get" else k.delete
            if operation is None:
                raise LookupError(f"{kind}: the rest connector has no get call")
            return [self._plan_call(operation, ids, None)]
        if op == "update":
            calls = []
            body = self._body(k, record or {})
            if k.update.sends_whole:
                assert k.get is not None
                calls.append(self._plan_call(k.get, ids, None))
                calls[-1]["note"] = f"read first: {k.update.method} sends the whole record, these fields merged in"
            calls.append(self._plan_call(k.update, ids, body))
            return calls
        if op in ("add_members", "remove_members"):
            m = self._members(kind, opened=False)
            member_call = m.add if op == "add_members" else m.remove
            calls = []
            for _kind, member_id in members or []:
                both = ids | {"member": member_id}
                calls.append(self._plan_call(member_call, both, fill(member_call.body, both)))
            return calls
        if op in k.actions:
            action = k.actions[op]
            return [self._plan_call(action, ids, fill(action.body, ids))]
        valid = ", ".join(["create", "get", "update", "delete", "add_members", "remove_members", *sorted(k.actions)])
        raise LookupError(f"{kind}: the rest connector has no operation {op!r} (valid: {valid})")

    def _plan_call(self, operation: _Operation, ids: Mapping[str, str], body: Any) -> dict[str, Any]:
        config = self.config
        base = self._http.base if self._http is not None else _plan_base(config.base_url)
        url = URL(base.rstrip("/") + "/" + _path(operation.path, ids).lstrip("/"), encoded=True)
        query = {key: _query_value(value, ids) for key, value in operation.query.items()}
        headers: dict[str, str] = {"Accept": "application/json"}
        headers |= {name: (MASK if isinstance(value, SecretRef) else value) for name, value in config.headers.items()}
        headers |= operation.headers
        auth = config.auth
        if isinstance(auth, BasicAuthConfig):
            headers["Authorization"] = f"Basic {MASK}"
        elif isinstance(auth, BearerAuthConfig):
            headers[auth.header] = f"{auth.scheme} {MASK}" if auth.scheme else MASK
        elif isinstance(auth, OAuth2ClientCredentialsConfig):
            headers["Authorization"] = f"Bearer {MASK}"
        elif isinstance(auth, ApiKeyAuthConfig):
            (headers if auth.in_ == "header" else query)[auth.name] = auth.prefix + MASK
        if url.password:
            url = url.with_password(MASK)
        if query:
            url = url.update_query(query)
        call: dict[str, Any] = {"method": operation.method, "url": str(url), "headers": headers}
        if body is not None:
            call["body"] = body
        return call

    # ------------------------------------------------------------ helpers

    def _kind(self, kind: str, *, opened: bool = True) -> RestResourceConfig:
        if opened:
            self._client()
        try:
            return self.config.resources[kind]
        except KeyError:
            valid = ", ".join(sorted(self.config.resources))
            raise LookupError(f"the rest connector has no calls for kind {kind!r} (valid: {valid})") from None

    def _members(self, kind: str, *, opened: bool = True) -> RestMembersConfig:
        k = self._kind(kind, opened=opened)
        if k.members is None:
            raise LookupError(f"the rest connector has no member calls for kind {kind!r}")
        return k.members

    def _client(self) -> _Http:
        if self._http is None:
            raise RuntimeError(f"the rest connector of app {self.context.name!r} is not open")
        return self._http

    @staticmethod
    def _member_ids(member_kind: str, members: list[tuple[str, NativeId]], *, strict: bool) -> list[NativeId]:
        ids: list[NativeId] = []
        for member_type, native_id in members:
            if member_type != member_kind:
                if strict:
                    raise AppInvalid(f"the group holds members of kind {member_kind}, not {member_type}")
                continue  # one of another kind cannot be a member: nothing to remove
            ids.append(native_id)
        return list(dict.fromkeys(ids))

    @staticmethod
    def _body(k: RestResourceConfig, record: Record) -> Any:
        body = nest(record)
        return {k.envelope: body} if k.envelope else body

    def _record(self, kind: str, raw: Any) -> Record:
        if not isinstance(raw, Mapping):
            raise AppBadResponse(f"{kind}: the app answered a {type(raw).__name__}, not a record")
        return flatten(raw)

    async def _op(
        self,
        operation: _Operation,
        ids: Mapping[str, str],
        body: Any = None,
        headers: Mapping[str, str] | None = None,
        retry: bool | None = None,
    ) -> Answer:
        http = self._client()
        query = {key: _query_value(value, ids) for key, value in operation.query.items()} if operation.query else None
        url = http.url(_path(operation.path, ids), query)
        all_headers = {**operation.headers, **headers} if headers else operation.headers
        return await http.call(operation.method, url, headers=all_headers, json_body=body, retry=retry)

    async def _pages(
        self, kind: str, call: ListCallConfig, query: Mapping[str, str] | None = None
    ) -> AsyncIterator[tuple[NativeId, Record]]:
        k = self._kind(kind)
        async for item in self._items(call, query or {}, {}):
            native_id = _native_id(dig(item, k.id))
            if native_id is None:
                raise AppBadResponse(f"{kind}: a record in the app's list carries no id at {k.id!r}")
            yield native_id, self._record(kind, item)

    async def _items(self, call: ListCallConfig, query: Mapping[str, str], ids: Mapping[str, str]) -> AsyncGenerator[Any]:
        """Every item of a list call, page after page, until an empty page or no next page."""
        http = self._client()
        p = call.pagination
        base_query = {key: _query_value(value, ids) for key, value in call.query.items()} | dict(query)
        first = http.url(_path(call.path, ids))
        size_query = (
            {p.size_param: str(p.size)}
            if isinstance(p, PagePagination | CursorPagination | NextLinkPagination | LinkHeaderPagination) and p.size_param
            else {}
        )
        page = p.start if isinstance(p, PagePagination) else 0
        offset = 0
        cursor: str | None = None
        next_url: URL | None = None
        previous: list[Any] | None = None
        fetched_pages = fetched_items = 0
        for _ in range(MAX_PAGES):
            if next_url is not None:
                url = next_url
            elif isinstance(p, OffsetPagination):
                url = first.update_query(base_query | {p.offset_param: str(offset), p.limit_param: str(p.size)})
            elif isinstance(p, PagePagination):
                url = first.update_query(base_query | {p.page_param: str(page)} | size_query)
            elif isinstance(p, CursorPagination):
                url = first.update_query(base_query | size_query | ({p.cursor_param: cursor} if cursor is not None else {}))
            else:
                url = first.update_query(base_query | size_query) if base_query or size_query else first
            answer = await http.call("GET", url, headers=call.headers)
            items = dig(answer.body, call.items)
            if items is None and answer.body is None:
                items = []
            if not isinstance(items, list):
                raise AppBadResponse(f"GET {url.path} answered no list at {call.items or 'the top level'!r}")
            if not items:
                return
            if items == previous:
                raise AppBadResponse(f"GET {url.path} answered the same page twice: the app ignores the pagination parameters")
            previous = items
            for item in items:
                yield item
            if isinstance(p, NoPagination):
                return
            fetched_pages += 1
            fetched_items += len(items)
            if _last_page(p, answer.body, fetched_pages, fetched_items, len(items)):
                return  # the app said so: no call for an empty page
            if isinstance(p, OffsetPagination):
                offset += len(items)  # what it gave, not what was asked: an app may cap the page size
            elif isinstance(p, PagePagination):
                page += 1
            elif isinstance(p, CursorPagination):
                found = dig(answer.body, p.next_cursor)
                if found in (None, "") or isinstance(found, Mapping | list | bool):
                    return
                cursor = str(found)
            else:
                link = dig(answer.body, p.next) if isinstance(p, NextLinkPagination) else answer.links.get("next")
                if not link:
                    return
                try:
                    next_url = answer.url.join(URL(str(link)))
                except (ValueError, TypeError):
                    raise AppBadResponse(f"GET {url.path} answered a next link that is no URL") from None
                if not http.same_origin(next_url):
                    # Our credentials go only to the app: a link elsewhere is refused, never followed.
                    raise AppBadResponse(f"GET {url.path} answered a next link to another host")
                if http.auth_query:
                    next_url = next_url.without_query_params(*http.auth_query)
        raise AppBadResponse(f"GET {call.path}: more than {MAX_PAGES} pages")


def _last_page(p: PaginationConfig, body: Any, pages: int, items: int, on_page: int) -> bool:
    """Whether the app's own signals say this page was the last: its flag, its page count, its total, a short page."""
    flag = getattr(p, "has_more", None)
    if flag is not None and dig(body, flag) is False:
        return True
    for path, done in ((getattr(p, "total_pages", None), pages), (getattr(p, "total", None), items)):
        if path is not None:
            count = dig(body, path)
            if isinstance(count, int | str) and not isinstance(count, bool) and str(count).isdigit() and done >= int(count):
                return True
    return bool(getattr(p, "short_page_ends", False)) and on_page < getattr(p, "size", 0)


def _missing(message: str, path: str, keys: list[str]) -> str:
    """A path the app's answers lack: with the near miss and the keys they have."""
    near = difflib.get_close_matches(path, keys, n=1)
    hint = f" (did you mean {near[0]}?)" if near else ""
    shown = ", ".join(keys[:20]) + (", ..." if len(keys) > 20 else "")
    return f"{message}{hint} (their keys: {shown})" if keys else message + hint


def _covered(name: str, changes: Record) -> bool:
    """Whether a current field is replaced by the changes: the same field, or inside / around a changed one."""
    return any(name == changed or name.startswith(changed + ".") or changed.startswith(name + ".") for changed in changes)


def _plan_base(value: str | SecretRef) -> str:
    if isinstance(value, str):
        return value
    return f"{{{value.describe()}}}"


__all__ = ["RestConnector", "RestSetupError", "TokenBucket", "dig", "flatten", "nest"]
