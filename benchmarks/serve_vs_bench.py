"""What does serving cost? `edgekit serve` as an HTTP client sees it, against `edgekit bench`, same run.

    python benchmarks/serve_vs_bench.py [ARTIFACT] [--target pi5] [-p 256] [-n 64] [-r 5] [--threads N] [--ctx N]
                                        [--only ratio,prefix,load] [--clients 4] [--requests 25]

* ratio: client-seen TTFT (request sent → first streamed text) and decode t/s (streamed tokens after
  the first over their time) of `edgekit serve`, against `edgekit bench` on the same artifact, target
  knobs, threads and prompt length (the chat's rendered prompt, counted by the server), in paired rounds
  (a served request, then a bench repetition). Printed as bench_ttft / serve_ttft and serve_tps /
  bench_tps (goal ≥ 0.95 each), bench's decode at the served prompt's depth, and the server path's
  per-token overhead in µs. The server adds the template, tokenization, HTTP and SSE; bench prefills
  random ids from an empty cache.
* prefix: TTFT with a ~1,000-token system prompt kept in the KV cache (the same system prompt each
  request) against a new one each request (nothing cached); prints cached / uncached.
* load: CLIENTS threads × REQUESTS requests each against `--parallel CLIENTS`: p50/p95 TTFT, total
  completion t/s, errors (goal 0), the server's peak RSS (VmHWM) against the target's budget.

Without ARTIFACT, a random tiny Gemma 4 is synthesized and built for the target (q8_0) in --workdir.
Not a test: the figures depend on the host. Speed figures of the tiny model measure overheads, not E2B.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edgekit.lab.served_bench import model_id, one_request  # noqa: E402


def tiny_artifact(workdir: Path, target: str) -> Path:
    from edgekit.builder.pipeline import build
    from edgekit.dev.synth import synth

    ckpt = workdir / "tiny-gemma4"
    if not (ckpt / "config.json").exists():
        synth(ckpt, preset="tiny", seed=0)
    folder = workdir / "dist" / ckpt.name / target
    return (
        folder
        if (folder / "manifest.json").exists()
        else build(str(ckpt), target=target, quants=["q8_0"], out=workdir / "dist")
    )


class Server:
    def __init__(self, artifact: Path, args: list[str], log: Path):
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.log = open(log, "w")  # noqa: SIM115 (closed in stop())
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edgekit.cli", "serve", str(artifact), "--port", str(self.port), *args],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        self.base = f"http://127.0.0.1:{self.port}/v1"
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"edgekit serve exited {self.proc.returncode}; see {log}")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2)
                break
            except OSError:
                time.sleep(0.2)
        self.model = model_id(self.base)

    def peak_rss(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        return 0

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        self.proc.wait(60)
        self.log.close()


def words(n: int, salt: str = "") -> str:
    return " ".join(f"{salt}w{i}" for i in range(n))


def ratio(artifact: Path, args: argparse.Namespace, common: list[str], tmp: Path) -> None:
    from edgekit.measure.bench import BenchOptions, bench
    from edgekit.measure.sweep import Test

    # Paired rounds: a served request, then a bench repetition of the same lengths, REPS times, the server
    # kept up. Serving first and benching after, on this shared host, let the other jobs' load differ
    # between the halves: bench's tg @ d1438 on the tiny model went 283-557 t/s across four such runs.
    rounds = []
    with Server(artifact, common, tmp / "ratio.log") as s:
        msgs = lambda i: [{"role": "user", "content": words(args.n_prompt, f"r{i}")}]
        one_request(s.base, s.model, msgs(-1), 4)  # warm-up: page in
        for i in range(args.reps):
            r = one_request(s.base, s.model, msgs(i), args.n_gen)
            p = r["prompt_tokens"]
            # The served tokens are decoded after the p-token prompt, so bench's decode test runs at depth
            # p (llama-bench's -d): its plain tg decodes from an empty cache, and on the tiny model at
            # p = 1438 that alone was 1.36x faster (506 vs 373 t/s, same host and minute), which is what
            # the first serve/bench decode ratios of 0.73-0.77 mostly measured. TTFT: pp p from empty.
            first, deep = bench(
                artifact,
                BenchOptions(
                    n_prompt=p,
                    n_gen=args.n_gen,
                    reps=1,
                    threads=args.threads,
                    ctx=args.ctx,
                    target=args.target,
                    roofline=False,
                    tests=[Test(p, args.n_gen, 0), Test(1, args.n_gen, p)],
                ),
            )
            rounds.append((r, first, deep))
    med = statistics.median
    p = rounds[0][0]["prompt_tokens"]
    s_ttft, b_ttft = med(r["ttft_ms"] for r, _, _ in rounds), med(f.ttft_ms for _, f, _ in rounds)
    s_tps, b_tps, b0_tps = (
        med(r["decode_tps"] for r, _, _ in rounds),
        med(d.tg_tps for _, _, d in rounds),
        med(f.tg_tps for _, f, _ in rounds),
    )
    over = sorted(1e6 / r["decode_tps"] - 1e6 / d.tg_tps for r, _, d in rounds)
    print(
        f"ratio: prompt {p} tokens, {args.n_gen} generated, {args.reps} paired rounds (medians; ratios: median of the "
        "rounds')"
    )
    print(
        f"  TTFT   serve {s_ttft:8.1f} ms   bench {b_ttft:8.1f} ms   bench/serve "
        f"{med(f.ttft_ms / r['ttft_ms'] for r, f, _ in rounds):.3f}"
    )
    print(
        f"  decode serve {s_tps:8.2f} t/s  bench @ d{p} {b_tps:8.2f} t/s  serve/bench "
        f"{med(r['decode_tps'] / d.tg_tps for r, _, d in rounds):.3f}   (bench @ d0 {b0_tps:.2f} t/s)"
    )
    print(
        f"  per-token overhead of the server path {med(over):+.1f} us (rounds {over[0]:+.1f} .. {over[-1]:+.1f}; "
        f"{1e6 / s_tps:.1f} us served, {1e6 / b_tps:.1f} us bench)"
    )


def english(n_words: int) -> str:
    from edgekit.dev.synthetic_tokenizer import corpus

    text = " ".join(corpus()[:5]).split()
    return " ".join(text[i % len(text)] for i in range(n_words))


def prefix(artifact: Path, args: argparse.Namespace, common: list[str], tmp: Path) -> None:
    with Server(artifact, common, tmp / "prefix.log") as s:
        # Calibrate the system prompt to ≈ --system-tokens with the server's own token count.
        probe = one_request(
            s.base, s.model, [{"role": "system", "content": english(200)}, {"role": "user", "content": "x"}], 1
        )
        system = english(max(1, round(200 * args.system_tokens / probe["prompt_tokens"])))
        q = lambda i: {"role": "user", "content": f"Question {i}?"}
        one_request(s.base, s.model, [{"role": "system", "content": system}, q(-1)], 2)  # warm-up, and the cache
        cached = [
            one_request(s.base, s.model, [{"role": "system", "content": system}, q(i)], 2) for i in range(args.reps)
        ]
        cold = [
            one_request(s.base, s.model, [{"role": "system", "content": f"{i} " + system}, q(i)], 2)
            for i in range(args.reps)
        ]
    c, u = statistics.median(r["ttft_ms"] for r in cached), statistics.median(r["ttft_ms"] for r in cold)
    print(
        f"prefix: {cached[0]['prompt_tokens']} prompt tokens, {cached[0]['cached_tokens']} of them cached on a repeat"
    )
    print(f"  TTFT cached {c:8.1f} ms   uncached {u:8.1f} ms   cached/uncached {c / u:.3f}")


def load(artifact: Path, args: argparse.Namespace, common: list[str], tmp: Path) -> None:
    from edgekit.profiles.targets import TARGETS

    results, errors = [], []
    lock = threading.Lock()
    with Server(
        artifact, [*common, "--parallel", str(args.clients), "--queue", str(args.clients)], tmp / "load.log"
    ) as s:

        def client(c: int) -> None:
            for i in range(args.requests):
                try:
                    r = one_request(s.base, s.model, [{"role": "user", "content": words(32 + i, f"c{c}")}], args.n_gen)
                    with lock:
                        results.append(r)
                except Exception as e:  # counted: the goal is none
                    with lock:
                        errors.append(repr(e))

        t0 = time.perf_counter()
        threads = [threading.Thread(target=client, args=(c,)) for c in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        peak = s.peak_rss()
    ttft = sorted(r["ttft_ms"] for r in results)
    pct = lambda q: ttft[min(len(ttft) - 1, int(q * len(ttft)))] if ttft else float("nan")
    toks = sum(r["completion_tokens"] for r in results)
    budget = TARGETS.get(args.target).memory_budget_bytes if args.target else None
    print(f"load: {args.clients} clients x {args.requests} requests, {args.n_gen} tokens each")
    print(f"  TTFT p50 {pct(0.5):.1f} ms  p95 {pct(0.95):.1f} ms   total {toks / wall:.2f} t/s   errors {len(errors)}")
    print(
        f"  server peak RSS {peak / 1e6:.0f} MB"
        + (f"   budget {budget / 1e6:.0f} MB   peak/budget {peak / budget:.3f}" if budget else "")
    )
    for e in errors[:3]:
        print("  error:", e)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("artifact", nargs="?", type=Path, help="A .gguf, an MLX folder or a dist folder (default: tiny).")
    ap.add_argument("--target", default="pi5")
    ap.add_argument("-p", "--n-prompt", type=int, default=256, help="Prompt words for the ratio test.")
    ap.add_argument("-n", "--n-gen", type=int, default=64)
    ap.add_argument("-r", "--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--ctx", type=int, default=None, help="Context for serve and bench (default: the target's).")
    ap.add_argument("--system-tokens", type=int, default=1000, help="Tokens of the prefix test's system prompt.")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--requests", type=int, default=25)
    ap.add_argument("--only", default="ratio,prefix,load")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        artifact = args.artifact or tiny_artifact(args.workdir or tmp, args.target)
        from edgekit.profiles.resolve import resolve

        artifact = resolve(artifact, target=args.target, first=True)[
            0
        ].path  # the one `serve` picks from a dist folder: bench the same
        common = (
            ["--target", args.target]
            + (["--threads", str(args.threads)] if args.threads else [])
            + (["--ctx", str(args.ctx)] if args.ctx else [])
        )
        for name in args.only.split(","):
            {"ratio": ratio, "prefix": prefix, "load": load}[name.strip()](artifact, args, common, tmp)
    print(json.dumps({"artifact": str(artifact), "target": args.target}))


if __name__ == "__main__":
    main()
