"""Lean vocabulary at E2B's shape: the selection's cost, and proof that the row gather streams.

    python benchmarks/lean_vocab.py [--vocab 65536] [--rows 262144] [--cols 8960] [--dir DIR]

1. Selection: the e2b preset's tokenizer (262,144 pieces, 514,906 merges; written in a second, no
   weights) trimmed to --vocab on the default corpus, in a fresh process: seconds and peak RSS.
2. Gather: a fake bf16 table of --rows x --cols (E2B's per-layer-embedding table by default, 4.7 GB)
   is written to a temp folder under --dir, then a fresh process gathers the kept rows with
   edgekit.builder.vocab.lean.gather_rows into a safetensors file through the streaming writer: seconds, its
   peak RSS and peak RSS ÷ table bytes (a transform that loaded the table would be ≥ 1), and 200
   sampled rows checked against the source. Everything written is deleted at the end.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SELECT = """
import json, resource, sys, time
import numpy as np
from edgekit.builder.vocab import SourceTokenizer, default_corpus, select
t = time.time()
sel = select(SourceTokenizer.read(sys.argv[1]), int(sys.argv[2]), default_corpus())
np.save(sys.argv[3], sel.kept)
print(json.dumps({"s": time.time() - t, "rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                  "must": sel.n_must, "corpus": sel.n_corpus, "fill": sel.n_fill, "merges": sel.merges}))
"""

GATHER = """
import json, resource, sys, time
from pathlib import Path
import numpy as np
from edgekit.model.safetensors_io import TensorSpec, read_tensors, write_safetensors
from edgekit.builder.vocab.lean import gather_rows
ref = read_tensors(Path(sys.argv[1]))["t"]
kept = np.load(sys.argv[3])
t = time.time()
spec = TensorSpec("t", (len(kept), *ref.shape[1:]), ref.dtype)
write_safetensors(Path(sys.argv[2]), [spec], lambda s: gather_rows(ref, kept))
dt = time.time() - t
out = read_tensors(Path(sys.argv[2]))["t"]
row = lambda r, i: r.read_bytes(i * r.row_bytes, r.row_bytes)
ok = all(np.array_equal(row(out, int(k)), row(ref, int(kept[k])))
         for k in np.random.default_rng(0).integers(0, len(kept), 200))
print(json.dumps({"s": dt, "rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "ok": ok,
                  "bytes": out.nbytes}))
"""


def child(code: str, *args: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", code, *args],
        check=True,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocab", type=int, default=65536)
    ap.add_argument("--rows", type=int, default=262144)
    ap.add_argument("--cols", type=int, default=8960)
    ap.add_argument(
        "--dir", type=Path, default=None, help="where the fake table goes (needs rows x cols x 2 bytes free)"
    )
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    import numpy as np

    from edgekit.dev.synthetic_tokenizer import GEMMA4_MERGES, write_synthetic_tokenizer
    from edgekit.model.safetensors_io import TensorSpec, write_safetensors

    with tempfile.TemporaryDirectory(prefix="edgekit-lean-bench-", dir=args.dir) as tmp:
        tmp = Path(tmp)
        tok = tmp / "tok"
        tok.mkdir()
        write_synthetic_tokenizer(tok, 262144, n_merges=GEMMA4_MERGES)
        (tok / "config.json").write_text(json.dumps({"bos_token_id": 2, "eos_token_id": [1, 106], "pad_token_id": 0}))
        sel = child(SELECT, str(tok), str(args.vocab), str(tmp / "kept.npy"))
        print(
            f"selection: {args.vocab:,} of 262,144 tokens ({sel['must']} must-keep, {sel['corpus']:,} corpus, "
            f"{sel['fill']:,} fill rule; {sel['merges']:,} of {GEMMA4_MERGES:,} merges) in {sel['s']:.1f} s, "
            f"peak RSS {sel['rss'] / 2**20:,.0f} MiB"
        )
        kept = np.load(tmp / "kept.npy")
        kept = kept[kept < args.rows]
        np.save(tmp / "kept.npy", kept)
        per = max(1, (64 << 20) // (args.cols * 2))

        def chunks(spec):
            for r0 in range(0, args.rows, per):
                n = min(per, args.rows - r0)
                a = np.empty((n, args.cols), dtype=np.uint16)
                a[:] = (np.arange(r0, r0 + n, dtype=np.uint32) % 65521).astype(np.uint16)[:, None]
                yield a

        table = tmp / "table.safetensors"
        write_safetensors(table, [TensorSpec("t", (args.rows, args.cols), "BF16")], chunks)
        g = child(GATHER, str(table), str(tmp / "lean.safetensors"), str(tmp / "kept.npy"))
        size = args.rows * args.cols * 2
        print(
            f"gather: {len(kept):,} of {args.rows:,} rows x {args.cols} bf16 ({g['bytes'] / 1e9:.2f} of "
            f"{size / 1e9:.2f} GB) "
            f"in {g['s']:.1f} s, peak RSS {g['rss'] / 2**20:,.0f} MiB = {g['rss'] / size:.3f} x the table; "
            f"200 sampled rows equal: {g['ok']}"
        )


if __name__ == "__main__":
    main()
