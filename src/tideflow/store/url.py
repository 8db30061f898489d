"""Connection strings (SPEC §2): which backend a URL names, SQLite paths, and redaction.

One implementation for the store (``safe_url``, error messages) and the command line. Redaction
never parses the URL with a strict parser: a malformed URL (an unclosed ``[``, a bad port, a
password with an unescaped ``/``) must still lose its password, so it errs towards hiding too
much rather than too little.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from tideflow.errors import StoreError

__all__ = [
    "MYSQL_SCHEMES",
    "POSTGRES_SCHEMES",
    "backend_of",
    "check_server_url",
    "redact",
    "sqlite_file",
    "sqlite_path",
]

SQLITE_PREFIX = "sqlite:"
POSTGRES_SCHEMES = frozenset({"postgresql", "postgres", "psql"})
MYSQL_SCHEMES = frozenset({"mysql", "mariadb"})
MASK = "***"

_MEMORY = (":memory:", "//:memory:", "///:memory:")
# query parameters that carry a secret (libpq's ``password``, PyMySQL-style aliases)
_SECRET_PARAM = re.compile(r"(?i)([?&;](?:password|passwd|pwd|sslpassword)=)[^&;#]*")


def backend_of(url: str) -> str | None:
    """``"sqlite"``, ``"postgres"``, ``"mysql"`` or None for anything else."""
    if url.startswith(SQLITE_PREFIX):
        return "sqlite"
    scheme = url.split(":", 1)[0].lower()
    if scheme in POSTGRES_SCHEMES:
        return "postgres"
    if scheme in MYSQL_SCHEMES:
        return "mysql"
    return None


def redact(url: str) -> str:
    """``url`` with any password (in the user info or a ``password=`` parameter) as ``***``.

    Works on malformed URLs too: the user info is whatever precedes the last ``@`` of the
    authority (or, when a password holds an unescaped ``/``, ``?`` or ``#``, of the rest of the
    URL), and everything after its first ``:`` is masked.
    """
    if not isinstance(url, str):
        return repr(type(url))
    head, sep, rest = url.partition("://")
    if not sep:
        return _SECRET_PARAM.sub(rf"\1{MASK}", url)
    end = len(rest)
    for stop in "/?#":
        found = rest.find(stop)
        if found != -1:
            end = min(end, found)
    at = rest.rfind("@", 0, end)
    if at == -1:
        # no user info in the authority; a password with an unescaped "/", "?" or "#" moves
        # the "@" further on: take the last one, if a "user:" comes before the first "/"
        at = rest.rfind("@")
        colon = rest.find(":")
        if at == -1 or colon == -1 or colon > at or colon > end:
            at = -1
    if at != -1:
        userinfo = rest[:at]
        user, colon_sep, _ = userinfo.partition(":")
        if colon_sep:
            rest = f"{user}:{MASK}{rest[at:]}"
    return head + sep + _SECRET_PARAM.sub(rf"\1{MASK}", rest)


def check_server_url(url: str) -> None:
    """Refuse a PostgreSQL/MySQL URL that cannot be parsed, before any driver sees it.

    The message shows the URL redacted and names the likely mistake, never the parser's own
    text (which can quote a piece of the password, e.g. "invalid port 'pa'").
    """
    try:
        urlsplit(url).port  # noqa: B018 - raises ValueError for a malformed host or port
    except ValueError as exc:
        if "IPv6" in str(exc):
            problem = "the host has an unclosed or misplaced '[' (write IPv6 hosts as [::1])"
        else:
            problem = (
                "the port is not a number from 0 to 65535 (a password containing '/', '?',"
                " '#' or '@' must be percent-encoded, e.g. '/' as %2F)"
            )
        raise StoreError(
            f"cannot read connection string {redact(url)!r}: {problem};"
            " expected scheme://user:password@host:port/database"
        ) from None


def sqlite_path(url: str) -> str:
    """The file path (or ``:memory:``) of a ``sqlite:`` connection string; raises
    :class:`StoreError` for a form it cannot read."""
    rest = url[len(SQLITE_PREFIX) :]
    if rest in _MEMORY:
        return ":memory:"
    if rest.startswith("///"):
        return rest[3:]  # sqlite:///relative.db, sqlite:////absolute.db
    if rest.startswith("//"):
        raise StoreError(
            f"cannot read SQLite connection string {redact(url)!r}: use sqlite:path.db,"
            " sqlite:///relative.db or sqlite:////absolute/path.db"
        )
    if not rest:
        raise StoreError("SQLite connection string has no path: use sqlite:path.db")
    return rest


def sqlite_file(url: str) -> str | None:
    """The file of a ``sqlite:`` connection string; None for memory, other schemes, or a form
    :func:`sqlite_path` refuses (opening the store reports that)."""
    if not url.startswith(SQLITE_PREFIX):
        return None
    try:
        path = sqlite_path(url)
    except StoreError:
        return None
    return None if path == ":memory:" else path
