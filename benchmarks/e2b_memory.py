"""Shape-true Gemma 4 E2B at 4-bit: peak RAM per artifact and runtime, with where the memory goes.

    python benchmarks/e2b_memory.py [--e2b-dir DIR] [--ctx 2048,4096] [-n 16] [-r 1] [--vocab N] [--no-lean]
                                    [--no-limits | --limits-only [--match TEXT] [--extra-dir DIR]]

Synthesizes E2B once (random weights: memory and speed do not depend on values; its tokenizer has
Gemma 4's 262144 pieces and 514,906 merges, which llama.cpp holds in memory; cached under
.cache/models), builds the pi5 artifacts (Q4_0, Q4_K_M and the recommended iq4_xs-edge) and the
MLX 4-bit artifact, then benches each in a fresh process with `edgekit.measure.bench` at each context:
llama.cpp once with its stock runtime (mmap, lazy "auto", repack on, ubatch 512) as the reference
and once with targets/pi5.toml's runtime. The prompt fills the context (ctx - n tokens), so the
per-layer-embedding rows of a full context are read and counted. Prints the records with edgekit's
own markdown printer (the target column names the runtime: pi5-stock is llama.cpp's defaults); every
figure is measured in this run on this host, each from a cold page cache.

MLX's 4-bit matmul runs at ≈20 s per E2B token on an x86 CPU, so an MLX row runs 4 prompt tokens
and 2 decoded after the runner's kv_fill knob has put ctx - 4 positions of stand-in keys/values in
every cache: the cache of a full context and attention over it, without its prefill (the prefill's
own activations are not in that figure).

Then the budget proven as a device would (edgekit.measure.limits, edgekit.measure.pages): each pi5 artifact at ctx
2048 with the pi5 runtime, unlimited and inside a 1.5 GB memory cgroup (v2 memory.max or v1
memory.limit_in_bytes, whichever enforces here), alternating, each from a cold page cache: peak RSS,
the cgroup's peak (page cache charged to the run included), major faults per decoded token, tg t/s
and its ratio to the unlimited run, whether the kernel OOM-killed the child, and the peak with the
GGUF's mapped pages counted in 16 KB blocks (the Pi 5 kernel's page size). Goal: the recommended build
runs in the cgroup with tg ≥ 0.95 × unlimited, no OOM, and its 16 KB-page peak under 1.5 GB.

Lean rows (README "Lean vocabulary"): iq4_xs-edge-lean (pi5 runtime, and targets/pi5-lean.toml's: an
F16 cache and n_ubatch 512, the prefill speed its headroom buys back) and mlx-4bit-lean, the same
recipes with a 65,536-token vocabulary (``--vocab N`` for another size), built from the same
checkpoint into their own folder. The shape-true tokenizer has no real text statistics: the kept ids
are its must-keep set, the default corpus's tokens, then its private-use filler pieces in id order
(edgekit/vocab's fill rule). After the main table, one line per lean artifact gives where its bytes
go (embedding tables and the rest), and a second table gives lean ÷ full decode t/s and the peak RSS
saved, each pair measured in this run; the cgroup table runs the lean pi5 build too, with each runtime.
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
# lean recipe -> the full recipe it is compared with
LEAN_GGUF = {"iq4_xs-edge-lean": "iq4_xs-edge"}
LEAN_MLX = {"mlx-4bit-lean": "mlx-4bit"}
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
        subprocess.run(
            [sys.executable, "-m", "edgekit.cli", "synth", "--preset", "e2b", "--out", str(path)], check=True
        )
    return path


def ensure_build(ckpt: Path, target: str, quants: list[str], out: Path, vocab: int | None = None) -> Path:
    from edgekit.builder.manifest import read_manifest, verify
    from edgekit.builder.pipeline import build, model_slug
    from edgekit.builder.vocab import effective_vocab
    from edgekit.core.errors import EdgekitError
    from edgekit.profiles.recipes import RECIPES

    folder = out / model_slug(ckpt) / target
    try:
        m = read_manifest(folder)
        # names alone miss edited recipes (or another --vocab)
        same = {r.name: r.to_json() for r in effective_vocab([RECIPES.get(q) for q in quants], vocab)} == m.recipes
        if same and sorted(a.recipe for a in m.artifacts) == sorted(quants) and not verify(folder, m):
            return folder
    except EdgekitError:
        pass  # no usable earlier build: make one
    return build(str(ckpt), target=target, quants=quants, out=out, vocab=vocab)


def breakdown(folder: Path) -> list[str]:
    """Where each artifact's bytes go: the token-indexed tables (what a lean vocabulary shrinks) and the rest."""
    from edgekit.backends.gguf.header import read_gguf_header
    from edgekit.builder.manifest import read_manifest
    from edgekit.model.safetensors_io import read_header

    lines = []
    for a in read_manifest(folder).artifacts:
        path = folder / a.file
        v = a.extra.get("vocab") or {}
        vocab = f"{v['size']:,} tokens, {v['merges']:,} merges" if v else "full vocabulary"
        if a.format == "gguf":
            t = read_gguf_header(path).tensors
            head, ple = t["token_embd.weight"], t["per_layer_token_embd.weight"]
            rest = sum(x.n_bytes for x in t.values()) - head.n_bytes - ple.n_bytes
            lines.append(
                f"{a.file}: {vocab}; token_embd (tied head) {head.type.name} {mib(head.n_bytes)}, "
                f"per_layer_token_embd {ple.type.name} {mib(ple.n_bytes)}, other tensors {mib(rest)}"
            )
        else:
            sizes = {}
            for f in path.glob("*.safetensors"):
                header, _, _ = read_header(f)
                for name, info in header.items():
                    key = "ple" if "embed_tokens_per_layer" in name else "embed" if "embed_tokens" in name else "rest"
                    sizes[key] = sizes.get(key, 0) + info["data_offsets"][1] - info["data_offsets"][0]
            tok = (path / "tokenizer.json").stat().st_size
            lines.append(
                f"{a.file}: {vocab}; embed_tokens (tied head) {mib(sizes.get('embed', 0))}, PLE file "
                f"{mib(sizes.get('ple', 0))}, other weights {mib(sizes.get('rest', 0))}, tokenizer.json {mib(tok)}"
            )
    return lines


def mib(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--e2b-dir", type=Path, default=None)
    ap.add_argument("--ctx", default="2048,4096")
    ap.add_argument("-n", type=int, default=16)
    ap.add_argument("-r", type=int, default=1)
    ap.add_argument("--no-mlx", action="store_true")
    ap.add_argument("--no-gguf", action="store_true")
    ap.add_argument("--no-lean", action="store_true", help="skip the lean-vocabulary rows")
    ap.add_argument(
        "--vocab", type=int, default=None, help="the lean rows' vocabulary (default: the lean recipes', 65536)"
    )
    lim = ap.add_mutually_exclusive_group()
    lim.add_argument("--no-limits", action="store_true", help="skip the unlimited-vs-cgroup table")
    lim.add_argument("--limits-only", action="store_true", help="only the unlimited-vs-cgroup table (ctx 2048)")
    ap.add_argument("--limit-mb", type=float, default=1500.0, help="the cgroup's limit (default: the pi5 budget)")
    ap.add_argument("--match", default="", help="limits table: only the GGUFs whose name contains this")
    ap.add_argument(
        "--extra-dir",
        type=Path,
        action="append",
        default=[],
        help="limits table: also the GGUFs of this built folder (e.g. a recipe being tried)",
    )
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    os.environ.setdefault("EDGEKIT_NO_PROGRESS", "1")

    from edgekit.backends.formats import FORMATS
    from edgekit.core.errors import EngineMissingError
    from edgekit.measure.bench import BenchOptions, bench
    from edgekit.profiles.recipes import RECIPES
    from edgekit.profiles.targets import TARGETS
    from edgekit.results import PRINTERS

    ckpt = ensure_e2b(args.e2b_dir)
    dist = CACHE / "bench-e2b"
    gguf_dir = ensure_build(ckpt, "pi5", GGUF_QUANTS, dist) if not args.no_gguf else None
    pi5 = TARGETS.get("pi5")
    # The reference: the same budget and threads, llama.cpp's own runtime defaults.
    stock = dataclasses.replace(pi5, name="pi5-stock", runtime=STOCK_RUNTIME)
    # targets/pi5-lean.toml: the lean build with the prefill knobs its headroom affords
    pi5_lean = TARGETS.get("pi5-lean") if "pi5-lean" in TARGETS else None
    mlx_dir = lean_mlx = None
    lean_dist = CACHE / "bench-e2b-lean"
    lean_gguf = (
        ensure_build(ckpt, "pi5", list(LEAN_GGUF), lean_dist, args.vocab)
        if not (args.no_lean or args.no_gguf)
        else None
    )
    if not args.no_mlx:
        try:
            FORMATS.get("mlx").check(RECIPES.get("mlx-4bit"))  # MLX importable here?
            mlx_dir = ensure_build(ckpt, "m2", ["mlx-4bit"], dist)
            lean_mlx = ensure_build(ckpt, "m2", list(LEAN_MLX), lean_dist, args.vocab) if not args.no_lean else None
        except EngineMissingError as e:
            print(f"skipping MLX: {e}", file=sys.stderr)
    if args.limits_only:
        for folder in (gguf_dir, lean_gguf, *args.extra_dir):
            if folder:
                limits_table(folder, args)
        if lean_gguf and pi5_lean:
            limits_table(lean_gguf, args, pi5_lean.name)
        return
    runs: list[tuple[Path, BenchOptions]] = []
    for ctx in (int(c) for c in args.ctx.split(",")):
        for folder in (gguf_dir, lean_gguf):
            for a in sorted(folder.glob("*.gguf")) if folder else []:
                tgts = [stock, pi5] if "Q4_0" in a.name and "edge" not in a.name else [pi5]
                for tgt in tgts + ([pi5_lean] if folder == lean_gguf and pi5_lean else []):
                    # no cgroup here: this table is the unconstrained peak (stock Q4_0 peaks at 4.7 GB)
                    runs.append(
                        (
                            a,
                            BenchOptions(
                                n_prompt=ctx - args.n, n_gen=args.n, reps=args.r, ctx=ctx, target=tgt, limit=False
                            ),
                        )
                    )
        for folder in (mlx_dir, lean_mlx):
            for a in sorted(p for p in folder.iterdir() if p.is_dir()) if folder else []:
                runs.append(
                    (
                        a,
                        BenchOptions(
                            n_prompt=4, n_gen=2, reps=1, ctx=ctx, target="m2", runtime={"kv_fill": str(ctx - 4)}
                        ),
                    )
                )

    print("pi5 runtime: " + ", ".join(f"{k}={v}" for k, v in pi5.runtime.items()))
    print(
        f"host: {platform.machine()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}; "
        f"E2B shape-true random weights; -p ctx-{args.n} -n {args.n} (MLX: kv_fill ctx-4, -p 4 -n 2)"
    )
    records, recs = [], {}
    for path, opts in runs:
        drop_caches()
        (rec,) = bench(path, opts)
        records.append(rec)
        recs[(path, rec.target, rec.ctx)] = rec
        print(
            f"measured {rec.artifact} ({rec.target}, ctx {rec.ctx}): peak RSS {mb(rec.peak_rss_bytes)} MB",
            file=sys.stderr,
            flush=True,
        )
    print(PRINTERS["md"](records), end="")
    if lean_gguf or lean_mlx:
        lean_vs_full(recs, [(gguf_dir, lean_gguf, LEAN_GGUF), (mlx_dir, lean_mlx, LEAN_MLX)])
    for folder in (gguf_dir, lean_gguf):
        if folder and not args.no_limits:
            limits_table(folder, args)
    if lean_gguf and pi5_lean and not args.no_limits:
        limits_table(lean_gguf, args, pi5_lean.name)


def lean_vs_full(recs: dict, pairs: list) -> None:
    """Where the lean artifacts' bytes go, then lean vs full from the runs above (same run, same host)."""
    from edgekit.builder.manifest import read_manifest

    print()
    for full_dir, lean_dir, _ in pairs:
        for folder in (full_dir, lean_dir):
            for line in breakdown(folder) if folder else []:
                print(f"- {line}")
    print()
    print(
        "| lean artifact | vs | runtime | ctx | full peak RSS MB | lean peak RSS MB | saved MB | full tg t/s "
        "| lean tg t/s | lean ÷ full tg |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for full_dir, lean_dir, names in pairs:
        if not (full_dir and lean_dir):
            continue
        full_by = {a.recipe: full_dir / a.file for a in read_manifest(full_dir).artifacts}
        for a in read_manifest(lean_dir).artifacts:
            full_path = full_by.get(names.get(a.recipe, ""))
            for (path, tgt, ctx), lean in recs.items():
                full = recs.get((full_path, tgt, ctx))
                if path != lean_dir / a.file or full is None:
                    continue
                print(
                    f"| {lean.artifact} | {full.artifact} | {tgt} | {ctx} | {mb(full.peak_rss_bytes)} "
                    f"| {mb(lean.peak_rss_bytes)} | {mb(full.peak_rss_bytes - lean.peak_rss_bytes)} "
                    f"| {full.tg_tps:.2f} | {lean.tg_tps:.2f} | {lean.tg_tps / full.tg_tps:.2f} |",
                    flush=True,
                )


def limits_table(
    gguf_dir: Path, args: argparse.Namespace, target: str = "pi5", ctx: int = 2048, unlimited: bool = True
) -> None:
    """Each pi5 artifact at ctx 2048, ``target``'s runtime: unlimited, then inside the cgroup, from a cold cache
    (``unlimited=False``: the cgroup run alone, which is what the budget is judged on)."""
    from edgekit.measure.bench import BenchOptions, bench
    from edgekit.measure.budget import gate_lines
    from edgekit.measure.limits import memory_limit

    with memory_limit(int(args.limit_mb * 1e6)) as probe:
        how = probe.mechanism or f"NOT ENFORCED: {probe.reason}"
    print(
        f"\npi5 artifacts at ctx {ctx}, {target} runtime, -p {ctx - args.n} -n {args.n} -r {args.r}: unlimited vs a "
        f"{args.limit_mb:,.0f} MB memory cgroup ({how}); 16 KB: the peak with the GGUF's mapped pages in 16 KB blocks"
    )
    print(
        "| artifact | run | peak RSS MB | cgroup peak MB | peak @16K MB | majflt prefill | majflt/token | tg t/s "
        "| tg ÷ unlimited | OOM | gate |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|")
    for a in sorted(p for p in gguf_dir.glob("*.gguf") if args.match in p.name):
        pair = []
        for limited in (False, True) if unlimited else (True,):
            drop_caches()
            opts = BenchOptions(
                n_prompt=ctx - args.n,
                n_gen=args.n,
                reps=args.r,
                ctx=ctx,
                target=target,
                limit=limited,
                limit_bytes=int(args.limit_mb * 1e6) if limited else None,
            )
            (rec,) = bench(a, opts)
            pair.append(rec)
            ratio = f"{rec.tg_tps / pair[0].tg_tps:.2f}" if limited and len(pair) == 2 and pair[0].tg_tps else "–"
            oom = "–" if rec.oom_killed is None else ("killed" if rec.oom_killed else "no")
            own = [line for line in gate_lines(pair) if len(pair) == 1 or line not in gate_lines(pair[:1])]
            gate = "; ".join(own) or "pass"
            majpp = "–" if rec.majflt_prefill is None else f"{rec.majflt_prefill:,.0f}"
            majtg = "–" if rec.majflt_per_token is None else f"{rec.majflt_per_token:.2f}"
            print(
                f"| {rec.artifact} | {'cgroup ' + mb(rec.limit_bytes) + ' MB' if limited else 'unlimited'} "
                f"| {mb(rec.peak_rss_bytes)} | {mb(rec.cgroup_peak_bytes)} | {mb(rec.peak_16k_bytes)} | {majpp} "
                f"| {majtg} | {rec.tg_tps:.2f} | {ratio} | {oom} | {gate} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
