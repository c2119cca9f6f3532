"""Encode time: edgekit's projector path (llama-cpp-python's mtmd, edgekit.backends.mtmd) vs llama.cpp's own
llama-mtmd-cli, built from the same vendored sources, on the same files (goal: ≤ 1.0× its time).

Both load the same text GGUF and the same mmproj (edgekit's), and encode the same prepared image
(sized for the budget with edgekit.serve.media, so neither engine rescales it) and the same audio clip.
llama-mtmd-cli's time is what it logs ("mtmd batch encoding done in N ms"); edgekit's is the same call
(mtmd_encode_chunk) timed in-process. Run it under the bench lock on a shared host:

    flock /tmp/edgekit-bench.lock .venv/bin/python benchmarks/mtmd_vs_llamacpp.py --preset tiny
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import llamacpp_tools  # noqa: E402


def _inputs(work: Path, preset: str, budget: int, seconds: float) -> tuple[Path, Path, Path, Path]:
    import soundfile as sf
    from PIL import Image

    from edgekit.backends.gguf.convert import convert
    from edgekit.backends.gguf.mmproj import write_mmproj
    from edgekit.dev.synth import synth
    from edgekit.model.checkpoint import load_checkpoint
    from edgekit.serve.media import image_size_for_budget

    ckpt = load_checkpoint(synth(work / f"{preset}-mm", preset=preset, seed=0, towers=True))
    text = convert(ckpt, work / "text-F16.gguf", "F16")
    proj = write_mmproj(ckpt, work / "mmproj-F16.gguf", ("vision", "audio"), {"vision": "F16", "audio": "F16"})
    h, w = image_size_for_budget(768, 768, budget)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(work / "image.png")
    t = np.arange(int(16000 * seconds)) / 16000
    sf.write(work / "audio.wav", (0.5 * np.sin(2 * np.pi * (200 + 300 * t) * t)).astype(np.float32), 16000)
    return text, proj, work / "image.png", work / "audio.wav"


def ours(
    text: Path, proj: Path, image: Path, audio: Path, budget: int, reps: int, threads: int
) -> dict[str, list[float]]:
    import llama_cpp

    from edgekit.backends.mtmd import Projector
    from edgekit.serve.media import open_audio, open_image

    llm = llama_cpp.Llama(str(text), n_ctx=2048, n_threads=threads, verbose=False)
    img, clip = open_image(image), open_audio(audio)
    out: dict[str, list[float]] = {"image": [], "audio": []}
    with Projector(llm, proj, text, threads=threads, image_budget=budget) as p:
        for _ in range(reps):
            out["image"].append(p.encode_image(img).seconds * 1e3)
            out["audio"].append(p.encode_audio(clip).seconds * 1e3)
    return out


def theirs(text: Path, proj: Path, media: Path, kind: str, budget: int, reps: int, threads: int) -> list[float]:
    cli = llamacpp_tools.tool("llama-mtmd-cli")
    times = []
    for _ in range(reps):
        r = subprocess.run(
            [
                str(cli),
                "-m",
                str(text),
                "--mmproj",
                str(proj),
                f"--{kind}",
                str(media),
                "-p",
                "hi",
                "-n",
                "1",
                "-t",
                str(threads),
                "--image-min-tokens",
                "1",
                "--image-max-tokens",
                str(budget),
                "--temp",
                "0",
                "--no-warmup",
                "--jinja",
            ],  # our template is jinja-only
            capture_output=True,
            text=True,
            env=llamacpp_tools.tool_env(),
        )
        m = re.search(r"(?:slice encoded|batch encoding done) in (\d+) ms", r.stdout + r.stderr)
        if r.returncode != 0 or not m:
            raise SystemExit(f"llama-mtmd-cli failed ({r.returncode}): {(r.stderr or r.stdout)[-400:]}")
        times.append(float(m.group(1)))
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny", choices=("tiny", "mid", "e2b"))
    ap.add_argument("--image-tokens", type=int, default=280)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        text, proj, image, audio = _inputs(Path(tmp), args.preset, args.image_tokens, args.seconds)
        mine = ours(text, proj, image, audio, args.image_tokens, args.reps, args.threads)
        for kind, media in (("image", image), ("audio", audio)):
            ref = theirs(text, proj, media, kind, args.image_tokens, args.reps, args.threads)
            a, b = statistics.median(mine[kind]), statistics.median(ref)
            print(
                f"{args.preset} {kind:<5} edgekit {a:8.1f} ms  llama-mtmd-cli {b:8.1f} ms  ratio {a / b:.3f}x "
                f"(median of {args.reps}, {args.threads} threads)"
            )


if __name__ == "__main__":
    main()
