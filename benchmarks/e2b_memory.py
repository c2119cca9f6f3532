"""Shape-true Gemma 4 E2B at 4-bit: peak RAM per artifact and runtime, with where the memory goes.

    python benchmarks/e2b_memory.py [--e2b-dir DIR] [--ctx 2048,4096] [-n 16] [-r 1] [--no-limits | --limits-only]

Synthesizes E2B once (random weights: memory and speed do not depend on values; its tokenizer has
Gemma 4's 262144 pieces and 514,906 merges, which llama.cpp holds in memory; cached under
.cache/models), builds the pi5 artifacts (Q4_0, Q4_K_M and the recommended iq4_xs-edge) and the
MLX 4-bit artifact, then benches each in a fresh process with `edgekit.bench` at each context:
llama.cpp once with its stock runtime (mmap, lazy "auto", repack on, ubatch 512) as the reference
and once with targets/pi5.toml's runtime. The prompt fills the context (ctx - n tokens), so the
per-layer-embedding rows of a full context are read and counted. Prints the records with edgekit's
own markdown printer (the target column names the runtime: pi5-stock is llama.cpp's defaults); every
figure is measured in this run on this host, each from a cold page cache.

MLX's 4-bit matmul runs at ≈20 s per E2B token on an x86 CPU, so an MLX row runs 4 prompt tokens
and 2 decoded after the runner's kv_fill knob has put ctx - 4 positions of stand-in keys/values in
every cache: the cache of a full context and attention over it, without its prefill (the prefill's
own activations are not in that figure).

Then the budget proven as a device would (edgekit.limits, edgekit.pages): each pi5 artifact at ctx
2048 with the pi5 runtime, unlimited and inside a 1.5 GB memory cgroup (v2 memory.max or v1
memory.limit_in_bytes, whichever enforces here), alternating, each from a cold page cache: peak RSS,
the cgroup's peak (page cache charged to the run included), major faults per decoded token, tg t/s
and its ratio to the unlimited run, whether the kernel OOM-killed the child, and the peak with the
GGUF's mapped pages counted in 16 KB blocks (the Pi 5 kernel's page size). Goal: the recommended build
runs in the cgroup with tg ≥ 0.95 × unlimited, no OOM, and its 16 KB-page peak under 1.5 GB.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache"

GGUF_QUANTS = ["q4_0", "q4_k_m", "iq4_xs-edge"]
STOCK_RUNTIME = {"kv_type": "f16"}  # everything else at llama.cpp's defaults


def mb(x: int | None) -> str:
    return "–" if x is None else f"{x / 1e6:,.0f}"


def drop_caches() -> None:
    """Bench each artifact from a cold page cache (root on Linux; else a no-op), so every run starts
    from the same state: a file left in the page cache as large folios (e.g. after large buffered
    reads) measured +123 MiB resident for E2B, llama.cpp mapping whole folios around lazy PLE rows."""
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("1\n")
    except OSError:
        pass


def ensure_e2b(e2b_dir: Path | None) -> Path:
    path = e2b_dir or CACHE / "models" / "e2b-gemma4"
    if not (path / "config.json").is_file():
        subprocess.run([sys.executable, "-m", "edgekit.cli", "synth", "--preset", "e2b", "--out", str(path)], check=True)
    return path


def ensure_build(ckpt: Path, target: str, quants: list[str], out: Path) -> Path:
    from edgekit.build import build, model_slug
    from edgekit.errors import EdgekitError
    from edgekit.manifest import read_manifest, verify
    from edgekit.recipes import RECIPES

    folder = out / model_slug(ckpt) / target
    try:
        m = read_manifest(folder)
        same = {q: RECIPES.get(q).to_json() for q in quants} == m.recipes  # names alone miss edited recipes
        if same and sorted(a.recipe for a in m.artifacts) == sorted(quants) and not verify(folder, m):
            return folder
    except EdgekitError:
        pass  # no usable earlier build: make one
    return build(str(ckpt), target=target, quants=quants, out=out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--e2b-dir", type=Path, default=None)
    ap.add_argument("--ctx", default="2048,4096")
    ap.add_argument("-n", type=int, default=16)
    ap.add_argument("-r", type=int, default=1)
    ap.add_argument("--no-mlx", action="store_true")
    ap.add_argument("--no-gguf", action="store_true")
    lim = ap.add_mutually_exclusive_group()
    lim.add_argument("--no-limits", action="store_true", help="skip the unlimited-vs-cgroup table")
    lim.add_argument("--limits-only", action="store_true", help="only the unlimited-vs-cgroup table (ctx 2048)")
    ap.add_argument("--limit-mb", type=float, default=1500.0, help="the cgroup's limit (default: the pi5 budget)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    os.environ.setdefault("EDGEKIT_NO_PROGRESS", "1")

    from edgekit.bench import BenchOptions, bench
    from edgekit.errors import EngineMissingError
    from edgekit.formats import FORMATS
    from edgekit.results import PRINTERS
    from edgekit.targets import TARGETS

    from edgekit.recipes import RECIPES

    ckpt = ensure_e2b(args.e2b_dir)
    dist = CACHE / "bench-e2b"
    gguf_dir = ensure_build(ckpt, "pi5", GGUF_QUANTS, dist) if not args.no_gguf else None
    pi5 = TARGETS.get("pi5")
    # The reference: the same budget and threads, llama.cpp's own runtime defaults.
    stock = dataclasses.replace(pi5, name="pi5-stock", runtime=STOCK_RUNTIME)
    mlx_dir = None
    if not args.no_mlx:
        try:
            FORMATS.get("mlx").check(RECIPES.get("mlx-4bit"))   # MLX importable here?
            mlx_dir = ensure_build(ckpt, "m2", ["mlx-4bit"], dist)
        except EngineMissingError as e:
            print(f"skipping MLX: {e}", file=sys.stderr)
    if args.limits_only:
        if gguf_dir:
            limits_table(gguf_dir, args)
        return
    runs: list[tuple[Path, BenchOptions]] = []
    for ctx in (int(c) for c in args.ctx.split(",")):
        for a in sorted(gguf_dir.glob("*.gguf")) if gguf_dir else []:
            for tgt in ([stock, pi5] if "Q4_0" in a.name and "edge" not in a.name else [pi5]):
                # no cgroup here: this table is the unconstrained peak (stock Q4_0 peaks at 4.7 GB)
                runs.append((a, BenchOptions(n_prompt=ctx - args.n, n_gen=args.n, reps=args.r, ctx=ctx, target=tgt,
                                             limit=False)))
        if mlx_dir:
            for a in sorted(p for p in mlx_dir.iterdir() if p.is_dir()):
                runs.append((a, BenchOptions(n_prompt=4, n_gen=2, reps=1, ctx=ctx, target="m2",
                                             runtime={"kv_fill": str(ctx - 4)})))

    print("pi5 runtime: " + ", ".join(f"{k}={v}" for k, v in pi5.runtime.items()))
    print(f"host: {platform.machine()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}; "
          f"E2B shape-true random weights; -p ctx-{args.n} -n {args.n} (MLX: kv_fill ctx-4, -p 4 -n 2)")
    records = []
    for path, opts in runs:
        drop_caches()
        (rec,) = bench(path, opts)
        records.append(rec)
        print(f"measured {rec.artifact} ({rec.target}, ctx {rec.ctx}): peak RSS {mb(rec.peak_rss_bytes)} MB",
              file=sys.stderr, flush=True)
    print(PRINTERS["md"](records), end="")
    if gguf_dir and not args.no_limits:
        limits_table(gguf_dir, args)


def limits_table(gguf_dir: Path, args: argparse.Namespace, ctx: int = 2048) -> None:
    """Each pi5 artifact at ctx 2048, pi5 runtime: unlimited, then inside the cgroup, from a cold cache."""
    from edgekit.bench import BenchOptions, bench
    from edgekit.budget import gate_lines
    from edgekit.limits import memory_limit

    with memory_limit(int(args.limit_mb * 1e6)) as probe:
        how = probe.mechanism or f"NOT ENFORCED: {probe.reason}"
    print(f"\npi5 artifacts at ctx {ctx}, pi5 runtime, -p {ctx - args.n} -n {args.n} -r {args.r}: unlimited vs a "
          f"{args.limit_mb:,.0f} MB memory cgroup ({how}); 16 KB: the peak with the GGUF's mapped pages in 16 KB blocks")
    print("| artifact | run | peak RSS MB | cgroup peak MB | peak @16K MB | majflt prefill | majflt/token | tg t/s "
          "| tg ÷ unlimited | OOM | gate |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|")
    for a in sorted(gguf_dir.glob("*.gguf")):
        pair = []
        for limited in (False, True):
            drop_caches()
            opts = BenchOptions(n_prompt=ctx - args.n, n_gen=args.n, reps=args.r, ctx=ctx, target="pi5",
                                limit=limited, limit_bytes=int(args.limit_mb * 1e6) if limited else None)
            (rec,) = bench(a, opts)
            pair.append(rec)
            ratio = f"{rec.tg_tps / pair[0].tg_tps:.2f}" if limited and pair[0].tg_tps else "–"
            oom = "–" if rec.oom_killed is None else ("killed" if rec.oom_killed else "no")
            own = [line for line in gate_lines(pair) if not limited or line not in gate_lines(pair[:1])]
            gate = "; ".join(own) or "pass"
            majpp = "–" if rec.majflt_prefill is None else f"{rec.majflt_prefill:,.0f}"
            majtg = "–" if rec.majflt_per_token is None else f"{rec.majflt_per_token:.2f}"
            print(f"| {rec.artifact} | {'cgroup ' + mb(rec.limit_bytes) + ' MB' if limited else 'unlimited'} "
                  f"| {mb(rec.peak_rss_bytes)} | {mb(rec.cgroup_peak_bytes)} | {mb(rec.peak_16k_bytes)} | {majpp} "
                  f"| {majtg} | {rec.tg_tps:.2f} | {ratio} | {oom} | {gate} |", flush=True)


if __name__ == "__main__":
    main()
