"""A backend in pure Python, registered only by the tests (as simonw/llm's tests register a MockModel).

Its artifact is a JSON file ``<model>-<quant>.fake`` whose keys are the knobs a test turns: how fast it
prefills and decodes (milliseconds per token, slept), how much memory it holds while loaded (touched
bytes), where it fails (``fail``: "load" raises, "crash" ends the process, "decode" raises on decode
call ``fail_after`` + 1), and what it says (``reply``: the ids generated after any prompt, then a
deterministic walk). Nothing is compiled: bench, sweeps, the budget gate and serve's scheduler run on it
as on llama.cpp, with figures a test can predict.

``fake_backend`` in conftest.py registers it and names this module in $EDGEKIT_PLUGINS, so the bench
child (a fresh interpreter) imports and registers it too.
"""

from __future__ import annotations

import json
import os
import random
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np

from edgekit.backends.backend import Backend
from edgekit.backends.format import BuildContext, ChatText, LabelRule, TokenBytes
from edgekit.backends.generator import GenOptions, GenRequest, Scheduler, Slot
from edgekit.backends.logits import Vocab
from edgekit.backends.registry import BACKENDS
from edgekit.backends.runner import RunOptions
from edgekit.core.errors import ArtifactError, BenchError, ConfigError
from edgekit.profiles.knobs import Knob, Schema

NAME = "fake"
BOS, EOS, TURN_END = 1, 2, 3  # ids 4 and 5 are the two bytes of "é"; 6.. are words "w<id> "
SPECIAL = {"<pad>": 0, "<bos>": BOS, "<eos>": EOS, "<turn|>": TURN_END}
TEMPLATE = "<bos>{% for m in messages %}{{ m['content'] }} <turn|>{% endfor %}"
DEFAULTS: dict[str, Any] = {
    "n_vocab": 64,
    "n_ctx_train": 4096,
    "weights_bytes": 1_000_000,  # bytes a decoded token reads (the roofline's)
    "prefill_ms": 0.0,  # per prompt token
    "decode_ms": 0.0,  # per decode call (the generator: per step, all slots at once)
    "hold_mb": 0,  # MB (1e6 bytes) written and held from load to close
    "fail": "",  # "" | "load" | "crash" | "decode"
    "fail_after": 0,  # decode calls that succeed before "decode" fails
    "reply": [],  # the ids generated after any prompt (then the walk below)
    "logit_peak": 10.0,  # eval's logits: this on the walk's next token, 0 on every other
}
KNOBS = Schema(
    NAME,
    [
        Knob("kv_bytes", int, "KV-cache bytes per context position (the figure the runner reports)", default=64, min=1),
        Knob("n_batch", int, "prefill chunk", default=512, min=1),
    ],
)


def write_artifact(folder: Path, quant: str = "F1", model: str = "fake", **knobs: Any) -> Path:
    """A .fake artifact with ``knobs`` over DEFAULTS."""
    unknown = set(knobs) - set(DEFAULTS)
    assert not unknown, unknown
    path = Path(folder) / f"{model}-{quant}.{NAME}"
    path.write_text(json.dumps({"quant": quant, **DEFAULTS, **knobs}))
    return path


def read_artifact(path: Path) -> dict[str, Any]:
    try:
        return {**DEFAULTS, **json.loads(Path(path).read_text())}
    except (OSError, ValueError) as e:
        raise ArtifactError(f"{Path(path).name}: not a fake artifact ({e})") from None


def walk(last: int, n_vocab: int) -> int:
    """The token after ``last`` when the reply is spent: a fixed walk over the word ids."""
    return 6 + (last * 5 + 1) % (n_vocab - 6)


class FakeFormat:
    name = NAME
    engine = NAME
    recipe_keys: frozenset[str] = frozenset()

    def check(self, recipe: Any) -> None:
        pass

    def takes_imatrix(self, recipe: Any) -> bool:
        return False

    def needs_imatrix(self, recipe: Any) -> list[str]:
        return []

    def build(self, ckpt: Any, recipe: Any, ctx: BuildContext) -> Any:
        raise ConfigError("the fake backend converts no checkpoint; tests write its artifacts (write_artifact)")

    def detect(self, path: Path) -> bool:
        return path.is_file() and path.suffix == f".{NAME}"

    def quant_label(self, path: Path) -> str:
        return str(read_artifact(path)["quant"])

    def model_name(self, path: Path) -> str:
        return path.stem

    def token_bytes(self, path: Path) -> TokenBytes:
        w = int(read_artifact(path)["weights_bytes"])
        return TokenBytes(total=w, whole=w, file_tensor_bytes=w)

    def max_context(self, path: Path) -> Optional[int]:
        return int(read_artifact(path)["n_ctx_train"])

    def chat_template(self, path: Path) -> ChatText:
        return ChatText(TEMPLATE, "<bos>", "<eos>")

    def recipe_label(self, recipe: Any) -> Optional[LabelRule]:
        return None


class FakeRunner:
    engine = NAME

    def load(self, path: Path, opts: RunOptions) -> None:
        self.art = read_artifact(path)
        if self.art["fail"] == "crash":
            os._exit(3)  # as an engine's abort: no exception, no result
        if self.art["fail"] == "load":
            raise BenchError(f"{Path(path).name}: the fake engine failed to load it (fail = load)")
        self.hold = b"\x01" * int(self.art["hold_mb"] * 1e6)  # written, so resident
        self.opts, self.decodes, self.last = opts, 0, BOS

    def n_vocab(self) -> int:
        return int(self.art["n_vocab"])

    def bos(self) -> Optional[int]:
        return BOS

    def reset(self) -> None:
        self.last = BOS

    def prefill(self, tokens: Sequence[int]) -> None:
        time.sleep(self.art["prefill_ms"] * len(tokens) / 1e3)
        self.last = int(tokens[-1]) if len(tokens) else self.last

    def decode(self, token: int) -> None:
        if self.art["fail"] == "decode" and self.decodes >= self.art["fail_after"]:
            raise BenchError(f"the fake engine failed on decode call {self.decodes + 1} (fail = decode)")
        self.decodes += 1
        time.sleep(self.art["decode_ms"] / 1e3)
        self.last = int(token)

    def next_token(self) -> int:
        return walk(self.last, self.n_vocab())

    def figures(self) -> dict[str, Any]:
        return {"kv_cache_bytes": self.opts.ctx * self.opts.knobs["kv_bytes"], "compute_buffer_bytes": 0}

    def applied(self) -> dict[str, Any]:
        return {"ctx": self.opts.ctx, "threads": self.opts.threads, "knobs": dict(self.opts.knobs)}

    def close(self) -> None:
        self.hold = b""


def pieces(n_vocab: int) -> list[bytes]:
    out = [b"<pad>", b"<bos>", b"<eos>", b"<turn|>", b"\xc3", b"\xa9"]
    return out + [f"w{i} ".encode() for i in range(6, n_vocab)]


class FakeGenerator(Scheduler):
    """Every busy slot advances one token per step (a prompt in one step); a step sleeps decode_ms once."""

    logprobs_supported = False

    def __init__(self, path: Path, opts: RunOptions, gen: GenOptions):
        super().__init__(gen.slots, gen.max_queue)
        self.runner = FakeRunner()
        self.runner.load(Path(path), opts)
        self.n_ctx, self.art = opts.ctx, self.runner.art
        self._pieces = pieces(self.n_vocab)
        self.steps = 0  # engine steps run (a test reads how requests shared them)
        self.thread.start()

    @property
    def n_vocab(self) -> int:
        return self.runner.n_vocab()

    def tokenize(self, text: str, special: bool = True) -> list[int]:
        parts = re.split("(" + "|".join(map(re.escape, SPECIAL)) + ")", text) if special else [text]
        ids: list[int] = []
        for part in parts:
            if special and part in SPECIAL:
                ids.append(SPECIAL[part])
                continue
            for word in part.split():
                m = re.fullmatch(r"w(\d+)", word)
                ids.append(int(m[1]) if m and 6 <= int(m[1]) < self.n_vocab else walk(len(word), self.n_vocab))
        return ids

    def special_texts(self) -> list[str]:
        return list(SPECIAL)

    def piece(self, tok: int) -> bytes:
        return self._pieces[tok]

    def stop_ids(self, texts: Sequence[str]) -> frozenset[int]:
        return frozenset({EOS} | {SPECIAL[t] for t in texts if t in SPECIAL})

    def figures(self) -> dict[str, Any]:
        return self.runner.figures()

    def _start(self, slot: Slot, req: GenRequest) -> None:
        slot.start(req, 0)
        slot.rng = random.Random(req.sampling.seed)  # type: ignore[attr-defined]

    def _finish(self, slot: Slot, reason: str, error: str = "") -> None:
        self._done(slot, reason, error)

    def _step(self) -> None:
        for s in self.slots:
            if s.req is not None and s.req.cancelled.is_set():
                self._finish(s, "cancelled")
        busy = [s for s in self.slots if s.req is not None]
        if not busy:
            return
        self.runner.decode(busy[0].last)  # one engine step for all (sleeps decode_ms; may fail)
        self.steps += 1
        for s in busy:
            req = s.req
            assert req is not None
            if s.prefilling:
                s.pos, s.last = len(req.prompt), req.prompt[-1]
            k, reply = s.n_gen, self.art["reply"]
            if req.sampling.temperature > 0:
                tok = 6 + s.rng.randrange(self.n_vocab - 6)  # type: ignore[attr-defined]
            else:
                tok = int(reply[k]) if k < len(reply) else walk(s.last, self.n_vocab)
            s.last = tok
            reason = self._emit(s, tok, self.piece(tok))
            if reason:
                self._finish(s, reason)

    def close(self) -> None:
        super().close()
        self.runner.close()


class FakeSource:
    """Logits: ``logit_peak`` on the walk's next token, zeros elsewhere."""

    def __init__(self, path: Path, opts: RunOptions):
        self.label, self.runner = Path(path).name, FakeRunner()
        self.runner.load(Path(path), opts)

    def vocab(self) -> Vocab:
        return Vocab(
            [p.decode("utf-8", "replace") for p in pieces(self.runner.n_vocab())], frozenset(SPECIAL.values()), BOS
        )

    def tokenize(self, text: str) -> list[int]:
        return [walk(len(w), self.runner.n_vocab()) for w in text.split()]

    def logits(self, window: Sequence[int], first: int) -> np.ndarray:
        n = self.runner.n_vocab()
        out = np.zeros((len(window) - first, n), np.float32)
        for row, tok in enumerate(window[first:]):
            out[row, walk(int(tok), n)] = self.runner.art["logit_peak"]
        return out

    def close(self) -> None:
        self.runner.close()


BACKEND = Backend(
    name=NAME,
    format=FakeFormat(),
    knobs=KNOBS,
    version_key="edgekit",
    runner=FakeRunner,
    generator=FakeGenerator,
    logits=FakeSource,
)
BACKENDS.register(NAME, BACKEND)  # on import: how the bench child, named in $EDGEKIT_PLUGINS, gets it
