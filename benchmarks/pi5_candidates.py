"""Candidates for pi5's recommended build, by quality on a trained fixture (docs/quality.md "pi5").

Today's recommendation is iq4_xs-edge: IQ4_XS layers, a Q4_K tied output head, a Q6_K per-layer table,
no importance matrix, the full vocabulary. The candidates trade the memory a lean vocabulary frees
for a better head (Q6_K, Q8_0), quantize the layers with an importance matrix, or trim further. Each
is built from the fixture (tests/data/tiny-trained-16k: 16,384 tokens, four languages) and scored by
`edgekit eval` against transformers' fp32 model on each language's held-out text (pi5 runtime, ctx
512, --chunks windows of it): full-vocabulary builds get mean KL and same top (the same tokens as the
reference), every build gets bits and tokens per byte over the same bytes (a lean build tokenizes
differently, so bits per byte is the figure that compares it with the full ones).

    flock /tmp/edgekit-bench.lock python benchmarks/pi5_candidates.py [--model DIR] [--chunks 16]
    flock /tmp/edgekit-bench.lock python benchmarks/pi5_candidates.py --e2b .cache/models/e2b-gemma4 \
        --only lean12-h6-m,lean12-h5-m                     # their memory on shape-true E2B

--e2b builds the named candidates from a shape-true E2B checkpoint (random weights: memory does not
depend on values) at the same fractions of its 262,144 tokens, and runs each at ctx 2048 with the pi5
runtime, unlimited and inside a 1.5 GB cgroup, counted at 16 KB pages (benchmarks/e2b_memory.py's
limits table). Its matrix is computed over the first --e2b-cal-bytes of the calibration text: a
random model's matrix means nothing, but whether a matrix is given changes llama.cpp's types (IQ4_XS
gives the first eighth of ffn_down Q5_K only without one), so the rows are built as the recipe is.

Vocabulary sizes are fractions of the fixture's, named by what they stand for on E2B's 262,144:
25% kept = E2B's 65,536 (iq4_xs-edge-lean), 12.5% = 32,768, 6.25% = 16,384. The trim's corpus is the
fixture's training text in all four languages ("all") or its English part only ("en"); the matrix is
computed over the fixture's calibration text (four languages, disjoint from the held-out texts).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edgekit.builder.manifest import read_manifest  # noqa: E402
from edgekit.builder.pipeline import build, model_slug  # noqa: E402
from edgekit.eval import EvalOptions, evaluate  # noqa: E402
from edgekit.profiles.recipes import RECIPES  # noqa: E402

MANPAGES = ROOT / "edgekit" / "eval" / "data" / "manpages"
LANGS = ["en", "de", "fr", "es"]
HEAD = "^token_embd\\.weight$"


@dataclasses.dataclass(frozen=True)
class Candidate:
    name: str
    keep: float | None  # fraction of the vocabulary kept (None: full)
    head: str  # the tied head's type
    matrix: bool
    corpus: str = "all"  # the trim's corpus: "all" four languages, or "en"

    def label(self) -> str:
        v = "full" if self.keep is None else f"{100 * self.keep:g}% ({self.corpus})"
        return f"{v}, {self.head.upper()} head{', matrix' if self.matrix else ''}"


CANDIDATES = [
    Candidate("iq4_xs-edge", None, "q4_k", False),  # today's recommendation
    Candidate("edge-m", None, "q4_k", True),
    Candidate("edge-h6-m", None, "q6_k", True),
    Candidate("lean25-h4", 0.25, "q4_k", False),  # = iq4_xs-edge-lean
    Candidate("lean25-h6-m", 0.25, "q6_k", True),
    Candidate("lean12-h4", 0.125, "q4_k", False),
    Candidate("lean12-h6-m", 0.125, "q6_k", True),
    Candidate("lean12-h5-m", 0.125, "q5_k", True),
    Candidate("lean6-h6-m", 0.0625, "q6_k", True),
    Candidate("lean25-h6-m-en", 0.25, "q6_k", True, "en"),
    Candidate("lean12-h6-m-en", 0.125, "q6_k", True, "en"),
    # without the matrix: the E2B memory rows (a random model's matrix means nothing; see e2b())
    Candidate("lean12-h6", 0.125, "q6_k", False),
    Candidate("lean12-h5", 0.125, "q5_k", False),
    Candidate("lean6-h6", 0.0625, "q6_k", False),
]


def register(c: Candidate) -> str:
    """The candidate as a recipe: iq4_xs-edge's, with its head type."""
    base = RECIPES.get("iq4_xs-edge")
    if c.name not in RECIPES:
        RECIPES.register(
            c.name,
            dataclasses.replace(
                base,
                name=c.name,
                quant=c.name,
                description=c.label(),
                overrides={**base.overrides, HEAD: c.head},
            ),
        )
    return c.name


def by_language(path: Path, split: str) -> dict[str, bytes]:
    """A fixture text cut into its languages: scripts/make_fixture_text.py writes them in LANGS order, pages
    joined by blank lines, and sources.json gives each language's page count and page bytes."""
    src = json.loads((MANPAGES / "sources.json").read_text())
    data, out, at = path.read_bytes(), {}, 0
    for lang in LANGS:
        n = sum(1 for p in src["pages"] if p["split"] == split and p["language"] == lang)
        end = at + src["bytes_per_language"][split][lang] + 2 * (n - 1)
        if data[end : end + 2] not in (b"\n\n", b"\n"):
            sys.exit(f"{path}: its {lang} part does not end where sources.json says; is it the fixture's text?")
        out[lang], at = data[at:end], end + 2
    return out


def english_part(train: Path, out: Path) -> Path:
    """The training text's English pages: the "en" corpus of a trim for an English deployment."""
    if not out.is_file():
        out.write_bytes(by_language(train, "train")["en"] + b"\n")
    return out


def calibration_slice(out: Path, per_lang: int) -> Path:
    """The first ``per_lang`` bytes of each language's calibration pages, cut at a paragraph: every
    language in the matrix at a fraction of the time (the whole 224 KB text is ≈100 chunks of 512 per
    build, minutes each on a loaded 2-core host)."""
    path = out / f"calibration-{per_lang // 1000}k.txt"
    parts = by_language(MANPAGES / "calibration.txt", "calibration")
    cut = [t[:per_lang][: t[:per_lang].rfind(b"\n\n")] for t in parts.values()]
    path.write_bytes(b"\n\n".join(cut) + b"\n")
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=ROOT / "tests" / "data" / "tiny-trained-16k")
    ap.add_argument("--train-text", type=Path, default=ROOT / ".cache" / "fixture-16k-text" / "train.txt")
    ap.add_argument("--out", type=Path, default=ROOT / ".cache" / "pi5-candidates")
    ap.add_argument("--chunks", type=int, default=16, help="windows of 512 tokens per language")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cal-bytes", type=int, default=12000, help="calibration bytes per language (0: the whole text)")
    ap.add_argument("--only", default="", help="comma-separated candidate names (default: all)")
    ap.add_argument("--json", type=Path, default=None, help="also write every record here")
    ap.add_argument("--e2b", type=Path, default=None, help="a shape-true E2B checkpoint: measure memory instead")
    ap.add_argument("--e2b-cal-bytes", type=int, default=3000, help="with --e2b: calibration text used")
    ap.add_argument("-n", type=int, default=16, help="with --e2b: decoded tokens (the prompt fills the rest)")
    ap.add_argument("--build-only", action="store_true", help="with --e2b: build, measure nothing (outside the lock)")
    ap.add_argument("--cgroup-only", action="store_true", help="with --e2b: skip the unlimited run of each artifact")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.e2b:
        return e2b(args)
    if not args.train_text.is_file():
        sys.exit(f"{args.train_text}: no training text; `make fixture-16k` writes it (or pass --train-text)")
    cands = [c for c in CANDIDATES if not args.only or c.name in args.only.split(",")]
    out = args.out / args.model.name
    out.mkdir(parents=True, exist_ok=True)
    corpora = {"all": args.train_text, "en": english_part(args.train_text, out / "train.en.txt")}
    n_vocab = json.loads((args.model / "config.json").read_text())["text_config"]["vocab_size"]
    calib = calibration_slice(out, args.cal_bytes) if args.cal_bytes else MANPAGES / "calibration.txt"

    # One build per (vocabulary, corpus, matrix): build() trims every recipe it is given alike.
    arts: dict[str, Path] = {}
    groups: dict[tuple, list[Candidate]] = {}
    for c in cands:
        groups.setdefault((c.keep, c.corpus if c.keep else None, c.matrix), []).append(c)
    for (keep, corpus, mat), cs in groups.items():
        folder = out / f"{'full' if keep is None else f'v{int(keep * n_vocab)}-{corpus}'}{'-m' if mat else ''}"
        built = folder / args.model.name / "pi5"
        names = [register(c) for c in cs]
        try:
            m = read_manifest(built)
            have = {a.recipe for a in m.artifacts}
        except Exception:
            have = set()
        if not set(names) <= have:
            built = build(
                str(args.model),
                target="pi5",
                quants=names,
                out=folder,
                vocab=None if keep is None else int(keep * n_vocab),
                vocab_corpus=None if keep is None else corpora[corpus],
                calibrate=str(calib) if mat else None,
            )
            m = read_manifest(built)
        for a in m.artifacts:
            arts[a.recipe] = built / a.file

    recs: dict[str, dict[str, object]] = {c.name: {} for c in cands}
    for lang in LANGS:
        opts = EvalOptions(
            reference=str(args.model),
            texts=[MANPAGES / f"heldout.{lang}.txt"],
            chunks=args.chunks,
            threads=args.threads,
            target="pi5",
            ref_cache=out / f"ref-{lang}-{args.chunks}.npz",
        )
        for c, r in zip(cands, evaluate([arts[c.name] for c in cands], opts), strict=True):
            recs[c.name][lang] = r
    table(cands, recs, n_vocab)
    if args.json:
        args.json.write_text(
            json.dumps({c.name: {k: dataclasses.asdict(v) for k, v in recs[c.name].items()} for c in cands}, indent=1)
        )
    return 0


def e2b(args: argparse.Namespace) -> int:
    """The candidates' peak memory on shape-true E2B at ctx 2048, pi5 runtime, unlimited and in the cgroup."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import e2b_memory

    cands = [c for c in CANDIDATES if c.name in args.only.split(",")]
    if not cands:
        sys.exit("--e2b needs --only with the candidates to measure")
    n_vocab = json.loads((args.e2b / "config.json").read_text())["text_config"]["vocab_size"]
    out = args.out / "e2b"
    out.mkdir(parents=True, exist_ok=True)
    cal = out / "calibration-slice.txt"
    text = (MANPAGES / "calibration.txt").read_bytes()[: args.e2b_cal_bytes]
    cal.write_bytes(text[: text.rfind(b"\n\n")] + b"\n")
    folders = []
    for keep in sorted({c.keep for c in cands}, key=lambda k: -(k or 1)):
        for mat in (False, True):
            cs = [c for c in cands if c.keep == keep and c.matrix == mat]
            if not cs:
                continue
            folder = out / f"{'full' if keep is None else f'v{int(keep * n_vocab)}'}{'-m' if mat else ''}"
            built = folder / model_slug(args.e2b) / "pi5"
            names = [register(c) for c in cs]
            try:
                ok = {a.recipe for a in read_manifest(built).artifacts} >= set(names)
            except Exception:
                ok = False
            if not ok:
                build(
                    str(args.e2b),
                    target="pi5",
                    quants=names,
                    out=folder,
                    vocab=None if keep is None else int(keep * n_vocab),
                    calibrate=str(cal) if mat else None,
                    modalities=["text"],
                )
            folders.append(built)
    if args.build_only:
        return 0
    lim = argparse.Namespace(limit_mb=1500.0, n=args.n, r=1, match="")
    for folder in folders:
        e2b_memory.limits_table(folder, lim, unlimited=not args.cgroup_only)
    return 0


def table(cands: list[Candidate], recs: dict, n_vocab: int) -> None:
    base = recs[cands[0].name]
    print(f"mean KL and same top per language ({cands[0].name}'s tokens; full-vocabulary builds only)")
    print("| candidate | MB | " + " | ".join(f"KL {lang} | same top {lang}" for lang in LANGS) + " |")
    print("|---|---:|" + "---:|---:|" * len(LANGS))
    for c in cands:
        rs = recs[c.name]
        if rs["en"].kl_mean is None:
            continue
        cells = " | ".join(f"{rs[lang].kl_mean:.5f} | {100 * rs[lang].same_top:.1f}%" for lang in LANGS)
        print(f"| {c.name}: {c.label()} | {rs['en'].file_bytes / 1e6:.2f} | {cells} |")
    if base["en"].reference_text_bits_per_byte is None:  # eval measures whole texts only when a lean build runs
        print("\n(no bits per byte: eval measures them only in a run with a lean candidate)")
        return
    print("\nbits per byte (Δ vs the first row) and tokens per byte, whole text of each language's windows")
    print("| candidate | vocab | MB | " + " | ".join(f"{lang} bits/byte | Δ | tokens/byte" for lang in LANGS) + " |")
    print("|---|---:|---:|" + "---:|---:|---:|" * len(LANGS))
    ref = base["en"]
    print(
        "| reference (transformers fp32) | "
        f"{n_vocab:,} | – | "
        + " | ".join(
            f"{base[lang].reference_text_bits_per_byte:.4f} | – | {base[lang].reference_tokens_per_byte:.4f}"
            for lang in LANGS
        )
        + " |"
    )
    for c in cands:
        rs = recs[c.name]
        cells = " | ".join(
            f"{rs[lang].text_bits_per_byte:.4f} | "
            f"{100 * (rs[lang].text_bits_per_byte / base[lang].text_bits_per_byte - 1):+.1f}% | "
            f"{rs[lang].tokens_per_byte:.4f}"
            for lang in LANGS
        )
        print(f"| {c.name}: {c.label()} | {rs['en'].vocab or n_vocab:,} | {rs['en'].file_bytes / 1e6:.2f} | {cells} |")
    print(
        f"\n{ref.text}: {ref.chunks} windows of {ref.ctx} per language "
        f"({', '.join(str(base[lang].text_bytes) for lang in LANGS)} bytes en/de/fr/es), runtime {ref.runtime}"
    )


if __name__ == "__main__":
    sys.exit(main())
