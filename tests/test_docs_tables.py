"""The result tables the docs quote are the recorded ones (bench/docs_tables.py copies them)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("docs_tables", ROOT / "bench" / "docs_tables.py")
docs_tables = importlib.util.module_from_spec(spec)
spec.loader.exec_module(docs_tables)


def test_every_quoted_table_is_its_results_file():
    seen = 0
    for page in sorted((ROOT / "docs").glob("*.md")):
        for stem, k, body in docs_tables.regions(page):
            seen += 1
            what = f"section {k}" if isinstance(k, str) else f"table {k}"
            assert body == docs_tables.source(stem, k), (
                f"{page.name}: the {stem} {what} differs from bench/results/{stem}.md; "
                "run python bench/docs_tables.py"
            )
    assert seen >= 4


def test_tables_are_found_in_order(tmp_path):
    text = "# t\n\n| a |\n|---|\n| 1 |\n\ntext\n\n| b |\n|---|\n"
    assert docs_tables.tables(text) == ["| a |\n|---|\n| 1 |\n", "| b |\n|---|\n"]


def test_a_section_region_copies_the_section_body(tmp_path, monkeypatch):
    results, docs = tmp_path / "results", tmp_path / "docs"
    results.mkdir()
    docs.mkdir()
    (results / "r.md").write_text("# R\n\n## Targets\n\n- one\n- two\n\n## Next\n\n| a |\n")
    page = docs / "p.md"
    page.write_text("x\n<!-- results: r section=Targets -->\nold\n<!-- /results -->\ny\n")
    monkeypatch.setattr(docs_tables, "RESULTS", results)
    assert [(s, k) for s, k, _ in docs_tables.regions(page)] == [("r", "Targets")]
    assert docs_tables.rewrite(page)
    assert page.read_text() == (
        "x\n<!-- results: r section=Targets -->\n- one\n- two\n<!-- /results -->\ny\n"
    )
    assert docs_tables.source("r", 1) == "| a |\n"
    with pytest.raises(ValueError, match="## Missing"):
        docs_tables.source("r", "Missing")
