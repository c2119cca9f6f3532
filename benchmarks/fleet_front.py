"""What does the fleet's front (HAProxy, `edgekit lab serve --front`) cost a client? TTFT and decode t/s
through the front ÷ straight to the device's `edgekit serve`, same server, same run.

    python benchmarks/fleet_front.py [--dist DIR] [-p 64] [-n 64] [-r 8] [--keyed]

One `edgekit serve` on the tiny model (synthesized and built when --dist is not given) on 127.0.0.1,
HAProxy in front of it with the configuration `lab serve --front` writes (--keyed: the per-device key
listener hop too). Rounds alternate direct and front requests, so a busy host hurts both alike; each
request is one streamed greedy chat of exactly -n tokens timed by edgekit.lab.served_bench.one_request (TTFT
= request sent to the first text; decode = tokens after the first over their time). Prints medians and
the ratios (front ÷ direct for decode, direct ÷ front for TTFT: both ≥ 0.95 is the goal). The tiny model
answers in milliseconds, so a fixed per-request cost of the front shows here far more than on a Pi 5.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from serve_fixture import free_port, start_server  # noqa: E402

from edgekit.lab.front import Backend, Front, haproxy_config, write_config  # noqa: E402
from edgekit.lab.served_bench import model_id, one_request, prompt_of  # noqa: E402


def tiny_dist(tmp: Path) -> Path:
    from edgekit.builder.pipeline import build
    from edgekit.dev.synth import synth

    ckpt = synth(tmp / "tiny-gemma4", preset="tiny", seed=0)
    return build(str(ckpt), target="pi5", quants=["q8_0"], out=tmp / "dist")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dist", type=Path)
    ap.add_argument("-p", type=int, default=64)
    ap.add_argument("-n", type=int, default=64)
    ap.add_argument("-r", type=int, default=8)
    ap.add_argument("--keyed", action="store_true", help="a per-device API key: the extra listener hop")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="fleet-front-") as t:
        tmp = Path(t)
        dist = a.dist or tiny_dist(tmp)
        server = start_server(dist, tmp / "serve.log", "--threads", "1", "--ctx", str(a.p + a.n + 64))
        try:
            port = free_port()
            front_url = f"http://127.0.0.1:{port}"
            cfg = write_config(
                haproxy_config([Backend("dev", "127.0.0.1", server.port, "k" if a.keyed else None)], port=port),
                tmp / "haproxy.cfg",
            )
            with Front(cfg, tmp / "haproxy.log").start(front_url):
                direct, front = server.url + "/v1", front_url + "/v1"
                model = model_id(direct)
                messages, p = prompt_of(direct, model, a.p)
                for base in (direct, front):  # warm-up both paths (connections, caches)
                    one_request(base, model, messages, min(a.n, 4))
                runs: dict[str, list[dict]] = {"direct": [], "front": []}
                for _ in range(a.r):
                    for name, base in (("direct", direct), ("front", front)):
                        runs[name].append(one_request(base, model, messages, a.n))
        finally:
            server.stop()
    med = {k: {m: statistics.median(r[m] for r in v) for m in ("ttft_ms", "decode_tps")} for k, v in runs.items()}
    print(
        f"tiny model, prompt {p} tokens, {a.n} generated, {a.r} alternating rounds, "
        f"{'keyed (two hops)' if a.keyed else 'no key (one hop)'}"
    )
    print("| path   | TTFT ms (median) | decode t/s (median) |")
    print("|--------|-----------------:|--------------------:|")
    for k in ("direct", "front"):
        print(f"| {k:<6} | {med[k]['ttft_ms']:16.2f} | {med[k]['decode_tps']:19.1f} |")
    ttft = med["direct"]["ttft_ms"] / med["front"]["ttft_ms"]
    tg = med["front"]["decode_tps"] / med["direct"]["decode_tps"]
    print(f"TTFT direct/front {ttft:.3f}  decode front/direct {tg:.3f}  (goal >= 0.95 each)")


if __name__ == "__main__":
    main()
