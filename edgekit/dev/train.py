"""Train a synthetic Gemma 4 on real text for a few minutes on CPU: a model that has learned something.

A random-weight model's logits are flat and have none of the outlier structure that makes 4-bit
quantization hurt a trained network, so its KL cannot rank recipes. ``edgekit synth --train TEXT``
takes a preset's config (the tiny one keeps every Gemma 4 feature: PLE, KV sharing, sliding + full
layers, double-wide MLP, softcap), learns a BPE tokenizer on TEXT with Gemma 4's special tokens and
chat template, and trains transformers' own ``Gemma4ForCausalLM`` with torch: AdamW, warm-up then
cosine decay, windows of ``seq`` tokens starting with <bos> as llama-perplexity scores them, drawn
from a seeded generator. The run is deterministic for a given seed, step count, thread count and
torch build; ``minutes`` only caps the wall time (the log says when the cap cut it short, and such a
run is not reproducible). The checkpoint is written in bf16 in Hugging Face layout with
``train_log.json`` (losses, settings, the text's sha256).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from ..core.errors import ConfigError, EngineMissingError
from ..core.fsutil import atomic_dir
from ..eval.text import read_text
from .hf_model import load_torch_model, text_state
from .synth import synth
from .synthetic_tokenizer import write_synthetic_tokenizer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainOptions:
    steps: int = 100
    minutes: float | None = None  # wall-time cap (stops early; the run is then not reproducible)
    seed: int = 0
    batch: int = 2
    seq: int = 512  # eval's default context: every position it scores was trained
    lr: float = 2e-3
    warmup: int = 10
    threads: int = 2
    eval_windows: int = 8  # held-out windows (per held-out text) for the loss before and after
    eval_every: int = 0  # also log the held-out loss every this many steps (0: before and after only)


def _paragraphs(text: str) -> list[str]:
    return [p for p in text.split("\n\n") if p.strip()]


def _windows(ids: np.ndarray, n: int, seq: int, bos: int, rng: np.random.Generator) -> np.ndarray:
    starts = rng.integers(0, len(ids) - seq, size=n)
    out = np.stack([ids[s : s + seq] for s in starts])
    out[:, 0] = bos
    return out


def train(
    out: Path,
    text_path: Path,
    preset: str = "tiny",
    opts: TrainOptions = TrainOptions(),
    heldout_path: Path | list[Path] | None = None,
) -> Path:
    """Write a checkpoint trained on ``text_path`` to ``out`` (atomically); return ``out``. With several
    held-out texts (one per language), each one's loss is logged (the headline is their mean)."""
    try:
        # deferred: torch loads only when training runs
        import torch
    except ImportError:
        raise EngineMissingError("training needs torch and transformers; `pip install 'edgekit[dev]'`") from None

    text = read_text(text_path)
    held_paths = (
        [] if heldout_path is None else [heldout_path] if isinstance(heldout_path, (str, Path)) else list(heldout_path)
    )
    helds = [read_text(p) for p in held_paths]
    torch.manual_seed(opts.seed)
    torch.set_num_threads(opts.threads)
    out = Path(out)
    with atomic_dir(out) as tmp:
        init = synth(tmp / "init", preset=preset, seed=opts.seed, dtype="F32", extra_towers=False)
        cfg = json.loads((init / "config.json").read_text())
        vocab = cfg["text_config"]["vocab_size"]
        write_synthetic_tokenizer(init, vocab, texts=_paragraphs(text))
        tok = Tokenizer.from_file(str(init / "tokenizer.json"))
        ids = np.array(tok.encode(text, add_special_tokens=False).ids, dtype=np.int64)
        if len(ids) < 4 * opts.seq:
            raise ConfigError(
                f"{text_path}: {len(ids)} tokens is too little text to train on; pass at least "
                f"{4 * opts.seq} tokens' worth"
            )
        bos = cfg["text_config"]["bos_token_id"]
        rng = np.random.Generator(np.random.PCG64(opts.seed))
        held_xs = []
        for p, h in zip(held_paths, helds, strict=True):
            h_ids = np.array(tok.encode(h, add_special_tokens=False).ids, dtype=np.int64)
            if len(h_ids) <= opts.seq:
                raise ConfigError(f"{p}: {len(h_ids)} tokens is too little held-out text; pass more than {opts.seq}")
            held_xs.append(torch.from_numpy(_windows(h_ids, opts.eval_windows, opts.seq, bos, rng)))

        model = load_torch_model(init, "float32").train()
        decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
        rest = [p for n, p in model.named_parameters() if p.ndim < 2]
        optim = torch.optim.AdamW(
            [{"params": decay, "weight_decay": 0.01}, {"params": rest, "weight_decay": 0.0}],
            lr=opts.lr,
            betas=(0.9, 0.95),
        )

        def lr_at(step: int) -> float:
            if step < opts.warmup:
                return opts.lr * (step + 1) / opts.warmup
            frac = (step - opts.warmup) / max(1, opts.steps - opts.warmup)
            return opts.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * frac)))

        def held_losses() -> list[float]:
            model.eval()
            with torch.no_grad():
                out = [float(model(input_ids=x, labels=x, use_cache=False).loss) for x in held_xs]
            model.train()
            return out

        def held_loss() -> float | None:
            if not held_xs:
                return None
            per = held_losses()
            curve.append(
                {
                    "step": len(losses),
                    "loss": float(np.mean(per)),
                    "per_text": {Path(p).name: round(x, 4) for p, x in zip(held_paths, per, strict=True)},
                }
            )
            log.info("held-out loss at step %d: %.3f", len(losses), curve[-1]["loss"])
            return curve[-1]["loss"]

        losses: list[float] = []
        curve: list[dict] = []
        held_before = held_loss()
        t0, capped = time.monotonic(), False
        for step in range(opts.steps):
            if opts.minutes is not None and time.monotonic() - t0 > opts.minutes * 60:
                capped = True
                log.warning("training stopped at step %d of %d: the %.1f-minute cap", step, opts.steps, opts.minutes)
                break
            for g in optim.param_groups:
                g["lr"] = lr_at(step)
            x = torch.from_numpy(_windows(ids, opts.batch, opts.seq, bos, rng))
            loss = model(input_ids=x, labels=x, use_cache=False).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optim.step()
            optim.zero_grad(set_to_none=True)
            losses.append(loss.item())
            if step % 10 == 0 or step == opts.steps - 1:
                log.info("step %d/%d loss %.3f (%.0f s)", step + 1, opts.steps, losses[-1], time.monotonic() - t0)
            if opts.eval_every and (step + 1) % opts.eval_every == 0 and step + 1 < opts.steps:
                held_loss()
        held_after = held_loss()
        seconds = time.monotonic() - t0

        # deferred: safetensors.torch imports torch
        from safetensors.torch import save_file

        state = {k: v.detach().to(torch.bfloat16).contiguous() for k, v in text_state(model).items()}
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        cfg.pop("_edgekit_synthetic", None)
        cfg["_edgekit_trained"] = {"preset": preset, "text_sha256": hashlib.sha256(text.encode()).hexdigest()}
        (tmp / "config.json").write_text(json.dumps(cfg, indent=1))
        for name in ("generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            (init / name).replace(tmp / name)
        n = len(losses)
        first, last = float(np.mean(losses[:10])), float(np.mean(losses[-10:]))
        (tmp / "train_log.json").write_text(
            json.dumps(
                {
                    "preset": preset,
                    "options": asdict(opts),
                    "text": Path(text_path).name,
                    "heldout": [Path(p).name for p in held_paths],
                    "text_sha256": hashlib.sha256(text.encode()).hexdigest(),
                    "text_tokens": len(ids),
                    "steps_done": n,
                    "capped_by_minutes": capped,
                    "seconds": round(seconds, 1),
                    "train_loss_first10": first,
                    "train_loss_last10": last,
                    "heldout_loss_before": held_before,
                    "heldout_loss_after": held_after,
                    "heldout_curve": curve,
                    "torch": torch.__version__,
                    "losses": [round(x, 4) for x in losses],
                },
                indent=1,
            )
        )

        shutil.rmtree(init)
    log.info("trained %s on %s: loss %.3f → %.3f in %d steps (%.0f s)", preset, text_path, first, last, n, seconds)
    return out
