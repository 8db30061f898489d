"""The ``tideflow`` command line: workers, task inspection and control, and a demo.

Entry point: :func:`tideflow.cli.main.main` (the ``tideflow`` console script, or
``python -m tideflow.cli``). This layer uses only tideflow's public API.
"""

from __future__ import annotations

from tideflow.cli.main import main

__all__ = ["main"]
