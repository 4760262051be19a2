"""Progress lines a person can follow on long work; silent when ``CI`` is set."""

from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager

_recorders: list[list[str]] = []
_silenced = [0]  # open ``silenced`` blocks


def quiet() -> bool:
    return bool(os.environ.get("CI")) or _silenced[0] > 0


@contextmanager
def silenced(active: bool = True):
    """No progress lines inside the block (``warn`` still prints): ``mdnlab.MDN(verbose=False)``."""
    _silenced[0] += int(active)
    try:
        yield
    finally:
        _silenced[0] -= int(active)


def say(message: str) -> None:
    if not quiet():
        print(message, file=sys.stderr, flush=True)


class Ticker:
    """Calls through at most once every ``every_s`` seconds (always on the first call)."""

    def __init__(self, every_s: float = 5.0):
        self.every_s = every_s
        self.start = time.perf_counter()
        self._last = -float("inf")

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def due(self) -> bool:
        now = time.perf_counter()
        if now - self._last >= self.every_s:
            self._last = now
            return True
        return False


def warn(message: str) -> None:
    """A warning a person must see: printed even when ``CI`` is set (and kept by every
    ``recorded_warnings`` block around the call)."""
    print(f"warning: {message}", file=sys.stderr, flush=True)
    for record in _recorders:
        record.append(message)


@contextmanager
def recorded_warnings():
    """The messages ``warn`` prints inside the block, in order (a run's description lists them)."""
    record: list[str] = []
    _recorders.append(record)
    try:
        yield record
    finally:
        _recorders.remove(record)
