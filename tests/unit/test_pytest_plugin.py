"""The pytest plugin (issue 11, part 4): installed tideflow gives every pytest run a
``tideflow_manager`` fixture, through the ``pytest11`` entry point."""

from __future__ import annotations

from importlib.metadata import entry_points
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

USER_TESTS = """
import pytest

from tideflow.testing import run_until_idle


def test_double(tideflow_manager):
    tideflow_manager.use("double", lambda task: task.payload * 2)
    task_id = tideflow_manager.submit("double", 21)
    assert run_until_idle(tideflow_manager)["completed"] == 1
    assert tideflow_manager.get_task(task_id).result == 42


def test_each_test_gets_a_fresh_database(tideflow_manager):
    assert tideflow_manager.get_tasks() == []
    assert tideflow_manager.db_url == "sqlite::memory:"


@pytest.fixture
def tideflow_manager_options():
    return {"max_retries": 1}


def test_options_can_be_overridden(tideflow_manager):
    def broken(task):
        raise RuntimeError("no")

    tideflow_manager.use("broken", broken)
    tideflow_manager.submit("broken")
    assert run_until_idle(tideflow_manager).counts == {"permanently_failed": 1}
"""


def test_the_entry_point_is_registered() -> None:
    (plugin,) = [e for e in entry_points(group="pytest11") if e.name == "tideflow"]
    assert plugin.value == "tideflow.pytest_plugin"


def test_a_user_test_suite_gets_the_fixture(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_user=USER_TESTS)
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=3)


def test_the_plugin_can_be_turned_off(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_user=USER_TESTS)
    result = pytester.runpytest_subprocess("-q", "-p", "no:tideflow", "-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(["*fixture 'tideflow_manager' not found*"])


def test_the_readme_test_passes(pytester: pytest.Pytester) -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Testing your handlers", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    assert len([line for line in code.splitlines() if line.startswith("    ")]) == 4
    pytester.makepyfile(test_readme=code)
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
