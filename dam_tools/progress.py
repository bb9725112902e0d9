"""Progress of the demo's long steps: a tqdm bar with an ETA on a terminal, plain lines elsewhere.

Three modes:
- "bar": tqdm bars on stderr (a person at a terminal);
- "lines": one ``progress <phase> <done>/<total>`` line on stdout per update, at most every few seconds, for a
  parent process that follows a background build's log (``read_progress``) and draws its own bar;
- "off": nothing (tests, library callers).
"""
from __future__ import annotations

import re
import sys
import time
from pathlib import Path
from typing import Callable

from tqdm import tqdm

MODES = ("bar", "lines", "off")
_LINE = re.compile(r"^progress (?P<phase>\S+) (?P<done>\d+)/(?P<total>\d+)\s*$")


def default_mode() -> str:
    """"bar" when stderr is a terminal, else "lines" (a log file still shows how far a step got)."""
    return "bar" if sys.stderr.isatty() else "lines"


class LineBar:
    """tqdm's update/close/set_postfix surface, printed as ``progress <phase> <done>/<total>`` lines."""

    def __init__(self, phase: str, total: int, every_s: float = 2.0) -> None:
        self.phase, self.total, self.every_s = phase.replace(" ", "-"), int(total), every_s
        self.n = 0
        self._last = 0.0

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self._last >= self.every_s or self.n >= self.total:
            self._last = now
            print(f"progress {self.phase} {min(self.n, self.total)}/{self.total}", flush=True)

    def set_postfix(self, **kwargs: object) -> None:
        pass

    def close(self) -> None:
        if self.n < self.total:
            print(f"progress {self.phase} {self.n}/{self.total}", flush=True)


class NoBar(LineBar):
    def update(self, n: int = 1) -> None:
        self.n += n

    def close(self) -> None:
        pass


def make_bar(phase: str, total: int, mode: str = "bar", unit: str = "it", every_s: float = 2.0) -> tqdm | LineBar:
    """A bar for ``total`` units of work in ``mode`` (see the module docstring); lines at most every ``every_s``."""
    if mode not in MODES:
        raise ValueError(f"progress mode must be one of {MODES}, got {mode!r}")
    if mode == "bar":
        return tqdm(total=total, desc=phase, unit=unit, dynamic_ncols=True, file=sys.stderr)
    return LineBar(phase, total, every_s) if mode == "lines" else NoBar(phase, total)


def wait_with_bar(phase: str, expected_s: float, done: Callable[[], bool], mode: str = "bar",
                  timeout_s: float = 600.0, interval_s: float = 0.5) -> float:
    """Poll ``done()`` until it is true, showing elapsed seconds against ``expected_s`` (the ETA); returns the
    seconds waited. The bar's total grows when the wait runs past the expectation. TimeoutError after timeout_s."""
    started = time.monotonic()
    bar = make_bar(phase, max(1, int(expected_s)), mode, unit="s")
    shown = 0
    try:
        while not done():
            elapsed = time.monotonic() - started
            if elapsed > timeout_s:
                raise TimeoutError(f"{phase}: not done after {timeout_s:.0f} s")
            if int(elapsed) >= bar.total:  # slower than expected: keep the bar honest, not stuck at 100 %
                bar.total = int(elapsed) + max(5, int(expected_s) // 4)
                if isinstance(bar, tqdm):
                    bar.refresh()
            if int(elapsed) > shown:
                bar.update(int(elapsed) - shown)
                shown = int(elapsed)
            time.sleep(interval_s)
        if isinstance(bar, tqdm):
            bar.total = max(shown, 1)
            bar.refresh()
    finally:
        bar.close()
    return time.monotonic() - started


def read_progress(log_path: Path) -> tuple[str, int, int] | None:
    """The last ``progress <phase> <done>/<total>`` line of a log (a background build's), or None."""
    try:
        with open(log_path, "rb") as handle:
            handle.seek(0, 2)
            handle.seek(max(0, handle.tell() - 8192))
            lines = handle.read().decode(errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        match = _LINE.match(line.strip())
        if match:
            return match.group("phase"), int(match.group("done")), int(match.group("total"))
    return None
