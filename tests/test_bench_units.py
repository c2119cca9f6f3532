"""Bench parts that need no model: the memory sampler against known allocations, the roofline's
byte counting against hand-made GGUF files, the bandwidth cache, and the timing loop's arithmetic."""

from __future__ import annotations

import ctypes
import json
import statistics
import subprocess
import sys
import textwrap

import gguf
import numpy as np
import pytest

from edgekit.backends.gguf.runner import KNOBS as LLAMACPP_KNOBS
from edgekit.backends.runner import mean_sd, one_rep, run_reps
from edgekit.core import host
from edgekit.core.errors import ConfigError
from edgekit.measure import roofline
from edgekit.profiles.knobs import parse_set

MiB = 1 << 20


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="anonymous/file split is Linux's /proc")
def test_sampler_sees_known_anonymous_and_file_backed_allocations(tmp_path):
    blob = tmp_path / "blob.bin"
    blob.write_bytes(np.random.default_rng(0).integers(0, 255, 64 * MiB, dtype=np.uint8).tobytes())
    script = textwrap.dedent(f"""
        import json, mmap, numpy as np
        from edgekit.measure.memory import PeakSampler, read_status
        with PeakSampler(interval=0.002) as s:
            before = read_status()
            a = np.ones(200 * {MiB} // 8)                     # 200 MiB anonymous, every page written
            with open({str(blob)!r}, "rb") as f:
                m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
                total = int(np.frombuffer(m, dtype=np.uint8)[::4096].sum())   # touch every page
            s.sample()
            during = read_status()
            del a                                              # the peak must survive the free
        peak = s.peak()
        print(json.dumps(dict(before=before.__dict__, during=during.__dict__, peak=peak.__dict__)))
    """)
    out = json.loads(subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True).stdout)
    before, during, peak = out["before"], out["during"], out["peak"]
    # The kernel counts whole pages, plus a little interpreter churn: within 4 MiB of what was made.
    assert 200 * MiB <= peak["peak_anon_bytes"] - before["anon"] <= 204 * MiB
    assert 64 * MiB <= peak["peak_file_bytes"] - before["file"] <= 68 * MiB
    assert during["rss"] >= before["rss"] + 264 * MiB
    # RSS and VmHWM come from the kernel's per-thread batched counters (up to 64 pages per thread
    # behind), so the peak may trail a read made a moment earlier by that much, never more.
    slack = 64 * 4096 * 2
    assert peak["peak_rss_bytes"] >= max(during["rss"], during["hwm"]) - slack


@pytest.mark.skipif(not hasattr(ctypes.CDLL(None), "malloc_trim"), reason="glibc's malloc_trim only")
def test_trim_heap_gives_freed_heap_back_to_the_kernel():
    # 100 MiB of 64 KiB blocks (under glibc's mmap threshold, so heap), a block after them so free()
    # cannot shrink the heap from its top, then all freed: glibc keeps them resident until trim_heap.
    script = textwrap.dedent("""
        import ctypes, json
        from edgekit.core.host import trim_heap
        from edgekit.measure.memory import read_status
        libc = ctypes.CDLL(None)
        libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
        libc.free.argtypes = [ctypes.c_void_p]
        before = read_status().anon
        blocks = [libc.malloc(64 << 10) for _ in range(1600)]
        for b in blocks:
            ctypes.memset(b, 1, 64 << 10)
        pin = libc.malloc(64 << 10)
        ctypes.memset(pin, 1, 64 << 10)
        for b in blocks:
            libc.free(b)
        kept = read_status().anon
        ran = trim_heap()
        print(json.dumps(dict(before=before, kept=kept, trimmed=read_status().anon, ran=ran)))
    """)
    out = json.loads(subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True).stdout)
    assert out["ran"]
    assert out["kept"] - out["before"] >= 95 * MiB  # what trim_heap is for: freed, still resident
    assert out["trimmed"] - out["before"] <= 4 * MiB, out  # back to the start, the pinned block aside


def test_trim_heap_types_malloc_trim_once_and_is_a_no_op_without_it(monkeypatch):
    if hasattr(ctypes.CDLL(None), "malloc_trim"):  # glibc: typed at import, before any call
        assert host._MALLOC_TRIM.argtypes == [ctypes.c_size_t] and host._MALLOC_TRIM.restype is ctypes.c_int

    class Trim:  # stands for the ctypes function: counts calls and any retyping
        def __init__(self):
            object.__setattr__(self, "calls", [])
            object.__setattr__(self, "typed", 0)

        def __setattr__(self, name, value):
            object.__setattr__(self, "typed", self.typed + 1)

        def __call__(self, pad):
            self.calls.append(pad)
            return 1

    fake = Trim()
    monkeypatch.setattr(host, "_MALLOC_TRIM", fake)
    assert [host.trim_heap(), host.trim_heap()] == [True, True]
    assert fake.calls == [0, 0] and fake.typed == 0  # called with pad 0, never retyped per call
    monkeypatch.setattr(host, "_MALLOC_TRIM", None)  # macOS, musl: no malloc_trim
    assert host.trim_heap() is False


def _write_gguf(path, tensors: dict[str, np.ndarray], q8: tuple[str, ...] = ()) -> dict[str, int]:
    """Write tensors (some Q8_0 through gguf's quantizer); return each tensor's stored bytes."""
    w = gguf.GGUFWriter(path, "gemma4")
    sizes = {}
    for name, a in tensors.items():
        if name in q8:
            qa = gguf.quants.quantize(a, gguf.GGMLQuantizationType.Q8_0)
            w.add_tensor(name, qa, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
            sizes[name] = qa.nbytes
        else:
            w.add_tensor(name, a)
            sizes[name] = a.nbytes
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return sizes


def _tensors(vocab=96, d=64, ple=2 * 32):
    rng = np.random.default_rng(0)
    return {
        "token_embd.weight": rng.standard_normal((vocab, d), dtype=np.float32),
        "per_layer_token_embd.weight": rng.standard_normal((vocab, ple), dtype=np.float32).astype(np.float16),
        "blk.0.attn_q.weight": rng.standard_normal((d, d), dtype=np.float32),
        "blk.0.ffn_up.weight": rng.standard_normal((2 * d, d), dtype=np.float32),
        "output_norm.weight": np.ones(d, dtype=np.float32),
    }


def test_roofline_counts_tied_embedding_whole_and_ple_by_row(tmp_path):
    t = _tensors()
    sizes = _write_gguf(tmp_path / "tied.gguf", t, q8=("blk.0.ffn_up.weight",))
    tb = roofline.token_bytes(tmp_path / "tied.gguf", "gguf")
    ple_row = 64 * 2  # one f16 row of 64 values
    assert sizes["blk.0.ffn_up.weight"] == 128 * 64 // 32 * 34  # Q8_0: 34 bytes per 32 values
    whole = sum(sizes.values()) - sizes["per_layer_token_embd.weight"]
    assert tb.gathered == {"per_layer_token_embd.weight": ple_row}
    assert tb.whole == whole  # token_embd is the output head here: read whole
    assert tb.total == whole + ple_row
    assert tb.file_tensor_bytes == sum(sizes.values())


def test_roofline_gathers_token_embd_when_the_head_is_separate(tmp_path):
    t = _tensors()
    t["output.weight"] = np.random.default_rng(1).standard_normal((96, 64), dtype=np.float32)
    sizes = _write_gguf(tmp_path / "untied.gguf", t)
    tb = roofline.token_bytes(tmp_path / "untied.gguf", "gguf")
    assert tb.gathered == {"per_layer_token_embd.weight": 64 * 2, "token_embd.weight": 64 * 4}
    assert (
        tb.total == sum(sizes.values()) - sizes["per_layer_token_embd.weight"] - sizes["token_embd.weight"] + 128 + 256
    )


def test_bandwidth_is_measured_once_then_cached(tmp_path, monkeypatch):
    calls = []

    def fake(**kw):
        calls.append(kw)
        return {"read_gbs": 12.5, "copy_gbs": 20.0, "mib": 8, "threads": 1, "probe": roofline.PROBE_VERSION}

    monkeypatch.setattr(roofline, "measure_bandwidth", fake)
    cache = tmp_path / "bw.json"
    assert roofline.host_bandwidth(cache=cache)["read_gbs"] == 12.5
    assert roofline.host_bandwidth(cache=cache)["read_gbs"] == 12.5
    assert len(calls) == 1
    assert roofline.host_bandwidth(cache=cache, refresh=True) and len(calls) == 2


def test_bandwidth_probe_moves_the_bytes_it_claims():
    bw = roofline.measure_bandwidth(mib=64, threads=2, trials=2)
    assert bw["mib"] == 64 and bw["threads"] == 2
    assert 0.1 < bw["read_gbs"] < 1000 and 0.1 < bw["copy_gbs"] < 1000
    # llama.cpp decodes with several threads: by default the probe reads with every core it may use.
    assert roofline.measure_bandwidth(mib=8, trials=1)["threads"] == host.usable_cores()


def _fake_probe(monkeypatch, read_gbs):
    calls = []

    def fake(**kw):
        calls.append(kw)
        return {"read_gbs": read_gbs, "copy_gbs": 20.0, "mib": 8, "threads": 2, "probe": roofline.PROBE_VERSION}

    monkeypatch.setattr(roofline, "measure_bandwidth", fake)
    return calls


def test_figures_from_an_older_probe_are_measured_again(tmp_path, monkeypatch):
    """A figure cached by the earlier probe (no probe version) must not stand as the roofline's reference."""
    cache = tmp_path / "bw.json"
    cache.write_text(json.dumps({host.host_key(): {"read_gbs": 22.5, "copy_gbs": 20.7, "mib": 512, "threads": 2}}))
    calls = _fake_probe(monkeypatch, 30.0)
    assert roofline.host_bandwidth(cache=cache)["read_gbs"] == 30.0 and len(calls) == 1
    assert json.loads(cache.read_text())[host.host_key()]["probe"] == roofline.PROBE_VERSION


def test_bench_refresh_bandwidth_measures_again(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from edgekit.cli import app
    from edgekit.measure import bench as bench_mod

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    calls = _fake_probe(monkeypatch, 12.5)
    roofline.host_bandwidth()  # cached from an earlier bench
    calls = _fake_probe(monkeypatch, 30.0)
    seen = []
    monkeypatch.setattr(
        bench_mod,
        "bench_sweep",
        lambda path, opts, points, **kw: seen.append(roofline.host_bandwidth()["read_gbs"]) or [],
    )
    runner = CliRunner()
    res = runner.invoke(app, ["bench", "x.gguf", "--no-store", "-o", "jsonl"])
    assert (res.exit_code, res.stdout, seen, len(calls)) == (0, "", [12.5], 0)
    res = runner.invoke(app, ["bench", "x.gguf", "--no-store", "-o", "jsonl", "--refresh-bandwidth"])
    assert (res.exit_code, res.stdout, seen, len(calls)) == (0, "", [12.5, 30.0], 1)


class FakeRunner:
    """Advances a fake clock: prefill 7 ms per token, decode 20 ms, the greedy pick 3 ms."""

    def __init__(self, clock):
        self.clock, self.calls = clock, []

    def n_vocab(self):
        return 50

    def bos(self):
        return 2

    def reset(self):
        self.calls.append("reset")

    def prefill(self, tokens):
        self.calls.append(("prefill", list(tokens)))
        self.clock.t += 0.007 * len(tokens)

    def decode(self, token):
        self.calls.append(("decode", token))
        self.clock.t += 0.020

    def next_token(self):
        self.clock.t += 0.003
        return 7


class Clock:
    t = 100.0

    def __call__(self):
        return self.t


def test_timing_separates_prefill_ttft_and_decode():
    clock = Clock()
    r = FakeRunner(clock)
    m = one_rep(r, [2, 5, 9, 11], n_gen=5, first_token=2, clock=clock)
    assert m.prefill_ms == pytest.approx(28.0)
    assert m.ttft_ms == pytest.approx(31.0)  # prefill + reading the first token
    assert m.pp_tps == pytest.approx(4 / 0.028)
    assert m.tg_tps == pytest.approx(1 / 0.020)  # the pick between steps is not decode time
    assert m.decode_ms == pytest.approx(100.0)
    # pp and tg each start from an empty cache; decode feeds back the greedy token
    assert r.calls[0] == "reset" and r.calls[2] == "reset"
    assert [c[1] for c in r.calls if c[0] == "decode"] == [2, 7, 7, 7, 7]


def test_warm_up_is_excluded_and_prompt_is_fixed_random_with_bos():
    clock = Clock()
    r = FakeRunner(clock)
    seen = []
    reps = run_reps(r, n_prompt=6, n_gen=3, reps=4, on_step=seen.append)
    assert len(reps) == 4 and seen == ["warm-up", "rep 1/4", "rep 2/4", "rep 3/4", "rep 4/4"]
    prompts = [c[1] for c in r.calls if c[0] == "prefill"]
    assert len(prompts) == 5 and all(p == prompts[0] for p in prompts)
    assert prompts[0][0] == 2 and len(prompts[0]) == 6 and all(0 <= t < 50 for t in prompts[0])
    decodes = [c for c in r.calls if c[0] == "decode"]
    assert len(decodes) == 1 + 4 * 3  # warm-up decodes one token only


def test_mean_sd_is_the_sample_standard_deviation():
    xs = [10.0, 12.0, 15.0, 11.0]
    assert mean_sd(xs) == (statistics.fmean(xs), statistics.stdev(xs))
    assert mean_sd([3.0]) == (3.0, 0.0)


def test_set_knobs_are_typed_by_the_engine_schema():
    raw = parse_set(["repack=false", "n_ubatch=128", "kv_type=q8_0", 'lazy="on"', "use_mmap = True"])
    assert raw == {"repack": "false", "n_ubatch": "128", "kv_type": "q8_0", "lazy": "on", "use_mmap": "True"}
    assert LLAMACPP_KNOBS.validate(raw, "--set") == {
        "repack": False,
        "n_ubatch": 128,
        "kv_type": "q8_0",
        "lazy": "on",
        "use_mmap": True,
    }
    with pytest.raises(ConfigError, match=r"--set 'repack': expected KEY=VALUE"):
        parse_set(["repack"])
