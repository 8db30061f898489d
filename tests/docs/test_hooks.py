"""The reference tables the docs build renders from the code (docs/hooks.py) render, and cover
what the code has; a new option without a description fails here before it fails the build."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _hooks() -> ModuleType:
    spec = importlib.util.spec_from_file_location("tideflow_docs_hooks", ROOT / "docs" / "hooks.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


HOOKS = _hooks()


@pytest.mark.parametrize("name", sorted(HOOKS.RENDERERS))
def test_every_marker_renders(name: str) -> None:
    if name in ("routes", "metrics"):
        pytest.importorskip("starlette")
        pytest.importorskip("prometheus_client")
    text = HOOKS.render(name)
    assert text.strip()


def test_every_marker_in_the_pages_is_known() -> None:
    used = {
        m.group(1)
        for page in (ROOT / "docs").rglob("*.md")
        for m in HOOKS.MARKER.finditer(page.read_text(encoding="utf-8"))
    }
    assert used <= set(HOOKS.RENDERERS)
    assert used == set(HOOKS.RENDERERS), f"renderers no page uses: {set(HOOKS.RENDERERS) - used}"


def test_the_options_table_has_every_option_of_every_level() -> None:
    from tideflow.core.options import MANAGER_OPTIONS, REGISTRATION_OPTIONS, TASK_OPTIONS

    table = HOOKS.render("options")
    for name in TASK_OPTIONS | REGISTRATION_OPTIONS | MANAGER_OPTIONS:
        assert f"| `{name}` |" in table
    assert "| `timeout` | `60.0` | > 0, ≤ 100 years | ✓ | ✓ | ✓ |" in table


def test_the_state_diagram_has_every_transition() -> None:
    from tideflow.core.states import NEW, TRANSITIONS

    diagram = HOOKS.render("state-diagram")
    for row in TRANSITIONS:
        for source in row.sources:
            start = "[*]" if source == NEW else source
            assert f"{start} --> {row.target}: " in diagram


def test_the_cli_reference_lists_every_command() -> None:
    text = HOOKS.render("cli")
    for command in ("tideflow tasks submit", "tideflow db sql", "tideflow completion"):
        assert f"### `{command}`" in text


def test_an_unknown_marker_fails() -> None:
    with pytest.raises(ValueError, match="unknown marker"):
        HOOKS.render("nope")
