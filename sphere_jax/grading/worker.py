"""The loop of one checker worker process, started by `AnswerChecker` with 'spawn'.

Messages on the pipe:
- worker -> parent, once at start: ("ready", pid).
- parent -> worker: (task_id, gold, prediction, rel_tol, soft_deadline_s), or None to exit;
  soft_deadline_s is None when the worker should not interrupt itself.
- worker -> parent: (task_id, reason).

The worker bounds each check twice. Its own SIGALRM timer interrupts the check at the soft
deadline (signals work here because the check runs on the worker's main thread), and the
parent kills the process at the hard deadline when the interrupt does not end the check: a C
call that does not check for signals, or a handler in sympy that catches the exception.
"""

from __future__ import annotations

import logging
import os
import resource
import signal
from multiprocessing.connection import Connection
from types import FrameType

from sphere_jax.grading.equivalence import check_equal

logger = logging.getLogger(__name__)


class _SoftTimeout(BaseException):
    """Raised by the SIGALRM handler inside a check that ran past its soft deadline.

    It derives from BaseException so that sympy's `except Exception` blocks do not swallow it.
    """


def _raise_soft_timeout(signum: int, frame: FrameType | None) -> None:
    raise _SoftTimeout()


def _limit_memory(memory_limit_bytes: int | None) -> None:
    if memory_limit_bytes is None:
        return
    try:
        resource.setrlimit(resource.RLIMIT_AS, (memory_limit_bytes, memory_limit_bytes))
    except (ValueError, OSError) as error:
        logger.warning("checker worker %d: setting the memory limit failed: %r; running without one", os.getpid(), error)


# After the first alarm, repeat it at this interval in case a bare `except:` swallowed it.
_ALARM_REPEAT_S = 0.05


def _run_check(gold: str, prediction: str, rel_tol: float, soft_deadline_s: float | None) -> str:
    if soft_deadline_s is None:
        try:
            return check_equal(gold, prediction, rel_tol=rel_tol).reason
        except MemoryError:
            return "timed_out"
    try:
        signal.setitimer(signal.ITIMER_REAL, soft_deadline_s, _ALARM_REPEAT_S)
        try:
            return check_equal(gold, prediction, rel_tol=rel_tol).reason
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    except _SoftTimeout:
        return "timed_out"
    except MemoryError:
        return "timed_out"


def worker_main(connection: Connection, memory_limit_bytes: int | None) -> None:
    """Serve checks from `connection` until it sends None or closes."""
    # Ctrl-C reaches the whole process group; the parent decides when workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGALRM, _raise_soft_timeout)
    _limit_memory(memory_limit_bytes)
    connection.send(("ready", os.getpid()))
    while True:
        try:
            message = connection.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        task_id, gold, prediction, rel_tol, soft_deadline_s = message
        reason = _run_check(gold, prediction, rel_tol, soft_deadline_s)
        try:
            connection.send((task_id, reason))
        except (BrokenPipeError, OSError):
            return
