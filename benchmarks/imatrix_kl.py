"""KL with and without the importance matrix, per llama.cpp type, on the trained tiny Gemma 4.

Builds tests/data/tiny-trained at each type twice — plain, and with the matrix computed over the
shipped calibration text (`edgekit build --calibrate builtin`; here computed once and passed with
--imatrix, the reuse path) — and scores every artifact with `edgekit eval` against transformers' fp32
model over eval's held-out text (ctx 512, every window, pi5 runtime). Types at <= 3 bits that llama.cpp
only writes with a matrix have no "without" row.

    flock /tmp/edgekit-bench.lock python benchmarks/imatrix_kl.py [--out DIR] [--chunks N]

The fixture's vocabulary is 1,024 tokens: the tied head is small beside the layers, so these rows
rank what the matrix does to the layers, not to a 262,144-token head (docs/quality.md).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edgekit.build import build  # noqa: E402
from edgekit.calibration import DEFAULT_TEXT  # noqa: E402
from edgekit.eval import EvalOptions, evaluate  # noqa: E402
from edgekit.manifest import read_manifest  # noqa: E402

PLAIN = ["q4_0", "q4_k_m", "iq4_xs-edge", "q3_k_m", "q2_k"]
CALIBRATED = PLAIN + ["iq3_xxs", "iq2_xs"]


def matrix(model: Path, out: Path, threads: int) -> Path:
    """The matrix over the shipped text, on the model's lossless intermediate (what the build computes)."""
    from edgekit.checkpoint import load_checkpoint
    from edgekit.dtypes import lossless
    from edgekit.formats.gguf.calibrate import calibrate
    from edgekit.formats.gguf.convert import convert

    path = out / "tiny-trained.imatrix.gguf"
    if not path.is_file():
        ck = load_checkpoint(str(model))
        dtype = lossless(ck.source_dtypes())
        src = out / f"intermediate-{dtype}.gguf"
        convert(ck, src, dtype, name=ck.name)
        r = calibrate(src, DEFAULT_TEXT, path, dataset=DEFAULT_TEXT.name, threads=threads)
        src.unlink()
        print(f"matrix: {r.entries} weights, {r.chunks} chunks of 512 ({r.tokens} tokens of {DEFAULT_TEXT.name})", file=sys.stderr)
    return path


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=ROOT / ".cache" / "imatrix-kl")
    ap.add_argument("--model", type=Path, default=ROOT / "tests" / "data" / "tiny-trained")
    ap.add_argument("--chunks", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1, help="calibration and eval threads (1 on a shared host)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    args.out.mkdir(parents=True, exist_ok=True)
    im = matrix(args.model, args.out, args.threads)
    plain = build(str(args.model), target="pi5", quants=PLAIN, out=args.out / "plain")
    cal = build(str(args.model), target="pi5", quants=CALIBRATED, out=args.out / "imatrix", imatrix=im)
    opts = EvalOptions(reference=str(args.model), chunks=args.chunks, threads=args.threads,
                       ref_cache=args.out / "ref-hf.npz", target="pi5")
    rows: dict[str, dict[str, object]] = {}
    for tag, folder in (("plain", plain), ("imatrix", cal)):
        m = read_manifest(folder)
        recs = evaluate([folder / a.file for a in m.artifacts], opts)
        for a, r in zip(m.artifacts, recs):
            rows.setdefault(a.recipe, {})[tag] = r
    print(f"| type | MB | KL without | KL with [95%] | with/without | same top without | with |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in CALIBRATED:
        p, c = rows[name].get("plain"), rows[name]["imatrix"]
        kl = lambda r: f"{r.kl_mean:.5f}" if r else "refused"   # noqa: E731
        ratio = f"{c.kl_mean / p.kl_mean:.2f}" if p else "-"
        top = lambda r: f"{100 * r.same_top:.1f}%" if r else "-"   # noqa: E731
        print(f"| {name} | {c.file_bytes / 1e6:.2f} | {kl(p)} | {c.kl_mean:.5f} [{c.kl_lo:.5f}-{c.kl_hi:.5f}] | {ratio} "
              f"| {top(p)} | {top(c)} |")
    any_rec = next(iter(rows.values()))["imatrix"]
    print(f"\n{any_rec.tokens_scored} tokens scored, {any_rec.chunks} windows of {any_rec.ctx}, text {any_rec.text}, "
          f"runtime {any_rec.runtime}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
