"""MkDocs hooks for docs/mkdocs.yml: serve the pages that live in docs/ itself.

MkDocs will not take the folder holding mkdocs.yml as its docs_dir, so docs_dir is the
subfolder pages/ and these hooks add the rest through MkDocs' public file API:

- every ``docs/*.md`` page and everything under ``docs/img/``;
- ``changelog.md``, generated at build time from the repository's CHANGELOG.md;
- links that leave docs/ on GitHub (``../CHANGELOG.md``) are pointed at their site page;
- the Sphinx roles of the docstrings (``:class:`~lsr_scale.X```, as ``help()`` shows them)
  become code, linked to the object's entry in the API reference when the site has one.
"""

from __future__ import annotations

import re
from pathlib import Path

from mkdocs.structure.files import File, Files

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
ASSET_DIRS = ("img",)
# links written for GitHub (relative to docs/) -> the page that holds the same text on the site
OUTSIDE_LINKS = {"../CHANGELOG.md": "changelog.md"}
# a docstring's :role:`target` as python-markdown renders it
ROLE_RE = re.compile(r":(?:class|func|meth|attr|mod|data|exc|obj):<code>(~?)([\w.]+)</code>")
# ... and inside a code span (a numpydoc type line is shown verbatim)
RAW_ROLE_RE = re.compile(r":(?:class|func|meth|attr|mod|data|exc|obj):`~?([\w.]+)`")


def on_files(files: Files, config) -> Files:
    def add(path: Path) -> None:
        rel = path.relative_to(DOCS).as_posix()
        if files.get_file_from_path(rel) is None:
            files.append(File(rel, str(DOCS), config["site_dir"], config["use_directory_urls"]))

    for page in sorted(DOCS.glob("*.md")):
        add(page)
    for folder in ASSET_DIRS:
        for path in sorted((DOCS / folder).rglob("*")):
            if path.is_file():
                add(path)
    files.append(File.generated(config, "changelog.md", abs_src_path=str(ROOT / "CHANGELOG.md")))
    return files


def on_page_markdown(markdown: str, page, config, files) -> str:
    for github_link, site_page in OUTSIDE_LINKS.items():
        markdown = markdown.replace(f"]({github_link})", f"]({site_page})")
    return markdown


def _role_to_ref(match: re.Match) -> str:
    short, target = match.groups()
    shown = target.rsplit(".", 1)[-1] if short else target
    # a relative name is tried under the package root; autorefs leaves an optional reference
    # that it cannot resolve as plain text, so private or unlisted targets never warn
    ident = target if target.startswith("lsr_scale") else f"lsr_scale.{target}"
    return f'<autoref optional identifier="{ident}"><code>{shown}</code></autoref>'


def on_page_content(html: str, page, config, files) -> str:
    return RAW_ROLE_RE.sub(r"\1", ROLE_RE.sub(_role_to_ref, html))
