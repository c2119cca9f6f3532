"""`edgekit serve` on the fake backend (tests/fake_backend.py), through the real openai client: the reply
the fake scripts, a client that leaves mid-stream freeing its slot, and 503 beyond the queue; every
step of the fake takes 30 ms, so a long reply is long on any host."""

from __future__ import annotations

import time

import pytest
from serve_fixture import start_server, wait_until

MESSAGES = [{"role": "user", "content": "w7 w8"}]


@pytest.fixture
def served(fake_backend, tmp_path):
    art = fake_backend.write_artifact(tmp_path, reply=[10, 11, 4, 5, 12], decode_ms=30)
    s = start_server(art, tmp_path / "log", "--parallel", "1", "--queue", "0", "--ctx", "2048")
    yield s
    s.stop()


def test_reply_is_what_the_engine_generated(served):
    c = served.client()
    model = c.models.list().data[0].id
    assert model == "fake-F1"
    r = c.chat.completions.create(model=model, messages=MESSAGES, max_tokens=5, temperature=0)
    assert r.choices[0].message.content == "w10 w11 éw12 "  # ids 4 and 5 are the two bytes of "é"
    assert (r.choices[0].finish_reason, r.usage.completion_tokens) == ("length", 5)
    assert r.usage.prompt_tokens == 4  # <bos> w7 w8 <turn|>


def test_a_client_leaving_mid_stream_frees_the_slot_and_the_queue_is_bounded(served):
    c = served.client(max_retries=0)
    model = c.models.list().data[0].id
    stream = c.chat.completions.create(model=model, messages=MESSAGES, max_tokens=1000, temperature=0, stream=True)
    it = iter(stream)
    for _ in range(3):
        next(it)
    assert served.health()["busy"] == 1
    from openai import APIStatusError

    with pytest.raises(APIStatusError) as busy:  # one slot, no queue: a second request is refused
        c.chat.completions.create(model=model, messages=MESSAGES, max_tokens=2, temperature=0)
    assert busy.value.status_code == 503
    stream.close()  # 1000 tokens at 30 ms would hold the slot 30 s
    assert wait_until(lambda: served.health()["busy"] == 0, 10)
    t0 = time.monotonic()
    r = c.chat.completions.create(model=model, messages=MESSAGES, max_tokens=2, temperature=0)
    assert r.choices[0].finish_reason == "length" and time.monotonic() - t0 < 10
