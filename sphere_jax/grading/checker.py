"""`AnswerChecker`: answer checks with a deadline, in a pool of spawned worker processes.

Each check that the parent cannot decide from normalised text alone runs in a worker. A
worker that misses the deadline is killed and replaced, and its check counts as "timed_out",
so one input that sends sympy into a days-long computation costs one deadline, not the run.
Workers are started with the 'spawn' method: forking a parent that has started threads (JAX,
tokenizers) can deadlock, and signal-based timeouts only work on a process's main thread.

A script that creates an `AnswerChecker` must guard its entry point with
`if __name__ == "__main__":`, since 'spawn' re-imports the main module in each worker.
"""

from __future__ import annotations

import collections
import logging
import math
import multiprocessing
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait

from sphere_jax.grading.normalize import AnswerTooLongError, normalize_answer, parse_plain_number, plain_numbers_equal
from sphere_jax.grading.verdict import EQUAL, NOT_EQUAL, TIMED_OUT, UNPARSABLE, Verdict
from sphere_jax.grading.worker import worker_main

logger = logging.getLogger(__name__)

# The worker interrupts itself at this fraction of the deadline, so that a check stuck in
# Python code returns "timed_out" without costing a process restart.
_SOFT_DEADLINE_FRACTION = 0.8


def decide_in_parent(gold: str, prediction: str, rel_tol: float) -> Verdict | None:
    """Decide the cheap cases without a worker: equal normalised texts and two plain numbers.

    Returns:
        The verdict, or None when the pair needs the parser and sympy.
    """
    try:
        gold_text = normalize_answer(gold)
        prediction_text = normalize_answer(prediction)
    except AnswerTooLongError:
        return UNPARSABLE
    if not gold_text or not prediction_text:
        return UNPARSABLE
    if gold_text == prediction_text:
        return EQUAL
    gold_number = parse_plain_number(gold_text)
    prediction_number = parse_plain_number(prediction_text)
    if gold_number is not None and prediction_number is not None:
        return EQUAL if plain_numbers_equal(gold_number, prediction_number, rel_tol) else NOT_EQUAL
    return None


@dataclass
class _Worker:
    process: multiprocessing.process.BaseProcess
    connection: Connection
    ready: bool = False
    task_index: int | None = None
    task_id: int = -1
    started_at: float = 0.0
    spawned_at: float = 0.0
    tasks_done: int = 0


def _stop_workers(workers: list[_Worker]) -> None:
    """Ask each worker to exit, then kill those still running after a short wait."""
    for worker in workers:
        try:
            worker.connection.send(None)
        except (BrokenPipeError, OSError):
            pass
    for worker in workers:
        worker.process.join(timeout=1.0)
        if worker.process.is_alive():
            worker.process.kill()
            worker.process.join(timeout=5.0)
        worker.connection.close()
    workers.clear()


class AnswerChecker:
    """Check (gold, prediction) pairs within a deadline per check, in spawned worker processes.

    Use as a context manager, or call `close()`:

        with AnswerChecker(workers=2, deadline_s=2.0) as checker:
            verdicts = checker.check_many([("#### 1,000", "\\\\boxed{1000}")])
            print(checker.counts)

    Attributes:
        counts: Number of verdicts of each reason over all batches, for logs.
        decided_in_parent: Checks decided without a worker (equal normalised texts, plain numbers).
        workers_restarted: Workers killed at the deadline (or found dead) and replaced.
    """

    def __init__(
        self,
        workers: int = 2,
        deadline_s: float = 2.0,
        rel_tol: float = 1e-6,
        *,
        memory_limit_mb: int | None = 4096,
        interrupt_in_worker: bool = True,
        max_tasks_per_worker: int = 20_000,
        start_timeout_s: float = 120.0,
    ) -> None:
        """Start the worker processes.

        Args:
            workers: Number of worker processes; one per core is the useful maximum.
            deadline_s: Seconds one check may run in a worker before it is killed and the check
                counts as "timed_out".
            rel_tol: Relative tolerance, used only where a side has a decimal point.
            memory_limit_mb: Address-space limit of each worker in MiB (a check that exceeds it
                counts as "timed_out"), or None for no limit.
            interrupt_in_worker: Whether a worker interrupts its own check with SIGALRM at 80%
                of the deadline, which ends most slow checks without a process restart. With
                False, every timeout kills and replaces the worker.
            max_tasks_per_worker: Checks after which a worker is replaced, which bounds the
                growth of sympy's caches.
            start_timeout_s: Seconds to wait for a new worker to import sympy and report ready.

        Raises:
            ValueError: If an argument is out of range.
        """
        if not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
        if not (isinstance(deadline_s, (int, float)) and 0 < deadline_s < math.inf):
            raise ValueError(f"deadline_s must be a finite number of seconds > 0, got {deadline_s!r}")
        if not (isinstance(rel_tol, (int, float)) and 0 <= rel_tol < math.inf):
            raise ValueError(f"rel_tol must be a finite number >= 0, got {rel_tol!r}")
        if memory_limit_mb is not None and memory_limit_mb < 256:
            raise ValueError(f"memory_limit_mb must be None or >= 256 (sympy needs about 150 MiB), got {memory_limit_mb!r}")
        if max_tasks_per_worker < 1:
            raise ValueError(f"max_tasks_per_worker must be >= 1, got {max_tasks_per_worker!r}")
        self.deadline_s = float(deadline_s)
        self.rel_tol = float(rel_tol)
        self.counts: collections.Counter[str] = collections.Counter()
        self.decided_in_parent = 0
        self.workers_restarted = 0
        self._memory_limit_bytes = None if memory_limit_mb is None else memory_limit_mb * 1024 * 1024
        self._max_tasks_per_worker = max_tasks_per_worker
        self._interrupt_in_worker = interrupt_in_worker
        self._start_timeout_s = start_timeout_s
        self._context = multiprocessing.get_context("spawn")
        self._next_task_id = 0
        self._workers: list[_Worker] = []
        self._closed = False
        # Stops the processes even if the checker is garbage-collected without close().
        self._finalizer = weakref.finalize(self, _stop_workers, self._workers)
        for _ in range(workers):
            self._workers.append(self._spawn_worker())
        logger.info("answer checker started %d workers (deadline %.2f s)", workers, self.deadline_s)

    def __enter__(self) -> AnswerChecker:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the workers. Further checks raise RuntimeError."""
        if self._closed:
            return
        self._closed = True
        self._finalizer()
        logger.info("answer checker stopped; verdicts: %s", dict(self.counts))

    @property
    def worker_pids(self) -> list[int]:
        """Process ids of the current workers."""
        return [worker.process.pid for worker in self._workers if worker.process.pid is not None]

    def _spawn_worker(self) -> _Worker:
        parent_end, child_end = self._context.Pipe(duplex=True)
        process = self._context.Process(
            target=worker_main, args=(child_end, self._memory_limit_bytes), daemon=True, name="answer-checker"
        )
        process.start()
        child_end.close()
        return _Worker(process=process, connection=parent_end, spawned_at=time.monotonic())

    def _replace(self, worker: _Worker, cause: str) -> None:
        logger.warning("replacing checker worker %s: %s", worker.process.pid, cause)
        if worker.process.is_alive():
            worker.process.kill()
        worker.process.join(timeout=5.0)
        worker.connection.close()
        position = self._workers.index(worker)
        self._workers[position] = self._spawn_worker()
        self.workers_restarted += 1

    def check(self, gold: str, prediction: str) -> Verdict:
        """Check one pair; see `check_many`."""
        return self.check_many([(gold, prediction)])[0]

    def check_many(self, pairs: Sequence[tuple[str, str]], *, batch_deadline_s: float | None = None) -> list[Verdict]:
        """Check each (gold, prediction) pair.

        Args:
            pairs: Gold answers and extracted predictions, as strings.
            batch_deadline_s: Optional bound on the whole call in seconds; checks not finished
                by then count as "timed_out". Each check is bounded by `deadline_s` either way.

        Returns:
            One verdict per pair, in order.

        Raises:
            TypeError: If a pair is not two strings.
            RuntimeError: If the checker is closed or a worker fails to start.
        """
        if self._closed:
            raise RuntimeError("AnswerChecker is closed; create a new one")
        pairs = list(pairs)
        for index, pair in enumerate(pairs):
            if not (isinstance(pair, tuple) and len(pair) == 2 and all(isinstance(part, str) for part in pair)):
                raise TypeError(f"pair {index} must be a (gold, prediction) tuple of strings, got {pair!r:.120}")
        results: list[Verdict | None] = [None] * len(pairs)
        pending: collections.deque[int] = collections.deque()
        for index, (gold, prediction) in enumerate(pairs):
            verdict = decide_in_parent(gold, prediction, self.rel_tol)
            if verdict is None:
                pending.append(index)
            else:
                results[index] = verdict
                self.decided_in_parent += 1
        batch_end = None if batch_deadline_s is None else time.monotonic() + batch_deadline_s
        self._run_in_workers(pairs, pending, results, batch_end)
        verdicts = [TIMED_OUT if verdict is None else verdict for verdict in results]
        self.counts.update(verdict.reason for verdict in verdicts)
        return verdicts

    def _run_in_workers(
        self,
        pairs: list[tuple[str, str]],
        pending: collections.deque[int],
        results: list[Verdict | None],
        batch_end: float | None,
    ) -> None:
        soft_deadline_s = self.deadline_s * _SOFT_DEADLINE_FRACTION if self._interrupt_in_worker else None
        while pending or any(worker.task_index is not None for worker in self._workers):
            now = time.monotonic()
            if batch_end is not None and now >= batch_end:
                self._abandon_batch(pending, results)
                return
            for worker in list(self._workers):
                if not (worker.ready and worker.task_index is None and pending):
                    continue
                index = pending.popleft()
                self._next_task_id += 1
                gold, prediction = pairs[index]
                try:
                    worker.connection.send((self._next_task_id, gold, prediction, self.rel_tol, soft_deadline_s))
                except (BrokenPipeError, OSError) as error:
                    pending.appendleft(index)
                    self._replace(worker, f"send failed: {error!r}")
                    continue
                worker.task_index = index
                worker.task_id = self._next_task_id
                worker.started_at = now

            waits = [worker.started_at + self.deadline_s for worker in self._workers if worker.task_index is not None]
            waits += [worker.spawned_at + self._start_timeout_s for worker in self._workers if not worker.ready]
            if batch_end is not None:
                waits.append(batch_end)
            timeout = max(0.0, min(waits) - time.monotonic()) if waits else 0.0
            watched = {
                worker.connection: worker
                for worker in self._workers
                if worker.task_index is not None or not worker.ready
            }
            for connection in wait(list(watched), timeout):
                self._receive(watched[connection], results)
            self._expire(results)

    def _receive(self, worker: _Worker, results: list[Verdict | None]) -> None:
        try:
            message = worker.connection.recv()
        except (EOFError, OSError) as error:
            if not worker.ready:
                worker.process.join(timeout=5.0)
                raise RuntimeError(
                    f"checker worker {worker.process.pid} exited before it was ready (exit code "
                    f"{worker.process.exitcode}); check that sphere_jax imports in a fresh Python process"
                ) from error
            if worker.task_index is not None:
                # A worker that died mid-check (for example killed by the kernel for memory)
                # did not finish the check in time.
                results[worker.task_index] = TIMED_OUT
            self._replace(worker, f"worker exited (exit code {worker.process.exitcode}, {error!r})")
            return
        if not worker.ready:
            worker.ready = True
            return
        task_id, reason = message
        if task_id != worker.task_id or worker.task_index is None:
            return
        results[worker.task_index] = Verdict(reason == "equal", reason)
        worker.task_index = None
        worker.tasks_done += 1
        if worker.tasks_done >= self._max_tasks_per_worker:
            position = self._workers.index(worker)
            _stop_workers([worker])
            self._workers[position] = self._spawn_worker()

    def _expire(self, results: list[Verdict | None]) -> None:
        now = time.monotonic()
        for worker in list(self._workers):
            if worker.task_index is not None and now - worker.started_at >= self.deadline_s:
                results[worker.task_index] = TIMED_OUT
                worker.task_index = None
                self._replace(worker, f"check ran past the {self.deadline_s:.2f} s deadline")
            elif not worker.ready and now - worker.spawned_at >= self._start_timeout_s:
                raise RuntimeError(
                    f"checker worker {worker.process.pid} did not start within {self._start_timeout_s:.0f} s "
                    f"(alive: {worker.process.is_alive()}, exit code: {worker.process.exitcode}); "
                    "check that sphere_jax imports in a fresh Python process"
                )

    def _abandon_batch(self, pending: collections.deque[int], results: list[Verdict | None]) -> None:
        pending.clear()
        for worker in list(self._workers):
            if worker.task_index is not None:
                results[worker.task_index] = TIMED_OUT
                worker.task_index = None
                self._replace(worker, "batch deadline reached")
