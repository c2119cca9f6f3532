"""serve's scheduler (edgekit.backends.generator.Scheduler) driven by the fake backend's generator: the
queue and its bound, slots decoding together, cancellation, streaming, stop tokens and limits, and an
engine failure. The fake says what a test scripts (``reply``), so each event is predicted."""

from __future__ import annotations

import queue
import threading
import time

import pytest

from edgekit.backends.runner import RunOptions
from edgekit.serve.generate import GenRequest, PromptTooLong, QueueFull, Sampling, open_engine


@pytest.fixture
def engine(fake_backend, tmp_path):
    made = []

    def make(slots=1, max_queue=4, ctx=64, **knobs):
        path = fake_backend.write_artifact(tmp_path, f"Q{len(made)}", **knobs)
        opts = RunOptions(threads=1, ctx=ctx, knobs=fake_backend.KNOBS.defaults())
        made.append(open_engine(path, "fake", opts, slots=slots, max_queue=max_queue))
        return made[-1]

    yield make
    for e in made:
        e.close()


class Log:
    """Every event of every request, in the order the worker thread sent them."""

    def __init__(self):
        self.events = []
        self.ended = {}
        self.cond = threading.Condition()

    def request(self, name, prompt, stop=(), **sampling):
        def on_event(e):
            with self.cond:
                self.events.append((name, e))
                if e.kind == "done":
                    self.ended[name] = e
                self.cond.notify_all()

        return GenRequest(list(prompt), Sampling(**sampling), stop_ids=frozenset(stop), on_event=on_event)

    def wait(self, *names, timeout=30):
        with self.cond:
            assert self.cond.wait_for(lambda: all(n in self.ended for n in names), timeout), self.ended
        return [self.ended[n] for n in names]

    def tokens(self, name):
        return [e.token for n, e in self.events if n == name and e.kind == "token"]

    def texts(self, name):
        return [e.text for n, e in self.events if n == name and e.kind == "token"]


def test_stop_token_ends_the_reply_without_sending_it(engine):
    eng, log = engine(reply=[10, 11, 2, 12]), Log()
    eng.submit(log.request("a", [1, 7, 8], stop=eng.stop_ids(["<turn|>"]), max_tokens=10))
    (done,) = log.wait("a")
    assert log.tokens("a") == [10, 11]
    assert done.finish_reason == "stop"
    assert (done.stats["prompt_tokens"], done.stats["completion_tokens"]) == (3, 2)


def test_length_and_context_limits(engine, fake_backend):
    eng, log = engine(ctx=8), Log()
    eng.submit(log.request("a", [1, 7], max_tokens=3))
    eng.submit(log.request("b", [1, 7, 8, 9, 10], max_tokens=100))  # 8 - 5 = 3 tokens of room
    a, b = log.wait("a", "b")
    walk = [7]
    for _ in range(3):
        walk.append(fake_backend.walk(walk[-1], 64))
    walk = walk[1:]
    assert log.tokens("a") == walk and a.finish_reason == "length"
    assert len(log.tokens("b")) == 3 and b.finish_reason == "length"
    with pytest.raises(PromptTooLong, match="the prompt is 8 tokens; the context is 8"):
        eng.submit(log.request("c", range(8)))


def test_utf8_split_across_tokens_is_held_until_complete(engine):
    eng, log = engine(reply=[4, 5, 7]), Log()
    eng.submit(log.request("a", [1], max_tokens=3))
    log.wait("a")
    assert log.tokens("a") == [4, 5, 7]
    assert log.texts("a") == ["", "é", "w7 "]


def test_tokens_stream_before_the_request_ends(engine):
    """Each token reaches the client while the reply is being generated (20 ms a step)."""
    eng = engine(decode_ms=20)
    q = queue.SimpleQueue()
    eng.submit(GenRequest([1, 7], Sampling(max_tokens=5), on_event=lambda e: q.put((time.perf_counter(), e))))
    got = [q.get(timeout=10) for _ in range(6)]
    assert [e.kind for _, e in got] == ["token"] * 5 + ["done"]
    assert got[-1][0] - got[0][0] >= 4 * 0.020  # the first token came four steps before the end


def test_one_slot_queues_in_order_and_bounds_the_queue(engine):
    eng, log = engine(slots=1, max_queue=1, decode_ms=10), Log()
    with eng.lock:  # both in before the worker admits either
        eng.submit(log.request("a", [1, 7], max_tokens=4))
        eng.submit(log.request("b", [1, 8], max_tokens=4))
        assert eng.busy() == (0, 2)
    with pytest.raises(QueueFull, match="waiting"):
        eng.submit(log.request("c", [1, 9], max_tokens=4))
    a, b = log.wait("a", "b")
    assert [n for n, _ in log.events] == ["a"] * 5 + ["b"] * 5  # b waited for a's slot
    assert b.stats["queue_ms"] - a.stats["queue_ms"] >= 30  # b waited for a's 4 steps of >= 10 ms
    assert eng.busy() == (0, 0)


def test_two_slots_decode_together_one_step_per_token(engine):
    eng, log = engine(slots=2, decode_ms=5), Log()
    with eng.lock:
        eng.submit(log.request("a", [1, 7], max_tokens=4))
        eng.submit(log.request("b", [1, 8], max_tokens=4))
    log.wait("a", "b")
    order = [n for n, e in log.events if e.kind == "token"]
    assert order == ["a", "b"] * 4
    assert eng.steps == 4  # not 8: one engine step carried both


def test_cancel_in_flight_and_waiting(engine):
    eng, log = engine(slots=1, decode_ms=10), Log()
    a = log.request("a", [1, 7], max_tokens=1000)
    b = log.request("b", [1, 8], max_tokens=5)
    with eng.lock:
        eng.submit(a)
        eng.submit(b)
    with log.cond:
        assert log.cond.wait_for(lambda: len(log.tokens("a")) >= 3, 10)
    b.cancel()  # a client that left while waiting: never started
    a.cancel()  # one that left mid-reply
    da, db = log.wait("a", "b")
    assert da.finish_reason == "cancelled" and 3 <= da.stats["completion_tokens"] < 100  # of 1000
    assert db.finish_reason == "cancelled" and log.tokens("b") == []
    eng.submit(log.request("c", [1, 9], max_tokens=2))  # the slot is free again
    assert log.wait("c")[0].finish_reason == "length"


def test_engine_failure_ends_requests_in_flight_and_the_worker_goes_on(engine):
    eng, log = engine(slots=2, fail="decode", fail_after=3), Log()
    with eng.lock:
        eng.submit(log.request("a", [1, 7], max_tokens=10))
        eng.submit(log.request("b", [1, 8], max_tokens=10))
    a, b = log.wait("a", "b")
    assert len(log.tokens("a")) == len(log.tokens("b")) == 3
    for d in (a, b):
        assert d.finish_reason == "error" and "decode call 4" in d.text
    eng.submit(log.request("c", [1, 9], max_tokens=2))  # the worker still serves (and fails) requests
    assert log.wait("c")[0].finish_reason == "error"


def test_close_cancels_running_and_waiting(engine):
    eng, log = engine(slots=1, decode_ms=10), Log()
    with eng.lock:
        eng.submit(log.request("a", [1, 7], max_tokens=1000))
        eng.submit(log.request("b", [1, 8], max_tokens=5))
    with log.cond:
        assert log.cond.wait_for(lambda: log.tokens("a"), 10)
    eng.close()
    a, b = log.wait("a", "b")
    assert (a.finish_reason, b.finish_reason) == ("cancelled", "cancelled")
    assert log.tokens("b") == []


def test_sampling_is_seeded(engine):
    eng, log = engine(), Log()
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        eng.submit(log.request(name, [1, 7], max_tokens=8, temperature=1.0, seed=seed))
    log.wait("a", "b", "c")
    assert log.tokens("a") == log.tokens("b") != log.tokens("c")


def test_call_runs_on_the_worker_thread_between_requests(engine):
    """Scheduler.call (MLX runs its towers on the engine's thread): a result, an exception handed back,
    and a refusal once the engine is closed."""
    e = engine()
    assert e.call(lambda: threading.current_thread().name) == "edgekit-engine"
    with pytest.raises(ZeroDivisionError):
        e.call(lambda: 1 / 0)
    e.close()
    with pytest.raises(RuntimeError, match="the engine is closed"):
        e.call(lambda: 1)
