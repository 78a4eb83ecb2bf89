"""A minimal progress bar on stderr, and one-line notices.

Uses ``tqdm`` when it is installed; otherwise redraws ``desc  n/total  rate  eta`` in place at
most ten times a second on a terminal, and prints a single summary line when stderr is not a
terminal (log files stay readable). ``enabled=False`` prints nothing.

Example::

    >>> bar = Progress(100, "decode", enabled=False)
    >>> for _ in range(100):
    ...     bar.update()
    >>> bar.close()
"""

from __future__ import annotations

import sys
import time

__all__ = ["Progress", "notice"]


def notice(message: str) -> None:
    """Print one ``biper: ...`` line to stderr."""
    print(f"biper: {message}", file=sys.stderr, flush=True)


class Progress:
    """Count ``update(k)`` calls towards ``total`` (0 = unknown) and show it on stderr."""

    def __init__(self, total: int, desc: str, *, enabled: bool = True, unit: str = "it",
                 scale: float = 1.0):
        self.total, self.desc, self.unit, self.scale = int(total), desc, unit, scale
        self.enabled = bool(enabled)
        self.n = 0
        self.start = self._last = time.perf_counter()
        self._tty = self.enabled and sys.stderr.isatty()
        self._tqdm = None
        if self._tty:
            try:
                from tqdm import tqdm
            except ImportError:
                pass
            else:
                self._tqdm = tqdm(total=self.total * scale or None, desc=desc, unit=unit,
                                  file=sys.stderr, leave=True)

    def update(self, k: int = 1) -> None:
        self.n += k
        if self._tqdm is not None:
            self._tqdm.update(k * self.scale)
            return
        if self._tty:
            now = time.perf_counter()
            if now - self._last >= 0.1:
                self._last = now
                sys.stderr.write("\r" + self._line(now) + "\x1b[K")
                sys.stderr.flush()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def close(self) -> None:
        if self._tqdm is not None:
            self._tqdm.close()
        elif self.enabled:
            dt = max(time.perf_counter() - self.start, 1e-9)
            done = self.n * self.scale
            line = (f"biper: {self.desc}  {done:.0f} {self.unit} in {dt:.1f}s "
                    f"({done / dt:.0f} {self.unit}/s)")
            sys.stderr.write(("\r" + line + "\x1b[K\n") if self._tty else line + "\n")
            sys.stderr.flush()

    def _line(self, now: float) -> str:
        dt = max(now - self.start, 1e-9)
        done = self.n * self.scale
        rate = done / dt
        if self.total:
            total = self.total * self.scale
            eta = (total - done) / rate if rate > 0 else 0.0
            return (f"biper: {self.desc}  {done:.0f}/{total:.0f} {self.unit}  "
                    f"{rate:.0f} {self.unit}/s  {dt:.1f}s elapsed, eta {eta:.1f}s")
        return f"biper: {self.desc}  {done:.0f} {self.unit}  {rate:.0f} {self.unit}/s  {dt:.1f}s"
