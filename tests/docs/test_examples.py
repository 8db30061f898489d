"""Every complete program of the documentation is a file under examples/, run here on SQLite,
and every page that shows one includes the file (so the docs cannot rot)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
DOCS = ROOT / "docs"

#: example -> lines its output must contain (the comments in the file say the same)
EXPECTED: dict[str, list[str]] = {
    "quickstart.py": ["{'sent': True}", "completed {'sent': True} 1", "cat.png.thumb.png"],
    "retries.py": [
        "third time lucky",
        "charge 1 task_permanently_failed {'reason': 'no_retry', 'exception':"
        " '__main__.CardDeclined', 'rule': 'PermanentError'}",
        "'rule': 'no_retry_on'",
    ],
    "cron.py": ["cron 0 0 3 * * * Europe/Paris", "03:00:00", "paused"],
    "workflow.py": [
        "{'boxes': ['box-mug', 'box-gift'], 'failed': ['pack_item'], 'to': 'Lyon'}",
        "['permanently_failed', 'permanently_failed']",
    ],
    "approval.py": [
        "{'published': '<h1>Release notes</h1>'}",
        "permanently_failed rejected by ana",
        "approved by ana",
    ],
    "routing.py": ["4k video rendered on gpu", "completed", "'requires': ['gpu']"],
    "worker_app.py": ["{'completed': 2}"],
    "tracing.py": [
        "{'packed': ['box-mug', 'box-gift']}",
        "checkout\n  publish order\n    process order\n      process pack\n        print label\n",
    ],
}
PROGRAMS = sorted(p.name for p in EXAMPLES.glob("*.py") if not p.name.startswith("test_"))
INCLUDE = re.compile(r'--8<-- "([^"]+)"')


def test_every_example_program_has_expectations() -> None:
    # fastapi_app.py is an ASGI app, run by tests/examples/test_fastapi_example.py
    assert sorted([*EXPECTED, "fastapi_app.py"]) == PROGRAMS


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_runs(name: str, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        cwd=tmp_path,  # each writes its own sqlite:tasks.db here
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    for line in EXPECTED[name]:
        assert line in proc.stdout, f"{name} did not print {line!r}:\n{proc.stdout}"


def test_the_handler_tests_example_passes() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_handlers.py"],
        cwd=EXAMPLES,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 passed" in proc.stdout


def test_the_kubernetes_manifest_is_valid_yaml() -> None:
    yaml = pytest.importorskip("yaml")
    doc = yaml.safe_load((EXAMPLES / "kubernetes" / "worker-deployment.yaml").read_text())
    spec = doc["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert container["command"][:2] == ["tideflow", "worker"]
    stop = next(a for a in container["command"] if a.startswith("--stop-timeout="))
    assert float(stop.split("=")[1]) < spec["terminationGracePeriodSeconds"]


def _pages() -> list[Path]:
    return sorted(DOCS.rglob("*.md"))


def test_every_included_file_exists() -> None:
    for page in _pages():
        for target in INCLUDE.findall(page.read_text(encoding="utf-8")):
            path = target.split(":")[0]
            assert (ROOT / path).is_file(), f"{page.relative_to(ROOT)} includes missing {path}"


def test_every_example_is_shown_in_the_docs() -> None:
    shown = {
        Path(t.split(":")[0]).name
        for page in _pages()
        for t in INCLUDE.findall(page.read_text(encoding="utf-8"))
    }
    missing = sorted({*EXPECTED, "test_handlers.py", "fastapi_app.py"} - shown)
    assert not missing, f"examples no page includes: {missing}"


def test_no_page_inlines_a_complete_program() -> None:
    """A python block that starts with an import is a complete program: it must be a file
    under examples/ included with --8<--, so that it is run above. Fragments start otherwise."""
    fence = re.compile(r"^( *)```python\n(.*?)^\1```", re.MULTILINE | re.DOTALL)
    offenders = []
    for page in _pages():
        for match in fence.finditer(page.read_text(encoding="utf-8")):
            body = match.group(2).strip()
            if "--8<--" in body:
                continue
            first = body.splitlines()[0] if body else ""
            if first.startswith(("import ", "from ")):
                offenders.append(f"{page.relative_to(ROOT)}: {first}")
    assert not offenders, "inline complete programs (move them to examples/):\n" + "\n".join(
        offenders
    )
