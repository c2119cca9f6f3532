"""What fits on each Pi 5 profile per modality set, proven inside a memory cgroup with a full context.

    python benchmarks/e2b_media_budget.py --text-lean LEAN.gguf --text FULL.gguf --towers-dir DIR [-n 8] [-r 1]
                                          [--only pi5|pi5-8gb] [--sets text,vision,audio,both]

Shape-true E2B (random weights) with towers (benchmarks/e2b_towers.py writes the projectors into DIR).
Each row is one `edgekit bench` child (edgekit.measure.bench) with the profile's runtime, inside a
memory cgroup at the profile's budget (pi5: 1.5 GB, pi5-8gb: 6.5 GB), the prompt filling ctx 2048:
BOS + the medium (a 768x768 image at 280 tokens = 256 soft tokens, or 10 s of audio = 250) + text, then
-n decoded tokens. "both" loads the projector with both towers and runs one row per medium. The gate
figure is the larger of peak RSS and the peak with the text GGUF's mapped pages counted at 16 KB (the
Pi 5 kernel's page size); an OOM kill is a failure; major faults per decoded token are printed. Towers:
pi5 rows run `on_demand` (loaded per medium, freed before the text) and, for vision, `resident` too.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--text-lean", type=Path, required=True, help="pi5's vision text build (iq4_xs-edge-lean)")
    ap.add_argument("--text", type=Path, required=True, help="pi5-8gb's text build (iq4_xs-edge)")
    ap.add_argument("--towers-dir", type=Path, default=ROOT / ".cache" / "mmbench-e2b" / "towers")
    ap.add_argument("--vision-type", default="Q8_0")
    ap.add_argument("--audio-type", default="BF16")
    ap.add_argument("--only", default="pi5,pi5-8gb")
    ap.add_argument("--sets", default="text,vision,audio,both")
    ap.add_argument("-n", type=int, default=8)
    ap.add_argument("-r", type=int, default=1)
    ap.add_argument("--ctx", type=int, default=2048)
    args = ap.parse_args()
    os.environ.setdefault("EDGEKIT_NO_PROGRESS", "1")
    import e2b_towers

    from edgekit.backends.gguf.mmproj import write_mmproj
    from edgekit.measure.bench import BenchOptions, bench
    from edgekit.measure.budget import verdict
    from edgekit.measure.media import describe
    from edgekit.model.checkpoint import load_checkpoint

    d = args.towers_dir
    files = e2b_towers.media(d)
    image, audio = describe([files["vision"]], [], [280]), describe([], [files["audio"]], [])
    vt, at = args.vision_type, args.audio_type
    proj = {
        "vision": d / f"e2b-mmproj-vision-{vt}.gguf",
        "audio": d / f"e2b-mmproj-audio-{at}.gguf",
        "both": d / f"e2b-mmproj-vision-{vt}-audio-{at}.gguf",
    }
    if "both" in args.sets and not proj["both"].is_file():
        ckpt = load_checkpoint(e2b_towers.TOWERS_CKPT)
        write_mmproj(ckpt, proj["both"], ("vision", "audio"), {"vision": vt, "audio": at}, name="e2b-towers")
    plan = []
    for target in args.only.split(","):
        text = args.text_lean if target == "pi5" else args.text
        modes = ["on_demand", "resident"] if target == "pi5" else ["resident"]
        for s in args.sets.split(","):
            for mode in modes if s != "text" else ["-"]:
                if target == "pi5" and mode == "resident" and s != "vision":
                    continue
                media = {"text": [], "vision": image, "audio": audio, "both": image + audio}[s]
                plan.append((target, text, s, mode, media))
    rows = []
    for target, text, s, mode, media in plan:
        longest = max((m.tokens for m in media), default=-3)
        n_prompt = args.ctx - args.n - (1 + longest + 2)  # BOS, the medium and its two markers, the text
        opts = BenchOptions(
            n_prompt=n_prompt,
            n_gen=args.n,
            reps=args.r,
            ctx=args.ctx,
            target=target,
            roofline=False,
            limit=True,
            runtime={"towers": mode} if media else {},
            media=media,
            mmproj=proj[s] if media else None,
        )
        try:
            recs = bench(text, opts)
        except Exception as e:  # a row that cannot run is a row of the table, not the end of it
            print(f"{target} {s} {mode}: {e}", flush=True)
            continue
        for r in recs:
            rows.append((target, s, mode, r))
            print(
                f"{target} {s} {mode} {r.pp_test}: peak {r.peak_rss_bytes / 1e6:,.0f} MB, @16K "
                f"{(r.peak_16k_bytes or 0) / 1e6:,.0f}, cgroup {(r.cgroup_peak_bytes or 0) / 1e6:,.0f}, "
                f"OOM {r.oom_killed}, majflt/tok {r.majflt_per_token}, verdict {verdict(r, recs)}",
                flush=True,
            )
    print()
    print(
        "| profile | modalities | towers | test | text file MB | projector MB | peak RSS MB | at 16 KB MB | "
        "text / towers MB | cgroup peak MB | limit MB | OOM | majflt/tok | encode s | TTFT s | tg t/s | verdict |"
    )
    print("|---|---|---|---|---:|---:|---:|---:|---|---:|---:|---|---:|---:|---:|---:|---|")
    allrecs = [r for *_, r in rows]
    for target, s, mode, r in rows:
        pj = proj.get(s)
        f = lambda x: "–" if x is None else f"{x / 1e6:,.0f}"
        split = f"{f(r.text_bytes)} / {f(r.towers_bytes)}" if r.media_kind else "–"
        enc = f"{r.encode_ms / 1e3:.1f}" if r.encode_ms else "–"
        print(
            f"| {target} | {s} | {mode} | {r.pp_test} + tg{r.n_gen} | {f(r.file_bytes)} | "
            f"{f(pj.stat().st_size) if pj and r.media_kind else '–'} | {f(r.peak_rss_bytes)} | {f(r.peak_16k_bytes)} | "
            f"{split} | {f(r.cgroup_peak_bytes)} | {f(r.limit_bytes)} | {'killed' if r.oom_killed else 'no'} | "
            f"{r.majflt_per_token if r.majflt_per_token is not None else '–'} | {enc} | {r.ttft_ms / 1e3:.1f} | "
            f"{r.tg_tps:.2f} | {verdict(r, allrecs)} |"
        )
    print(f"\n{args.r} rep(s) after a warm-up, ctx {args.ctx}, the host shared with other work: times are rough")


if __name__ == "__main__":
    main()
