"""Copy recorded result tables into the docs, so that the docs quote what the results hold.

A docs page marks a table it quotes from ``bench/results/<stem>.md``::

    <!-- results: large_models_cpu table=1 -->
    | ... the table ... |
    <!-- /results -->

``table=k`` (default 1) picks the k-th markdown table of the results file;
``section=Name`` the body of its ``## Name`` section instead (a list, such as a script's
targets). This script
rewrites every marked region from the results files; ``tests/test_docs_tables.py`` fails
when a region differs from its source, so a rerun of a benchmark cannot leave the docs
behind.

    python bench/docs_tables.py          # rewrite the regions
    python bench/docs_tables.py --check  # exit 1 and name the stale regions
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DOCS = ROOT / "docs"
REGION = re.compile(
    r"(?P<head><!-- results: (?P<stem>[\w.-]+)"
    r"(?: (?:table=(?P<k>\d+)|section=(?P<section>[\w-]+)))? -->\n)"
    r"(?P<body>.*?)(?P<tail><!-- /results -->)",
    re.S,
)


def tables(text: str) -> list[str]:
    """The markdown tables of ``text`` (runs of lines starting with ``|``), in order."""
    out, cur = [], []
    for line in text.splitlines():
        if line.startswith("|"):
            cur.append(line)
        elif cur:
            out.append("\n".join(cur) + "\n")
            cur = []
    if cur:
        out.append("\n".join(cur) + "\n")
    return out


def section(text: str, name: str) -> str:
    """The body of the ``## name`` section of ``text``, without its blank edges."""
    head = f"## {name}\n"
    if head not in text:
        raise ValueError(f"expected a '## {name}' section, got none")
    body = text.split(head, 1)[1].split("\n## ", 1)[0]
    return body.strip("\n") + "\n"


def _key(m) -> int | str:
    """A region's table number, or its section name."""
    return m.group("section") or int(m.group("k") or 1)


def source(stem: str, k: int | str) -> str:
    """Table ``k`` (an int) or section ``k`` (a name) of ``bench/results/<stem>.md``."""
    path = RESULTS / f"{stem}.md"
    if isinstance(k, str):
        return section(path.read_text(), k)
    found = tables(path.read_text())
    if not 1 <= k <= len(found):
        raise ValueError(f"{path}: expected at least {k} tables, got {len(found)}")
    return found[k - 1]


def regions(page: Path):
    """``(stem, k, body)`` of each marked region of ``page``."""
    for m in REGION.finditer(page.read_text()):
        yield m.group("stem"), _key(m), m.group("body")


def rewrite(page: Path) -> bool:
    """Rewrite the regions of ``page`` from their sources; True when it changed."""
    text = page.read_text()

    def fill(m):
        return m.group("head") + source(m.group("stem"), _key(m)) + m.group("tail")

    new = REGION.sub(fill, text)
    if new != text:
        page.write_text(new)
    return new != text


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only report stale regions")
    args = ap.parse_args(argv)
    stale = []
    for page in sorted(DOCS.glob("*.md")):
        for stem, k, body in regions(page):
            if body != source(stem, k):
                what = f"section {k}" if isinstance(k, str) else f"table {k}"
                stale.append(f"{page.relative_to(ROOT)}: {stem} {what}")
        if not args.check:
            rewrite(page)
    if args.check and stale:
        print("stale:\n" + "\n".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
