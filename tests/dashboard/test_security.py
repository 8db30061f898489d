"""The dashboard is safe by default (issue 13, part 5): reading needs the token, the Host is
checked, every response carries the security headers, sessions are random, expire and are
revoked at sign-out, wrong tokens are throttled, every hostile number, id or secret gets a 4xx,
list APIs leave out large values, and ``tideflow dashboard`` refuses to serve the network
without a token. Time is a fake clock the tests move; nothing sleeps."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("starlette")
pytest.importorskip("httpx2")

from starlette.convertors import IntegerConvertor
from starlette.routing import Route
from starlette.testclient import TestClient

from tideflow import TaskManager
from tideflow.cli.main import main
from tideflow.dashboard import create_app
from tideflow.dashboard.security import (
    CSP,
    MAX_ID,
    VALUE_LIMIT,
    LoginThrottle,
    SessionStore,
    client_key,
    parse_int,
    same_secret,
    trusted_hosts,
)
from tideflow.errors import InvalidOptionError

TOKEN = "s3cret-token-for-tests"
BASE = "http://127.0.0.1:8765"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
TEMPLATES = Path(__file__).parents[2] / "src" / "tideflow" / "dashboard" / "templates"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def tm(tmp_path: Path) -> Iterator[TaskManager]:
    manager = TaskManager(f"sqlite:{tmp_path / 'sec.db'}", allow_unregistered=True)
    manager.submit("small", {"n": 1})
    manager.submit("big", {"blob": "x" * (2 * VALUE_LIMIT)})
    yield manager
    manager.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def client_for(tm: TaskManager, clock: FakeClock | None = None, **kw: Any) -> TestClient:
    base_url = kw.pop("base_url", BASE)
    app = create_app(tm, kw.pop("token", TOKEN), clock=clock or FakeClock(), **kw)
    return TestClient(app, base_url=base_url, follow_redirects=False)


@pytest.fixture
def client(tm: TaskManager, clock: FakeClock) -> TestClient:
    return client_for(tm, clock)


def csrf_of(client: TestClient) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', client.get("/login").text)
    assert found is not None
    return found.group(1)


def sign_in(client: TestClient, token: str = TOKEN) -> Any:
    return client.post("/login", data={"csrf": csrf_of(client), "token": token, "next": "/"})


def task_id(tm: TaskManager, name: str) -> int:
    return tm.query_tasks(name=name).items[0].id


# --- reading needs the token ---------------------------------------------------------------------
def test_reading_needs_the_token(tm: TaskManager, client: TestClient) -> None:
    small = task_id(tm, "small")
    page = client.get(f"/tasks/{small}", params={"done": "retry"})
    assert page.status_code == 303
    assert page.headers["location"] == f"/login?next=%2Ftasks%2F{small}%3Fdone%3Dretry"
    for path in ("/api/tasks", "/api/overview", f"/api/tasks/{small}", "/metrics"):
        denied = client.get(path)
        assert denied.status_code == 401, path
        assert denied.headers["www-authenticate"] == "Bearer"
        assert "Authorization: Bearer" in denied.json()["error"]
    # an event stream (the live pages' feed) is refused like the API, not redirected
    assert client.get("/", headers={"Accept": "text/event-stream"}).status_code == 401
    # signing in and static files stay public
    assert client.get("/login").status_code == 200
    assert client.get("/static/dashboard.css").status_code == 200
    assert client.get("/static/dashboard.js").status_code == 200

    # the Bearer token opens the API and /metrics (how Prometheus scrapes)
    assert client.get("/api/tasks", headers=BEARER).json()["total"] == 2
    metrics = client.get("/metrics", headers=BEARER)
    assert metrics.status_code == 200
    assert 'tideflow_tasks{name="small",status="pending"} 1.0' in metrics.text
    wrong = client.get("/metrics", headers={"Authorization": "Bearer not-the-token"})
    assert wrong.status_code == 401
    assert wrong.json()["error"] == "wrong token in 'Authorization: Bearer <token>'"

    # a signed-in browser reads everything, /metrics included
    assert sign_in(client).status_code == 303
    assert client.get(f"/tasks/{small}").status_code == 200
    assert client.get("/metrics").status_code == 200
    assert client.get("/api/tasks").status_code == 200


def test_public_read_opens_reading_but_not_actions(tm: TaskManager) -> None:
    client = client_for(tm, public_read=True)
    small = task_id(tm, "small")
    assert client.get("/").status_code == 200
    assert client.get("/api/tasks").status_code == 200
    assert client.get("/metrics").status_code == 200
    assert client.post(f"/api/tasks/{small}/cancel").status_code == 401
    posted = client.post(f"/tasks/{small}/cancel", data={"csrf": csrf_of(client)})
    assert posted.status_code == 303
    assert posted.headers["location"].startswith("/login")
    assert tm.get_task(small).status == "pending"  # type: ignore[union-attr]


def test_api_actions_need_the_bearer_token_even_when_signed_in(
    tm: TaskManager, client: TestClient
) -> None:
    """A browser's session cookie is no substitute for the token on the API (which has no
    CSRF token): only forms carry CSRF protection."""
    sign_in(client)
    small = task_id(tm, "small")
    assert client.post(f"/api/tasks/{small}/cancel").status_code == 401
    assert tm.get_task(small).status == "pending"  # type: ignore[union-attr]
    assert client.post(f"/api/tasks/{small}/cancel", headers=BEARER).status_code == 200


# --- Host ----------------------------------------------------------------------------------------
def test_the_host_header_is_checked(tm: TaskManager) -> None:
    client = client_for(tm, public_read=True)
    for host in ("127.0.0.1:8765", "localhost:8765", "[::1]:8765", "LOCALHOST"):
        assert client.get("/api/overview", headers={"Host": host}).status_code == 200, host
    for host in ("evil.example", "127.0.0.1.evil.example:8765", "[::2]", "", "a b"):
        refused = client.get("/api/overview", headers={"Host": host})
        assert refused.status_code == 400, host
        assert "does not answer to Host" in refused.text
        assert "--allowed-hosts" in refused.text
        assert refused.headers["content-security-policy"] == CSP  # headers on refusals too

    wide = client_for(tm, public_read=True, allowed_hosts=["dash.example.com", "*.corp.example"])
    for host, status in (
        ("dash.example.com", 200),
        ("a.corp.example:443", 200),
        ("b.a.corp.example", 200),
        ("corp.example", 400),
        ("127.0.0.1", 400),
    ):
        assert wide.get("/api/overview", headers={"Host": host}).status_code == status, host


def test_trusted_hosts_follow_the_bound_address() -> None:
    assert trusted_hosts("127.0.0.1") == ["127.0.0.1", "localhost", "[::1]"]
    assert trusted_hosts("::1") == ["127.0.0.1", "localhost", "[::1]"]
    assert trusted_hosts("10.0.0.5", ["Dash.Example.com"]) == ["10.0.0.5", "dash.example.com"]
    assert trusted_hosts("0.0.0.0", ["*.example.com"]) == ["*.example.com"]
    assert trusted_hosts("fe80::1") == ["[fe80::1]"]
    with pytest.raises(InvalidOptionError, match=r"\*\.example\.com"):
        trusted_hosts("127.0.0.1", ["dash.*.com"])


# --- headers -------------------------------------------------------------------------------------
def test_every_response_carries_the_security_headers(tm: TaskManager, client: TestClient) -> None:
    sign_in(client)
    small = task_id(tm, "small")
    answers = {
        "page": client.get(f"/tasks/{small}"),
        "api": client.get("/api/tasks"),
        "metrics": client.get("/metrics"),
        "login": client.get("/login"),
        "missing": client.get("/tasks/424242"),
        "bad number": client.get("/tasks", params={"limit": "+5"}),
        "static": client.get("/static/dashboard.css"),
    }
    for what, response in answers.items():
        assert response.headers["content-security-policy"] == CSP, what
        assert response.headers["x-content-type-options"] == "nosniff", what
        assert response.headers["referrer-policy"] == "no-referrer", what
        assert response.headers["x-frame-options"] == "DENY", what
        if what != "static":
            assert response.headers["cache-control"] == "no-store", what
    assert "no-store" not in answers["static"].headers.get("cache-control", "")
    assert "frame-ancestors 'none'" in CSP
    assert "script-src 'self';" in CSP
    assert "unsafe-inline" not in CSP


INLINE = re.compile(r"<script(?![^>]*\bsrc=)[^>]*>|<style\b|\sstyle=|\son[a-z]+=", re.IGNORECASE)


def test_pages_have_no_inline_script_or_style(tm: TaskManager, client: TestClient) -> None:
    """The CSP allows only files from /static/: an inline script, style element, style
    attribute or event handler in a template would be blocked by the browser."""
    for template in sorted(TEMPLATES.glob("*.html")):
        found = INLINE.search(template.read_text())
        assert found is None, f"{template.name}: inline {found.group(0)!r}"  # type: ignore[union-attr]
    sign_in(client)
    small = task_id(tm, "small")
    for path in ("/", "/tasks", f"/tasks/{small}", f"/workflows/{small}", "/workers", "/login"):
        response = client.get(path)
        assert response.status_code == 200, path
        found = INLINE.search(response.text)
        assert found is None, f"{path}: inline {found.group(0)!r}"  # type: ignore[union-attr]
        assert 'src="/static/dashboard.js"' in response.text


# --- sessions ------------------------------------------------------------------------------------
def test_sessions_are_random_cookies_revoked_at_sign_out(tm: TaskManager, clock: FakeClock) -> None:
    client = client_for(tm, clock)
    signed = sign_in(client)
    header = signed.headers["set-cookie"]
    assert header.startswith("tideflow_session=")
    attributes = {a.strip().split("=")[0].lower() for a in header.split(";")[1:]}
    assert {"httponly", "path", "samesite", "max-age"} <= attributes
    assert "samesite=strict" in header.lower()
    assert "path=/" in header.lower()
    assert "secure" not in attributes  # plain http
    first = client.cookies["tideflow_session"]
    assert TOKEN not in first
    assert len(first) >= 40

    other = client_for(tm, clock)
    sign_in(other)
    assert other.cookies["tideflow_session"] != first

    # a stolen copy of the cookie stops working once its owner signs out
    thief = TestClient(client.app, base_url=BASE, follow_redirects=False)
    thief.cookies.set("tideflow_session", first)
    assert thief.get("/api/tasks").status_code == 200
    out = client.post("/logout", data={"csrf": client.cookies["tideflow_csrf"]})
    assert out.status_code == 303
    assert thief.get("/api/tasks").status_code == 401
    assert client.get("/").status_code == 303


def test_sessions_expire_when_idle_and_at_their_lifetime(tm: TaskManager, clock: FakeClock) -> None:
    client = client_for(tm, clock, session_idle=600, session_lifetime=3600)
    sign_in(client)
    for _ in range(10):  # used every 500 s: idle never passes 600 s, but the lifetime ends
        clock.now += 500
        if clock.now - 1000 > 3600:
            break
        assert client.get("/api/tasks").status_code == 200
    assert client.get("/api/tasks").status_code == 401

    sign_in(client)
    clock.now += 601
    assert client.get("/api/tasks").status_code == 401


def test_cookies_are_secure_over_https_and_behind_a_trusted_proxy(tm: TaskManager) -> None:
    from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

    direct = client_for(tm, base_url="https://127.0.0.1:8765")
    assert "secure" in sign_in(direct).headers["set-cookie"].lower()

    app = create_app(tm, TOKEN, clock=FakeClock())
    proxied = TestClient(
        ProxyHeadersMiddleware(app, trusted_hosts=["testclient"]),  # type: ignore[arg-type]
        base_url=BASE,
        follow_redirects=False,
        headers={"X-Forwarded-Proto": "https"},
    )
    assert "secure" in sign_in(proxied).headers["set-cookie"].lower()
    untrusted = TestClient(
        ProxyHeadersMiddleware(app, trusted_hosts=["10.9.9.9"]),  # type: ignore[arg-type]
        base_url=BASE,
        follow_redirects=False,
        headers={"X-Forwarded-Proto": "https"},
    )
    assert "secure" not in sign_in(untrusted).headers["set-cookie"].lower()


def test_session_store_caps_its_size() -> None:
    store = SessionStore(clock=FakeClock(), max_sessions=3)
    ids = [store.create() for _ in range(5)]
    assert len(store) == 3
    assert not store.check(ids[0])
    assert store.check(ids[4])
    store.revoke(ids[4])
    assert not store.check(ids[4])


# --- throttling ----------------------------------------------------------------------------------
def test_wrong_tokens_are_throttled_per_address(tm: TaskManager, clock: FakeClock) -> None:
    client = client_for(tm, clock)
    csrf = csrf_of(client)
    for _ in range(5):  # the free tries
        wrong = client.post("/login", data={"csrf": csrf, "token": "guess-guess"})
        assert wrong.status_code == 401
    assert client.post("/login", data={"csrf": csrf, "token": "guess-guess"}).status_code == 401
    blocked = client.post("/login", data={"csrf": csrf, "token": TOKEN})
    assert blocked.status_code == 429  # even the right token is not compared while blocked
    assert blocked.headers["retry-after"] == "1"
    assert "try again in 1 s" in blocked.text
    api = client.get("/api/tasks", headers=BEARER)
    assert api.status_code == 429
    assert api.headers["retry-after"] == "1"

    clock.now += 1
    assert client.post("/login", data={"csrf": csrf, "token": "guess-again"}).status_code == 401
    assert client.post("/login", data={"csrf": csrf, "token": TOKEN}).headers["retry-after"] == "2"
    clock.now += 2
    assert client.post("/login", data={"csrf": csrf, "token": TOKEN}).status_code == 303
    # a right token clears the count
    assert client.post("/login", data={"csrf": csrf, "token": "guess-guess"}).status_code == 401


def test_wrong_bearer_tokens_count_too(tm: TaskManager, clock: FakeClock) -> None:
    client = client_for(tm, clock)
    for _ in range(6):
        assert client.get("/api/tasks", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert client.get("/api/tasks", headers=BEARER).status_code == 429


def test_the_global_bucket_limits_many_addresses_together() -> None:
    clock = FakeClock()
    throttle = LoginThrottle(clock=clock, burst=10, rate=2.0)
    for i in range(10):
        assert throttle.wait(f"10.0.0.{i}") == 0
        throttle.failed(f"10.0.0.{i}")
    assert throttle.wait("10.0.1.1") == pytest.approx(0.5)  # a fresh address waits too
    clock.now += 0.5
    assert throttle.wait("10.0.1.1") == 0
    # the per-address delay doubles up to its cap
    single = LoginThrottle(clock=clock, free=0, base=1.0, cap=8.0, burst=1000)
    waits = []
    for _ in range(6):
        single.failed("a")
        waits.append(single.wait("a"))
    assert waits == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    single.succeeded("a")
    assert single.wait("a") == 0


# --- hostile input -------------------------------------------------------------------------------
BIG = str(MAX_ID + 1)
HUGE = "9" * 40
ARABIC_FIVE = "\u0665"


def hostile_cases(small: int) -> list[tuple[str, str, str, dict[str, Any], int]]:
    """(what, method, path, request options, expected status)."""
    return [
        ("task id past 2**63-1", "GET", f"/tasks/{BIG}", {}, 404),
        ("task id of 40 digits", "GET", f"/tasks/{HUGE}", {}, 404),
        ("largest task id, no such task", "GET", f"/tasks/{MAX_ID}", {}, 404),
        ("workflow id past 2**63-1", "GET", f"/workflows/{BIG}", {}, 404),
        ("API task id past 2**63-1", "GET", f"/api/tasks/{BIG}", {}, 404),
        ("API workflow id past 2**63-1", "GET", f"/api/workflows/{BIG}", {}, 404),
        ("API value of a huge id", "GET", f"/api/tasks/{BIG}/payload", {}, 404),
        ("action on a huge id", "POST", f"/api/tasks/{BIG}/cancel", {"headers": BEARER}, 404),
        ("unknown value field", "GET", f"/api/tasks/{small}/secrets", {}, 404),
        ("limit with a sign", "GET", "/api/tasks", {"params": {"limit": "+5"}}, 400),
        ("limit with an underscore", "GET", "/api/tasks", {"params": {"limit": "1_0"}}, 400),
        ("limit in Arabic-Indic digits", "GET", "/tasks", {"params": {"limit": ARABIC_FIVE}}, 400),
        ("limit with spaces", "GET", "/api/tasks", {"params": {"limit": " 5"}}, 400),
        ("negative offset", "GET", "/api/tasks", {"params": {"offset": "-1"}}, 400),
        ("hex offset", "GET", "/api/tasks", {"params": {"offset": "0x10"}}, 400),
        ("offset of 40 digits", "GET", "/api/tasks", {"params": {"offset": HUGE}}, 400),
        ("limit too large", "GET", "/api/tasks", {"params": {"limit": "501"}}, 400),
        ("offset as a float", "GET", "/tasks", {"params": {"offset": "5.0"}}, 400),
        ("order with SQL", "GET", "/api/tasks", {"params": {"order": "1;DROP"}}, 400),
        ("order upper case", "GET", "/tasks", {"params": {"order": "DESC"}}, 400),
        ("unknown field", "GET", "/api/tasks", {"params": {"fields": "payload,secret"}}, 400),
        ("unknown status", "GET", "/api/tasks", {"params": {"status": "bogus"}}, 400),
        ("NUL in a name", "GET", "/api/tasks", {"params": {"name": "a\x00b"}}, 400),
        ("a tag of 501 characters", "GET", "/tasks", {"params": {"tag": "t" * 501}}, 400),
    ]


def test_hostile_input_gets_a_4xx_never_a_500(tm: TaskManager) -> None:
    small = task_id(tm, "small")
    client = client_for(tm, public_read=True)
    for what, method, path, options, status in hostile_cases(small):
        response = client.request(method, path, **options)
        assert response.status_code == status, f"{what}: {response.status_code} {response.text}"
    order = client.get("/api/tasks", params={"order": "1;DROP"}).json()["error"]
    assert order == "order must be one of desc, asc; got '1;DROP'"
    limit = client.get("/api/tasks", params={"limit": "+5"}).json()["error"]
    assert "digits 0-9 only" in limit
    assert "'+5'" in limit
    fields = client.get("/api/tasks", params={"fields": "secret"}).json()["error"]
    assert "allowed: payload, result, context" in fields
    assert client.get("/api/tasks", params={"order": "asc", "limit": "1"}).status_code == 200


def test_hostile_secrets_get_a_4xx(tm: TaskManager) -> None:
    client = client_for(tm)
    for given in ("Bearer t\u00f6k\u00e9n".encode(), "Bearer \xe9\xe9".encode("latin-1")):
        denied = client.get("/api/tasks", headers={"Authorization": given})
        assert denied.status_code == 401, given
    # a session cookie and a CSRF cookie in another script (sent as raw UTF-8 bytes)
    session = {"Cookie": "tideflow_session=\u00e9t\u00e9".encode()}
    assert client.get("/api/tasks", headers=session).status_code == 401
    assert client.get("/", headers=session).status_code == 303
    raw = "\u00e9t\u00e9-\u0665".encode()
    cookie = {"Cookie": b"tideflow_csrf=" + raw}
    csrf = raw.decode("latin-1")  # what the server reads from the cookie: non-ASCII text
    refused = client.post("/login", headers=cookie, data={"csrf": "\u00e9t\u00e9", "token": TOKEN})
    assert refused.status_code == 403
    wrong = client.post("/login", headers=cookie, data={"csrf": csrf, "token": "t\u00f6ken"})
    assert wrong.status_code == 401
    # a form field sent as a file is no token
    files = {"token": ("t.txt", b"x")}
    as_file = client.post("/login", headers=cookie, data={"csrf": csrf}, files=files)
    assert as_file.status_code == 401
    matching = client.post("/login", headers=cookie, data={"csrf": csrf, "token": TOKEN})
    assert matching.status_code == 303


def test_a_non_ascii_token_signs_in(tm: TaskManager) -> None:
    token = "p\u00e4ssw\u00f6rd-\u6771\u4eac-\u0665"
    client = client_for(tm, token=token)
    assert sign_in(client, token).status_code == 303
    assert client.get("/api/tasks").status_code == 200
    bearer = {"Authorization": f"Bearer {token}".encode()}
    fresh = client_for(tm, token=token)
    assert fresh.get("/api/tasks", headers=bearer).status_code == 200
    assert same_secret("\udcff-from-a-non-utf8-argv", "\udcff-from-a-non-utf8-argv")


def test_parse_int_takes_ascii_digits_only() -> None:
    assert parse_int("42", "limit", 1, 0, 100) == 42
    assert parse_int(None, "limit", 7, 0, 100) == 7
    for raw in ("+5", "1_0", ARABIC_FIVE, "\uff15", " 5", "5\n", "-0", "4.0", "1e2", HUGE):
        with pytest.raises(InvalidOptionError, match="limit"):
            parse_int(raw, "limit", 1, 0, 10**30)


def test_failures_count_per_address_and_per_ipv6_network() -> None:
    assert client_key("10.0.0.1") == "10.0.0.1"
    assert client_key("::ffff:10.0.0.1") == "10.0.0.1"
    assert client_key("2001:db8::1") == client_key("2001:db8::ffff:2") == "2001:db8::/64"
    assert client_key("2001:db8:0:1::1") != client_key("2001:db8::1")


def test_every_id_in_a_path_is_a_checked_id(tm: TaskManager) -> None:
    """Routes take ids as {name:tideflow_id} (past 2**63-1: 404), never {name:int}."""
    app = create_app(tm, TOKEN)
    for route in app.routes:
        if isinstance(route, Route):
            for name, convertor in route.param_convertors.items():
                assert not isinstance(convertor, IntegerConvertor), f"{route.path}: {name}"


# --- cost: lists leave out values, large values are capped ----------------------------------------
def test_lists_leave_out_values_unless_asked(tm: TaskManager) -> None:
    client = client_for(tm, public_read=True)
    items = client.get("/api/tasks").json()["items"]
    assert items
    for item in items:
        assert not {"payload", "result", "context"} & set(item)
        assert {"id", "name", "status", "error"} <= set(item)
    asked = client.get("/api/tasks", params={"fields": "payload,result"}).json()["items"]
    by_name = {i["name"]: i for i in asked}
    assert by_name["small"]["payload"] == {"n": 1}
    assert "context" not in by_name["small"]
    big = by_name["big"]
    marker = {
        "truncated": True,
        "bytes": len(json.dumps(tm.get_task(big["id"]).payload, separators=(",", ":"))),  # type: ignore[union-attr]
        "limit": VALUE_LIMIT,
        "url": f"/api/tasks/{big['id']}/payload",
    }
    assert big["payload"] == marker

    audit = client.get(f"/api/tasks/{big['id']}").json()
    assert audit["task"]["payload"] == marker
    page = client.get(f"/tasks/{big['id']}")
    assert f"the whole value is at /api/tasks/{big['id']}/payload" in page.text
    assert "x" * 1000 not in page.text

    whole = client.get(marker["url"])
    assert whole.status_code == 200
    assert whole.headers["content-type"] == "application/json"
    assert whole.json() == {"blob": "x" * (2 * VALUE_LIMIT)}
    assert client.get(f"/api/tasks/{big['id']}/result").json() is None


def test_large_results_errors_and_event_metadata_are_capped(tmp_path: Path) -> None:
    from tideflow.testing import run_until_idle

    manager = TaskManager(f"sqlite:{tmp_path / 'big.db'}")

    def noisy(task: Any) -> str:
        task.audit("dump", metadata={"blob": "y" * (2 * VALUE_LIMIT)})
        return "z" * (2 * VALUE_LIMIT)

    def loud(task: Any) -> None:
        raise RuntimeError("e" * (2 * VALUE_LIMIT))

    manager.use({"noisy": noisy, "loud": loud})
    done = manager.submit("noisy")
    failed = manager.submit("loud", max_retries=1)
    try:
        run_until_idle(manager, timeout=30)
        client = client_for(manager, public_read=True)
        audit = client.get(f"/api/tasks/{done}").json()
        assert audit["task"]["result"]["url"] == f"/api/tasks/{done}/result"
        (dump,) = [e for e in audit["events"]["items"] if e["event_type"] == "task_checkpoint"]
        assert dump["metadata"]["truncated"] is True
        assert dump["metadata"]["url"] is None
        page = client.get(f"/tasks/{done}").text
        assert "y" * 1000 not in page
        assert "z" * 1000 not in page
        assert f"/api/tasks/{done}/result" in page
        assert client.get(f"/api/tasks/{done}/result").json() == "z" * (2 * VALUE_LIMIT)

        error = client.get(f"/api/tasks/{failed}").json()["task"]["error"]
        assert error["url"] == f"/api/tasks/{failed}/error"
        assert "e" * 1000 not in client.get(f"/tasks/{failed}").text
        listed = client.get("/api/tasks", params={"name": "loud"}).json()["items"][0]
        assert listed["error"]["truncated"] is True
        whole = client.get(f"/api/tasks/{failed}/error").json()
        assert "e" * (2 * VALUE_LIMIT) in whole
        flow = client.get(f"/api/workflows/{failed}").json()
        assert flow["failed_tasks"][0]["error"]["truncated"] is True
        assert flow["root_task"]["error"]["truncated"] is True
    finally:
        manager.close()


# --- the command line ----------------------------------------------------------------------------
@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """uvicorn.run replaced: what it would have served, and how."""
    import uvicorn

    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append({"app": app, **kw}))
    monkeypatch.delenv("TIDEFLOW_DASHBOARD_TOKEN", raising=False)
    return calls


def test_the_network_needs_a_token(
    tm: TaskManager, served: list[dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    for host in ("0.0.0.0", "::", "10.1.2.3"):
        code = main(["dashboard", "--db", tm.db_url, "--host", host])
        err = capsys.readouterr().err
        assert code == 2, host
        assert f"refusing to serve on {host}" in err
        assert "readable from the network" in err or "reachable from the network" in err
        assert "--token" in err
    assert served == []

    code = main(["dashboard", "--db", tm.db_url, "--host", "0.0.0.0", "--token", TOKEN])
    out, err = capsys.readouterr()
    assert code == 0
    assert "warning: the dashboard on 0.0.0.0 is reachable from the network" in err
    assert "TLS" in err
    assert TOKEN not in out  # a given token is never printed
    (call,) = served
    assert call["proxy_headers"] is False  # trust no proxy by default
    assert call["host"] == "0.0.0.0"


def test_loopback_makes_up_a_token_and_trusts_proxies_only_when_told(
    tm: TaskManager, served: list[dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["dashboard", "--db", tm.db_url, "--allowed-hosts", "dash.example.com,*.corp.example"]
    assert main([*argv, "--forwarded-allow-ips", "10.0.0.1"]) == 0
    out, err = capsys.readouterr()
    assert "token for reading and actions" in out
    assert "warning" not in err
    assert "127.0.0.1, localhost, [::1], dash.example.com, *.corp.example" in out
    (call,) = served
    assert call["proxy_headers"] is True
    assert call["forwarded_allow_ips"] == "10.0.0.1"
    client = TestClient(call["app"], base_url="http://dash.example.com", follow_redirects=False)
    assert client.get("/api/tasks").status_code == 401
    assert client.get("/api/tasks", headers={"Host": "evil.example"}).status_code == 400

    assert main(["dashboard", "--db", tm.db_url, "--allowed-hosts", "a.*.b"]) == 2
    assert "--allowed-hosts" in capsys.readouterr().err
    assert main(["dashboard", "--db", tm.db_url, "--port", "+80"]) == 2
    assert main(["dashboard", "--db", tm.db_url, "--public-read"]) == 0
    assert "token for actions" in capsys.readouterr().out
