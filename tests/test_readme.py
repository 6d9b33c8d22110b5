"""The README's commands and quickstart stay in sync with the code and CI."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _bash_blocks():
    return re.findall(r"```bash\n(.*?)```", README, re.S)


def test_readme_starts_with_the_two_setup_commands_and_ci_runs_the_test_one():
    blocks = _bash_blocks()
    assert len(blocks) >= 2
    demo, tests = blocks[0].strip(), blocks[1].strip()
    assert demo.endswith("lsr-scale demo")
    assert "pytest" in tests
    ci = (ROOT / ".ci" / "run").read_text()
    assert tests in ci, "'.ci/run' must call the README's test command verbatim"


@pytest.mark.slow
def test_quickstart_runs():
    code = re.search(r"## Quickstart\n\n```python\n(.*?)```", README, re.S).group(1)
    assert len(code.strip().splitlines()) <= 15
    namespace: dict = {}
    exec(compile(code, "README-quickstart", "exec"), namespace)  # noqa: S102
    prob, model, refined = namespace["prob"], namespace["model"], namespace["refined"]
    assert prob.test_error(lambda x: refined(x.double())) < prob.test_error(model) / 10
