"""edgekit build vs llama.cpp (convert_hf_to_gguf.py + llama-quantize) on the same checkpoints.

Both pipelines run in this one process's session, one after the other, on the same machine, so
the printed ratios (edgekit / llama.cpp) compare like with like on a noisy host. Wall time is end
to end; peak RSS is the largest resident set of any process in each pipeline (wait4's ru_maxrss
covers a child and the descendants it waited for).

    python benchmarks/build_vs_llamacpp.py [--presets mid,e2b] [--quant q4_0] [--e2b-dir DIR]
Goal (issue 3): time ratio ≤ 1.0, peak RSS ratio ≤ 0.5.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import llamacpp_tools

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache"
LLAMA_FTYPES = {"q4_0": "Q4_0", "q8_0": "Q8_0", "q4_k_m": "Q4_K_M"}


def measured(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, int]:
    """(wall seconds, peak RSS bytes) of a command and its waited-for descendants."""
    # stderr goes to a file, not a pipe: a pipe nobody reads fills up and blocks a chatty converter.
    with tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        code = os.waitstatus_to_exitcode(status)
        proc.returncode = code
        if code != 0:
            err.seek(0)
            raise SystemExit(f"{cmd[0]} failed ({code}): {err.read().decode(errors='replace')[-2000:]}")
    return wall, usage.ru_maxrss * 1024  # Linux reports KiB


def checkpoint(preset: str, e2b_dir: Path | None) -> Path:
    if preset == "e2b" and e2b_dir:
        return e2b_dir
    path = CACHE / "models" / f"{preset}-gemma4"
    if not (path / "config.json").is_file():
        subprocess.run(
            [sys.executable, "-m", "edgekit.cli", "synth", "--preset", preset, "--out", str(path)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    return path


def drop_caches() -> None:
    """Start each pipeline with the checkpoint out of the page cache when we may (root on Linux)."""
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("1\n")
    except OSError:
        pass


def run(preset: str, quant: str, e2b_dir: Path | None, work: Path) -> dict[str, float]:
    ckpt = checkpoint(preset, e2b_dir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    drop_caches()
    ek_t, ek_rss = measured(
        [
            sys.executable,
            "-m",
            "edgekit.cli",
            "build",
            "-m",
            str(ckpt),
            "--target",
            "pi5",
            "-q",
            quant,
            "--out",
            str(work / "edgekit"),
        ]
    )
    shutil.rmtree(work / "edgekit")
    convert_py, env = llamacpp_tools.converter()
    quantize_bin = llamacpp_tools.tool("llama-quantize")
    drop_caches()
    bf16 = work / "ref-bf16.gguf"
    c_t, c_rss = measured(
        [sys.executable, str(convert_py), str(ckpt), "--outtype", "bf16", "--outfile", str(bf16)], env
    )
    q_t, q_rss = measured([str(quantize_bin), str(bf16), str(work / "ref-q.gguf"), LLAMA_FTYPES[quant]])
    shutil.rmtree(work)
    ref_t, ref_rss = c_t + q_t, max(c_rss, q_rss)
    return {
        "edgekit_s": ek_t,
        "edgekit_rss": ek_rss,
        "convert_s": c_t,
        "convert_rss": c_rss,
        "quantize_s": q_t,
        "quantize_rss": q_rss,
        "time_ratio": ek_t / ref_t,
        "rss_ratio": ek_rss / ref_rss,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default="mid,e2b")
    ap.add_argument("--quant", default="q4_0", choices=sorted(LLAMA_FTYPES))
    ap.add_argument(
        "--e2b-dir", type=Path, default=None, help="reuse a shape-true checkpoint instead of synthesizing one"
    )
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    llamacpp_tools.tool("llama-quantize")
    print(
        f"host: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {platform.system()} "
        f"{platform.release()}"
    )
    print("| checkpoint | edgekit build | llama.cpp convert (bf16) + quantize | time ratio | peak RSS ratio |")
    print("|---|---|---|---|---|")
    for preset in args.presets.split(","):
        r = run(preset, args.quant, args.e2b_dir, CACHE / "bench-build")
        print(
            f"| {preset} → {args.quant} | {r['edgekit_s']:.1f} s, {r['edgekit_rss'] / 1e9:.2f} GB | "
            f"{r['convert_s']:.1f} s + {r['quantize_s']:.1f} s, {r['convert_rss'] / 1e9:.2f} / "
            f"{r['quantize_rss'] / 1e9:.2f} GB | "
            f"{r['time_ratio']:.2f} | {r['rss_ratio']:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
