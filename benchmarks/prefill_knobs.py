"""Which memory knob costs prompt speed: pp512 with the pi5 runtime vs llama.cpp's defaults, one knob at a time.

    python benchmarks/prefill_knobs.py [--gguf FILE | --tiny] [-p 512] [-r 3] [--rounds 2] [-t 2] [--llama-bench]
                                       [--config "LABEL=BASE[,knob=value...]" ...]

On one artifact (default: the shape-true E2B IQ4_XS-edge build benchmarks/e2b_memory.py made under
.cache/bench-e2b; --tiny makes a tiny Gemma 4 build instead, a smoke run of seconds), edgekit's
llama.cpp runner prefills -p tokens with:

  llama.cpp defaults   no knob set: mmap, lazy "auto", repack on, F16 cache, flash attention "auto",
                       n_batch 2048, n_ubatch 512 (what stock llama-bench runs)
  pi5 runtime          targets/pi5.toml's [runtime]
  pi5, one knob back   the pi5 runtime with one knob moved towards the defaults: lazy auto;
                       flash_attn on/off with an F16 cache (a Q8_0 V cache needs flash attention);
                       n_ubatch 128/256/512; repack on

Each configuration runs in its own child (no memory limit: speed only), in alternating rounds so a
shared host's slow spells hit every configuration alike; the table prints pp t/s (median over
rounds), its ratio to the defaults' median of the same run, the median of per-round ratios (a round's
runs are adjacent in time), and the peak RSS each configuration paid. --config replaces the one-knob
set with your own grid (BASE is "defaults" or a target whose [runtime] it starts from; "llama.cpp
defaults" always runs first, as the reference), e.g. --config "pi5-lean=pi5-lean" --config
"ub256=pi5,kv_type=f16,n_ubatch=256". --llama-bench also runs stock
llama-bench (built once by benchmarks/llamacpp_tools.py) on the same file with its defaults. Goal:
pi5-runtime pp512 ≥ 1.0 × llama.cpp defaults on the same file, same run.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import platform
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
CACHE = ROOT / ".cache"


def configs(pi5: dict) -> list[tuple[str, dict]]:
    """(label, runtime) per configuration: the defaults, the pi5 runtime, then one knob at a time."""
    f16 = {"kv_type": "f16"}
    out = [("llama.cpp defaults", {}), ("pi5 runtime", dict(pi5))]
    out.append(("pi5, lazy=auto", {**pi5, "lazy": "auto"}))
    out.append(("pi5, flash_attn=on, f16 cache", {**pi5, **f16, "flash_attn": "on"}))
    out.append(("pi5, flash_attn=off, f16 cache", {**pi5, **f16, "flash_attn": "off"}))
    for ub in (128, 256, 512):
        out.append((f"pi5, n_ubatch={ub}", {**pi5, "n_ubatch": ub}))
    out.append(("pi5, repack=true", {**pi5, "repack": True}))
    return out


def parse_config(text: str) -> tuple[str, dict]:
    """``LABEL=BASE[,knob=value...]`` as (label, runtime); values are typed by the engine's schema later."""
    from edgekit.profiles.knobs import parse_set
    from edgekit.profiles.targets import TARGETS

    label, sep, rest = text.partition("=")
    base, *sets = (x.strip() for x in rest.split(","))
    if not sep or not label.strip() or not (base == "defaults" or base in TARGETS):
        raise SystemExit(
            f"--config {text!r}: expected LABEL=BASE[,knob=value...], BASE defaults or a target ({', '.join(TARGETS)})"
        )
    return label.strip(), {**(TARGETS.get(base).runtime if base != "defaults" else {}), **parse_set(sets)}


def tiny_build(work: Path) -> Path:
    from edgekit.builder.pipeline import build
    from edgekit.dev.synth import synth

    ckpt = synth(work / "tiny-gemma4", preset="tiny", seed=0)
    folder = build(str(ckpt), target="pi5", quants=["iq4_xs-edge"], out=work / "dist")
    return next(folder.glob("*IQ4_XS-edge*.gguf"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--gguf", type=Path, help="the artifact (default: .cache/bench-e2b's IQ4_XS-edge E2B build)")
    src.add_argument("--tiny", action="store_true", help="a tiny Gemma 4 build instead (smoke run)")
    ap.add_argument("-p", type=int, default=512, help="prompt tokens (pp<p>)")
    ap.add_argument("-r", type=int, default=3, help="repetitions per configuration per round")
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds over all configurations")
    ap.add_argument("-t", "--threads", type=int, default=None, help="default: pi5's, capped at this host's cores")
    ap.add_argument("--llama-bench", action="store_true", help="also run stock llama-bench with its defaults")
    ap.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="LABEL=BASE[,k=v...]",
        help="your own configurations instead of the one-knob set (repeatable)",
    )
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    os.environ.setdefault("EDGEKIT_NO_PROGRESS", "1")

    import tempfile

    from edgekit.measure.bench import BenchOptions, bench
    from edgekit.profiles.targets import TARGETS

    tmp = tempfile.TemporaryDirectory(prefix="edgekit-prefill-")
    if args.tiny:
        gguf = tiny_build(Path(tmp.name))
    else:
        gguf = args.gguf or next((CACHE / "bench-e2b").glob("*/pi5/*IQ4_XS-edge*.gguf"), None)
        if gguf is None or not gguf.is_file():
            raise SystemExit("no artifact: run benchmarks/e2b_memory.py once (it builds E2B), or pass --gguf / --tiny")
    pi5 = TARGETS.get("pi5")
    # The same budget, threads and context for every configuration; only [runtime] differs, and no
    # memory cgroup (this measures speed; e2b_memory.py measures the limit).
    TARGETS.register("pi5-knobs", dataclasses.replace(pi5, name="pi5-knobs", runtime={}, enforce_limit=False))
    cfgs = configs(pi5.runtime)
    if args.config:
        cfgs = cfgs[:1] + [parse_config(c) for c in args.config]
    base = BenchOptions(
        n_prompt=args.p,
        n_gen=1,
        reps=args.r,
        threads=args.threads,
        ctx=max(pi5.context, args.p + 1),
        target="pi5-knobs",
        roofline=False,
        limit=False,
    )
    pp: dict[str, list[float]] = {label: [] for label, _ in cfgs}
    rss: dict[str, list[int]] = {label: [] for label, _ in cfgs}
    threads = 0
    for rnd in range(args.rounds):
        for label, runtime in cfgs:
            logging.info("round %d/%d: %s", rnd + 1, args.rounds, label)
            (rec,) = bench(gguf, dataclasses.replace(base, runtime=runtime))
            pp[label].append(rec.pp_tps)
            rss[label].append(rec.peak_rss_bytes)
            threads = rec.threads or 0
    ref = "llama.cpp defaults"
    print(
        f"{gguf.name}, pp{args.p}, {threads} threads, ctx {base.ctx}, {args.rounds} alternating rounds x {args.r} "
        "reps; "
        f"host: {platform.machine()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}"
    )
    print("pi5 runtime: " + ", ".join(f"{k}={v}" for k, v in pi5.runtime.items()))
    print(
        f"| configuration | pp{args.p} t/s (median) | ÷ defaults (medians) | ÷ defaults per round, median [min-max] | "
        "peak RSS MB |"
    )
    print("|---|---:|---:|---:|---:|")
    for label, _ in cfgs:
        ratios = [a / b for a, b in zip(pp[label], pp[ref], strict=True)]
        print(
            f"| {label} | {statistics.median(pp[label]):.2f} | "
            f"{statistics.median(pp[label]) / statistics.median(pp[ref]):.3f} "
            f"| {statistics.median(ratios):.3f} [{min(ratios):.3f}-{max(ratios):.3f}] | {max(rss[label]) / 1e6:,.0f} |"
        )
    if args.llama_bench:
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from llamacpp_tools import tool
        from runner_overhead import llama_bench_run

        lb = llama_bench_run(tool("llama-bench"), gguf, args.p, 1, args.r, threads, [])
        print(
            f"| stock llama-bench (its defaults) | {lb['pp']:.2f} | {lb['pp'] / statistics.median(pp[ref]):.3f} | – | "
            "– |"
        )
    tmp.cleanup()


if __name__ == "__main__":
    main()
