"""`edgekit serve` with a medium inside the profile's memory cgroup: does the served path fit as bench's does?

    python benchmarks/e2b_served_media.py ART [--target pi5] [--modes on_demand,resident] [--media image,audio]
        [-n 8] [--ctx-fill 2040] [--jsonl rows.jsonl]

ART is a built GGUF with its projector linked in the manifest (`edgekit build --modalities ...`), e.g.
shape-true E2B's pi5 lean build. For each towers mode, `edgekit serve ART --target T --set towers=MODE`
runs inside a memory cgroup at the target's budget (edgekit.measure.limits, as `bench --limit`); the
real `openai` client sends one chat request: a 768x768 noise image at budget 280 (256 soft tokens) or 10 s
of a tone (250), then text up to ``--ctx-fill`` positions in all (counted with the GGUF's own vocabulary,
confirmed by the reply's usage), streamed, ``-n`` tokens, greedy. Printed per row: the server's peak RSS
(/props, getrusage), the cgroup's high-water mark (page cache charged included), OOM kills, the server's
major faults while the prompt ran and per decoded token, TTFT and decode t/s, the /props towers state
after the reply, and the peak with the text GGUF's present pages counted in 16 KB blocks at the end (as
bench's child counts them). A row fails on an OOM kill (the server dies), on more than 64 major faults per
decoded token (edgekit.measure.budget's thrashing bound), or on the 16 KB peak over the budget. Memory
does not depend on host load; times do.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edgekit.measure.limits import evict, memory_limit  # noqa: E402
from edgekit.measure.pages import count_blocks, page_size, present_pages  # noqa: E402
from edgekit.profiles.targets import TARGETS  # noqa: E402

THRASH = 64  # major faults per decoded token (edgekit.measure.budget)
MB = 1e6


def majflt(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[9])


def medium(kind: str) -> dict:
    if kind == "image":
        from PIL import Image

        img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (768, 768, 3), dtype=np.uint8))
        b = io.BytesIO()
        img.save(b, "PNG")
        url = "data:image/png;base64," + base64.b64encode(b.getvalue()).decode()
        return {"type": "image_url", "image_url": {"url": url}}
    import soundfile as sf

    t = np.arange(160000) / 16000
    b = io.BytesIO()
    sf.write(b, 0.5 * np.sin(2 * np.pi * 440 * t), 16000, format="WAV")
    return {"type": "input_audio", "input_audio": {"data": base64.b64encode(b.getvalue()).decode(), "format": "wav"}}


def filler(gguf: Path, n_tokens: int) -> str:
    """English text of about ``n_tokens`` tokens in the artifact's own vocabulary."""
    import llama_cpp

    src = (ROOT / "edgekit" / "eval" / "data" / "manpages" / "heldout.en.txt").read_text()
    llm = llama_cpp.Llama(model_path=str(gguf), vocab_only=True, verbose=False)
    toks = llm.tokenize(src.encode(), add_bos=False)
    while len(toks) < n_tokens:
        toks = toks + toks
    return llm.detokenize(toks[:n_tokens]).decode("utf-8", "ignore")


def serve_row(args: argparse.Namespace, gguf: Path, mode: str, kind: str, budget_bytes: int) -> dict:
    port = 18000 + (hash((mode, kind)) % 1000)
    argv = [
        sys.executable, "-m", "edgekit.cli", "serve", str(args.art), "--target", args.target, "--set", f"towers={mode}",
        "--host", "127.0.0.1", "--port", str(port), "--image-tokens", "280",
    ]  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    row: dict = {"target": args.target, "mode": mode, "medium": kind, "art": Path(args.art).name}
    evict(Path(args.art).parent)  # the server's cgroup is charged for the pages it maps (as bench's child)
    with memory_limit(budget_bytes) as lim:
        if not lim.enforced:
            raise SystemExit(f"no memory cgroup here: {lim.reason}")
        log_path = Path(args.log_dir) / f"serve-{mode}-{kind}.log"
        with open(log_path, "w") as log:
            env = {**os.environ, "PYTHONPATH": str(ROOT)}  # this checkout's edgekit, as the script's own
            proc = subprocess.Popen(lim.wrap(argv), stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            t0 = time.time()
            while True:
                if proc.poll() is not None:
                    raise SystemExit(f"the server exited ({proc.returncode}) before it was up; see {log_path}")
                try:
                    with urllib.request.urlopen(url + "/health", timeout=5) as r:
                        if json.loads(r.read()).get("status") == "ok":
                            break
                except OSError:
                    pass
                if time.time() - t0 > 900:
                    raise SystemExit("the server was not up in 15 min")
                time.sleep(2)
            row["load_s"] = time.time() - t0
            from openai import OpenAI

            client = OpenAI(base_url=url + "/v1", api_key="none", timeout=3600, max_retries=0)
            n_media = 256 if kind == "image" else 250
            text = filler(gguf, args.ctx_fill - n_media - 24 - args.n)  # 24: the turn's template and markers
            messages = [{"role": "user", "content": [medium(kind), {"type": "text", "text": text}]}]
            f0, t1 = majflt(proc.pid), time.perf_counter()
            ttft, chunks, usage, f1 = None, 0, None, None
            try:
                stream = client.chat.completions.create(
                    model="m", messages=messages, max_tokens=args.n, temperature=0, stream=True,
                    stream_options={"include_usage": True},
                )  # fmt: skip
                for ch in stream:
                    if ch.usage is not None:
                        usage = ch.usage
                    if ch.choices and ch.choices[0].delta.content:
                        if ttft is None:
                            ttft, f1 = time.perf_counter() - t1, majflt(proc.pid)
                        chunks += 1
                t2 = time.perf_counter()
                f2 = majflt(proc.pid)
                with urllib.request.urlopen(url + "/props", timeout=30) as r:
                    props = json.loads(r.read())
                # the text GGUF's present pages in 16 KB file-aligned blocks at the end, added to the peak
                # as bench does (edgekit.measure.budget.apply_pages): the Pi 5 kernel's page size
                pc = count_blocks(present_pages([gguf], pid=str(proc.pid)), page_size())
                row.update(
                    prompt_tokens=usage.prompt_tokens if usage else None,
                    completion_tokens=usage.completion_tokens if usage else None,
                    ttft_s=ttft,
                    tg_tps=(chunks - 1) / (t2 - t1 - ttft) if ttft and chunks > 1 else None,
                    majflt_prompt=(f1 or f2) - f0,
                    majflt_per_tok=(f2 - (f1 or f2)) / max((usage.completion_tokens if usage else chunks) - 1, 1),
                    peak_rss_mb=props["peak_rss_bytes"] / MB,
                    peak_16k_mb=(props["peak_rss_bytes"] + pc.extra_bytes) / MB,
                    towers=props.get("towers"),
                    error="",
                )
            except Exception as e:  # the server died (OOM) or refused: the row says so
                row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    proc.kill()
    rd = lim.readings
    row.update(
        cgroup_peak_mb=(rd.peak_bytes or 0) / MB,
        oom_kills=rd.oom_kills,
        budget_mb=budget_bytes / MB,
        exit=proc.returncode,
    )
    over = (row.get("peak_16k_mb") or 0) - budget_bytes / MB
    ok = not row["error"] and not rd.oom_kills and (row.get("majflt_per_tok") or 0) <= THRASH and over <= 0
    row["verdict"] = (
        "ok"
        if ok
        else "OOM"
        if rd.oom_kills
        else row["error"] or ("thrashing" if over <= 0 else f"over by {over:.1f} MB")
    )
    return row


def _f(v: float | None, p: int = 1) -> str:
    return "-" if v is None else f"{v:,.{p}f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("art", help="a built GGUF with its projector linked (its dist folder's manifest)")
    ap.add_argument("--target", default="pi5")
    ap.add_argument("--modes", default="on_demand,resident")
    ap.add_argument("--media", default="image")
    ap.add_argument("-n", type=int, default=8)
    ap.add_argument("--ctx-fill", type=int, default=2040)
    ap.add_argument("--jsonl", default="")
    ap.add_argument("--log-dir", default=".")
    args = ap.parse_args()
    gguf = Path(args.art).resolve()  # /proc/PID/maps names files by absolute path
    target = TARGETS.get(args.target)
    budget = target.memory_budget_bytes
    print(
        "| target | towers | medium | prompt | peak RSS MB | at 16 KB MB | cgroup peak MB | OOM | majflt prompt "
        "| majflt/tok | TTFT s | tg t/s | towers after | verdict |"
    )
    print("|---|---|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---|---|")
    for kind in args.media.split(","):
        for mode in args.modes.split(","):
            r = serve_row(args, gguf, mode, kind, budget)
            if args.jsonl:
                with open(args.jsonl, "a") as f:
                    f.write(json.dumps(r) + "\n")
            t = r.get("towers") or {}
            cells = [
                r["target"], mode, kind, r.get("prompt_tokens") or "-",
                _f(r.get("peak_rss_mb"), 0), _f(r.get("peak_16k_mb"), 0),
                _f(r["cgroup_peak_mb"], 0), "yes" if r["oom_kills"] else "no", r.get("majflt_prompt", "-"),
                _f(r.get("majflt_per_tok")), _f(r.get("ttft_s")), _f(r.get("tg_tps"), 2),
                f"{t.get('mode', '-')}, loaded {t.get('loaded', '-')}", r["verdict"],
            ]  # fmt: skip
            print("| " + " | ".join(str(c) for c in cells) + " |", flush=True)


if __name__ == "__main__":
    main()
