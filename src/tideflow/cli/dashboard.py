"""``tideflow dashboard``: serve the web dashboard of a database."""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from typing import Any

from tideflow.cli.common import CliError, add_db_option, open_manager, resolve_db

__all__ = ["add_command"]

TOKEN_ENV = "TIDEFLOW_DASHBOARD_TOKEN"


def add_command(sub: Any) -> None:
    """Register ``dashboard`` on the top-level subparsers."""
    p = sub.add_parser(
        "dashboard",
        help="serve the web dashboard (needs: pip install 'tideflow[dashboard]')",
        description="Serve the web dashboard and its JSON API (/api/) and metrics (/metrics)."
        f" Actions need a token: --token, ${TOKEN_ENV}, or one made up and printed at start.",
    )
    add_db_option(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8765, help="port (default 8765)")
    p.add_argument("--token", help=f"the token for actions (default ${TOKEN_ENV})")
    p.set_defaults(func=cmd_dashboard)


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
    token = args.token or os.environ.get(TOKEN_ENV)
    made_up = not token
    token = token or secrets.token_urlsafe(18)
    tm = open_manager(resolve_db(args))
    try:
        app = create_app(tm, token)
        print(f"tideflow dashboard of {tm._store.safe_url} on http://{args.host}:{args.port}/")
        if made_up:
            print(f"token for actions (sign in at /login): {token}")
        sys.stdout.flush()
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    finally:
        tm.close()
    return 0
