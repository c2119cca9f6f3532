"""Show that a refactor changed no behaviour: run the same tiny-model session on two revisions, compare.

    nice -n 10 .venv/bin/python scripts/compare_behaviour.py [BEFORE] [AFTER] [--keep]

BEFORE and AFTER are git revisions (default 975ea05, the commit before the house move, and HEAD). Each is
exported with ``git archive`` into a temp folder and run with this Python (the shared venv) and
PYTHONPATH set to that export, in its own work folder with the same relative paths, so that paths
recorded in the outputs match:

    synth --preset tiny --seed 0            checkpoint files' sha256
    build --target pi5                      manifest.json bytes, each artifact's sha256
    bench --n-prompt 16 --n-gen 4 --reps 1 --output json --no-store
                                            JSON field names (dotted paths), artifact order, and per artifact
                                            quant, sizes, applied knobs, ctx, threads, identity fields
    eval --reference <checkpoint> --text <fixed text> --ctx 64 --chunks 4 --output json --no-store
                                            every figure (PPL, KL, same top, ...) and field names
    serve (127.0.0.1, a free port)          with the openai client, greedy (temperature 0, seed 0,
                                            16 tokens): a chat reply, a plain completion, a streamed chat:
                                            text, finish reason, token counts, model id

Excluded on purpose, because they differ between any two runs of one revision:
- manifest.json "created" (the build's UTC time): its value is masked before the bytes are compared.
  Nothing else in the manifest is masked: "versions" comes from the shared venv's installed packages
  (edgekit's own from its dist metadata), so both runs see the same, and a change there is real.
- bench: timings and measured memory (load_ms, pp/tg t/s, TTFT, samples, peaks, page faults, cgroup
  peak, achieved GB/s, roofline %), "timestamp", and the host's bandwidth probe. Their NAMES are compared.
- eval: "timestamp" and "seconds" (wall clock). Every other field is compared exactly.
- serve: a response's "id" and "created" (random and clock).
Only long flags are used, valid in both 975ea05's and main's CLI (short ones moved: build -o, -t).

Prints a table (check, before, after, same/different), the full values of each differing check, and
exits 1 if any check differs (2 if a revision cannot be exported).
"""

from __future__ import annotations

import argparse
import difflib
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_BEFORE = "975ea05"
CKPT = "tiny"  # the checkpoint folder's name becomes the model name in file names and records
BENCH_ARGS = ["--n-prompt", "16", "--n-gen", "4", "--reps", "1"]
EVAL_ARGS = ["--ctx", "64", "--chunks", "4"]
TEXT = "The quick brown fox jumps over the lazy dog.\ndef add(a, b):\n    return a + b\n" * 40
MESSAGES = [
    {"role": "system", "content": "You answer in one line."},
    {"role": "user", "content": "Name three colours."},
]
GREEDY = {"temperature": 0, "seed": 0, "max_tokens": 16}

# bench fields that are functions of the artifact, the target and the arguments (not of timing)
BENCH_GROUPS = {
    "quant": ["quant"],
    "sizes": [
        "file_bytes",
        "bytes_per_token",
        "extra.tensor_bytes",
        "kv_cache_bytes",
        "compute_buffer_bytes",
        "extra.lazy_bytes",
        "extra.model_buffers",
        "extra.gathered_bytes_per_token",
    ],
    "applied knobs": ["runtime", "extra.lazy_tensors"],
    "ctx": ["ctx"],
    "threads": ["threads"],
    "identity": [
        "sha256",
        "model",
        "format",
        "engine",
        "target",
        "n_prompt",
        "n_gen",
        "depth",
        "reps",
        "budget_bytes",
        "limit_bytes",
        "limit_mechanism",
        "page_size",
        "oom_killed",
    ],
}
EVAL_SKIP = {"timestamp", "seconds"}
CREATED = re.compile(rb'"created": "[^"]*"')


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def get(row: dict, dotted: str):
    for part in dotted.split("."):
        row = row.get(part) if isinstance(row, dict) else None
    return row


def field_names(rows: list[dict]) -> list[str]:
    """Every dotted key path in the records (lists are leaves)."""
    out: set[str] = set()

    def walk(d: dict, prefix: str) -> None:
        for k, v in d.items():
            out.add(prefix + k)
            if isinstance(v, dict):
                walk(v, prefix + k + ".")

    for r in rows:
        walk(r, "")
    return sorted(out)


def export(rev: str, dest: Path) -> str:
    sha = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--verify", rev + "^{commit}"], capture_output=True, text=True, check=True
    ).stdout.strip()
    dest.mkdir(parents=True)
    archive = subprocess.Popen(["git", "-C", str(ROOT), "archive", sha], stdout=subprocess.PIPE)
    subprocess.run(["tar", "-x", "-C", str(dest)], stdin=archive.stdout, check=True)
    if archive.wait() != 0:
        raise subprocess.CalledProcessError(archive.returncode, "git archive")
    return sha


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Side:
    """One revision's run: its export, its work folder, and what it observed (check name -> value)."""

    def __init__(self, tag: str, src: Path, work: Path):
        self.tag, self.src, self.work = tag, src, work
        self.work.mkdir(parents=True)
        self.env = {**os.environ, "PYTHONPATH": str(src), "EDGEKIT_DB": str(work / "results.db")}
        self.seen: dict[str, object] = {}

    def cli(self, name: str, *args: str) -> subprocess.CompletedProcess:
        print(f"  [{self.tag}] edgekit {name} ...", file=sys.stderr, flush=True)
        p = subprocess.run(
            [sys.executable, "-m", "edgekit.cli", name, *args],
            cwd=self.work,
            env=self.env,
            capture_output=True,
            text=True,
        )
        (self.work / f"{name}.stdout").write_text(p.stdout)
        (self.work / f"{name}.stderr").write_text(p.stderr)
        self.seen[f"{name}: exit code"] = p.returncode
        return p

    def run(self) -> None:
        which = subprocess.run(
            [sys.executable, "-c", "import edgekit; print(edgekit.__file__)"],
            env=self.env,
            cwd=self.work,
            capture_output=True,
            text=True,
        ).stdout.strip()
        if not which.startswith(str(self.src)):
            raise SystemExit(f"edgekit imports from {which}, not from {self.src}: PYTHONPATH is not first")
        if self.cli("synth", "--preset", "tiny", "--seed", "0", "--out", CKPT).returncode:
            return
        ckpt = self.work / CKPT
        self.seen["synth: checkpoint files sha256"] = {p.name: sha256(p) for p in sorted(ckpt.iterdir())}
        if self.cli("build", "--model", CKPT, "--target", "pi5", "--out", "dist").returncode:
            return
        dist = Path("dist") / CKPT / "pi5"
        manifest = (self.work / dist / "manifest.json").read_bytes()
        self.seen["build: manifest.json bytes (created masked)"] = CREATED.sub(b'"created": "*"', manifest).decode()
        for p in sorted((self.work / dist).iterdir()):
            if p.name != "manifest.json":
                self.seen[f"build: {p.name} sha256"] = sha256(p)
        self.bench(dist)
        self.eval(dist)
        self.serve(dist)

    def bench(self, dist: Path) -> None:
        p = self.cli("bench", str(dist), *BENCH_ARGS, "--output", "json", "--no-store")
        rows = self.records("bench", p.stdout)
        self.seen["bench: field names"] = field_names(rows)
        self.seen["bench: artifacts in order"] = [r.get("artifact") for r in rows]
        for r in rows:
            for group, fields in BENCH_GROUPS.items():
                value = {f: get(r, f) for f in fields}
                self.seen[f"bench {r.get('artifact')}: {group}"] = value if len(fields) > 1 else value[fields[0]]

    def records(self, name: str, stdout: str) -> list[dict]:
        try:
            rows = json.loads(stdout)
        except ValueError:
            rows = None
        self.seen[f"{name}: stdout is a JSON list"] = isinstance(rows, list)
        return rows if isinstance(rows, list) else []

    def eval(self, dist: Path) -> None:
        (self.work / "text.txt").write_text(TEXT, encoding="utf-8")
        p = self.cli(
            "eval",
            str(dist),
            "--reference",
            CKPT,
            "--text",
            "text.txt",
            *EVAL_ARGS,
            "--ref-cache",
            "ref.npz",
            "--output",
            "json",
            "--no-store",
        )
        rows = self.records("eval", p.stdout)
        self.seen["eval: field names"] = field_names(rows)
        for r in rows:
            name = r.get("artifact")
            for f in ("ppl", "kl_mean", "same_top"):
                self.seen[f"eval {name}: {f}"] = r.get(f)
            self.seen[f"eval {name}: every other field"] = {
                k: v for k, v in r.items() if k not in EVAL_SKIP | {"ppl", "kl_mean", "same_top"}
            }

    def serve(self, dist: Path) -> None:
        import openai  # the dev extra's client; deferred so --help and a failed export need none

        port = free_port()
        print(f"  [{self.tag}] edgekit serve ...", file=sys.stderr, flush=True)
        with open(self.work / "serve.log", "w") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "edgekit.cli", "serve", str(dist), "--host", "127.0.0.1", "--port", str(port)],
                cwd=self.work,
                env=self.env,
                stdout=log,
                stderr=log,
            )
        try:
            self.seen["serve: ready"] = ready = self.wait_health(proc, port)
            if not ready:
                return
            c = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", timeout=300, max_retries=0)
            model = c.models.list().data[0].id
            self.seen["serve: /v1/models id"] = model
            r = c.chat.completions.create(model=model, messages=MESSAGES, **GREEDY)
            self.seen["serve chat: reply text"] = r.choices[0].message.content
            self.seen["serve chat: finish reason"] = r.choices[0].finish_reason
            self.seen["serve chat: tokens prompt/completion/total"] = [
                r.usage.prompt_tokens,
                r.usage.completion_tokens,
                r.usage.total_tokens,
            ]
            self.seen["serve chat: model"] = r.model
            t = c.completions.create(model=model, prompt="def add(a, b):", **GREEDY)
            self.seen["serve completion: text"] = t.choices[0].text
            self.seen["serve completion: finish reason / tokens"] = [
                t.choices[0].finish_reason,
                t.usage.prompt_tokens,
                t.usage.completion_tokens,
            ]
            text, finish, usage = "", None, None
            for chunk in c.chat.completions.create(
                model=model, messages=MESSAGES, stream=True, stream_options={"include_usage": True}, **GREEDY
            ):
                for ch in chunk.choices:
                    text += ch.delta.content or ""
                    finish = ch.finish_reason or finish
                if chunk.usage:
                    usage = [chunk.usage.prompt_tokens, chunk.usage.completion_tokens]
            self.seen["serve streamed chat: text"] = text
            self.seen["serve streamed chat: finish reason / tokens"] = [finish, usage]
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    @staticmethod
    def wait_health(proc: subprocess.Popen, port: int, timeout: float = 180) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
                    if r.status == 200:
                        return True
            except OSError:
                pass
            time.sleep(0.5)
        return False


def short(v: object, width: int = 40) -> str:
    """A cell: the value if it is short, else a digest (the full values of a differing check follow the table)."""
    if isinstance(v, str) and re.fullmatch(r"[0-9a-f]{64}", v):
        return v[:16] + "…"
    s = json.dumps(v, sort_keys=True, ensure_ascii=False)
    if isinstance(v, str) and s[1:-1] == v:
        s = v  # a plain string is shown bare; one with newlines or quotes stays escaped
    if len(s) <= width:
        return s
    size = f"{len(v)} items" if isinstance(v, (dict, list)) else f"{len(v)} chars" if isinstance(v, str) else ""
    return f"digest {hashlib.sha256(s.encode()).hexdigest()[:10]} ({size})"


def report(before: Side, after: Side, labels: tuple[str, str]) -> int:
    missing = "(missing)"
    names = list(dict.fromkeys([*before.seen, *after.seen]))
    rows = []
    for n in names:
        a, b = before.seen.get(n, missing), after.seen.get(n, missing)
        rows.append(
            (
                n,
                short(a) if a is not missing else a,
                short(b) if b is not missing else b,
                "same" if a == b and a is not missing else "DIFFERENT",
            )
        )
    head = ("check", f"before ({labels[0]})", f"after ({labels[1]})", "")
    w = [max(len(r[i]) for r in [*rows, head]) for i in range(3)]
    print(f"{head[0]:<{w[0]}}  {head[1]:<{w[1]}}  {head[2]:<{w[2]}}  same/different")
    print(f"{'-' * w[0]}  {'-' * w[1]}  {'-' * w[2]}  --------------")
    for r in rows:
        print(f"{r[0]:<{w[0]}}  {r[1]:<{w[1]}}  {r[2]:<{w[2]}}  {r[3]}")
    differ = [r[0] for r in rows if r[3] != "same"]
    tail = f"; {len(differ)} different:" if differ else "."
    print(f"\n{len(rows) - len(differ)} of {len(rows)} checks the same{tail}")
    for n in differ:
        a, b = before.seen.get(n, missing), after.seen.get(n, missing)
        print(f"\n== {n}")
        if isinstance(a, str) and isinstance(b, str) and "\n" in a + b:
            sys.stdout.writelines(difflib.unified_diff(a.splitlines(True), b.splitlines(True), labels[0], labels[1]))
        elif isinstance(a, list) and isinstance(b, list) and n.endswith("field names"):
            print(f"  only before: {sorted(set(a) - set(b))}\n  only after:  {sorted(set(b) - set(a))}")
        elif isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b)):
                if a.get(k, missing) != b.get(k, missing):
                    print(f"  {k}: {json.dumps(a.get(k, missing))} -> {json.dumps(b.get(k, missing))}")
        else:
            print(f"  before: {json.dumps(a)}\n  after:  {json.dumps(b)}")
    return 1 if differ else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("before", nargs="?", default=DEFAULT_BEFORE, help=f"git revision (default {DEFAULT_BEFORE})")
    ap.add_argument("after", nargs="?", default="HEAD", help="git revision (default HEAD)")
    ap.add_argument("--keep", action="store_true", help="keep the temp folder (exports, outputs, logs)")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="edgekit-compare-"))
    try:
        sides, labels = [], []
        for tag, rev in (("before", a.before), ("after", a.after)):
            try:
                sha = export(rev, tmp / tag / "src")
            except subprocess.CalledProcessError:
                print(f"error: cannot export revision {rev!r} (git rev-parse / git archive failed)", file=sys.stderr)
                return 2
            labels.append(sha[:7] if sha.startswith(rev) else f"{rev} = {sha[:7]}")
            sides.append(Side(tag, tmp / tag / "src", tmp / tag / "run"))
        for s in sides:
            s.run()
        return report(sides[0], sides[1], (labels[0], labels[1]))
    finally:
        if a.keep:
            print(f"kept: {tmp}", file=sys.stderr)
        else:
            subprocess.run(["rm", "-rf", str(tmp)])


if __name__ == "__main__":
    sys.exit(main())
