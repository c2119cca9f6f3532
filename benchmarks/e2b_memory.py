"""Shape-true Gemma 4 E2B at 4-bit: peak RAM per artifact and runtime, with where the memory goes.

    python benchmarks/e2b_memory.py [--e2b-dir DIR] [--ctx 2048,4096] [-n 16] [-r 1]

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
    runs: list[tuple[Path, BenchOptions]] = []
    for ctx in (int(c) for c in args.ctx.split(",")):
        for a in sorted(gguf_dir.glob("*.gguf")) if gguf_dir else []:
            for tgt in ([stock, pi5] if "Q4_0" in a.name and "edge" not in a.name else [pi5]):
                runs.append((a, BenchOptions(n_prompt=ctx - args.n, n_gen=args.n, reps=args.r, ctx=ctx, target=tgt)))
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


if __name__ == "__main__":
    main()
