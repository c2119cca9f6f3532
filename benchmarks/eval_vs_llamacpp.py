"""edgekit eval's KL pass vs `llama-perplexity --kl-divergence` on the same files, text, context and threads.

Both tools score the trained tiny Gemma 4's Q4_0 GGUF against its F32 GGUF (the base), on eval's default
held-out text, ctx 512, every window, 2 threads, llama.cpp's default runtime (the files are copied out of
their dist folder, so no target knobs apply to edgekit either). Each side's time is its base pass plus
its KL pass, one after the other in this run. Printed: the time ratio (edgekit / llama.cpp) and the
mean-KL difference. Goal (issue 13): time ratio ≤ 1.1, mean KL equal to 1e-3.

    python benchmarks/eval_vs_llamacpp.py [--ctx 512] [--threads 2] [--chunks N]
"""

from __future__ import annotations

import argparse
import logging
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import llamacpp_tools  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edgekit.build import build  # noqa: E402
from edgekit.eval import EvalOptions, evaluate  # noqa: E402
from edgekit.eval.text import DEFAULT_TEXT  # noqa: E402

_KLD = re.compile(r"Mean\s+KLD:\s+([-\d.e+]+)\s+±\s+([-\d.e+]+)")
_SAME = re.compile(r"Same top p:\s+([\d.]+)\s+±")


def llama_perplexity(exe: Path, base: Path, model: Path, kld: Path, args: argparse.Namespace) -> tuple[float, float, float]:
    common = ["-f", str(DEFAULT_TEXT), "-c", str(args.ctx), "-t", str(args.threads), "-b", str(args.ctx)]
    if args.chunks:
        common += ["--chunks", str(args.chunks)]
    t0 = time.perf_counter()
    subprocess.run([str(exe), "-m", str(base), "--kl-divergence-base", str(kld), *common], check=True,
                   capture_output=True, text=True)
    out = subprocess.run([str(exe), "-m", str(model), "--kl-divergence-base", str(kld), "--kl-divergence", *common],
                         check=True, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    text = out.stdout + out.stderr
    m, s = _KLD.search(text), _SAME.search(text)
    if not m:
        raise SystemExit(f"llama-perplexity printed no mean KLD:\n{text[-2000:]}")
    return seconds, float(m.group(1)), float(s.group(1)) / 100 if s else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--chunks", type=int, default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO)
    exe = llamacpp_tools.tool("llama-perplexity")
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        dist = build(str(ROOT / "tests" / "data" / "tiny-trained"), target="pi5", quants=["f32", "q4_0"], out=t / "dist")
        base, model = (shutil.copy(dist / f"tiny-trained-{q}.gguf", t / f"{q}.gguf") for q in ("F32", "Q4_0"))
        l_s, l_kl, l_same = llama_perplexity(exe, Path(base), Path(model), t / "base.kld", args)
        t0 = time.perf_counter()
        (r,) = evaluate([Path(model)], EvalOptions(reference=str(base), ctx=args.ctx, chunks=args.chunks,
                                                   threads=args.threads, ref_cache=t / "ref.npz"))
        e_s = time.perf_counter() - t0
    print(f"| tool | seconds (base + KL pass) | mean KL | same top |\n|---|---:|---:|---:|\n"
          f"| llama-perplexity --kl-divergence | {l_s:.2f} | {l_kl:.6f} | {l_same:.4f} |\n"
          f"| edgekit eval | {e_s:.2f} | {r.kl_mean:.6f} | {r.same_top:.4f} |\n\n"
          f"time ratio (edgekit / llama.cpp): {e_s / l_s:.2f} (goal ≤ 1.1); mean KL difference: "
          f"{r.kl_mean - l_kl:+.2e} (goal |Δ| ≤ 1e-3); {r.tokens_scored} tokens scored, ctx {args.ctx}, "
          f"{args.threads} threads")
    return 0


if __name__ == "__main__":
    sys.exit(main())
