"""The web dashboard (``pip install 'tideflow[dashboard]'``; ``tideflow dashboard``)."""

from tideflow.dashboard.app import create_app

__all__ = ["create_app"]
