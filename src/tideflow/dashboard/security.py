"""The dashboard's defences: strict parsing, secrets compared as bytes, server-side sessions,
sign-in throttling, the Host check and the security headers every response carries.

Everything here is plain Python or plain ASGI, with no state outside the objects
:func:`tideflow.dashboard.create_app` builds, and every clock is injectable (``clock`` returns
seconds, ``time.monotonic`` by default) so tests move time instead of sleeping.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import math
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from starlette.convertors import Convertor, register_url_convertor
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tideflow.errors import InvalidOptionError

__all__ = [
    "CSP",
    "LOOPBACK_HOSTS",
    "MAX_ID",
    "VALUE_LIMIT",
    "AuthGate",
    "Clock",
    "HostCheck",
    "LoginThrottle",
    "SecurityHeaders",
    "Session",
    "SessionStore",
    "cap_value",
    "client_key",
    "header_bytes",
    "is_loopback",
    "json_chunks",
    "json_size",
    "parse_choice",
    "parse_fields",
    "parse_int",
    "parse_text",
    "retry_after",
    "same_secret",
    "trusted_hosts",
]

Clock = Callable[[], float]

#: the largest id a task can have (a signed 64-bit column on every backend)
MAX_ID = 2**63 - 1
#: digits a number may have on the way in; more is refused before ``int()`` sees it
_MAX_DIGITS = 19
#: a payload, result, context or error larger than this (as JSON, in bytes) is replaced by a
#: marker in lists, pages and the audit API; ``/api/tasks/{id}/{field}`` serves it whole
VALUE_LIMIT = 64 * 1024

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")

#: no inline script or style: the dashboard's own CSS and JavaScript are files under /static/
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)


# --- strict parsing ---------------------------------------------------------------------------
def parse_int(raw: str | None, name: str, default: int, low: int, high: int) -> int:
    """A query parameter that must be plain ASCII digits (no sign, ``_``, spaces or other
    scripts' digits) between ``low`` and ``high``; :class:`InvalidOptionError` (400) otherwise."""
    if raw is None or raw == "":
        return default
    if not (raw.isascii() and raw.isdigit()) or len(raw) > _MAX_DIGITS:
        shown = raw if len(raw) <= 40 else raw[:40] + "..."
        raise InvalidOptionError(
            f"{name} must be a whole number written with the digits 0-9 only"
            f" (no sign, spaces or underscores), between {low} and {high}; got {shown!r}"
        )
    value = int(raw)
    if not low <= value <= high:
        raise InvalidOptionError(f"{name} must be between {low} and {high}, got {value}")
    return value


def parse_choice(raw: str | None, name: str, allowed: Sequence[str], default: str) -> str:
    """One of ``allowed``; anything else is a 400 that lists them."""
    if raw is None or raw == "":
        return default
    if raw not in allowed:
        shown = raw if len(raw) <= 40 else raw[:40] + "..."
        raise InvalidOptionError(f"{name} must be one of {', '.join(allowed)}; got {shown!r}")
    return raw


#: the longest text filter a request may carry
MAX_TEXT = 500


def parse_text(raw: str | None, name: str) -> str | None:
    """A text filter: at most :data:`MAX_TEXT` characters and no control characters (a NUL
    is an error on PostgreSQL, so it must be a 400 here, not a 500 there)."""
    if raw is None or raw == "":
        return None
    if len(raw) > MAX_TEXT:
        raise InvalidOptionError(f"{name} must be at most {MAX_TEXT} characters, got {len(raw)}")
    if any(ord(c) < 32 or ord(c) == 127 for c in raw):
        raise InvalidOptionError(f"{name} must not contain control characters, got {raw[:40]!r}")
    return raw


def client_key(host: str) -> str:
    """Whom failures are counted against: the address, or for IPv6 its /64 network (one
    machine usually holds a whole /64 and could rotate through it)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


def parse_fields(raw: str | None, allowed: Sequence[str]) -> frozenset[str]:
    """``?fields=payload,result``: the optional fields a list should include."""
    if raw is None or raw.strip() == "":
        return frozenset()
    asked = {f.strip() for f in raw.split(",") if f.strip()}
    unknown = sorted(asked - set(allowed))
    if unknown:
        shown = ", ".join(repr(u[:40]) for u in unknown[:5])
        raise InvalidOptionError(
            f"fields: unknown field {shown}; allowed: {', '.join(allowed)}"
            " (comma-separated, e.g. fields=payload,result)"
        )
    return frozenset(asked)


class _IdConvertor(Convertor[int]):
    """``{task_id:tideflow_id}``: ASCII digits; an id past a 64-bit column's range is a 404
    (no such task) rather than an overflow in the database driver."""

    regex = "[0-9]+"

    def convert(self, value: str) -> int:
        if len(value) > _MAX_DIGITS or int(value) > MAX_ID:
            raise HTTPException(
                404, f"no task or workflow has id {value[:40]}: ids end at {MAX_ID}"
            )
        return int(value)

    def to_string(self, value: int) -> str:
        return str(int(value))


register_url_convertor("tideflow_id", _IdConvertor())


# --- secrets ----------------------------------------------------------------------------------
def _raw(value: str | bytes) -> bytes:
    if isinstance(value, bytes):
        return value
    # surrogatepass: a token given on a command line that was not UTF-8 still has bytes
    return value.encode("utf-8", "surrogatepass")


def same_secret(given: str | bytes | None, expected: str | bytes) -> bool:
    """Constant-time comparison of two secrets as bytes: ``hmac.compare_digest`` refuses
    non-ASCII ``str`` (a TypeError, so a 500), whatever a client sends must be a plain no."""
    if given is None:
        return False
    return hmac.compare_digest(_raw(given), _raw(expected))


def header_bytes(value: str) -> bytes:
    """A header value as the bytes the client sent (ASGI servers decode headers as latin-1),
    so a UTF-8 token in ``Authorization`` compares equal to the same token given as text."""
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        return value.encode("utf-8", "surrogatepass")


# --- sessions ---------------------------------------------------------------------------------
@dataclass
class Session:
    """A signed-in browser: known only to this process; losing the process signs everyone out."""

    created: float
    last_seen: float


class SessionStore:
    """Random session ids (``secrets.token_urlsafe(32)``) kept in memory with an idle and an
    absolute expiry; :meth:`revoke` at sign-out makes the id worthless, wherever it was copied.
    At most ``max_sessions`` are kept (the least recently used goes first)."""

    def __init__(
        self,
        *,
        idle: float = 12 * 3600,
        lifetime: float = 24 * 3600,
        clock: Clock = time.monotonic,
        max_sessions: int = 10_000,
    ) -> None:
        if idle <= 0 or lifetime <= 0:
            raise InvalidOptionError(
                f"session idle and lifetime must be positive seconds, got {idle}, {lifetime}"
            )
        self.idle = idle
        self.lifetime = lifetime
        self._clock = clock
        self._max = max_sessions
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._lock = threading.Lock()

    def create(self) -> str:
        """A new session id (a fresh one at every sign-in: no fixation)."""
        now = self._clock()
        sid = secrets.token_urlsafe(32)
        with self._lock:
            self._sessions[sid] = Session(created=now, last_seen=now)
            while len(self._sessions) > self._max:
                self._sessions.popitem(last=False)
        return sid

    def check(self, sid: str | None) -> bool:
        """Whether ``sid`` is a live session; a live one is touched, an expired one dropped."""
        if not sid:
            return False
        now = self._clock()
        with self._lock:
            session = self._sessions.get(sid)
            if session is None:
                return False
            if now - session.last_seen > self.idle or now - session.created > self.lifetime:
                del self._sessions[sid]
                return False
            session.last_seen = now
            self._sessions.move_to_end(sid)
            return True

    def revoke(self, sid: str | None) -> None:
        """Sign-out: the id stops working at once."""
        if sid:
            with self._lock:
                self._sessions.pop(sid, None)

    def __len__(self) -> int:
        return len(self._sessions)


# --- throttling -------------------------------------------------------------------------------
class LoginThrottle:
    """Wrong tokens slow down their sender, and everyone together.

    Per client address: ``free`` wrong tokens, then each further one makes the address wait
    ``base * 2**(n - free - 1)`` seconds (at most ``cap``) before its next try. Globally: a
    bucket of ``burst`` wrong tokens that refills at ``rate`` per second, so many addresses
    together cannot guess faster either. A right token clears its address's count. While an
    address (or everyone) must wait, :meth:`wait` says how long, and no token is compared.
    """

    def __init__(
        self,
        *,
        free: int = 5,
        base: float = 1.0,
        cap: float = 900.0,
        burst: float = 100.0,
        rate: float = 2.0,
        clock: Clock = time.monotonic,
        max_clients: int = 10_000,
    ) -> None:
        self.free, self.base, self.cap = free, base, cap
        self.burst, self.rate = burst, rate
        self._clock = clock
        self._max = max_clients
        self._clients: OrderedDict[str, tuple[int, float]] = OrderedDict()  # failures, until
        self._tokens = burst
        self._filled_at = clock()
        self._lock = threading.Lock()

    def _refill(self, now: float) -> None:
        self._tokens = min(self.burst, self._tokens + (now - self._filled_at) * self.rate)
        self._filled_at = now

    def wait(self, client: str) -> float:
        """Seconds ``client`` must wait before a token of theirs is compared (0: go ahead)."""
        now = self._clock()
        with self._lock:
            self._refill(now)
            _, until = self._clients.get(client, (0, 0.0))
            mine = max(0.0, until - now)
            everyone = 0.0 if self._tokens >= 1 else (1 - self._tokens) / self.rate
            return max(mine, everyone)

    def failed(self, client: str) -> None:
        """Count a wrong token from ``client``."""
        now = self._clock()
        with self._lock:
            self._refill(now)
            self._tokens = max(0.0, self._tokens - 1)
            failures, _ = self._clients.pop(client, (0, 0.0))
            failures += 1
            extra = failures - self.free
            delay = 0.0 if extra <= 0 else min(self.cap, self.base * 2 ** min(extra - 1, 64))
            self._clients[client] = (failures, now + delay)
            while len(self._clients) > self._max:
                self._clients.popitem(last=False)

    def succeeded(self, client: str) -> None:
        """A right token: ``client`` starts afresh."""
        with self._lock:
            self._clients.pop(client, None)


def retry_after(seconds: float) -> str:
    """The ``Retry-After`` header value: whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))


# --- hosts ------------------------------------------------------------------------------------
def is_loopback(host: str) -> bool:
    """Whether binding to ``host`` keeps the dashboard on this machine."""
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _host_pattern(host: str) -> str:
    name = host.strip().lower()
    try:
        if ipaddress.ip_address(name.strip("[]")).version == 6:
            return f"[{name.strip('[]')}]"
    except ValueError:
        pass
    return name


def trusted_hosts(bind: str, extra: Iterable[str] = ()) -> list[str]:
    """The ``Host`` names a dashboard bound to ``bind`` answers to: the loopback names when it
    is bound to loopback, otherwise the bound address itself (nothing for a wildcard address
    such as 0.0.0.0 or ::), plus ``extra`` (``--allowed-hosts``; ``*.example.com`` matches
    every subdomain, ``*`` anything)."""
    hosts: list[str] = []
    if is_loopback(bind):
        hosts.extend(LOOPBACK_HOSTS)
    else:
        name = bind.strip().strip("[]")
        try:
            wildcard = ipaddress.ip_address(name).is_unspecified
        except ValueError:
            wildcard = False
        if not wildcard and name:
            hosts.append(_host_pattern(bind))
    for pattern in extra:
        pattern = pattern.strip()
        if not pattern:
            continue
        misplaced = "*" in pattern[1:] or (pattern.startswith("*") and pattern[:2] != "*.")
        if misplaced and pattern != "*":
            raise InvalidOptionError(
                f"allowed host {pattern!r}: a wildcard must be the whole name ('*') or"
                " lead a domain ('*.example.com')"
            )
        hosts.append(_host_pattern(pattern))
    return list(dict.fromkeys(hosts))


_HOST_OK = "tideflow.host_ok"


class HostCheck:
    """Starlette's :class:`TrustedHostMiddleware` with a message that says what to do: a
    request whose ``Host`` is not one of ``allowed_hosts`` (DNS rebinding, a stray proxy) gets
    400 and nothing else."""

    def __init__(self, app: ASGIApp, allowed_hosts: Sequence[str]) -> None:
        self.allowed_hosts = list(allowed_hosts)

        async def passed(scope: Scope, receive: Receive, send: Send) -> None:
            scope[_HOST_OK] = True
            await app(scope, receive, send)

        self._check = TrustedHostMiddleware(passed, allowed_hosts=self.allowed_hosts)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self._check(scope, receive, send)
            return
        refused = False

        async def explain(message: Message) -> None:
            nonlocal refused
            if message["type"] == "http.response.start" and not scope.get(_HOST_OK):
                refused = True
                host = Headers(scope=scope).get("host", "")
                text = (
                    f"this dashboard does not answer to Host {host[:100]!r}; it answers to"
                    f" {', '.join(self.allowed_hosts) or 'no name'}. Open it by one of those,"
                    " or start it with --allowed-hosts NAME (comma-separated; *.example.com"
                    " for every subdomain), or create_app(..., allowed_hosts=[...])\n"
                )
                await PlainTextResponse(text, status_code=400)(scope, receive, send)
                return
            if not refused:
                await send(message)

        await self._check(scope, receive, explain)


# --- headers ----------------------------------------------------------------------------------
class SecurityHeaders:
    """Adds the CSP, ``nosniff``, ``no-referrer`` and ``X-Frame-Options`` to every response,
    and ``Cache-Control: no-store`` to every one outside ``/static/`` (pages and the API carry
    task data that must not stay in a cache) unless the handler chose its own."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = str(scope.get("path", "")).startswith("/static/")

        async def add(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["Content-Security-Policy"] = CSP
                headers["X-Content-Type-Options"] = "nosniff"
                headers["Referrer-Policy"] = "no-referrer"
                headers["X-Frame-Options"] = "DENY"
                if not static and "cache-control" not in headers:
                    headers["Cache-Control"] = "no-store"
            await send(message)

        await self.app(scope, receive, add)


# --- reading needs the token ------------------------------------------------------------------
class AuthGate:
    """Unless ``public_read``, every request but those of ``public`` paths (sign-in, static
    files) must come from a signed-in browser or carry the Bearer token: a page asks the
    browser to sign in (303 to ``/login``), ``/api/``, ``/metrics`` and event streams answer
    401. With ``public_read`` only requests that change something are gated here."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        allowed: Callable[[Scope], bool],
        public_read: bool,
        public: Callable[[str], bool],
    ) -> None:
        self.app = app
        self._allowed = allowed
        self._public_read = public_read
        self._public = public

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = str(scope.get("path", "/"))
        reading = scope.get("method", "GET") in ("GET", "HEAD")
        if self._public(path) or (self._public_read and reading):
            await self.app(scope, receive, send)
            return
        if self._allowed(scope):
            await self.app(scope, receive, send)
            return
        await self._refuse(scope, receive, send, path, reading)

    async def _refuse(
        self, scope: Scope, receive: Receive, send: Send, path: str, reading: bool
    ) -> None:
        headers = Headers(scope=scope)
        if scope.get("tideflow.throttled"):
            wait = float(scope["tideflow.throttled"])
            message = (
                f"too many wrong tokens; try again in {retry_after(wait)} s"
                " (failed sign-ins are throttled per address and overall)"
            )
            response: Any = JSONResponse(
                {"error": message}, status_code=429, headers={"Retry-After": retry_after(wait)}
            )
        elif (
            path.startswith("/api/")
            or path == "/metrics"
            or "text/event-stream" in headers.get("accept", "")
        ):
            message = (
                "reading this dashboard needs its token: send 'Authorization: Bearer <token>'"
                " or sign in at /login (or start it with --public-read)"
            )
            if scope.get("tideflow.wrong_token"):
                message = "wrong token in 'Authorization: Bearer <token>'"
            response = JSONResponse(
                {"error": message}, status_code=401, headers={"WWW-Authenticate": "Bearer"}
            )
        else:
            query = scope.get("query_string", b"").decode("latin-1")
            target = path + (f"?{query}" if query and reading else "")
            response = RedirectResponse(f"/login?{urlencode({'next': target})}", status_code=303)
        await response(scope, receive, send)


# --- size limits ------------------------------------------------------------------------------
def json_size(value: Any) -> int:
    """Bytes of ``value`` as compact JSON (what the API would send for it)."""
    if value is None:
        return 0
    if isinstance(value, bytes):
        return 2 * len(value) + 2
    if isinstance(value, str) and len(value) * 6 + 2 <= VALUE_LIMIT:
        return len(value) + 2  # short enough that, even all escaped, it is under the limit
    return len(json.dumps(value, separators=(",", ":"), default=str).encode())


def cap_value(value: Any, url: str | None, limit: int = VALUE_LIMIT) -> Any:
    """``value`` itself, or, when its JSON is over ``limit`` bytes, a marker saying its size and
    where to fetch it whole (``url``; None: the dashboard does not serve it whole, read it with
    the Python API)."""
    size = json_size(value)
    if size <= limit:
        return value
    return {"truncated": True, "bytes": size, "limit": limit, "url": url}


def json_chunks(value: Any, size: int = 64 * 1024) -> Iterator[bytes]:
    """``value`` as JSON, in chunks of about ``size`` bytes (for a streaming response)."""
    if isinstance(value, bytes):
        value = value.hex()
    buffer: list[str] = []
    held = 0
    for piece in json.JSONEncoder(ensure_ascii=False, default=str).iterencode(value):
        buffer.append(piece)
        held += len(piece)
        if held >= size:
            yield "".join(buffer).encode()
            buffer, held = [], 0
    if buffer:
        yield "".join(buffer).encode()
