"""Progress of a run through named phases, with counts that move within each phase.

:func:`lsr_scale.refine` shows one line, e.g. ``refine (krylov): LSMR 120/600 iterations,
14 s, ETA 56 s``. A daemon thread polls the phase's counter: on a terminal it redraws the line
(with tqdm, when installed) every :data:`REFRESH` seconds; elsewhere it prints a plain line
to stderr when a phase starts and every :data:`LINE_INTERVAL` seconds while it runs.
"""

from __future__ import annotations

import numbers
import os
import sys
import threading
import time

__all__ = ["PhaseProgress", "product_counter", "LINE_INTERVAL", "REFRESH"]

#: Seconds between plain lines while a phase runs (stderr not a terminal, or no tqdm).
LINE_INTERVAL = 10.0
#: Seconds between redraws of the terminal line.
REFRESH = 0.5


def product_counter(*ops):
    """A ``done`` for :meth:`PhaseProgress.stage`: the column products (JVPs and VJPs)
    taken with the operators ``ops`` so far (their ``num_matvecs + num_rmatvecs``)."""
    return lambda: sum(op.num_matvecs + op.num_rmatvecs for op in ops)


def _seconds(t: float) -> str:
    return f"{t:.0f} s" if t < 100 else f"{t / 60:.1f} min"


class PhaseProgress:
    """A progress display for a run through named phases; a context manager.

    Parameters
    ----------
    desc : str
        The prefix of every line, e.g. ``"refine (krylov)"``.
    enabled : bool or None
        ``True``: show progress: on a terminal one line redrawn in place (tqdm), otherwise
        plain lines (a phase's start, then one every :data:`LINE_INTERVAL` seconds).
        ``None``: only when the stream is a terminal and ``LSR_SCALE_NO_PROGRESS`` is unset.
        ``False``: nothing is shown and no thread starts.
    stream : file, optional
        Where to write (default: ``sys.stderr`` when constructed).

    Examples
    --------
    >>> with PhaseProgress("demo", enabled=False) as progress:
    ...     progress.stage("count", total=3, done=lambda: 1, unit="steps")
    """

    def __init__(self, desc: str, enabled: bool | None = None, *, stream=None) -> None:
        if enabled is not None and not isinstance(enabled, bool):
            raise TypeError(f"progress_bar: expected True, False or None, got {enabled!r}")
        self.desc = desc
        self.stream = sys.stderr if stream is None else stream
        tty = bool(getattr(self.stream, "isatty", lambda: False)())
        if enabled is None:
            enabled = tty and not os.environ.get("LSR_SCALE_NO_PROGRESS")
        self.enabled = enabled
        self._bar = _tqdm_line(self.stream) if enabled and tty else None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._phase = None  # (text, total, done, unit, count at start, start time)
        self._last_line = 0.0
        self._thread = None
        if enabled:
            self._thread = threading.Thread(target=self._poll, name="lsr_scale-progress")
            self._thread.daemon = True
            self._thread.start()

    def stage(self, text: str, total: int | None = None, done=None, unit: str = "products"):
        """Start the phase ``text`` (ending the previous one).

        Parameters
        ----------
        text : str
            What the phase does, e.g. ``"LSMR"``.
        total : int, optional
            The count expected by the phase's end (an upper bound is fine); ``None``:
            unknown.
        done : callable, optional
            ``done() -> int``, polled: the count so far. The phase shows its increase since
            the phase started. ``None``: only the elapsed time is shown.
        unit : str
            What is counted (``"products"``, ``"iterations"``...).
        """
        if done is not None and not callable(done):
            raise TypeError(f"done: expected a callable returning a count, got {done!r}")
        if isinstance(total, bool) or not isinstance(total, (numbers.Integral, type(None))):
            raise TypeError(f"total: expected an int or None, got {total!r}")
        if not self.enabled:
            return
        with self._lock:
            start = _count(done) if done is not None else None
            self._phase = (text, total, done, unit, start, time.monotonic())
            self._show(force=True)

    def line(self) -> str:
        """The current status line (empty before the first phase)."""
        if self._phase is None:
            return ""
        text, total, done, unit, start, t0 = self._phase
        elapsed = time.monotonic() - t0
        n = None
        if done is not None and start is not None:
            now = _count(done)
            n = None if now is None else now - start
        out = f"{self.desc}: {text}"
        if n is not None:
            out += f" {n}/{total} {unit}" if total else f" {n} {unit}"
        out += f", {_seconds(elapsed)}"
        if n and total and n < total:
            out += f", ETA {_seconds(elapsed * (total - n) / n)}"
        return out

    def _show(self, force: bool = False) -> None:
        """Redraw the terminal line, or print a plain line when one is due (under the lock)."""
        if self._phase is None:
            return
        if self._bar is not None:
            self._bar.set_description_str(self.line())
        elif force or time.monotonic() - self._last_line >= LINE_INTERVAL:
            print(self.line(), file=self.stream, flush=True)
            self._last_line = time.monotonic()

    def _poll(self) -> None:
        period = REFRESH if self._bar is not None else min(REFRESH, LINE_INTERVAL)
        while not self._stop.wait(period):
            with self._lock:
                self._show()

    def close(self) -> None:
        """Stop the polling thread and clear the terminal line (idempotent)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> PhaseProgress:
        return self

    def __exit__(self, *exc) -> bool:
        self.close()
        return False


def _count(done):
    """``done()``, or None when it fails (a display must not end the run)."""
    try:
        return int(done())
    except Exception:
        return None


def _tqdm_line(stream):
    """A tqdm line that shows only its description, or None without tqdm."""
    try:
        from tqdm import tqdm  # a terminal: no notebook widget
    except ImportError:
        return None
    return tqdm(file=stream, bar_format="{desc}", leave=False, dynamic_ncols=True)
