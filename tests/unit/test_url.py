"""Connection strings (tideflow.store.url, SPEC §2): credentials never appear in clear."""

from __future__ import annotations

import pytest

from tideflow.cli import common
from tideflow.errors import StoreError
from tideflow.store import factory
from tideflow.store.url import backend_of, check_server_url, redact, sqlite_file, sqlite_path

SERVER_SCHEMES = ("postgresql", "postgres", "psql", "mysql", "mariadb")

# malformed in every way we know of; each hides the password "secret" (or a piece of it)
MALFORMED = (
    "{s}://u:secret@[::1/db",  # unclosed IPv6 bracket
    "{s}://u:secret@::1]/db",  # stray closing bracket
    "{s}://u:secret@[::1]x/db",  # junk after the bracket
    "{s}://u:secret@host:notaport/db",  # a port that is not a number
    "{s}://u:secret@host:99999999/db",  # a port out of range
    "{s}://u:sec/ret@host/db",  # an unescaped "/" in the password
    "{s}://u:sec?ret@host/db",  # an unescaped "?" in the password
    "{s}://u:sec#ret@host/db",  # an unescaped "#" in the password
    "{s}://u:sec@ret@host/db",  # an unescaped "@" in the password
    "{s}://u:secret@",  # nothing after the user info
    "{s}://:secret@host/db",  # a password without a user
    "{s}://u:secret@host/db?sslmode=require&password=secret",  # and again as a parameter
    "{s}://host/db?password=secret",  # only as a parameter
    "{S}://u:secret@[::1/db",  # an upper-case scheme
)


#: the password, or the pieces of it a malformed URL shows around its stray character
SECRET_PIECES = ("secret", "ret@", "sec/", "sec?", "sec#", "sec@")


@pytest.mark.parametrize("scheme", SERVER_SCHEMES)
@pytest.mark.parametrize("template", MALFORMED)
def test_malformed_urls_of_every_scheme_lose_their_password(scheme: str, template: str) -> None:
    url = template.format(s=scheme, S=scheme.upper())
    for redactor in (redact, factory.redact, common.redact):
        shown = redactor(url)
        for piece in SECRET_PIECES:
            assert piece not in shown, (redactor, url, shown)
        assert shown.lower().startswith(f"{scheme}://")
        assert "***" in shown


@pytest.mark.parametrize("scheme", SERVER_SCHEMES)
def test_the_cli_and_the_store_share_one_redaction(scheme: str) -> None:
    # the CLI used to keep its own copy, which printed this one in clear
    url = f"{scheme}://u:secret@[::1/db"
    assert common.redact is redact
    assert factory.redact is redact
    assert redact(url) == f"{scheme}://u:***@[::1/db"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://u:pw@host:5432/db", "postgresql://u:***@host:5432/db"),
        ("postgresql://u@host/db", "postgresql://u@host/db"),
        ("postgresql://host/db", "postgresql://host/db"),
        ("postgresql:///db", "postgresql:///db"),
        ("mysql://root:p%40ss@127.0.0.1:3306/test", "mysql://root:***@127.0.0.1:3306/test"),
        ("mysql://u:pw@[::1]:3306/db", "mysql://u:***@[::1]:3306/db"),
        ("mariadb://u:pw@host/db?charset=utf8mb4", "mariadb://u:***@host/db?charset=utf8mb4"),
        (
            "psql://u:pw@h/db?options=-csearch_path%3Dx",
            "psql://u:***@h/db?options=-csearch_path%3Dx",
        ),
        ("sqlite:tasks.db", "sqlite:tasks.db"),
        ("sqlite::memory:", "sqlite::memory:"),
        ("sqlite:////tmp/a@b:c.db", "sqlite:////tmp/a@b:c.db"),
        ("oracle://u:pw@host/db", "oracle://u:***@host/db"),
    ],
)
def test_well_formed_urls_keep_everything_but_the_password(url: str, shown: str) -> None:
    assert redact(url) == shown


@pytest.mark.parametrize("scheme", SERVER_SCHEMES)
@pytest.mark.parametrize(
    ("template", "problem"),
    [
        ("{s}://u:secret@[::1/db", "'\\['"),
        ("{s}://u:secret@host:notaport/db", "port"),
        ("{s}://u:pa/secret@host/db", "percent-encoded"),
    ],
)
def test_opening_a_malformed_server_url_is_a_store_error_without_the_password(
    scheme: str, template: str, problem: str
) -> None:
    url = template.format(s=scheme)
    for call in (lambda: check_server_url(url), lambda: factory.open_store(url)):
        with pytest.raises(StoreError, match=problem) as info:
            call()
        message = str(info.value)
        assert "secret" not in message
        assert "'pa'" not in message  # the parser's own text quotes a piece of the password
        assert "u:***@" in message


def test_backend_of() -> None:
    assert backend_of("sqlite:x.db") == "sqlite"
    assert {backend_of(f"{s}://h/db") for s in ("postgresql", "postgres", "psql")} == {"postgres"}
    assert {backend_of(f"{s}://h/db") for s in ("mysql", "MariaDB")} == {"mysql"}
    assert backend_of("oracle://h/db") is None


@pytest.mark.parametrize(
    ("url", "path", "file"),
    [
        ("sqlite::memory:", ":memory:", None),
        ("sqlite:///:memory:", ":memory:", None),
        ("sqlite:tasks.db", "tasks.db", "tasks.db"),
        ("sqlite:///rel/tasks.db", "rel/tasks.db", "rel/tasks.db"),
        ("sqlite:////abs/tasks.db", "/abs/tasks.db", "/abs/tasks.db"),
    ],
)
def test_sqlite_forms(url: str, path: str, file: str | None) -> None:
    assert sqlite_path(url) == path
    assert sqlite_file(url) == file
    assert common.sqlite_file(url) == file


@pytest.mark.parametrize("url", ["sqlite:", "sqlite://host/x.db"])
def test_unreadable_sqlite_forms(url: str) -> None:
    with pytest.raises(StoreError, match="sqlite:"):
        sqlite_path(url)
    assert sqlite_file(url) is None
