"""Peak memory of shape-true Gemma 4 E2B at MLX 4-bit: stock mlx-lm loading vs edgekit's PLE hook.

Each configuration runs in a fresh child process (so no allocation of one is seen by another), loads
the artifact, prefills a few tokens and decodes one (MLX's 4-bit matmul on an x86 CPU takes minutes
for a 64-token E2B forward, and activations at a few tokens are small next to the weights), and
reports: RSS after imports / after load, peak RSS (VmHWM) with its anonymous vs file-backed split,
``mx.get_active_memory()`` after load, ``mx.get_peak_memory()``, and the PLE file's resident pages.
The parent prints the artifact's size by tensor group and where the hooked process's memory goes.

    python benchmarks/e2b_mlx_memory.py [--model DIR] [--tokens 4] [--with-torch] [--artifact MLX_DIR]

Goal (issue 6): MLX 4-bit E2B peak RSS ≤ 1.5 GB (the m-series targets' memory_budget_gb).
torch is hidden from the children by default: edgekit[mlx] does not install it, but this dev venv
has it and transformers (imported by mlx-lm) would load it, adding ≈180 MB that a deployment lacks.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
GB = 1e9
MB = 1e6


def artifact(model: Path, out: Path, stock: bool = False) -> Path:
    """The mlx-4bit artifact of ``model`` (synthesised / built once, then reused if it verifies).

    ``stock``: every tensor at 4 bits, PLE included, i.e. what `mlx_lm.convert -q` writes (the
    streamed PLE file equals mlx's quantizer on the whole table: tests/test_mlx.py)."""
    import dataclasses

    from edgekit.builder.manifest import read_manifest, verify
    from edgekit.builder.pipeline import build, model_slug
    from edgekit.profiles.recipes import RECIPES

    recipe = "mlx-4bit"
    if stock:
        recipe = "mlx-4bit-uniform"
        if recipe not in RECIPES:
            RECIPES.register(recipe, dataclasses.replace(RECIPES.get("mlx-4bit"), name=recipe, overrides={}))
        out = out / "uniform"

    if not (model / "config.json").is_file():
        from edgekit.dev.synth import synth

        print(f"synthesising shape-true e2b into {model} (≈9.3 GB, a few minutes)", file=sys.stderr)
        synth(model, preset="e2b")
    folder = out / model_slug(model) / "m2"
    name = f"{model.name}-mlx-4bit-g64"
    try:
        if read_manifest(folder).artifact(name) and not verify(folder):
            return folder / name
    except Exception:
        pass
    t0 = time.perf_counter()
    folder = build(str(model), target="m2", quants=[recipe], out=out)
    print(f"built {name} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return folder / name


def groups(art: Path) -> dict[str, int]:
    """Bytes on disk by tensor group, from the safetensors headers."""
    from edgekit.core.errors import ArtifactError
    from edgekit.model.safetensors_io import read_tensors

    out: dict[str, int] = {}
    rules = [
        ("PLE table (embed_tokens_per_layer)", r"embed_tokens_per_layer\."),
        ("tied embedding / output head", r"model\.embed_tokens\."),
        ("PLE projection (per_layer_model_projection)", r"per_layer_model_projection"),
        ("attention", r"self_attn\.(q|k|v|o)_proj"),
        ("MLP", r"mlp\."),
        ("per-layer gate / projection", r"per_layer_(input_gate|projection)\."),
        ("norms, scalars", r"."),
    ]
    for f in sorted(art.glob("*.safetensors")):
        for name, ref in read_tensors(f, ArtifactError, fix="rebuild it").items():
            label = next(lbl for lbl, rx in rules if re.search(rx, name))
            out[label] = out.get(label, 0) + ref.nbytes
    return out


def child(art: Path, ple: str, tokenizer: bool, n_tokens: int) -> dict:
    from edgekit.measure.memory import PeakSampler, read_status

    s0 = read_status()
    import mlx.core as mx
    import numpy as np
    from mlx_lm.models.cache import make_prompt_cache

    from edgekit.backends.mlx.ple import PLE_FILE, load_mlx_model

    r: dict = {"rss_start": s0.rss, "rss_imports": read_status().rss}
    with PeakSampler() as sampler:
        t0 = time.perf_counter()
        if ple == "stock":
            import mlx_lm

            model, _ = mlx_lm.load(str(art))
        else:
            model, _ = load_mlx_model(art, ple=ple, tokenizer=tokenizer)
        r["load_s"] = time.perf_counter() - t0
        r["mx_active_model"] = mx.get_active_memory()
        r["mx_peak_load"] = mx.get_peak_memory()
        r["rss_loaded"] = read_status().rss
        r["peak_load"] = sampler.peak().peak_rss_bytes
        mx.reset_peak_memory()
        # random ids inside the artifact's vocabulary (a lean one has 65,536 rows)
        vocab = json.loads((art / "config.json").read_text())["text_config"]["vocab_size"]
        ids = [2, *np.random.default_rng(0).integers(1000, min(200_000, vocab), n_tokens - 1).tolist()]
        cache = make_prompt_cache(model)
        t0 = time.perf_counter()
        logits = model(mx.array([ids]), cache=cache)[:, -1, :]
        mx.eval(logits)
        nxt = mx.argmax(logits, axis=-1)
        logits = model(nxt[None], cache=cache)[:, -1, :]
        mx.eval(logits)
        r["forward_s"] = time.perf_counter() - t0
        r["mx_peak_forward"] = mx.get_peak_memory()
        r["mx_active_end"] = mx.get_active_memory()
        r["mx_cache_end"] = mx.get_cache_memory()
        r["kv_bytes"] = int(sum(c.nbytes for c in cache))
    peak = sampler.peak()
    r.update(peak_rss=peak.peak_rss_bytes, peak_anon=peak.peak_anon_bytes, peak_file=peak.peak_file_bytes)
    ple_rss = 0
    with open("/proc/self/smaps") as f:
        inside = False
        for line in f:
            if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
                inside = line.rstrip().endswith(PLE_FILE)
            elif inside and line.startswith("Rss:"):
                ple_rss += int(line.split()[1]) * 1024
    r["ple_file_rss"] = ple_rss
    emb = model.language_model.model.embed_tokens_per_layer
    r["ple_rows_read"] = getattr(emb, "rows_read", None)
    return r


def kv_at(art: Path, ctx: int) -> int:
    """Bytes of mlx-lm's gemma4 prompt cache after ``ctx`` tokens: KVCache grows to ctx (steps of
    256), RotatingKVCache stops at the sliding window; KV-shared layers keep none; bf16."""
    t = json.loads((art / "config.json").read_text())["text_config"]
    n = t["num_hidden_layers"] - t["num_kv_shared_layers"]
    total = 0
    for kind in t["layer_types"][:n]:
        full = kind == "full_attention"
        rows = -(-ctx // 256) * 256 if full else min(ctx, t["sliding_window"])
        total += 2 * rows * t["num_key_value_heads"] * (t["global_head_dim"] if full else t["head_dim"]) * 2
    return total


def run_child(art: Path, ple: str, tokenizer: bool, n_tokens: int, with_torch: bool) -> dict:
    code = (
        f"import sys, json; sys.path.insert(0, {str(ROOT)!r})\n"
        + ("" if with_torch else "sys.modules['torch'] = None  # as installed by edgekit[mlx]\n")
        + f"sys.path.insert(0, {str(Path(__file__).parent)!r}); import e2b_mlx_memory as b\n"
        + f"print(json.dumps(b.child(b.Path({str(art)!r}), {ple!r}, {tokenizer!r}, {n_tokens})))"
    )
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise SystemExit(f"child ({ple}) failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def only(art: Path, args: argparse.Namespace, budget: int) -> None:
    """One artifact, edgekit's loader (PLE on disk), with its tokenizer loaded and without."""
    sizes = groups(art)
    print(
        f"artifact {art.name}: {sum(sizes.values()) / GB:.2f} GB on disk; tokenizer.json "
        f"{(art / 'tokenizer.json').stat().st_size / MB:.1f} MB"
    )
    print(f"{args.tokens} prompt tokens + 1 decoded; {'with' if args.with_torch else 'without'} torch; MB = 1e6 bytes")
    print("| tokenizer | RSS load MB | peak RSS MB | anon MB | file MB | mx peak MB | PLE pages MB | peak ÷ budget |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for tok in (True, False):
        r = run_child(art, "disk", tok, args.tokens, args.with_torch)
        vals = [
            r["rss_loaded"],
            r["peak_rss"],
            r["peak_anon"],
            r["peak_file"],
            max(r["mx_peak_load"], r["mx_peak_forward"]),
            r["ple_file_rss"],
        ]
        print(
            f"| {'loaded' if tok else 'not loaded'} | "
            + " | ".join(f"{v / MB:,.0f}" for v in vals)
            + f" | {r['peak_rss'] / budget:.2f} |",
            flush=True,
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--model", type=Path, default=Path(os.environ.get("EDGEKIT_E2B", ROOT / ".cache/models/e2b-gemma4"))
    )
    ap.add_argument("--out", type=Path, default=ROOT / ".cache" / "dist")
    ap.add_argument("--tokens", type=int, default=4, help="prompt tokens (then one decoded token)")
    ap.add_argument("--with-torch", action="store_true", help="let transformers import torch in the children")
    ap.add_argument(
        "--artifact",
        type=Path,
        default=None,
        help="only this built MLX artifact folder (e.g. the lean one bench-e2b made), with and "
        "without its tokenizer; no stock comparison",
    )
    args = ap.parse_args()

    from edgekit.profiles.targets import TARGETS

    budget = TARGETS.get("m2").memory_budget_bytes
    if args.artifact:
        only(args.artifact, args, budget)
        return
    art = artifact(args.model, args.out)
    uniform = artifact(args.model, args.out, stock=True)
    for a in (uniform, art):
        sizes = groups(a)
        print(f"artifact {a.parent.parent.parent.name}/{a.name}: {sum(sizes.values()) / GB:.2f} GB on disk")
        for label, n in sorted(sizes.items(), key=lambda kv: -kv[1]):
            print(f"  {label:45s} {n / MB:9.1f} MB")

    configs = [
        ("stock: convert -q, mlx_lm.load", uniform, "stock", True),
        ("edgekit mlx-4bit, PLE on disk", art, "disk", True),
        ("edgekit mlx-4bit, PLE on disk, no tokenizer", art, "disk", False),
    ]
    rows = []
    for label, path, ple, tok in configs:
        print(f"running: {label} ...", file=sys.stderr)
        rows.append((label, run_child(path, ple, tok, args.tokens, args.with_torch)))

    print(
        f"\n{args.tokens} prompt tokens + 1 decoded; {'with' if args.with_torch else 'without'} torch; MB = 1e6 bytes"
    )
    cols = ["RSS load", "peak load", "peak RSS", "anon", "file", "mx model", "mx peak", "PLE pages", "fwd s"]
    print(f"{'':42s}" + "".join(f"{c:>10s}" for c in cols))
    for label, r in rows:
        vals = [
            r["rss_loaded"],
            r["peak_load"],
            r["peak_rss"],
            r["peak_anon"],
            r["peak_file"],
            r["mx_active_model"],
            max(r["mx_peak_load"], r["mx_peak_forward"]),
            r["ple_file_rss"],
        ]
        print(f"{label:42s}" + "".join(f"{v / MB:10.0f}" for v in vals) + f"{r['forward_s']:10.1f}")

    stock, hook, bare = (r for _, r in rows)
    print("\nwhere the hooked process's peak goes (MB):")
    parts = [
        ("python + numpy + mlx + mlx-lm/transformers imports", hook["rss_imports"]),
        ("weights resident in MLX (mx.get_active_memory after load)", hook["mx_active_model"]),
        ("tokenizer (transformers, 262k vocab; loaded first)", hook["rss_loaded"] - bare["rss_loaded"]),
        ("activations + KV cache (mx peak in forward − model)", hook["mx_peak_forward"] - hook["mx_active_model"]),
        ("PLE rows' file-backed pages", hook["ple_file_rss"]),
    ]
    for label, n in parts:
        print(f"  {label:60s} {n / MB:8.0f}")
    print(
        f"  {'other (allocator slack, libraries touched later)':60s} "
        f"{(hook['peak_rss'] - sum(n for _, n in parts)) / MB:8.0f}"
    )
    print(f"  {'= peak RSS':60s} {hook['peak_rss'] / MB:8.0f}")
    print(f"  KV cache after the run: {hook['kv_bytes'] / MB:.1f} MB; PLE rows read: {hook['ple_rows_read']}")

    print("\nratios (hooked / stock):")
    print(
        f"  peak RSS        {hook['peak_rss'] / stock['peak_rss']:.2f}  ({hook['peak_rss'] / GB:.2f} vs "
        f"{stock['peak_rss'] / GB:.2f} GB)"
    )
    hook_mx, stock_mx = (max(r["mx_peak_load"], r["mx_peak_forward"]) for r in (hook, stock))
    print(f"  mx peak memory  {hook_mx / stock_mx:.2f}")
    for (label, *_), r in zip(configs, rows, strict=True):
        r = r[1]
        verdict = "within" if r["peak_rss"] <= budget else "OVER"
        print(f"  {label:42s} peak RSS / budget {r['peak_rss'] / budget:.2f} ({verdict} {budget / GB:.1f} GB)")
    kv = kv_at(art, TARGETS.get("m2").context)
    print(
        f"\nKV cache at the target's context ({TARGETS.get('m2').context}), from the config and mlx-lm's "
        f"cache classes (not measured: a 2048-token 4-bit prefill takes hours on this CPU): {kv / MB:.1f} MB"
    )


if __name__ == "__main__":
    main()
