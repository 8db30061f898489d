"""``tideflow dashboard``: serve the web dashboard of a database."""

from __future__ import annotations

import argparse
import os
import secrets
import socket
import sys
from typing import Any

from tideflow.cli.common import CliError, add_db_option, open_manager, resolve_db

__all__ = ["add_command", "plan_hosts"]

TOKEN_ENV = "TIDEFLOW_DASHBOARD_TOKEN"


def _port(raw: str) -> int:
    if not (raw.isascii() and raw.isdigit()) or not 0 < int(raw) < 65536:
        raise argparse.ArgumentTypeError(f"a port is a number from 1 to 65535, got {raw!r}")
    return int(raw)


def add_command(sub: Any) -> None:
    """Register ``dashboard`` on the top-level subparsers."""
    p = sub.add_parser(
        "dashboard",
        help="serve the web dashboard (needs: pip install 'tideflow[dashboard]')",
        description="Serve the web dashboard and its JSON API (/api/) and metrics (/metrics)."
        f" Reading and actions need a token: --token, ${TOKEN_ENV}, or (on 127.0.0.1 only)"
        " one made up and printed at start. Browsers sign in at /login; API clients and"
        " Prometheus send 'Authorization: Bearer TOKEN'.",
    )
    add_db_option(p)
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default 127.0.0.1); any other than a loopback address needs"
        f" --token or ${TOKEN_ENV}",
    )
    p.add_argument("--port", type=_port, default=8765, help="port (default 8765)")
    p.add_argument("--token", help=f"the token for reading and actions (default ${TOKEN_ENV})")
    p.add_argument(
        "--public-read",
        action="store_true",
        help="pages, the read API and /metrics need no token (actions still do)",
    )
    p.add_argument(
        "--allowed-hosts",
        metavar="NAMES",
        default="",
        help="more Host names to answer to, comma-separated (*.example.com: every subdomain);"
        " by default the bound address (127.0.0.1, localhost and [::1] on loopback)",
    )
    p.add_argument(
        "--forwarded-allow-ips",
        metavar="IPS",
        default=None,
        help="addresses of reverse proxies whose X-Forwarded-For/-Proto to trust,"
        " comma-separated ('*': any); then an https proxy makes the cookies Secure and sign-in"
        " throttling counts the real client. Default: trust no one",
    )
    p.set_defaults(func=cmd_dashboard)


def _is_loopback(host: str) -> bool:
    from tideflow.dashboard.security import is_loopback

    return is_loopback(host)


def plan_hosts(bind: str, extra: str) -> list[str]:
    """The Host names the dashboard answers to: the bound address (the loopback names on
    loopback; this machine's names and addresses on a wildcard address such as 0.0.0.0) plus
    ``extra`` (``--allowed-hosts``)."""
    from tideflow.dashboard.security import LOOPBACK_HOSTS, trusted_hosts

    names = [n for n in extra.split(",") if n.strip()]
    if bind.strip("[]") in ("0.0.0.0", "::", ""):
        names = [*LOOPBACK_HOSTS, *_machine_names(), *names]
    return trusted_hosts(bind, names)


def _machine_names() -> list[str]:
    """This machine's name, full name and the addresses they resolve to (best effort)."""
    names = {socket.gethostname(), socket.getfqdn()}
    found = set()
    for name in names:
        try:
            for info in socket.getaddrinfo(name, None):
                found.add(str(info[4][0]))
        except OSError:
            continue
    return sorted(n for n in names | found if n and "%" not in n)


def _url(host: str, port: int) -> str:
    shown = f"[{host.strip('[]')}]" if ":" in host else host
    return f"http://{shown}:{port}/"


def cmd_dashboard(args: argparse.Namespace) -> int:
    """Run the dashboard until SIGINT/SIGTERM."""
    try:
        import uvicorn

        from tideflow.dashboard import create_app
    except ImportError as exc:
        raise CliError(
            f"the dashboard needs its extra ({exc.name} is missing):"
            " pip install 'tideflow[dashboard]'",
            code=1,
        ) from None
    from tideflow.errors import InvalidOptionError

    token = args.token or os.environ.get(TOKEN_ENV)
    local = _is_loopback(args.host)
    if not local and not token:
        raise CliError(
            f"refusing to serve on {args.host}: that address is reachable from the network,"
            " where the dashboard shows every task's payload, result and error and can act on"
            f" tasks. Give it a token (--token or ${TOKEN_ENV}), serve it behind TLS, or bind"
            " to 127.0.0.1 (the default)"
        )
    made_up = not token
    token = token or secrets.token_urlsafe(18)
    try:
        hosts = plan_hosts(args.host, args.allowed_hosts)
    except InvalidOptionError as exc:
        raise CliError(f"--allowed-hosts: {exc}") from None
    tm = open_manager(resolve_db(args))
    try:
        try:
            app = create_app(tm, token, public_read=args.public_read, allowed_hosts=hosts)
        except InvalidOptionError as exc:
            raise CliError(str(exc)) from None
        url = _url(args.host, args.port)
        print(f"tideflow dashboard of {tm._store.safe_url} on {url}")
        print(f"it answers to Host {', '.join(hosts)} (more: --allowed-hosts)")
        if made_up:
            needs = "actions" if args.public_read else "reading and actions"
            print(f"token for {needs} (sign in at {url}login): {token}")
        if not local:
            public = bool(args.public_read)
            print(
                f"warning: the dashboard on {args.host} is reachable from the network; anyone"
                " who has the token reads every task and can act on them. Serve it behind TLS"
                " (a reverse proxy with https; give its address to --forwarded-allow-ips so"
                " cookies are Secure)"
                + ("; with --public-read anyone who reaches it reads everything" * public),
                file=sys.stderr,
            )
        sys.stdout.flush()
        proxied = args.forwarded_allow_ips is not None
        uvicorn.run(
            app,
            host=args.host.strip("[]"),
            port=args.port,
            log_level="warning",
            proxy_headers=proxied,
            forwarded_allow_ips=args.forwarded_allow_ips if proxied else None,
            # open live-update streams end within a minute on their own; a stop need not wait
            timeout_graceful_shutdown=2,
        )
    finally:
        tm.close()
    return 0
