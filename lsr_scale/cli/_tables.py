"""Markdown tables and byte counts for the CLI's output."""

from __future__ import annotations

__all__ = ["markdown_table", "fmt_bytes", "fmt_mib", "format_table"]


def markdown_table(header: list[str], body: list[list[str]]) -> str:
    """A markdown table whose columns are padded to their widest cell."""
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(header)]
    lines = [
        "| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |",
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
    ]
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(b, widths)) + " |" for b in body]
    return "\n".join(lines)


def fmt_bytes(n: float) -> str:
    """``n`` bytes in B, KiB, MiB or GiB, one decimal (the demo table)."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def fmt_mib(n: int) -> str:
    """``n`` bytes in whole MiB, or GiB to two decimals from 1 GiB (the reproduce table)."""
    return f"{n / 2**20:.0f} MiB" if n < 2**30 else f"{n / 2**30:.2f} GiB"


def _fmt(x, spec=".3e"):
    return "" if x is None else format(x, spec) if isinstance(x, float) else str(x)


def format_table(rows: list[dict]) -> str:
    """A markdown table of ``lsr-scale reproduce`` rows."""
    head = ["method", "rel. L2", "paper", "reduction", "rank / iters", "wall (s)", "peak mem"]
    body = []
    for r in rows:
        ri = r.get("rank") if r.get("rank") is not None else r.get("iterations")
        body.append(
            [
                r["method"] + (f" ({r['preconditioner']})" if r.get("preconditioner") else ""),
                _fmt(r["rel_l2"]),
                _fmt(r.get("paper")),
                "" if r.get("reduction") is None else f"{r['reduction']:.1f}x",
                _fmt(ri),
                f"{r['wall_s']:.2f}",
                fmt_mib(r["peak_mem_bytes"]),
            ]
        )
    return markdown_table(head, body)
