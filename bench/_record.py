"""Writing a benchmark's results: ``bench/results/<stem>.json`` and a markdown table beside it.

Shared by the scripts that record one result file each (``bench_self_check.py``,
``fno_products.py``); import it as ``from _record import ...`` (``bench/`` is on
``sys.path`` when a script in it runs).
"""

from __future__ import annotations

import json
import platform
from pathlib import Path

import torch

OUT = Path(__file__).parent / "results"


def cpu_device(threads: int) -> str:
    """How the results name this machine: ``"cpu (x86_64, 1 thread)"``."""
    plural = "" if threads == 1 else "s"
    return f"cpu ({platform.processor() or platform.machine()}, {threads} thread{plural})"


def write(stem: str, payload: dict, title: str, command: str, body: list[str]) -> str:
    """Write ``<stem>.json`` (``payload`` with ``torch`` added) and ``<stem>.md`` (a title
    naming ``payload["device"]`` and torch, the command, then ``body``); return the markdown."""
    payload = {**payload, "torch": torch.__version__}
    OUT.mkdir(exist_ok=True)
    (OUT / f"{stem}.json").write_text(json.dumps(payload, indent=2) + "\n")
    head = [f"# {title} ({payload['device']}, torch {torch.__version__})", "",
            f"Command: `{command}`", ""]  # fmt: skip
    text = "\n".join(head + body) + "\n"
    (OUT / f"{stem}.md").write_text(text)
    return text
