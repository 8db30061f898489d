"""Static checks as tests: lint, format, types and import layers (config in pyproject.toml)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

CHECKS = {
    "ruff-check": ["ruff", "check"],
    "ruff-format": ["ruff", "format", "--check"],
    "mypy": ["mypy"],
    "lint-imports": ["lint-imports"],
}


@pytest.mark.parametrize("check", list(CHECKS))
def test_static_check_passes(check: str) -> None:
    tool, *args = CHECKS[check]
    exe = BIN / tool
    if not exe.exists():
        message = f"{tool} is not installed in {BIN}: pip install -e '.[dev]'"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    proc = subprocess.run(
        [str(exe), *args], cwd=ROOT, capture_output=True, text=True, timeout=600, check=False
    )
    assert proc.returncode == 0, (
        f"{' '.join([tool, *args])} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    )
