"""edgekit.serve.generate on the tiny model: greedy decoding equals the runner's own argmax loop, sequences
batched together decode as each alone, the cached (and saved, and reloaded) prefix changes nothing but
the prefill, sampling is reproducible by seed, and a finished request leaves no cells behind."""

from __future__ import annotations

import threading

import pytest

from edgekit.backends.runner import RunOptions
from edgekit.serve.generate import PromptTooLong, QueueFull, Sampling
from edgekit.serve.session import open_session

CTX = 512
SYSTEM = {"role": "system", "content": "You are a terse assistant who answers in one line. " * 3}
QUESTIONS = ["Hello there!", "What is the capital of France?", "def f(x): return", "Zürich 2024 ≈ 35 t/s"]


@pytest.fixture(scope="module")
def dist(tiny_ckpt, tmp_path_factory):
    from edgekit.builder.pipeline import build

    return build(str(tiny_ckpt), target="pi5", quants=["q8_0"], out=tmp_path_factory.mktemp("dist"))


def tokens(session, ids, sampling, prefix_len=0):
    out, done = [], None
    for e in session.stream(ids, sampling, prefix_len):
        if e.kind == "token":
            out.append(e.token)
        else:
            done = e
    return out, done


def argmax_loop(runner, path, knobs, ids, n):
    """The greedy tokens of the bench's own prefill / decode / next_token loop."""
    runner.load(path, RunOptions(threads=1, ctx=CTX, knobs=knobs))
    runner.reset()
    runner.prefill(ids)
    out = []
    for _ in range(n):
        out.append(runner.next_token())
        runner.decode(out[-1])
    runner.close()
    return out


def test_greedy_equals_the_runners_argmax_loop(dist):
    from edgekit.backends.gguf.runner import LlamaCppRunner

    s = open_session(dist, threads=1, ctx=CTX)
    try:
        ids, _ = s.prompt([{"role": "user", "content": QUESTIONS[1]}])
        got, done = tokens(s, ids, Sampling(max_tokens=24, temperature=0))
        knobs, path = s.runtime, s.path
    finally:
        s.close()
    assert done.finish_reason == "length" and done.stats["completion_tokens"] == 24
    assert got == argmax_loop(LlamaCppRunner(), path, knobs, ids, 24)


def test_batched_sequences_decode_as_each_alone(dist):
    s = open_session(dist, threads=1, ctx=CTX, slots=4)
    try:
        prompts = [s.prompt([{"role": "user", "content": q}])[0] for q in QUESTIONS]
        alone = [tokens(s, ids, Sampling(max_tokens=16, temperature=0))[0] for ids in prompts]
        together: dict[int, list[int]] = {}

        def one(i):
            together[i] = tokens(s, prompts[i], Sampling(max_tokens=16, temperature=0))[0]

        threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        # After every request, no sequence holds a cell: memory does not grow with requests served.
        assert all(s.engine.L.llama_memory_seq_pos_max(s.engine.mem, i) == -1 for i in range(4))
    finally:
        s.close()
    assert [together[i] for i in range(4)] == alone


def test_prefix_cache_and_its_file(dist, tmp_path):
    f = tmp_path / "prefix.bin"
    messages = [SYSTEM, {"role": "user", "content": QUESTIONS[0]}]
    s = open_session(dist, threads=1, ctx=CTX, prefix_file=f)
    try:
        ids, plen = s.prompt(messages)
        assert 0 < plen < len(ids)
        cold, d1 = tokens(s, ids, Sampling(max_tokens=16, temperature=0), plen)
        warm, d2 = tokens(s, ids, Sampling(max_tokens=16, temperature=0), plen)
        other_ids, other_plen = s.prompt([SYSTEM, {"role": "user", "content": QUESTIONS[2]}])
        other, d3 = tokens(s, other_ids, Sampling(max_tokens=16, temperature=0), other_plen)
        nocache, _ = tokens(s, other_ids, Sampling(max_tokens=16, temperature=0), 0)
    finally:
        s.close()
    assert (d1.stats["cached_tokens"], d2.stats["cached_tokens"], d3.stats["cached_tokens"]) == (0, plen, plen)
    assert warm == cold and other == nocache
    assert f.exists()
    s = open_session(dist, threads=1, ctx=CTX, prefix_file=f)  # a restart: the prefix comes from the file
    try:
        again, d4 = tokens(s, ids, Sampling(max_tokens=16, temperature=0), plen)
    finally:
        s.close()
    assert d4.stats["cached_tokens"] == plen and again == cold


def test_sampling_is_seeded(dist):
    s = open_session(dist, threads=1, ctx=CTX)
    try:
        ids, _ = s.prompt([{"role": "user", "content": QUESTIONS[0]}])
        a = tokens(s, ids, Sampling(max_tokens=24, temperature=1.0, seed=7))[0]
        b = tokens(s, ids, Sampling(max_tokens=24, temperature=1.0, seed=7))[0]
        c = tokens(s, ids, Sampling(max_tokens=24, temperature=1.0, seed=8))[0]
        greedy = tokens(s, ids, Sampling(max_tokens=24, temperature=0))[0]
    finally:
        s.close()
    assert a == b and a != c and a != greedy


def test_limits(dist):
    s = open_session(dist, threads=1, ctx=64, slots=1, max_queue=0)
    try:
        with pytest.raises(PromptTooLong, match=r"the prompt is \d+ tokens; the context is 64 tokens .*larger --ctx"):
            s.engine.submit(s.request(list(range(5, 100)), Sampling()))
        ids, _ = s.prompt([{"role": "user", "content": "hi"}])
        # A reply is cut at the context: prompt + reply never exceed it.
        out, done = tokens(s, ids, Sampling(max_tokens=1000, temperature=0))
        assert done.finish_reason == "length" and len(ids) + len(out) == 64
        started = threading.Event()
        req = s.request(ids, Sampling(max_tokens=10_000, temperature=0), on_event=lambda e: started.set())
        s.engine.submit(req)
        started.wait(10)
        with pytest.raises(QueueFull):
            s.engine.submit(s.request(ids, Sampling()))
        req.cancel()
    finally:
        s.close()


def test_mlx_greedy_equals_the_runners_argmax_loop(tiny_ckpt, tmp_path_factory):
    from edgekit.backends.engines import ENGINES
    from edgekit.builder.pipeline import build

    out = build(str(tiny_ckpt), target="m2", quants=["mlx-8bit"], out=tmp_path_factory.mktemp("mlx"))
    s = open_session(out, ctx=CTX)
    try:
        assert s.format == "mlx"
        ids, _ = s.prompt([{"role": "user", "content": QUESTIONS[1]}])
        got, done = tokens(s, ids, Sampling(max_tokens=12, temperature=0))
        knobs, path = s.runtime, s.path
    finally:
        s.close()
    assert done.finish_reason == "length" and len(got) == 12
    assert got == argmax_loop(ENGINES.get("mlx").make(), path, knobs, ids, 12)


def test_mlx_logprobs_are_the_runners_log_softmax(tiny_ckpt, tmp_path_factory):
    """MLX replies carry OpenAI's logprobs as llama.cpp's do: each token's log-softmax under the model's
    raw logits (before temperature and penalties) and the N likeliest, sorted; compared with the runner's
    own prefill/decode loop over the same tokens, greedy and seeded hot (with a repeat penalty)."""
    import numpy as np

    from edgekit.backends.engines import ENGINES
    from edgekit.builder.pipeline import build

    out = build(str(tiny_ckpt), target="m2", quants=["mlx-8bit"], out=tmp_path_factory.mktemp("mlxlp"))
    s = open_session(out, ctx=CTX)
    runs = []
    try:
        ids, _ = s.prompt([{"role": "user", "content": QUESTIONS[2]}])
        for sampling in (
            Sampling(max_tokens=8, temperature=0, logprobs=3),
            Sampling(max_tokens=8, temperature=1.5, seed=5, repeat_penalty=1.3, logprobs=0),
        ):
            events = [e for e in s.stream(ids, sampling) if e.kind == "token"]
            runs.append((sampling, [e.token for e in events], [e.logprob for e in events]))
        knobs, path = s.runtime, s.path
    finally:
        s.close()
    runner = ENGINES.get("mlx").make()
    runner.load(path, RunOptions(threads=1, ctx=CTX, knobs=knobs))
    try:
        for sampling, toks, lps in runs:
            runner.reset()
            runner.prefill(ids)
            for tok, (lp, top) in zip(toks, lps, strict=True):
                x = np.array(runner.logits.astype(runner.mx.float32)).reshape(-1).astype(np.float64)
                ref = x - np.log(np.exp(x - x.max()).sum()) - x.max()
                assert abs(lp - ref[tok]) < 1e-9
                assert [t for t, _ in top] == list(np.argsort(-ref, kind="stable")[: sampling.logprobs])
                assert all(abs(v - ref[t]) < 1e-9 for t, v in top)
                runner.decode(tok)
    finally:
        runner.close()
    greedy = runs[0]
    assert all(tok == top[0][0] for tok, (_, top) in zip(greedy[1], greedy[2], strict=True))
