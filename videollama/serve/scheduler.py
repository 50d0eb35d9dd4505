"""Bounded request queue and the single engine worker thread that batches generation across requests.

Flow of one request::

    reserve()  -> Ticket            admission: at most ``max_queue`` requests wait (else QueueFull -> 429)
    submit(ticket, request, emit)   the prepared engine Request joins the queue
    worker thread                   takes up to ``max_batch`` waiting jobs (after an idle wait of at most
                                    ``batch_wait_s`` for company) and runs ``Engine.generate`` over them;
                                    every new token goes to its job's ``emit`` callback
    cancel(job) / deadline          a queued job is dropped at once; a running row stops at the next
                                    decoding step (its stop predicate answers True), the others go on

The engine decodes a fixed set of rows per ``generate`` call, so a request arriving while a batch
runs waits for the next batch (static batching). Events sent to ``emit`` (from the worker thread):
``("token", id)``, ``("done", "stop" | "length" | "cancelled")`` or ``("error", ServeError)`` (504 on
timeout, 500 when generation failed, 503 on shutdown). The engine confines a generation failure to
the row that caused it (:class:`~videollama.engine.RowFailure`): only that job gets the 500, the
other jobs of its batch finish with the tokens they get alone.
:class:`JobChannel` hands them to an asyncio handler. :class:`SchedulerStats` records batch sizes,
cancels and timeouts for ``/health``, the tests and the benchmark.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from ..engine import Request, RowFailure
from ..errors import UsageError
from .schemas import ServeError

logger = logging.getLogger(__name__)

STATS_WINDOW = 1024  # recent batches / finished jobs kept for reporting
IDLE_POLL_S = 0.5  # the worker re-checks for shutdown this often while idle
MAX_RETRY_AFTER_S = 60
EMA_WEIGHT = 0.2  # weight of the newest batch in the running batch-duration estimate

Event = tuple[str, Any]


class QueueFull(Exception):
    """The queue holds ``max_queue`` requests already; try again after ``retry_after`` seconds."""

    def __init__(self, retry_after: int, max_queue: int) -> None:
        super().__init__(f"the server is busy: {max_queue} requests are already waiting; retry in {retry_after} s")
        self.retry_after = retry_after


@dataclass
class JobRecord:
    """What happened to one finished request."""

    job_id: int
    batch_size: int  # rows in the engine batch it ran in (0: never ran)
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # stop | length | cancelled | timeout | error
    queued_s: float  # from submit to the start of its batch
    total_s: float  # from submit to its end


@dataclass
class SchedulerStats:
    admitted: int = 0
    rejected: int = 0  # 429s
    completed: int = 0
    cancelled: int = 0
    timed_out: int = 0
    failed: int = 0
    batches: int = 0
    max_batch_seen: int = 0
    batch_sizes: deque[int] = field(default_factory=lambda: deque(maxlen=STATS_WINDOW))
    jobs: deque[JobRecord] = field(default_factory=lambda: deque(maxlen=STATS_WINDOW))

    def summary(self) -> dict[str, Any]:
        recent = list(self.batch_sizes)
        return {
            "admitted": self.admitted, "rejected": self.rejected, "completed": self.completed,
            "cancelled": self.cancelled, "timed_out": self.timed_out, "failed": self.failed,
            "batches": self.batches, "max_batch_seen": self.max_batch_seen,
            "mean_batch": round(sum(recent) / len(recent), 2) if recent else 0.0,
        }


@dataclass
class Ticket:
    """One admitted slot in the queue; given back by ``submit`` (it becomes the job) or ``release``."""

    admitted_at: float
    deadline: float
    open: bool = True


class Job:
    """One request inside the scheduler. ``cancel`` may be called from any thread."""

    def __init__(self, job_id: int, request: Request, emit: Callable[[Event], None], deadline: float) -> None:
        self.id = job_id
        self.request = request
        self.emit = emit
        self.deadline = deadline
        self.tokens: list[int] = []
        self.cancel_reason: str | None = None  # "cancelled" | "timeout" | "shutdown"
        self.finished = False
        self.submitted_at = time.monotonic()
        self.started_at: float | None = None
        self.batch_size = 0

    @property
    def prompt_tokens(self) -> int:
        return len(self.request.input_ids)


class Scheduler:
    def __init__(self, engine, *, max_queue: int = 64, max_batch: int = 8, timeout_s: float = 300.0,
                 batch_wait_s: float = 0.01) -> None:
        if max_queue < 1 or max_batch < 1:
            raise UsageError("max_queue and max_batch must be >= 1")
        self.engine = engine
        self.max_queue = max_queue
        self.max_batch = max_batch
        self.timeout_s = timeout_s
        self.batch_wait_s = batch_wait_s
        self.stats = SchedulerStats()
        self._queue: deque[Job] = deque()
        self._pending = 0  # admitted and not yet running: tickets out + jobs queued
        self._running: list[Job] = []
        self._cond = threading.Condition()
        self._ids = itertools.count(1)
        self._paused = False
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._batch_seconds = 0.0  # running estimate of one batch's duration, for Retry-After

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        if self._thread is not None:
            return
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="videollama-engine", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Cancel everything and end the worker (after its current decoding step)."""
        with self._cond:
            self._stopping = True
            for job in list(self._queue):
                self._drop_queued(job, "shutdown")
            for job in self._running:
                job.cancel_reason = job.cancel_reason or "shutdown"
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def pause(self) -> None:
        """Start no new batch until ``resume`` (the running batch finishes). For maintenance and tests."""
        with self._cond:
            self._paused = True

    def resume(self) -> None:
        with self._cond:
            self._paused = False
            self._cond.notify_all()

    # ------------------------------------------------------------------ admission
    @property
    def queued(self) -> int:
        """Jobs waiting for a batch (submitted, not yet running)."""
        with self._cond:
            return len(self._queue)

    @property
    def pending(self) -> int:
        with self._cond:
            return self._pending

    @property
    def running(self) -> int:
        with self._cond:
            return len(self._running)

    def reserve(self) -> Ticket:
        """Admit one request (before its media are read) or raise :class:`QueueFull`."""
        with self._cond:
            if self._pending >= self.max_queue:
                self.stats.rejected += 1
                raise QueueFull(self.retry_after(), self.max_queue)
            self._pending += 1
            self.stats.admitted += 1
            now = time.monotonic()
            return Ticket(admitted_at=now, deadline=now + self.timeout_s)

    def release(self, ticket: Ticket) -> None:
        """Give back a ticket whose request failed before ``submit``."""
        with self._cond:
            if ticket.open:
                ticket.open = False
                self._pending -= 1

    def retry_after(self) -> int:
        """Seconds until a slot is likely free: the batches needed to drain the queue x one batch's time."""
        batches_ahead = math.ceil((self._pending + 1) / self.max_batch)
        return int(min(MAX_RETRY_AFTER_S, max(1, math.ceil(self._batch_seconds * batches_ahead))))

    def submit(self, ticket: Ticket, request: Request, emit: Callable[[Event], None]) -> Job:
        """Queue a prepared request; its events go to ``emit`` (called from the worker thread)."""
        if not ticket.open:
            raise RuntimeError("ticket already used or released")
        job = Job(next(self._ids), request, emit, ticket.deadline)
        text_stop = request.stop

        def stop(generated: list[int]) -> bool:
            if job.cancel_reason is not None:
                return True
            if time.monotonic() > job.deadline:
                job.cancel_reason = "timeout"
                return True
            return text_stop is not None and text_stop(generated)

        job.request = replace(request, stop=stop)
        with self._cond:
            ticket.open = False
            if self._stopping:
                self._pending -= 1
                raise ServeError(503, "the server is shutting down", type="server_error", code="shutting_down")
            self._queue.append(job)
            self._cond.notify_all()
        return job

    def cancel(self, job: Job, reason: str = "cancelled") -> None:
        """Stop a job: dropped at once if queued, else its row ends at the next decoding step."""
        with self._cond:
            if job.finished:
                return
            if job in self._queue:
                self._drop_queued(job, reason)
            elif job.cancel_reason is None:
                job.cancel_reason = reason

    def _drop_queued(self, job: Job, reason: str) -> None:  # caller holds the lock
        self._queue.remove(job)
        self._pending -= 1
        job.cancel_reason = job.cancel_reason or reason
        self._finish(job)

    # ------------------------------------------------------------------ worker
    def _run(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            if batch:
                self._generate(batch)

    def _next_batch(self) -> list[Job] | None:
        with self._cond:
            while not self._stopping and (self._paused or not self._queue):
                self._cond.wait(IDLE_POLL_S)
            if self._stopping:
                return None
            gather_until = time.monotonic() + self.batch_wait_s
            while len(self._queue) < self.max_batch and not self._stopping and not self._paused:
                left = gather_until - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            batch: list[Job] = []
            now = time.monotonic()
            while self._queue and len(batch) < self.max_batch:
                job = self._queue.popleft()
                self._pending -= 1
                if job.cancel_reason is None and now > job.deadline:
                    job.cancel_reason = "timeout"
                if job.cancel_reason is not None:
                    self._finish(job)
                    continue
                job.started_at = now
                batch.append(job)
            for job in batch:
                job.batch_size = len(batch)
            self._running = batch
            if batch:
                self.stats.batches += 1
                self.stats.batch_sizes.append(len(batch))
                self.stats.max_batch_seen = max(self.stats.max_batch_seen, len(batch))
            return batch

    def _generate(self, batch: list[Job]) -> None:
        started = time.monotonic()
        done = [False] * len(batch)
        try:
            for step in self.engine.generate([job.request for job in batch]):
                for row, value in enumerate(step):
                    if isinstance(value, RowFailure):  # this request alone failed; the others go on
                        done[row] = True
                        self._fail_row(batch[row], value.error)
                    elif value is not None:
                        batch[row].tokens.append(value)
                        batch[row].emit(("token", value))
                    elif not done[row]:
                        done[row] = True
                        self._finish_locked(batch[row])
            for row, job in enumerate(batch):
                if not done[row]:
                    self._finish_locked(job)
        except Exception as err:  # the engine isolates rows; this is a bug, and it must not take the server down
            logger.exception("generation failed for a batch of %d", len(batch))
            error = ServeError(500, f"generation failed: {type(err).__name__}: {err}", type="server_error")
            for job in batch:
                if not job.finished:
                    job.cancel_reason = job.cancel_reason or "error"
                    self._finish_locked(job, error)
        finally:
            elapsed = time.monotonic() - started
            with self._cond:
                self._running = []
                self._batch_seconds = elapsed if self._batch_seconds == 0 else (
                    EMA_WEIGHT * elapsed + (1 - EMA_WEIGHT) * self._batch_seconds)

    def _fail_row(self, job: Job, err: Exception) -> None:
        logger.error("generation failed for request %d (the other rows of its batch went on): %s: %s",
                     job.id, type(err).__name__, err, exc_info=err)
        job.cancel_reason = job.cancel_reason or "error"
        self._finish_locked(job, ServeError(500, f"generation failed for this request: {type(err).__name__}: {err}",
                                            type="server_error", code="generation_failed"))

    def _finish_locked(self, job: Job, error: ServeError | None = None) -> None:
        with self._cond:
            self._finish(job, error)

    def _finish(self, job: Job, error: ServeError | None = None) -> None:  # caller holds the lock
        if job.finished:
            return
        job.finished = True
        reason = job.cancel_reason
        if reason == "timeout":
            self.stats.timed_out += 1
            error = ServeError(504, f"the request took longer than the server's limit of {self.timeout_s:g} s "
                               "(--timeout)", type="timeout_error", code="timeout")
        elif reason == "error":
            self.stats.failed += 1
        elif reason == "shutdown":
            self.stats.cancelled += 1
            error = ServeError(503, "the server is shutting down", type="server_error", code="shutting_down")
        elif reason is not None:  # cancelled by the client
            self.stats.cancelled += 1
            reason = "cancelled"
        else:
            eos = getattr(self.engine, "eos_token_id", None)
            at_limit = len(job.tokens) >= job.request.generation.max_new_tokens
            reason = "length" if at_limit and not (job.tokens and job.tokens[-1] == eos) else "stop"
            self.stats.completed += 1
        now = time.monotonic()
        self.stats.jobs.append(JobRecord(
            job_id=job.id, batch_size=job.batch_size, prompt_tokens=job.prompt_tokens,
            completion_tokens=len(job.tokens), finish_reason=reason,
            queued_s=(job.started_at or now) - job.submitted_at, total_s=now - job.submitted_at))
        job.emit(("error", error) if error is not None else ("done", reason))


class JobChannel:
    """Carries a job's events from the worker thread to one asyncio handler."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop or asyncio.get_running_loop()
        self._queue: asyncio.Queue[Event] = asyncio.Queue()

    def emit(self, event: Event) -> None:  # any thread
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, event)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            pass

    async def get(self, timeout: float) -> Event:
        """The next event; ``asyncio.TimeoutError`` after ``timeout`` seconds."""
        return await asyncio.wait_for(self._queue.get(), timeout=max(timeout, 0.0))
