"""Re-measure the pi5 recipe choices with `edgekit eval` on the trained tiny Gemma 4 (tests/data/tiny-trained).

Each variant is iq4_xs-edge (quant/iq4_xs-edge.toml) with one choice changed, or a stock recipe; all run
with targets/pi5.toml's runtime (Q8_0 KV cache, flash attention, ubatch 64) unless the row changes the
cache, against transformers' fp32 Gemma 4 on the same checkpoint, over eval's default held-out text at
ctx 512 (every window). Tiny-model runs: a test-sized measurement, not a benchmark.

    PYTHONPATH=. python scripts/remeasure_recipes.py [--out DIR] [--chunks N]
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edgekit.builder.pipeline import build  # noqa: E402
from edgekit.eval import EvalOptions, evaluate  # noqa: E402
from edgekit.profiles.recipes import RECIPES  # noqa: E402
from edgekit.results.quality import to_markdown  # noqa: E402

HEAD, PLE = "^token_embd\\.weight$", "^per_layer_token_embd\\.weight$"


def variants() -> dict[str, tuple[object, dict]]:
    edge = RECIPES.get("iq4_xs-edge")
    out: dict[str, tuple[object, dict]] = {}

    def v(name: str, **over: str) -> None:
        r = dataclasses.replace(edge, name=name, quant=name, overrides={**edge.overrides, **over})
        RECIPES.register(name, r)
        out[name] = (r, {})

    for t in ("q6_k", "q5_k", "q4_k"):
        v(f"edge-head-{t}", **{HEAD: t})
    for t in ("q8_0", "q6_k", "q5_k", "q4_k"):
        v(f"edge-ple-{t}", **{PLE: t})
    for name in ("q4_0", "q4_k_m", "q8_0", "f16"):
        out[name] = (RECIPES.get(name), {})
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=ROOT / ".cache" / "remeasure")
    ap.add_argument("--chunks", type=int, default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    ckpt = ROOT / "tests" / "data" / "tiny-trained"
    vs = variants()
    folder = build(str(ckpt), target="pi5", quants=["iq4_xs-edge", *vs], out=args.out)
    files = {
        a.file: a
        for a in __import__("edgekit.builder.manifest", fromlist=["read_manifest"]).read_manifest(folder).artifacts
    }
    ref_cache = args.out / "ref-hf.npz"
    base = dict(reference=str(ckpt), chunks=args.chunks, threads=2, ref_cache=ref_cache, target="pi5")
    recs = evaluate([folder / f for f in files], EvalOptions(**base))
    edge = folder / next(f for f, a in files.items() if a.recipe == "iq4_xs-edge")
    for kv in ("f32", "f16", "q4_0"):
        (r,) = evaluate([edge], EvalOptions(**base, runtime={"kv_type": kv}))
        r.artifact, r.quant = f"{r.artifact} (KV {kv})", f"{r.quant} KV {kv}"
        recs.append(r)
    sys.stdout.write(to_markdown(recs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
