"""The documentation site builds with ``mkdocs build --strict`` (warnings fail it).

The docs packages come with the ``test`` extra (and ``docs``); only a run without them, e.g.
an offline ``PYTHONPATH=.`` run, skips this test.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "docs" / "mkdocs.yml"


def _missing_docs_packages() -> list[str]:
    import importlib.util

    names = ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python")
    missing = []
    for name in names:
        try:
            found = importlib.util.find_spec(name) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            missing.append(name)
    return missing


def test_site_builds_strictly(tmp_path):
    missing = _missing_docs_packages()
    if missing:
        pytest.skip(
            f"docs packages not installed ({', '.join(missing)}): "
            'pip install -e ".[test]" or ".[docs]" installs them'
        )
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    cmd = [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(CONFIG)]
    cmd += ["--site-dir", str(tmp_path / "site")]
    proc = subprocess.run(
        cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180, check=False
    )
    log = proc.stdout + proc.stderr
    warnings = [line for line in log.splitlines() if line.startswith(("WARNING", "ERROR"))]
    assert proc.returncode == 0 and not warnings, f"mkdocs build --strict failed:\n{log[-6000:]}"
    site = tmp_path / "site"
    # every page of the nav is there, the API reference is generated from the docstrings
    for page in ("guide", "solvers", "scale", "gpu", "results", "design", "api", "changelog"):
        assert (site / f"{page}.html").is_file(), page
    api = (site / "api.html").read_text(encoding="utf-8")
    for anchor in ("lsr_scale.refine.refine", "lsr_scale.Subspace", "lsr_scale.Krylov"):
        assert f'id="{anchor}"' in api, anchor
    assert ":class:" not in api and ":func:" not in api  # docstring roles were converted
    changelog = (site / "changelog.html").read_text(encoding="utf-8")
    assert "Deprecated" in changelog  # built from the repository's CHANGELOG.md
    for img in (ROOT / "docs" / "img").glob("*.png"):
        assert (site / "img" / img.name).is_file(), img.name
