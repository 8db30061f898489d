"""docs/architecture.md embeds the transition table rendered from core/states.py."""

from pathlib import Path

from tideflow.core.states import render_markdown

DOC = Path(__file__).resolve().parents[2] / "docs" / "architecture.md"


def test_architecture_doc_embeds_the_current_transition_table() -> None:
    text = DOC.read_text(encoding="utf-8")
    start = text.index("<!-- transition-table:start -->\n") + len(
        "<!-- transition-table:start -->\n"
    )
    end = text.index("<!-- transition-table:end -->")
    assert text[start:end] == render_markdown(), (
        "docs/architecture.md is out of date: paste tideflow.core.states.render_markdown()"
        " between the transition-table markers"
    )
