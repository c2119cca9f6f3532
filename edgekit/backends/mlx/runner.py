"""MLX runner over mlx-lm: the model's forward with an mlx-lm prompt cache, evaluated step by step.

mlx-lm's generate() fuses prefill, sampling and decode (and overlaps steps with async_eval), so the
runner calls the model itself to time prefill and decode apart, the way mlx-lm's generate_step
drives it (the prompt but its last token in chunks, then one token per step), with ``mx.eval``
closing every timed step.
MLX has no thread-count knob on CPU, so ``threads`` is recorded as not applicable.

Knobs: ``KNOBS`` below. ``kv_fill`` is a benchmark aid for hosts where MLX is too slow to prefill
thousands of tokens (E2B 4-bit runs at ≈20 s/token on an x86 CPU): it puts positions of stand-in
keys/values in each layer's cache at every reset, before the prompt (llama-bench's depth), so a long
context's memory and attention cost are measured without its prefill; the record keeps the knob,
so a figure measured with it says so.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

from ...core.errors import BenchError, EngineMissingError
from ...profiles.knobs import Knob, Schema
from ..runner import RunOptions

KNOBS = Schema(
    "mlx",
    [
        Knob(
            "ple",
            str,
            "where the per-layer-embedding table lives (edgekit.backends.mlx.ple): disk reads rows in flight",
            default="auto",
            choices=("auto", "disk", "mmap", "resident"),
        ),
        Knob("n_batch", int, "prefill chunk (mlx-lm's prefill_step_size)", default=2048, min=1),
        Knob("kv_fill", int, "positions of stand-in keys/values in every cache before the prompt", default=0, min=0),
        # bench --image/--audio (backends/mlx/bench_media.py): mlx-vlm's towers kept, or loaded per medium and
        # freed before the text is evaluated; run and serve keep them resident
        Knob(
            "towers",
            str,
            "bench's towers: resident, or loaded per medium and freed before the text",
            choices=("resident", "on_demand"),
        ),
    ],
)


def _import() -> Any:
    try:
        # deferred: mlx (the mlx extra) loads only when an MLX model is built or run
        import mlx.core as mx
        import mlx_lm  # noqa: F401
    except ImportError:
        raise EngineMissingError("mlx / mlx-lm are not installed; `pip install 'edgekit[mlx]'`") from None
    return mx


def load_mlx_model(path: Path, ple: str = "auto") -> Any:
    """Load an MLX artifact folder into an mlx-lm model: the one place the runner does.

    edgekit's MLX format keeps the PLE table memory-mapped through ``edgekit.backends.mlx.ple`` (``ple`` =
    "auto" | "mmap" | "resident", the target's ``ple`` knob); without it, stock mlx-lm loads the folder."""
    try:
        from .ple import load_mlx_model as load_with_ple  # deferred: as mlx, only when an MLX model is run
    except ImportError:
        from mlx_lm.utils import load_model  # deferred: the engine, as above

        return load_model(Path(path))[0]
    return load_with_ple(path, ple=ple, tokenizer=False)[0]  # ids are fed: the tokenizer would only add RSS


class MlxRunner:
    engine = "mlx"

    def __init__(self) -> None:
        self.mx = _import()
        self.model: Any = None
        self.cache: Any = None
        self.logits: Any = None

    def load(self, path: Path, opts: RunOptions) -> None:
        mx = self.mx
        try:
            self.model = load_mlx_model(path, ple=opts.knobs.get("ple", "auto"))
        except (OSError, ValueError, KeyError) as e:
            raise BenchError(
                f"{path.name}: mlx-lm could not load it ({e.__class__.__name__}: {e}); rebuild it with `edgekit build`"
            ) from None
        mx.eval(self.model.parameters())
        cfg = json.loads((Path(path) / "config.json").read_text())
        text = cfg.get("text_config", {})
        self._n_vocab = int(cfg.get("vocab_size") or text.get("vocab_size"))
        bos = cfg.get("bos_token_id", text.get("bos_token_id"))
        self._bos = int(bos) if isinstance(bos, int) else None
        self.step = opts.knobs.get("n_batch", 2048)
        self.kv_max = 0
        self.kv_fill = opts.knobs.get("kv_fill", 0)
        self.knobs = dict(opts.knobs)
        self._ctx = opts.ctx
        # "auto" resolves to where the table ended up: the record states that, not the request.
        text = getattr(getattr(self.model, "language_model", None), "model", None)
        ple = getattr(text, "embed_tokens_per_layer", None)
        if ple is None:
            self.knobs.pop("ple", None)  # no PLE table: the knob did nothing
        else:
            self.knobs["ple"] = "disk" if getattr(ple, "table", None) is not None else "resident"

    def n_vocab(self) -> int:
        return self._n_vocab

    def bos(self) -> Optional[int]:
        return self._bos

    def reset(self) -> None:
        from mlx_lm.models.cache import make_prompt_cache  # deferred: the engine, as _import()

        self.cache = make_prompt_cache(self.model)
        self.logits = None
        self.mx.clear_cache()
        if self.kv_fill:
            self._fill(self.kv_fill)

    def _fill(self, n: int) -> None:
        """Append ``n`` positions of random keys/values to every cache, in prefill-sized chunks through
        mlx-lm's own update path, so each cache grows (or rotates) as a real prefill would grow it."""
        mx = self.mx
        # Gemma's KV-shared last layers own no cache (mlx-lm's make_cache): the caches are the first layers'
        for layer, cache in zip(self.model.layers, self.cache, strict=False):
            attn = layer.self_attn
            dtype = attn.q_norm.weight.dtype  # the activations' dtype: keys are stored as computed
            for i in range(0, n, self.step):
                shape = (1, attn.n_kv_heads, min(self.step, n - i), attn.head_dim)
                cache.update_and_fetch(mx.random.normal(shape).astype(dtype), mx.random.normal(shape).astype(dtype))
            mx.eval([cache.state])

    def prefill(self, tokens: Sequence[int]) -> None:
        # As mlx-lm's generate_step: all but the last token in chunks (cache only), then the last
        # token alone for the logits. Besides matching what users run, this matters on MLX's CPU
        # backend, where the quantized matmul path depends on the row count (a 16-token forward
        # measured 2.3x slower here than 15 tokens then 1).
        mx = self.mx
        toks = mx.array(list(tokens), dtype=mx.int32)[None]
        n = toks.shape[1]
        for i in range(0, n - 1, self.step):
            self.model(toks[:, i : min(i + self.step, n - 1)], cache=self.cache)
            mx.eval([c.state for c in self.cache])
        self.logits = self.model(toks[:, n - 1 :], cache=self.cache)[:, -1, :]
        mx.eval(self.logits)
        self.kv_max = max(self.kv_max, self._kv_bytes() or 0)

    def _kv_bytes(self) -> Optional[int]:
        try:
            return int(sum(c.nbytes for c in self.cache))
        except (AttributeError, TypeError):  # a cache class without nbytes
            return None

    def decode(self, token: int) -> None:
        mx = self.mx
        self.logits = self.model(mx.array([[token]], dtype=mx.int32), cache=self.cache)[:, -1, :]
        mx.eval(self.logits)

    def next_token(self) -> int:
        return int(self.mx.argmax(self.logits, axis=-1).item())

    def logits_all(self, tokens: Sequence[int], first: int = 0) -> Any:
        """Logits [len(tokens) - first, n_vocab] (float32 numpy) of one sequence run through mlx-lm's model
        call from an empty prompt cache, in prefill chunks of n_batch (edgekit eval)."""
        # deferred: the engine, as _import() (numpy only for eval's logits)
        import numpy as np
        from mlx_lm.models.cache import make_prompt_cache

        mx = self.mx
        cache = make_prompt_cache(self.model)
        toks = mx.array([int(t) for t in tokens], dtype=mx.int32)[None]
        parts = []
        for i in range(0, toks.shape[1], self.step):
            logits = self.model(toks[:, i : i + self.step], cache=cache)[0]
            lo = max(first - i, 0)
            if lo < logits.shape[0]:
                part = logits[lo:].astype(mx.float32)
                mx.eval(part)
                parts.append(np.array(part))
            else:
                mx.eval([c.state for c in cache])
        return np.concatenate(parts) if parts else np.empty((0, self._n_vocab), np.float32)

    def figures(self) -> dict[str, Any]:
        # The largest cache seen at the end of a prefill (the prompt is the longest sequence run).
        return {"kv_cache_bytes": self.kv_max or self._kv_bytes(), "mlx_peak_bytes": int(self.mx.get_peak_memory())}

    def applied(self) -> dict[str, Any]:
        # mlx-lm's caches grow as needed: the context is the one the bench asked for; no thread knob.
        return {"ctx": self._ctx, "threads": None, "knobs": dict(self.knobs)}

    def close(self) -> None:
        self.model = self.cache = self.logits = None
