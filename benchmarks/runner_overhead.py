"""How much does edgekit's runner cost? `edgekit bench` against the engines' own benchmarks, same run.

    python benchmarks/runner_overhead.py [--gguf F] [--mlx DIR] [-p 128] [-n 32] [-r 5] [--threads 2]

* llama.cpp: llama-bench, built once (benchmarks/llamacpp_tools.py) from the llama-cpp-python sdist's
  vendored llama.cpp (the commit edgekit's runner links against) into .cache/llama.cpp/ (≈5 min on 2
  cores; GGML_NATIVE=OFF on x86_64, like the pip build), on the same GGUF, threads and lengths.
* MLX: `python -m mlx_lm benchmark` on the same MLX folder, which it loads as stock mlx-lm does (the
  PLE table resident), so edgekit runs it with ple=resident too. Its prompt_tps is tokens / time to
  first token (compared with ours from TTFT); its generation_tps divides n tokens by the time of
  n - 1 decode steps (the first token comes from the prompt), so it is rescaled by (n - 1) / n. It is
  measured after the prompt with steps overlapped by async_eval, where edgekit times each step alone
  from an empty cache.
Without --gguf/--mlx, random Gemma 4 checkpoints are synthesized and built: --preset (default mid,
≈0.3 B params) at q4_0 for pi5, and --mlx-preset (default tiny) at mlx-4bit. Smaller models make
per-token overhead more visible; on real sizes the ratio is closer to 1.
Rounds alternate the tools (edgekit, engine, edgekit, ...) so a busy machine hurts both alike.
Prints tg and pp ratios (edgekit ÷ engine; goal ≥ 0.98). Not a test: the figures depend on the host.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import llamacpp_tools  # noqa: E402  (llama.cpp's own tools, built once from the vendored source)

CACHE = ROOT / ".cache"


def built(workdir: Path, preset: str, target: str, quant: str) -> Path:
    """The artifact folder for a synthesized ``preset`` checkpoint, built once under ``workdir``."""
    from edgekit.builder.pipeline import build
    from edgekit.dev.synth import synth

    ckpt = workdir / f"{preset}-gemma4"
    if not (ckpt / "config.json").exists():
        synth(ckpt, preset=preset, seed=0)
    folder = workdir / "dist" / ckpt.name / target
    if not (folder / "manifest.json").exists():
        folder = build(str(ckpt), target=target, quants=[quant], out=workdir / "dist")
    return folder


def edgekit_run(path: Path, p: int, n: int, reps: int, threads: int | None, runtime: dict | None = None) -> dict:
    from edgekit.measure.bench import BenchOptions, bench

    (r,) = bench(
        path,
        BenchOptions(n_prompt=p, n_gen=n, reps=reps, threads=threads, ctx=p + n, roofline=False, runtime=runtime or {}),
    )
    return {
        "pp": r.pp_tps,
        "tg": r.tg_tps,
        "pp_sd": r.pp_tps_sd,
        "tg_sd": r.tg_tps_sd,
        "ttft_ms": r.ttft_ms,
        "runtime": r.runtime,
    }


def llama_bench_flags(runtime: dict) -> list[str]:
    """The llama-bench flags for the knobs edgekit applied (the artifact's target profile), so both
    run the same configuration; absent knobs are both tools' llama.cpp defaults."""
    flags = []
    if "use_mmap" in runtime or "mlock" in runtime:
        mode = {(True, False): "mmap", (False, False): "none", (True, True): "mmap+mlock", (False, True): "mlock"}
        flags += ["-lm", mode[bool(runtime.get("use_mmap", True)), bool(runtime.get("mlock", False))]]
    for knob, flag in (("lazy", "-lzm"), ("n_batch", "-b"), ("n_ubatch", "-ub"), ("flash_attn", "-fa")):
        if knob in runtime:
            flags += [flag, str(runtime[knob]).lower()]
    if "repack" in runtime:
        flags += ["--repack", str(int(bool(runtime["repack"])))]
    if "kv_type" in runtime:
        flags += ["-ctk", runtime["kv_type"], "-ctv", runtime["kv_type"]]
    return flags


def llama_bench_run(
    exe: Path, gguf: Path, p: int, n: int, reps: int, threads: int, flags: list[str]
) -> dict[str, float]:
    out = subprocess.run(
        [
            str(exe),
            "-m",
            str(gguf),
            "-p",
            str(p),
            "-n",
            str(n),
            "-r",
            str(reps),
            "-t",
            str(threads),
            *flags,
            "-o",
            "json",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    res = {}
    for row in json.loads(out):
        key = "pp" if row["n_gen"] == 0 else "tg"
        res[key], res[key + "_sd"] = row["avg_ts"], row["stddev_ts"]
    return res


def mlx_bench_run(folder: Path, p: int, n: int, reps: int) -> dict[str, float]:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "mlx_lm",
            "benchmark",
            "--model",
            str(folder),
            "-p",
            str(p),
            "-g",
            str(n),
            "-n",
            str(reps),
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    m = re.search(r"Averages: prompt_tps=([\d.]+), generation_tps=([\d.]+), peak_memory=([\d.]+)", out)
    if not m:
        raise SystemExit(f"unexpected mlx_lm benchmark output:\n{out}")
    # mlx-lm starts its generation clock when the first token arrives (it comes from the prompt's
    # forward) but divides by all n tokens: n - 1 decode steps were timed, so rescale per step.
    return {"pp": float(m[1]), "tg": float(m[2]) * (n - 1) / n, "tg_reported": float(m[2]), "peak_gb": float(m[3])}


def compare(name: str, ours: list[dict], theirs: list[dict], p: int, n: int, engine: str, pp_key: str = "pp") -> None:
    """Means per tool, and the median of per-round ratios: a round's two runs are adjacent in time,
    so on a shared machine their ratio is steadier than the ratio of means."""
    print(f"\n{name}  ({len(ours)} alternating rounds)")
    print(f"  {'':10} {'edgekit':>12} {engine:>17} {'ratio of means':>15} {'median ratio [min-max]':>24}")
    for label, ok, tk in ((f"pp{p} t/s", pp_key, "pp"), (f"tg{n} t/s", "tg", "tg")):
        a, b = statistics.fmean(r[ok] for r in ours), statistics.fmean(r[tk] for r in theirs)
        ratios = [o[ok] / t[tk] for o, t in zip(ours, theirs, strict=True)]
        print(
            f"  {label:10} {a:12.2f} {b:17.2f} {a / b:15.3f} {statistics.median(ratios):12.3f} "
            f"[{min(ratios):.3f}-{max(ratios):.3f}]"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gguf", type=Path)
    ap.add_argument("--mlx", type=Path)
    ap.add_argument("-p", type=int, default=128)
    ap.add_argument("-n", type=int, default=32)
    ap.add_argument("-r", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--mlx-p", type=int, default=16, help="MLX on x86 CPU is slow: shorter lengths")
    ap.add_argument("--mlx-n", type=int, default=8)
    ap.add_argument("--mlx-r", type=int, default=3)
    ap.add_argument("--skip-mlx", action="store_true")
    ap.add_argument("--preset", default="mid", help="synth preset for the GGUF (tiny makes overhead most visible)")
    ap.add_argument("--mlx-preset", default="tiny", help="synth preset for the MLX artifact (MLX on x86 is slow)")
    a = ap.parse_args()
    os.environ.setdefault("EDGEKIT_NO_PROGRESS", "1")

    work = CACHE / "bench" / "runner_overhead"
    gguf = a.gguf or next(built(work, a.preset, "pi5", "q4_0").glob("*.gguf"))
    mlx = a.mlx
    if mlx is None and not a.skip_mlx:
        mlx = next(p for p in built(work, a.mlx_preset, "m4", "mlx-4bit").iterdir() if p.is_dir())
    exe = llamacpp_tools.tool("llama-bench")
    print(f"host: {platform.machine()}, {os.cpu_count()} cpus; llama-cpp-python {metadata.version('llama-cpp-python')}")

    ours, theirs = [], []
    for _ in range(a.rounds):
        ours.append(edgekit_run(gguf, a.p, a.n, a.r, a.threads))
        flags = llama_bench_flags(ours[-1]["runtime"])
        theirs.append(llama_bench_run(exe, gguf, a.p, a.n, a.r, a.threads, flags))
    compare(
        f"llama.cpp: {gguf.name}, {a.threads} threads, -p {a.p} -n {a.n} -r {a.r}; llama-bench {' '.join(flags)}",
        ours,
        theirs,
        a.p,
        a.n,
        "llama-bench",
    )

    if not a.skip_mlx:
        ours, theirs = [], []
        for _ in range(a.rounds):
            # ple=resident loads the PLE table as stock mlx-lm does, so only the runner differs.
            ours.append(edgekit_run(mlx, a.mlx_p, a.mlx_n, a.mlx_r, None, {"ple": "resident"}))
            theirs.append(mlx_bench_run(mlx, a.mlx_p, a.mlx_n, a.mlx_r))
        # mlx_lm's prompt_tps is prompt tokens / time to first token: compare it with ours from TTFT.
        for o in ours:
            o["pp_from_ttft"] = a.mlx_p / (o["ttft_ms"] / 1e3)
        compare(
            f"MLX: {mlx.name}, -p {a.mlx_p} -n {a.mlx_n} -r {a.mlx_r}",
            ours,
            theirs,
            a.mlx_p,
            a.mlx_n,
            "mlx_lm.benchmark",
            pp_key="pp_from_ttft",
        )


if __name__ == "__main__":
    main()
