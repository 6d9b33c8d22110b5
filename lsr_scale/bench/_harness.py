"""The benchmark harness every suite shares: timing, peak memory, device and load tags, and the
results files (resumable JSON, a markdown table, a plot).

A suite is a module under :mod:`lsr_scale.bench` with one runner registered by :func:`suite`::

    from lsr_scale.bench._harness import Record, suite, time_ratio

    @suite("lsmr", "one LSMR iteration against one JVP + one VJP")
    def run(args):
        rec = Record("lsmr", out=args.out, device=args.device, quick=args.quick)
        ...
        rec.add({"m": m, "ratio": r["ratio"]}, key=("m",))
        rec.markdown("LSMR overhead", [("m", "params"), ("ratio:.3f", "iter / pair")],
                     command=args.command)

    @run.options
    def _(parser):
        parser.add_argument("--rows", type=int, default=2000)

Every runner receives the common options of :func:`add_common_arguments` (``--quick``,
``--out``, ``--device``, ``--threads``), already applied by :func:`prepare`: ``args.device``
is a :class:`torch.device`, ``args.out`` a :class:`~pathlib.Path`, ``args.command`` the
command line that reproduces the run. Timings are medians; what a suite reports are ratios of
two things timed in the same run (:func:`time_ratio`), which survive a loaded machine far
better than absolute times.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = [
    "Record",
    "Suite",
    "add_common_arguments",
    "device_name",
    "device_tag",
    "fmt",
    "load_info",
    "md_table",
    "parse_script",
    "peak_memory",
    "prepare",
    "run_isolated",
    "step_time",
    "suite",
    "suites",
    "sync",
    "time_ratio",
    "timeit",
    "write_files",
]

DEFAULT_OUT = Path("bench") / "results"


# --------------------------------------------------------------------------- devices and load
def _device(device=None) -> torch.device:
    """``None``/``"auto"`` -> the current CUDA device when there is one, else the CPU."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def sync(device=None) -> None:
    """Wait for queued CUDA work on ``device`` (nothing to do on the CPU)."""
    dev = _device(device)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def device_tag(device: str | torch.device | None = None) -> str:
    """The short tag results files are named by: ``"cpu"``, or the GPU's short model name
    (``"h100"``, ``"h200"``, ``"a100"``, ...), else ``"cuda"``.

    >>> device_tag("cpu")
    'cpu'
    """
    dev = _device(device)
    if dev.type != "cuda":
        return dev.type
    name = torch.cuda.get_device_name(dev).lower()
    for word in name.replace("-", " ").split():
        if len(word) >= 2 and word[0].isalpha() and word[1:].isdigit():
            return word  # h100, h200, a100, v100, l4, t4
    return "cuda"


def device_name(device=None, threads: int | None = None) -> str:
    """How results name the machine: ``"cpu (x86_64, 1 thread)"`` or the GPU's full name
    (``"NVIDIA H100 80GB HBM3"``). ``threads`` defaults to ``torch.get_num_threads()``.

    >>> device_name("cpu", threads=1).endswith("1 thread)")
    True
    """
    dev = _device(device)
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    n = torch.get_num_threads() if threads is None else threads
    arch = platform.processor() or platform.machine()
    return f"cpu ({arch}, {n} thread{'' if n == 1 else 's'})"


def load_info() -> dict:
    """What else the machine was doing: ``{"loadavg": [1, 5, 15 min], "cpus": n, "threads":
    torch threads}`` (``loadavg`` is empty where the OS does not report it)."""
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = []
    return {"loadavg": load, "cpus": os.cpu_count(), "threads": torch.get_num_threads()}


# --------------------------------------------------------------------------------- timing
def _clock(clock: str) -> Callable[[], float]:
    if clock == "wall":
        return time.perf_counter
    if clock == "cpu":
        return time.process_time
    raise ValueError(f"clock: expected 'wall' or 'cpu', got {clock!r}")


def _once(fn, device, now) -> float:
    sync(device)
    t0 = now()
    fn()
    sync(device)
    return now() - t0


def timeit(fn, *, repeat: int = 5, warmup: int = 1, device=None, clock: str = "wall") -> float:
    """Median seconds of ``repeat`` calls of ``fn()`` after ``warmup`` untimed ones.

    CUDA work is synchronized before and after each call (``device`` defaults to the current
    CUDA device when there is one). ``clock="cpu"`` measures process CPU time instead of wall
    time (steadier on a shared CPU, meaningless for GPU work).
    """
    now = _clock(clock)
    for _ in range(warmup):
        fn()
    return statistics.median(_once(fn, device, now) for _ in range(max(1, repeat)))


def time_ratio(
    fn, ref, *, repeat: int = 5, warmup: int = 1, device=None, clock: str = "wall"
) -> dict:
    """Time ``fn`` against a reference ``ref`` interleaved (fn, ref, fn, ref, ...), so a change
    in machine load hits both alike.

    Returns ``{"t": median s of fn, "t_ref": median s of ref, "ratio": ...}`` where ``ratio``
    is the median of the per-round ratios t_i / t_ref_i (equal to t / t_ref on a quiet
    machine, more robust when the load changes between rounds).
    """
    now = _clock(clock)
    for _ in range(warmup):
        fn()
        ref()
    ts, rs = [], []
    for _ in range(max(1, repeat)):
        ts.append(_once(fn, device, now))
        rs.append(_once(ref, device, now))
    ratio = statistics.median(t / max(r, 1e-12) for t, r in zip(ts, rs, strict=True))
    return {"t": statistics.median(ts), "t_ref": statistics.median(rs), "ratio": ratio}


def step_time(run, k1: int, k2: int, *, repeat: int = 3, device=None, clock: str = "wall"):
    """Seconds per step of an iteration: ``(time of run(k2) - time of run(k1)) / (k2 - k1)``,
    so the set-up cost common to both runs cancels. ``run(k)`` performs k steps."""
    if k2 <= k1:
        raise ValueError(f"step_time: expected k2 > k1, got {k1}, {k2}")
    t1 = timeit(lambda: run(k1), repeat=repeat, device=device, clock=clock)
    t2 = timeit(lambda: run(k2), repeat=repeat, device=device, clock=clock)
    return max(t2 - t1, 0.0) / (k2 - k1)


def peak_memory(device=None):
    """A context manager measuring peak memory over its block, with ``.peak_bytes``,
    ``.increment_bytes`` (peak minus what was in use on entry) and ``.kind`` (CUDA: peak
    allocated tensor memory; CPU: peak resident set size). See
    :class:`lsr_scale._utils.PeakMemory`."""
    from .._utils import PeakMemory

    return PeakMemory(_device(device))


def run_isolated(
    target: str, spec: dict, *, timeout=None, env=None, python=None, threads=None
) -> dict:
    """Run ``target`` (``"package.module:function"``) on ``spec`` in a fresh Python process
    and return the dict it returns (e.g. so a peak-memory measurement cannot be hidden by an
    earlier one). The function must take one dict and return a JSON-serialisable dict.
    ``python``: another interpreter (default this one); ``env``: the child's environment;
    ``threads``: the child's torch and BLAS threads (``OMP_NUM_THREADS`` and the like)."""
    if threads:
        env = {
            **(os.environ if env is None else env),
            **dict.fromkeys(
                ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"), str(threads)
            ),
        }
    proc = subprocess.run(
        [python or sys.executable, "-m", "lsr_scale.bench._harness", target, json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{target} failed in a child process:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _child(argv: Sequence[str]) -> None:
    module, _, func = argv[0].partition(":")
    result = getattr(importlib.import_module(module), func)(json.loads(argv[1]))
    print(json.dumps(result, default=float), flush=True)


# ------------------------------------------------------------------------------- formatting
def fmt(value, spec: str = "") -> str:
    """One table cell: ``spec`` (a format spec such as ``".2f"``) when given, ints with
    thousands separators, floats with 3 significant digits, ``None`` as an empty cell."""
    if value is None:
        return ""
    if spec:
        try:
            return format(value, spec)
        except (TypeError, ValueError):
            return str(value)
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def _column(col) -> tuple[Callable[[dict], str], str]:
    """(cell of a row, header) for a column given as ``"key"``, ``"key:spec"`` or
    ``(key_or_callable, header)``."""
    key, header = (col, None) if isinstance(col, str) else col
    if callable(key):
        return (lambda r: fmt(key(r))), header or ""
    name, _, spec = key.partition(":")
    return (lambda r: fmt(r.get(name), spec)), header or name


def md_table(columns, rows: Iterable[dict]) -> str:
    """A markdown table: one line per row. A column is ``"key"``, ``"key:spec"`` (a format
    spec, e.g. ``"ratio:.3f"``) or a pair ``(key_or_spec_or_callable, header)``; a callable
    receives the row and returns the cell's value."""
    cols = [_column(c) for c in columns]
    lines = ["| " + " | ".join(h for _, h in cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(r) for cell, _ in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------- records
def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def write_files(stem: str, payload: dict, title: str, command: str, body, *, out=None) -> str:
    """Write ``<out>/<stem>.json`` (``payload`` with ``torch`` added) and ``<stem>.md`` (a
    title naming ``payload["device"]`` and torch, the command, then the lines of ``body``);
    return the markdown. For one-off scripts whose results are not a list of rows (those use
    :class:`Record`)."""
    base = Path(out) if out is not None else DEFAULT_OUT
    payload = {**payload, "torch": torch.__version__}
    _write_atomic(base / f"{stem}.json", json.dumps(payload, indent=2, default=str) + "\n")
    head = [f"# {title} ({payload.get('device', '?')}, torch {torch.__version__})", "",
            f"Command: `{command}`", ""]  # fmt: skip
    text = "\n".join(head + list(body)) + "\n"
    _write_atomic(base / f"{stem}.md", text)
    return text


class Record:
    """One suite's results file, written after every row so an interrupted run keeps what it
    measured and a rerun resumes (:meth:`has`).

    Files: ``<out>/<stem>_<device tag>.{json,md,png}`` (``stem`` defaults to the suite name,
    ``out`` to ``bench/results`` under the current directory). A ``quick`` record adds
    ``_quick`` to the stem, so a smoke run never overwrites recorded full results.

    The JSON holds the suite, device name and tag, torch version, date, load at start,
    whatever :meth:`set` added, and ``rows``: a list of dicts. Rows are loaded from an
    existing file when its ``quick`` flag matches; otherwise the file is started afresh.
    ``legacy(doc) -> (rows, keys)`` reads a file written before this harness (no ``rows``):
    its rows, and the top-level keys they came from (dropped).
    """

    def __init__(
        self,
        suite: str,
        *,
        out=None,
        device=None,
        quick: bool = False,
        meta: dict | None = None,
        stem: str | None = None,
        threads: int | None = None,
        legacy=None,
    ):
        self.suite = suite
        self.device = _device(device)
        self.quick = bool(quick)
        self.tag = device_tag(self.device)
        base = Path(out) if out is not None else DEFAULT_OUT
        name = f"{stem or suite}_{self.tag}{'_quick' if self.quick else ''}"
        self.path_json = base / f"{name}.json"
        self.path_md = base / f"{name}.md"
        self.path_png = base / f"{name}.png"
        self.device_name = device_name(self.device, threads)
        self.meta = {
            "suite": suite,
            "device": self.device_name,
            "device_tag": self.tag,
            "torch": torch.__version__,
            "quick": self.quick,
            "date": datetime.date.today().isoformat(),
            "load_start": load_info(),
        }
        self.rows: list[dict] = []
        old = self._load()
        if old is not None and "rows" not in old and legacy is not None:
            rows, keys = legacy(old)
            old = {k: v for k, v in old.items() if k not in keys and k != "device"}
            old["rows"] = rows
        if old is not None:
            self.rows = list(old.get("rows", []))
            self.meta.update({k: v for k, v in old.items() if k not in self.meta | {"rows": 0}})
        self.meta.update(meta or {})

    def _load(self) -> dict | None:
        try:
            old = json.loads(self.path_json.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(old, dict) or bool(old.get("quick")) != self.quick:
            return None
        if isinstance(old.get("rows"), dict):  # older scripts keyed their rows {key: row}
            old["rows"] = [{"key": k, **row} for k, row in old["rows"].items()]
        if not isinstance(old.get("rows", []), list):
            return None
        return old

    def has(self, **key) -> bool:
        """Whether a row with these field values exists (a resumed run skips it)."""
        return any(all(r.get(k) == v for k, v in key.items()) for r in self.rows)

    def get(self, **key) -> dict | None:
        """The first row with these field values, or None."""
        return next((r for r in self.rows if all(r.get(k) == v for k, v in key.items())), None)

    def add(self, row: dict, key: tuple[str, ...] = ()) -> dict:
        """Append ``row`` (replacing the row whose ``key`` fields are equal, when ``key`` is
        given) and write the JSON now. Returns the row."""
        if key:
            match = {k: row.get(k) for k in key}
            self.rows = [r for r in self.rows if any(r.get(k) != v for k, v in match.items())]
        self.rows.append(row)
        self.write()
        return row

    def set(self, **meta) -> None:
        """Add or replace top-level fields, and write the JSON now."""
        self.meta.update(meta)
        self.write()

    def write(self) -> Path:
        """Write the JSON (atomically: a killed run never leaves half a file)."""
        payload = {**self.meta, "load_end": load_info(), "rows": self.rows}
        _write_atomic(self.path_json, json.dumps(payload, indent=2, default=str) + "\n")
        return self.path_json

    def markdown(
        self,
        title: str,
        columns,
        *,
        command: str,
        notes: Iterable[str] = (),
        rows=None,
        more: Iterable[str] = (),
    ) -> str:
        """Write the ``.md``: ``# title (device, torch x)``, the command, the load, the table
        of ``rows`` (default: all) with ``columns`` (see :func:`md_table`; None: no table),
        then each block of ``more`` (e.g. a second :func:`md_table`) and each note as a
        paragraph. Returns the text."""
        load = self.meta.get("load_start", {}).get("loadavg") or ["?"]
        head = [
            f"# {title} ({self.device_name}, torch {torch.__version__})",
            "",
            f"Command: `{command}`" + (" (quick run)" if self.quick else ""),
            "",
            f"1-min load average at start: {load[0]} on {os.cpu_count()} CPUs.",
            "",
        ]
        parts = [md_table(columns, self.rows if rows is None else rows)] if columns else []
        parts += [m if m.endswith("\n") else m + "\n" for m in more]
        parts += [n if n.endswith("\n") else n + "\n" for n in notes]
        text = "\n".join(head) + "\n" + "\n".join(parts)
        _write_atomic(self.path_md, text)
        return text

    def plot(self, draw, path=None) -> Path | None:
        """Call ``draw(fig, ax)`` on a fresh figure and save it as the ``.png`` (or ``path``);
        None (and no file) when matplotlib is not installed."""
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            return None
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        try:
            draw(fig, ax)
            fig.tight_layout()
            path = Path(path or self.path_png)
            path.parent.mkdir(parents=True, exist_ok=True)
            fig.savefig(path, dpi=120)
        finally:
            plt.close(fig)
        return path


# ----------------------------------------------------------------------------------- suites
@dataclass
class Suite:
    """A registered benchmark suite: ``run(args)`` and the function adding its own options."""

    name: str
    help: str
    run: Callable[[argparse.Namespace], None]
    configure: Callable[[argparse.ArgumentParser], None] | None = None

    def __call__(self, args) -> None:
        return self.run(args)

    def options(self, configure):
        """Decorator: ``configure(parser)`` adds this suite's own command-line options."""
        self.configure = configure
        return configure


_SUITES: dict[str, Suite] = {}


def suite(name: str, help: str):
    """Register the decorated ``run(args) -> None`` as the suite ``name`` (``help``: one line
    for ``lsr-scale bench --list``). Returns the :class:`Suite`; add options with
    ``@run.options``, or give the function a ``configure`` attribute before decorating."""

    def register(run) -> Suite:
        s = Suite(name, help, run, getattr(run, "configure", None))
        _SUITES[name] = s
        return s

    return register


def suites() -> dict[str, Suite]:
    """The suites registered so far (by the modules imported so far)."""
    return dict(_SUITES)


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """``--quick``, ``--out``, ``--device``, ``--threads``: what every suite accepts."""
    parser.add_argument(
        "--quick", action="store_true", help="small sizes, few repetitions (< 2 min on a CPU)"
    )
    parser.add_argument(
        "--out",
        default=str(DEFAULT_OUT),
        help="results folder; files are <suite>_<device>.{json,md,png}",
    )
    parser.add_argument("--device", default="auto", help="'auto', 'cpu' or 'cuda[:i]'")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (0: torch's default)"
    )


def prepare(args: argparse.Namespace, command: str) -> argparse.Namespace:
    """Apply the common options: set the thread count, resolve ``args.device``, make
    ``args.out`` a Path and record ``args.command``."""
    if getattr(args, "threads", 0):
        torch.set_num_threads(args.threads)
    args.device = _device(getattr(args, "device", None))
    args.out = Path(getattr(args, "out", DEFAULT_OUT))
    args.command = command
    return args


def parse_script(file: str, doc: str, configure=None, argv=None) -> argparse.Namespace:
    """The command line of a script under ``bench/``: the common options (``--out`` defaulting
    to the script's ``results/`` folder) and ``configure(parser)``'s, parsed and prepared;
    ``args.command`` is ``python bench/<script> ...``."""
    parser = argparse.ArgumentParser(description=doc.strip().splitlines()[0])
    add_common_arguments(parser)
    parser.set_defaults(out=str(Path(file).resolve().parent / "results"))
    if configure is not None:
        configure(parser)
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    args = parser.parse_args(argv)
    return prepare(args, " ".join(["python", f"bench/{Path(file).name}", *argv]))


@contextlib.contextmanager
def section(name: str, errors: dict | None = None):
    """Run a block, printing its wall time; with ``errors`` (a dict), an exception is recorded
    there under ``name`` and the run goes on, otherwise it propagates."""
    t0 = time.perf_counter()
    print(f"-- {name}", flush=True)
    try:
        yield
    except Exception as err:  # noqa: BLE001 - recorded, the next section still runs
        if errors is None:
            raise
        errors[name] = f"{type(err).__name__}: {err}"
        print(f"   {name} failed: {errors[name]}", flush=True)
    finally:
        print(f"   {name}: {time.perf_counter() - t0:.1f} s", flush=True)


if __name__ == "__main__":
    _child(sys.argv[1:])
