"""The decorator's ``.submit`` is typed by ``payload_type`` (issue 11, part 7): mypy, run on a
small program, accepts the right payload and refuses a wrong one."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("mypy")

PROGRAM = textwrap.dedent(
    """
    from __future__ import annotations

    import dataclasses

    from tideflow import Task, TaskManager


    @dataclasses.dataclass
    class Order:
        id: int


    tm = TaskManager()


    @tm.task("order", payload_type=Order)
    def handle(task: Task) -> int:
        return task.payload.id  # type: ignore[no-any-return]


    @tm.task("plain")
    def plain(task: Task) -> None:
        return None


    handle.submit(Order(id=1))
    handle.submit(Order(id=1), priority=3)
    plain.submit({"anything": "goes"})
    plain.submit()
    count: int = handle(Task.__new__(Task))  # still the function itself
    handle.submit({"id": 1})  # E: a dict is not an Order
    handle.submit("order 1")  # E: nor is a string
    """
).lstrip()


def test_mypy_accepts_the_right_payload_and_refuses_a_wrong_one(tmp_path: Path) -> None:
    program = tmp_path / "program.py"
    program.write_text(PROGRAM)
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--no-error-summary",
            "--cache-dir",
            str(tmp_path / "cache"),
            str(program),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    expected = [str(n) for n, line in enumerate(PROGRAM.splitlines(), 1) if "# E:" in line]
    errors = [line for line in run.stdout.splitlines() if ": error:" in line]
    assert [line.split(":")[1] for line in errors] == expected, run.stdout + run.stderr
    assert 'incompatible type "dict[str, int]"; expected "Order"' in errors[0]
    assert 'incompatible type "str"; expected "Order"' in errors[1]
