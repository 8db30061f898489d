"""``python -m tideflow.cli``: the same as the ``tideflow`` command."""

from __future__ import annotations

import sys

from tideflow.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
