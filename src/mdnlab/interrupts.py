"""SIGTERM and Ctrl-C (SIGINT) raised as ``Interrupted`` where the process is, so that the
MLflow run is marked KILLED and the process exits non-zero (143, 130) instead of dying with
the run left RUNNING. (SIGKILL cannot be caught: ``python -m mdnlab.doctor`` finds such runs.)

``Interrupted`` is deliberately not a ``KeyboardInterrupt``: Lightning turns a
KeyboardInterrupt inside ``fit`` into ``sys.exit(1)`` (and ignores SIGINT from then on), which
would hide what happened; any other exception it re-raises unchanged.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}  # the shell's 128 + signal number


class Interrupted(BaseException):
    """The process received SIGINT or SIGTERM."""

    def __init__(self, signum: int):
        super().__init__(f"{signal.Signals(signum).name}")
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get(self.signum, 128 + self.signum)


def _raise_interrupted(signum, frame):
    raise Interrupted(signum)


@contextmanager
def signals_as_interrupted():
    """Within the block SIGINT and SIGTERM raise ``Interrupted`` (only the main thread takes
    signals; elsewhere the block changes nothing)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _raise_interrupted) for s in EXIT_CODES}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def stopped_by_user(err: BaseException) -> bool:
    """An interruption (Ctrl-C or SIGTERM), not a failure: the run ends KILLED."""
    return isinstance(err, Interrupted | KeyboardInterrupt)
