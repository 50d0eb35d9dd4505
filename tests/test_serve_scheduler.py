"""Scheduler unit tests with a scripted engine: batching, admission (429), cancellation, timeouts, failures.

The fake engine follows the real Engine's contract (one token per unfinished row per step, a row
ends at max_new_tokens or when its stop predicate answers True) and emits ``row_seed + step``, so
every job's tokens are predictable and a mixed-up row would show.
"""

from __future__ import annotations

import threading
import time

import pytest

from serve_helpers import wait_until
from videollama.engine import GenerationConfig, Request
from videollama.serve.scheduler import QueueFull, Scheduler
from videollama.serve.schemas import ServeError

WAIT_S = 10.0


class FakeEngine:
    eos_token_id = -1

    def __init__(self, step_s: float = 0.0, fail_when: int | None = None) -> None:
        self.step_s = step_s
        self.fail_when = fail_when  # raise when a request's first prompt id equals this
        self.batches: list[int] = []
        self.max_positions = None

    def generate(self, requests):
        self.batches.append(len(requests))
        if any(r.input_ids[0] == self.fail_when for r in requests):
            raise RuntimeError("scripted engine failure")
        made: list[list[int]] = [[] for _ in requests]
        done = [False] * len(requests)
        while True:
            step = []
            for row, r in enumerate(requests):
                if done[row]:
                    step.append(None)
                    continue
                token = r.input_ids[0] * 1000 + len(made[row])
                made[row].append(token)
                step.append(token)
                if len(made[row]) >= r.generation.max_new_tokens or (r.stop is not None and r.stop(made[row])):
                    done[row] = True
            yield step
            if all(done):
                return
            time.sleep(self.step_s)


class Collector:
    """Thread-safe event sink for one job."""

    def __init__(self) -> None:
        self.events: list[tuple] = []
        self.finished = threading.Event()

    def __call__(self, event) -> None:
        self.events.append(event)
        if event[0] != "token":
            self.finished.set()

    @property
    def tokens(self) -> list[int]:
        return [v for k, v in self.events if k == "token"]

    @property
    def end(self) -> tuple:
        assert self.finished.wait(WAIT_S), "job never finished"
        return self.events[-1]


def request(seed: int, max_new: int = 5) -> Request:
    return Request(input_ids=[seed, 7, 7], generation=GenerationConfig(max_new_tokens=max_new, do_sample=False))


def submit(sched: Scheduler, seed: int, max_new: int = 5):
    sink = Collector()
    job = sched.submit(sched.reserve(), request(seed, max_new), sink)
    return job, sink


@pytest.fixture
def make_scheduler():
    made: list[Scheduler] = []

    def factory(engine=None, **kwargs) -> Scheduler:
        sched = Scheduler(engine or FakeEngine(), **{"batch_wait_s": 0.0, **kwargs})
        made.append(sched)
        return sched

    yield factory
    for sched in made:
        sched.stop()


def test_waiting_jobs_are_batched_and_each_gets_its_own_tokens(make_scheduler):
    sched = make_scheduler(max_batch=4)
    sched.pause()
    sched.start()
    jobs = [submit(sched, seed, max_new=3 + seed) for seed in (1, 2, 3)]
    sched.resume()
    for seed, (job, sink) in zip((1, 2, 3), jobs):
        assert sink.end == ("done", "length")
        assert sink.tokens == [seed * 1000 + i for i in range(3 + seed)]
        assert job.batch_size == 3
    assert sched.engine.batches == [3]
    assert list(sched.stats.batch_sizes) == [3] and sched.stats.max_batch_seen == 3
    assert sched.stats.completed == 3 and sched.pending == 0


def test_max_batch_splits_the_queue(make_scheduler):
    sched = make_scheduler(max_batch=2)
    sched.pause()
    sched.start()
    sinks = [submit(sched, seed)[1] for seed in range(1, 6)]
    sched.resume()
    for sink in sinks:
        assert sink.end[0] == "done"
    assert sched.engine.batches == [2, 2, 1]


def test_queue_full_raises_with_retry_after(make_scheduler):
    sched = make_scheduler(max_queue=2)
    tickets = [sched.reserve(), sched.reserve()]
    with pytest.raises(QueueFull) as err:
        sched.reserve()
    assert err.value.retry_after >= 1
    assert sched.stats.rejected == 1
    sched.release(tickets[0])
    sched.release(tickets[0])  # releasing twice frees one slot only
    assert sched.pending == 1
    sched.reserve()
    with pytest.raises(QueueFull):
        sched.reserve()


def test_cancel_queued_job_is_dropped_at_once(make_scheduler):
    sched = make_scheduler()
    sched.pause()
    sched.start()
    job, sink = submit(sched, 1)
    sched.cancel(job)
    assert sink.end == ("done", "cancelled")
    assert sched.stats.cancelled == 1 and sched.pending == 0 and sched.queued == 0
    sched.resume()
    time.sleep(0.05)
    assert sched.engine.batches == []  # nothing ran


def test_cancel_running_row_stops_it_and_the_others_go_on(make_scheduler):
    sched = make_scheduler(FakeEngine(step_s=0.002), max_batch=2)
    sched.pause()
    sched.start()
    victim, victim_sink = submit(sched, 1, max_new=2000)
    other, other_sink = submit(sched, 2, max_new=60)
    sched.resume()
    wait_until(lambda: len(victim_sink.tokens) >= 3, WAIT_S, "first tokens")
    sched.cancel(victim)
    assert victim_sink.end == ("done", "cancelled")
    assert len(victim_sink.tokens) < 2000
    assert other_sink.end == ("done", "length") and len(other_sink.tokens) == 60
    assert sched.stats.cancelled == 1 and sched.stats.completed == 1
    record = next(r for r in sched.stats.jobs if r.job_id == victim.id)
    assert record.finish_reason == "cancelled" and record.completion_tokens < 2000


def test_timeout_while_queued_and_while_running(make_scheduler):
    sched = make_scheduler(FakeEngine(step_s=0.005), timeout_s=0.3)
    sched.pause()
    sched.start()
    _, queued_sink = submit(sched, 1)
    time.sleep(0.4)
    sched.resume()
    kind, err = queued_sink.end
    assert kind == "error" and isinstance(err, ServeError) and err.status == 504 and "--timeout" in err.message
    _, running_sink = submit(sched, 2, max_new=100_000)
    kind, err = running_sink.end
    assert kind == "error" and err.status == 504
    assert 0 < len(running_sink.tokens) < 100_000
    assert sched.stats.timed_out == 2


def test_engine_failure_fails_its_batch_and_the_worker_keeps_going(make_scheduler):
    sched = make_scheduler(FakeEngine(fail_when=13))
    sched.start()
    _, bad = submit(sched, 13)
    kind, err = bad.end
    assert kind == "error" and err.status == 500 and "scripted engine failure" in err.message
    _, good = submit(sched, 4)
    assert good.end == ("done", "length") and good.tokens == [4000 + i for i in range(5)]
    assert sched.stats.failed == 1


def test_stop_cancels_everything(make_scheduler):
    sched = make_scheduler()
    sched.pause()
    sched.start()
    _, sink = submit(sched, 1)
    sched.stop()
    kind, err = sink.end
    assert kind == "error" and err.status == 503
    with pytest.raises(ServeError) as err:
        sched.submit(sched.reserve(), request(2), Collector())
    assert err.value.status == 503
