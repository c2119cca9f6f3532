"""What fits on each Pi 5 profile per modality set, proven inside a memory cgroup with a full context.

    python benchmarks/e2b_media_budget.py --text-lean LEAN.gguf --text FULL.gguf [--towers-dir DIR] [-n 8] [-r 1]
        [--only pi5,pi5-8gb] [--sets text,vision,audio,both] [--pi5-texts lean,full] [--modes on_demand,resident]
        [--jsonl rows.jsonl]
    python benchmarks/e2b_media_budget.py --table rows.jsonl      # the table of every row appended there

Shape-true E2B (random weights) with towers (benchmarks/e2b_towers.py writes the projectors into DIR).
Each row is one `edgekit bench` child (edgekit.measure.bench) with the profile's runtime, inside a
memory cgroup at the profile's budget (pi5: 1.5 GB, pi5-8gb: 6.5 GB), the prompt filling ctx 2048:
BOS + the medium (a 768x768 image at 280 tokens = 256 soft tokens, or 10 s of audio = 250) + text, then
-n decoded tokens. "both" loads the projector with both towers and runs one row per medium. The gate
figure is the larger of peak RSS and the peak with the text GGUF's mapped pages counted at 16 KB (the
Pi 5 kernel's page size); an OOM kill or more than 64 major faults per decoded token is a failure
(edgekit.measure.budget). pi5 rows run each text (lean, full vocabulary) with the towers `on_demand`
(loaded per medium, freed before the text) and `resident`; a pi5 row whose image does not fit at its
budget runs again at the next smaller budget (140, then 70). pi5-8gb: the full text, towers resident.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

SMALLER = {280: 140, 140: 70}  # the next image budget to try where one does not fit


def plan(args: argparse.Namespace) -> list[tuple[str, str, str, str]]:
    """(target, text label, modality set, towers mode) in the order given."""
    out = []
    for target in args.only.split(","):
        texts = args.pi5_texts.split(",") if target == "pi5" else ["full"]
        modes = args.modes.split(",") if target == "pi5" else ["resident"]
        for text in texts:
            for s in args.sets.split(","):
                for mode in modes if s != "text" else ["-"]:
                    out.append((target, text, s, mode))
    return out


def fmt(x: float | None) -> str:
    return "–" if x is None else f"{x / 1e6:,.0f}"


def table(rows: list[dict]) -> None:
    from edgekit.measure.budget import verdict
    from edgekit.results import Record

    print(
        "| profile | text | modalities | towers | test | projector MB | peak RSS MB | at 16 KB MB | text / towers MB "
        "| cgroup peak MB | OOM | majflt prefill | majflt/tok | encode s | TTFT s | tg t/s | verdict |"
    )
    print("|---|---|---|---|---|---:|---:|---:|---|---:|---|---:|---:|---:|---:|---:|---|")
    recs = [Record.from_json(r["record"]) for r in rows]
    for row, r in zip(rows, recs, strict=True):
        split = f"{fmt(r.text_bytes)} / {fmt(r.towers_bytes)}" if r.media_kind else "–"
        enc = f"{r.encode_ms / 1e3:.1f}" if r.encode_ms else "–"
        mpre = "–" if r.majflt_prefill is None else f"{r.majflt_prefill:,.0f}"
        mtok = "–" if r.majflt_per_token is None else f"{r.majflt_per_token:,.1f}"
        print(
            f"| {r.target} | {row['text']} ({fmt(r.file_bytes)} MB) | {row['set']} | {row['mode']} | "
            f"{r.pp_test} + tg{r.n_gen} | {fmt(row['projector_bytes'])} | {fmt(r.peak_rss_bytes)} | "
            f"{fmt(r.peak_16k_bytes)} | {split} | {fmt(r.cgroup_peak_bytes)} | {'killed' if r.oom_killed else 'no'} | "
            f"{mpre} | {mtok} | {enc} | {r.ttft_ms / 1e3:.1f} | {r.tg_tps:.2f} | {verdict(r, recs)} |"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--text-lean", type=Path, help="the lean text build (iq4_xs-edge-lean, 65,536 tokens)")
    ap.add_argument("--text", type=Path, help="the full-vocabulary text build (iq4_xs-edge)")
    ap.add_argument("--towers-dir", type=Path, default=ROOT / ".cache" / "mmbench-e2b" / "towers")
    ap.add_argument("--vision-type", default="Q8_0")
    ap.add_argument("--audio-type", default="BF16")
    ap.add_argument("--only", default="pi5,pi5-8gb")
    ap.add_argument("--sets", default="text,vision,audio,both")
    ap.add_argument("--pi5-texts", default="lean,full", help="pi5's text builds (pi5-8gb runs the full one)")
    ap.add_argument("--modes", default="on_demand,resident", help="pi5's towers modes (pi5-8gb: resident)")
    ap.add_argument("--budget", type=int, default=280, help="the image-token budget a row starts at")
    ap.add_argument("-n", type=int, default=8)
    ap.add_argument("-r", type=int, default=1)
    ap.add_argument("--ctx", type=int, default=2048)
    ap.add_argument("--jsonl", type=Path, help="append each row here (profile, text, set, mode, record)")
    ap.add_argument("--table", type=Path, help="print the table of the rows in this file and stop")
    args = ap.parse_args()
    if args.table:
        table([json.loads(line) for line in args.table.read_text().splitlines() if line.strip()])
        return
    if not (args.text_lean and args.text):
        ap.error("--text-lean and --text are needed to measure")
    os.environ.setdefault("EDGEKIT_NO_PROGRESS", "1")
    import e2b_towers

    from edgekit.backends.gguf.mmproj import write_mmproj
    from edgekit.measure.bench import BenchOptions, bench
    from edgekit.measure.budget import verdict
    from edgekit.measure.media import describe
    from edgekit.model.checkpoint import load_checkpoint

    d = args.towers_dir
    files = e2b_towers.media(d)
    audio = describe([], [files["audio"]], [])
    vt, at = args.vision_type, args.audio_type
    proj = {
        "vision": d / f"e2b-mmproj-vision-{vt}.gguf",
        "audio": d / f"e2b-mmproj-audio-{at}.gguf",
        "both": d / f"e2b-mmproj-vision-{vt}-audio-{at}.gguf",
    }
    if "both" in args.sets and not proj["both"].is_file():
        ckpt = load_checkpoint(e2b_towers.TOWERS_CKPT)
        write_mmproj(ckpt, proj["both"], ("vision", "audio"), {"vision": vt, "audio": at}, name="e2b-towers")
    texts = {"lean": args.text_lean, "full": args.text}
    rows: list[dict] = []
    todo = [(*p, args.budget) for p in plan(args)]
    while todo:
        target, text, s, mode, budget = todo.pop(0)
        image = describe([files["vision"]], [], [budget])
        media = {"text": [], "vision": image, "audio": audio, "both": image + audio}[s]
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
            recs = bench(texts[text], opts)
        except Exception as e:  # a row that cannot run is a row of the table, not the end of it
            print(f"{target} {text} {s} {mode}: {type(e).__name__}: {e}", flush=True)
            continue
        for r in recs:
            row = {"text": text, "set": s, "mode": mode, "projector_bytes": proj[s].stat().st_size if media else None}
            rows.append({**row, "record": r.to_json()})
            if args.jsonl:
                with open(args.jsonl, "a") as f:
                    f.write(json.dumps(rows[-1]) + "\n")
            print(
                f"{target} {text} {s} {mode} {r.pp_test}: peak {fmt(r.peak_rss_bytes)} MB, @16K "
                f"{fmt(r.peak_16k_bytes)}, cgroup {fmt(r.cgroup_peak_bytes)}, text/towers "
                f"{fmt(r.text_bytes)}/{fmt(r.towers_bytes)}, OOM {r.oom_killed}, majflt prefill "
                f"{r.majflt_prefill} /tok {r.majflt_per_token}, verdict {verdict(r, recs)}",
                flush=True,
            )
        image_failed = any(r.media_kind == "image" and verdict(r, recs) != "ok" for r in recs)
        if target == "pi5" and image_failed and budget in SMALLER:
            todo.insert(0, (target, text, s, mode, SMALLER[budget]))
    print()
    table(rows)
    print(f"\n{args.r} rep(s) after a warm-up, ctx {args.ctx}, the host shared with other work: times are rough")


if __name__ == "__main__":
    main()
