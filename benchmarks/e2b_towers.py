"""Shape-true Gemma 4 E2B towers: projector MB per tower and type, the memory they take, and encode time.

    python benchmarks/e2b_towers.py --text TEXT.gguf [--types F16,BF16,Q8_0] [-r 2] [--out DIR]

Synthesizes E2B with towers once (``edgekit synth --preset e2b --towers``, random weights; ≈9.6 GB in
.cache/models/e2b-gemma4-towers, shared with other benchmarks), writes one projector per tower and type
(vision alone, audio alone) with edgekit's writer, then runs ``edgekit bench`` (edgekit.measure.bench,
towers resident) with each projector beside TEXT: a 768x768 image at 280 tokens (256 soft tokens) for
vision, 10 s of audio (250 soft tokens) for audio. Per row: file MB, the anonymous memory mtmd takes at
load and with its compute buffers after an encode (edgekit.measure.media's split), encode time (mean
over -r), and encode time as a ratio to the F16 projector of the same tower measured in this run.
The tower figures do not depend on TEXT's quantization (mtmd reads only its width and vocabulary).
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache"
TOWERS_CKPT = CACHE / "models" / "e2b-gemma4-towers"


def ensure_ckpt(path: Path) -> Path:
    if not (path / "config.json").is_file():
        cmd = [sys.executable, "-m", "edgekit.cli", "synth", "--preset", "e2b", "--towers", "--out", str(path)]
        subprocess.run(cmd, check=True)
    return path


def ensure_projector(ckpt: Path, out_dir: Path, modality: str, qtype: str) -> Path:
    from edgekit.backends.gguf.mmproj import write_mmproj
    from edgekit.model.checkpoint import load_checkpoint

    out = out_dir / f"e2b-mmproj-{modality}-{qtype}.gguf"
    if not out.is_file():
        write_mmproj(load_checkpoint(ckpt), out, (modality,), {modality: qtype}, name="e2b-towers")
    return out


def media(out_dir: Path) -> dict[str, Path]:
    import numpy as np
    import soundfile as sf
    from PIL import Image

    img, wav = out_dir / "photo-768.png", out_dir / "speech-10s.wav"
    rng = np.random.default_rng(0)
    if not img.is_file():
        Image.fromarray(rng.integers(0, 255, (768, 768, 3), dtype=np.uint8)).save(img)
    if not wav.is_file():
        t = np.arange(16000 * 10) / 16000
        sf.write(wav, (0.3 * np.sin(2 * np.pi * 220 * t * (1 + t / 5)) + 0.02 * rng.standard_normal(len(t))), 16000)
    return {"vision": img, "audio": wav}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--text", type=Path, required=True, help="an E2B text GGUF (any quant)")
    ap.add_argument("--ckpt", type=Path, default=TOWERS_CKPT)
    ap.add_argument("--types", default="F16,BF16,Q8_0")
    ap.add_argument("--modalities", default="vision,audio")
    ap.add_argument("-r", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=CACHE / "mmbench-e2b" / "towers")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    os.environ.setdefault("EDGEKIT_NO_PROGRESS", "1")
    from edgekit.backends.gguf.header import read_gguf_header
    from edgekit.measure.bench import BenchOptions, bench
    from edgekit.measure.media import describe

    ckpt = ensure_ckpt(args.ckpt)
    args.out.mkdir(parents=True, exist_ok=True)
    files = media(args.out)
    rows, f16 = [], {}
    for m in args.modalities.split(","):
        spec = describe([files["vision"]], [], [280]) if m == "vision" else describe([], [files["audio"]], [])
        for t in args.types.split(","):
            proj = ensure_projector(ckpt, args.out, m, t)
            opts = BenchOptions(
                n_prompt=16,
                n_gen=4,
                reps=args.r,
                threads=args.threads,
                ctx=2048,
                target="pi5",
                roofline=False,
                runtime={"towers": "resident"},
                media=spec,
                mmproj=proj,
                limit=False,
            )
            rec = bench(args.text, opts)[0]
            hdr = read_gguf_header(proj)
            f32 = sum(x.n_bytes for x in hdr.tensors.values() if x.type.name == "F32")
            if t == "F16":
                f16[m] = rec.encode_ms
            rows.append((m, t, proj.stat().st_size, f32, rec))
            print(f"{m} {t}: encode {rec.encode_ms:,.0f} ms, towers {rec.towers_bytes / 1e6:,.0f} MB", flush=True)
    print()
    print("| tower | type | file MB | of it F32 MB | at load MB | with compute MB | soft tokens | encode ms | vs F16 |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for m, t, size, f32, r in rows:
        ratio = f"{r.encode_ms / f16[m]:.2f}x" if m in f16 else "–"
        print(
            f"| {m} | {t} | {size / 1e6:,.1f} | {f32 / 1e6:,.1f} | {r.extra['towers']['load_bytes'] / 1e6:,.0f} | "
            f"{r.towers_bytes / 1e6:,.0f} | {r.media_tokens} | {r.encode_ms:,.0f} ± {r.encode_ms_sd:,.0f} | {ratio} |"
        )
    print(f"\nencode: mean ± sd over {args.r} reps after a warm-up, {args.threads} threads, this host (shared: rough)")


if __name__ == "__main__":
    main()
