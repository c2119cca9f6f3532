"""Projector precision: soft-token error and next-token KL of each projector type against the F16 one
(edgekit.eval.projector_precision), on one text GGUF (F32) and the same image and audio clip.

By default on a synthetic checkpoint with towers (random weights: the figures show each type's rounding
in *that* tower and cannot rank types for a trained one; docs/multimodal.md). ``--model DIR`` takes a
checkpoint with towers instead. Not timed; run it under the bench lock anyway on a shared host:

    flock /tmp/edgekit-bench.lock .venv/bin/python benchmarks/projector_precision.py --preset tiny
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def media(budget: int, seconds: float) -> list:
    from PIL import Image

    from edgekit.eval.projector_precision import Medium
    from edgekit.serve.media import Audio, prepare_image

    h, w = 300, 400
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:h, 0:w]
    arr = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) % 255], -1) + rng.normal(0, 20, (h, w, 3))
    img = prepare_image(Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)), budget)
    t = np.arange(int(16000 * seconds)) / 16000
    chirp = Audio((0.5 * np.sin(2 * np.pi * (200 + 300 * t) * t)).astype(np.float32), 16000)
    return [
        Medium(f"image {img.width}x{img.height}", "image", img),
        Medium(f"audio {seconds:g} s chirp", "audio", chirp),
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="tiny", help="synth preset with towers (tiny, mid, e2b)")
    ap.add_argument("--model", type=Path, help="a checkpoint with towers instead of a synthetic one")
    ap.add_argument("--types", default="F16,BF16,Q8_0", help="projector types; F16 is the reference")
    ap.add_argument("--image-tokens", type=int, default=70)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--engine",
        choices=("llama.cpp", "mlx"),
        default="llama.cpp",
        help="mlx: MLX builds (bf16 text), types F16,BF16,F32",
    )
    args = ap.parse_args()
    if args.engine == "mlx":
        return mlx_main(args)

    from edgekit.backends.gguf.convert import convert
    from edgekit.backends.gguf.mmproj import write_mmproj
    from edgekit.dev.synth import synth
    from edgekit.eval.projector_precision import compare_projectors, format_rows
    from edgekit.model.checkpoint import load_checkpoint

    types = [t.strip().upper() for t in args.types.split(",")]
    types = ["F16", *[t for t in types if t != "F16"]]
    with tempfile.TemporaryDirectory(prefix="projprec-") as tmp:
        work = Path(tmp)
        src = args.model or synth(work / f"{args.preset}-mm", preset=args.preset, seed=0, towers=True)
        ckpt = load_checkpoint(src)
        text = convert(ckpt, work / "text-F32.gguf", "F32")
        both = ("vision", "audio")
        projectors = {t: write_mmproj(ckpt, work / f"mmproj-{t}.gguf", both, dict.fromkeys(both, t)) for t in types}
        rows = compare_projectors(text, projectors, media(args.image_tokens, args.seconds), threads=args.threads)
    where = args.model or f"synth --preset {args.preset} --towers (random weights)"
    print(f"model: {where}; text F32, F32 K/V cache; reference: the F16 projector")
    print(format_rows(rows))
    return 0


def mlx_main(args) -> int:
    """The same rows for MLX builds: one bf16 text model, towers stored as each type (Q8_0 is refused on MLX)."""
    import dataclasses

    from edgekit.backends.mlx.convert import convert
    from edgekit.dev.synth import synth
    from edgekit.eval.projector_precision import compare_mlx_towers, format_rows
    from edgekit.model.checkpoint import load_checkpoint
    from edgekit.profiles.recipes import get_recipe

    types = [t.strip().upper() for t in args.types.split(",")]
    types = ["F16", *[t for t in types if t != "F16"]]
    recipe, both = get_recipe("mlx-bf16"), ("vision", "audio")
    with tempfile.TemporaryDirectory(prefix="projprec-mlx-") as tmp:
        work = Path(tmp)
        src = args.model or synth(work / f"{args.preset}-mm", preset=args.preset, seed=0, towers=True)
        ckpt = load_checkpoint(src)
        folders = {
            t: convert(
                ckpt, dataclasses.replace(recipe, name=f"mlx-{t}", towers=dict.fromkeys(both, t)), work / t, both
            )
            for t in types
        }
        rows = compare_mlx_towers(folders, media(args.image_tokens, args.seconds), args.image_tokens)
    where = args.model or f"synth --preset {args.preset} --towers (random weights)"
    print(f"model: {where}; MLX, bf16 text; reference: F16 towers")
    print(format_rows(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
