"""MLX artifacts: numerics against transformers' Gemma 4 (fp32), the PLE hook, and GGUF agreement.

Prompts are 80 tokens against the tiny preset's sliding window of 32, so sliding-window masks,
full-attention layers and the KV-shared layers all take part.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

mx = pytest.importorskip("mlx.core", reason="MLX tests need edgekit[mlx]")

from reference import hf_logits, hf_model, mean_kl  # noqa: E402

N_TOKENS = 80
SEED = int(os.environ.get("EDGEKIT_TEST_SEED", "2"))  # bounds below were measured on seeds 0-3


@pytest.fixture(scope="module")
def built(tiny_ckpt, tmp_path_factory):
    from edgekit.builder.pipeline import build

    return build(
        str(tiny_ckpt),
        target="m2",
        quants=["mlx-bf16", "mlx-4bit", "mlx-8bit", "f16"],
        out=tmp_path_factory.mktemp("dist"),
    )


@pytest.fixture(scope="module")
def tokens():
    return [2, *np.random.default_rng(SEED).integers(5, 1000, N_TOKENS - 1).tolist()]


@pytest.fixture(scope="module")
def hf(tiny_ckpt, tokens):
    # mlx-lm computes the tanh GELU exactly; no ggml table emulation here.
    return hf_logits(hf_model(tiny_ckpt, emulate_ggml_gelu=False), tokens)


def mlx_logits(model, tokens) -> np.ndarray:
    return np.array(model(mx.array([tokens]))[0].astype(mx.float32))


@pytest.fixture(scope="module")
def fp32(built, tokens):
    from edgekit.backends.mlx.ple import load_mlx_model

    model, _ = load_mlx_model(built / "tiny-gemma4-mlx-bf16", dtype=mx.float32)
    return mlx_logits(model, tokens)


def test_fp32_matches_transformers(fp32, hf):
    # bf16 weights computed in fp32 on both sides: what remains is summation order. Measured max |Δ|
    # 1.2e-6 to 1.6e-6 of the logit range (seeds 0-3); bound 1e-5 of the range, 6x that. A wrong mask,
    # rope, norm or softcap moves logits by O(1), 1e4 times this.
    span = float(hf.max() - hf.min())
    err = float(np.abs(fp32 - hf).max())
    print(f"MLX fp32 vs transformers: max |Δlogit| {err:.3g} over a range of {span:.3g}")
    assert err <= 1e-5 * span
    assert (fp32.argmax(1) == hf.argmax(1)).all()


def test_bf16_compute_bound(built, tokens, hf):
    # The bf16 artifact as users run it (bf16 activations, 2^-8 relative rounding per op): measured
    # mean KL vs transformers fp32 7.1e-4 to 8.7e-4 nats, argmax agreement 0.975-1.0 (seeds 0-3).
    # Bounds 2e-3 nats and 0.95: 4-bit weights alone give 0.3 nats, a wrong tensor far more.
    from edgekit.backends.mlx.ple import load_mlx_model

    model, _ = load_mlx_model(built / "tiny-gemma4-mlx-bf16")
    bf16 = mlx_logits(model, tokens)
    kl = mean_kl(hf, bf16)
    agree = (bf16.argmax(1) == hf.argmax(1)).mean()
    print(f"MLX bf16 compute: mean KL {kl:.2e} nats, argmax agreement {agree:.3f}")
    assert kl <= 2e-3 and agree >= 0.95


def quality(built, name, tokens, fp32) -> tuple[float, float, float]:
    from edgekit.backends.mlx.ple import load_mlx_model

    # Computed in fp32 (the bf16 scales cast exactly) to measure what the quantized weights cost, apart
    # from bf16 activations (test_bf16_compute_bound); MLX's CPU matmul is also 10x faster in fp32.
    model, _ = load_mlx_model(built / name, dtype=mx.float32)
    q = mlx_logits(model, tokens)
    agree = q.argmax(1) == fp32.argmax(1)
    top2 = np.sort(fp32, 1)[:, -2:]
    noise = float(np.sqrt(((q - fp32) ** 2).mean()))
    decisive = (top2[:, 1] - top2[:, 0]) > 4 * noise
    return mean_kl(fp32, q), float(agree.mean()), float(agree[decisive].mean()) if decisive.any() else 1.0


def test_4bit_argmax_and_kl_bounded(built, tokens, fp32):
    # Measured vs fp32 on seeds 0-3: mean KL 0.28-0.31 nats, argmax agreement 0.75-0.83 (a random
    # model's top-2 margins are flat), the same as GGUF Q4_0 (0.24-0.25). Bounds: KL 0.45, agreement
    # 0.65; a tensor written with the wrong layout, bits or scales gives KL > 1. Where fp32's margin
    # is > 4x the 4-bit noise, a flip can only be a broken tensor.
    kl, agree, decisive = quality(built, "tiny-gemma4-mlx-4bit-g64", tokens, fp32)
    print(f"MLX 4-bit g64: mean KL vs fp32 {kl:.4f} nats, argmax agreement {agree:.3f} ({decisive:.3f} decisive)")
    assert kl <= 0.45 and agree >= 0.65 and decisive >= 0.99


def test_8bit_argmax_and_kl_bounded(built, tokens, fp32):
    # Measured on seeds 0-3: KL 0.0026-0.0029 nats, argmax agreement 0.96-0.99. Bounds 0.006 nats
    # (2x) and 0.90; 4-bit is 100x the KL, so a recipe that silently fell back to 4 bits fails here.
    kl, agree, decisive = quality(built, "tiny-gemma4-mlx-8bit-g64", tokens, fp32)
    print(f"MLX 8-bit g64: mean KL vs fp32 {kl:.4f} nats, argmax agreement {agree:.3f} ({decisive:.3f} decisive)")
    assert kl <= 0.006 and agree >= 0.90 and decisive >= 0.99


@pytest.mark.parametrize("name", ["tiny-gemma4-mlx-bf16", "tiny-gemma4-mlx-4bit-g64"])
def test_hook_logits_equal_stock_mlx_lm(built, tokens, name):
    """The on-disk PLE table gives exactly the logits of stock mlx_lm.load (table resident)."""
    import mlx_lm
    from mlx.utils import tree_flatten
    from mlx_lm.models.cache import make_prompt_cache

    from edgekit.backends.mlx.ple import PLE_FILE, load_mlx_model, ple_table

    stock, _ = mlx_lm.load(str(built / name))
    hooked, _ = load_mlx_model(built / name)
    table = ple_table(hooked)
    assert table is not None and ple_table(stock) is None
    # Through the KV cache: a prefill longer than the sliding window, then token-by-token decoding.
    # (MLX's 4-bit matmul is slow on an x86 CPU: a few tokens past the window keep this test short.)
    outs = []
    for model in (stock, hooked):
        cache = make_prompt_cache(model)
        steps = [model(mx.array([tokens[:36]]), cache=cache)[0]]
        steps += [model(mx.array([[t]]), cache=cache)[0] for t in tokens[36:40]]
        outs.append(np.array(mx.concatenate(steps).astype(mx.float32)))
    assert np.array_equal(outs[0], outs[1])
    assert hooked.language_model.model.embed_tokens_per_layer.rows_read == 40
    # The table is out of the model's (resident) parameters, by exactly its size on disk.
    size = lambda m: sum(v.nbytes for _, v in tree_flatten(m.parameters()))
    header_bytes = (built / name / PLE_FILE).stat().st_size - table.nbytes
    assert size(stock) - size(hooked) == table.nbytes and 0 < header_bytes < 4096


def test_ple_table_never_enters_mlx_memory(built, tokens):
    """MLX's allocator grows by the hooked model's parameters only, through load and a forward pass;
    loading the same artifact resident grows it by the table too."""
    import gc

    from mlx.utils import tree_flatten

    from edgekit.backends.mlx.ple import load_mlx_model, ple_table

    name = built / "tiny-gemma4-mlx-bf16"
    grown = {}
    for ple in ("disk", "resident"):
        gc.collect()
        before = mx.get_active_memory()
        model, _ = load_mlx_model(name, ple=ple, tokenizer=False)
        grown[ple] = mx.get_active_memory() - before
        params = sum(v.nbytes for _, v in tree_flatten(model.parameters()))
        assert params <= grown[ple] <= params + 4096  # + mlx-lm's rope frequency buffers
        if ple == "disk":
            table = ple_table(model).nbytes
            logits = model(mx.array([tokens[:40]]))
            mx.eval(logits)
            # What stays after a forward: the logits (and a few bytes of ids), never table rows.
            assert mx.get_active_memory() - before - grown[ple] <= logits.nbytes + 4096
            del logits
        del model
    assert abs(grown["resident"] - grown["disk"] - table) <= 4096


def test_ple_file_is_what_mlx_quantizes(built, tiny_ckpt):
    """The streamed, slab-quantized table equals mlx's quantizer run on the whole table, byte for byte."""
    from edgekit.backends.mlx.ple import open_ple
    from edgekit.model.checkpoint import load_checkpoint

    ref = load_checkpoint(tiny_ckpt).tensors["embed_tokens_per_layer.weight"]
    whole = mx.array(ref.load()).astype(mx.bfloat16)
    for name, bits in (("tiny-gemma4-mlx-4bit-g64", 8), ("tiny-gemma4-mlx-8bit-g64", 8)):
        t = open_ple(built / name, {"group_size": 64, "bits": bits})
        rows = np.arange(t.shape[0])
        w, s, b = mx.quantize(whole, 64, bits)
        assert np.array_equal(t.read("weight", rows), np.array(w))
        assert np.array_equal(t.read("scales", rows), np.array(s.view(mx.uint16)))
        assert np.array_equal(t.read("biases", rows), np.array(b.view(mx.uint16)))
        # Row reads gather any order, repeats included, as numpy indexing does.
        ids = np.array([[7, 3, 7], [1023, 0, 3]])
        assert np.array_equal(t.read("weight", ids.reshape(-1)), np.array(w)[ids.reshape(-1)])
        t.close()
    t = open_ple(built / "tiny-gemma4-mlx-bf16", None)
    assert np.array_equal(t.read("weight", np.arange(t.shape[0])), np.array(whole.view(mx.uint16)))
    t.close()


def test_ple_precision_choice(tiny_ckpt):
    # quant/mlx-4bit.toml keeps the PLE table at 8 bits because it costs disk, not RAM: measure what
    # 8 vs 4 bits buys on the table's values (Gaussian here; affine g64 theory: ≈ 255/15 = 17x).
    from edgekit.model.checkpoint import load_checkpoint

    x = mx.array(load_checkpoint(tiny_ckpt).tensors["embed_tokens_per_layer.weight"].load()).astype(mx.bfloat16)
    err = {}
    for bits in (4, 8):
        y = mx.dequantize(*mx.quantize(x, 64, bits), group_size=64, bits=bits)
        err[bits] = float(
            mx.sqrt(
                mx.mean(mx.square(y.astype(mx.float32) - x.astype(mx.float32)))
                / mx.mean(mx.square(x.astype(mx.float32)))
            )
        )
    print(f"PLE relative rms error: 4-bit {err[4]:.4f}, 8-bit {err[8]:.5f} ({err[4] / err[8]:.1f}x)")
    assert err[4] / err[8] >= 10


def test_manifest_and_text_only_folder(built, tiny_ckpt):
    from edgekit.backends.mlx.ple import PLE_MODULE
    from edgekit.builder.manifest import artifact_digest, read_manifest, verify

    m = read_manifest(built)
    art = m.artifact("tiny-gemma4-mlx-4bit-g64")
    assert (art.format, art.quant, art.recipe) == ("mlx", "4bit-g64", "mlx-4bit")
    assert (art.bytes, art.sha256) == artifact_digest(built / art.file) and verify(built) == []
    assert art.extra["dropped_tensors"] == 2 and art.extra["ple"]["bits"] == 8
    cfg = json.loads((built / art.file / "config.json").read_text())
    src = json.loads((tiny_ckpt / "config.json").read_text())
    assert "vision_config" not in cfg and "audio_config" not in cfg
    assert cfg["vocab_size"] == src["text_config"]["vocab_size"]
    assert cfg["text_config"]["global_head_dim"] == src["text_config"]["global_head_dim"]
    assert cfg["quantization"]["bits"] == 4 and cfg["quantization"][PLE_MODULE]["bits"] == 8
    index = json.loads((built / art.file / "model.safetensors.index.json").read_text())
    assert not [k for k in index["weight_map"] if "vision" in k or "audio" in k]
    assert index["weight_map"][f"{PLE_MODULE}.weight"] == "model-ple.safetensors"


def test_greedy_agrees_with_gguf_f16(built):
    """MLX bf16 and llama.cpp F16 (F32 KV cache) decode the same 16 greedy tokens, past the window."""
    llama_cpp = pytest.importorskip("llama_cpp", reason="needs llama-cpp-python (edgekit[runtime])")
    from mlx_lm.generate import generate_step

    from edgekit.backends.mlx.ple import load_mlx_model

    model, _ = load_mlx_model(built / "tiny-gemma4-mlx-bf16")
    llm = llama_cpp.Llama(
        str(built / "tiny-gemma4-F16.gguf"),
        n_ctx=256,
        n_batch=256,
        n_threads=1,
        logits_all=True,
        type_k=0,
        type_v=0,
        verbose=False,
    )
    try:
        for seed in range(3):
            prompt = [2, *np.random.default_rng(100 + seed).integers(5, 1000, 27).tolist()]
            ours = [int(t) for t, _ in generate_step(mx.array(prompt), model, max_tokens=16)]
            llm.reset()
            llm.eval(prompt)
            theirs = []
            for _ in range(16):
                theirs.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
                llm.eval([theirs[-1]])
            assert ours == theirs, f"seed {seed}: MLX {ours} vs llama.cpp {theirs}"
    finally:
        llm.close()


def test_kv_fill_grows_caches_as_a_prefill_does(built, tokens):
    """The runner's kv_fill knob (a benchmark's long context without its prefill) leaves every cache
    exactly as a real prefill of as many tokens does: same offsets, shapes, dtypes, bytes, through the
    same chunked updates (so the sliding layers' rotating caches rotate alike); only values differ."""
    from edgekit.backends.mlx.runner import MlxRunner
    from edgekit.backends.runner import RunOptions

    def caches(runner):
        return [
            (type(c).__name__, c.offset, c.keys.shape, c.keys.dtype, c.values.shape, c.nbytes) for c in runner.cache
        ]

    path, n = built / "tiny-gemma4-mlx-4bit-g64", 70  # past the sliding window (32) and 4 chunks of 16
    real, filled = MlxRunner(), MlxRunner()
    real.load(path, RunOptions(threads=1, ctx=128, knobs={"n_batch": 16}))
    filled.load(path, RunOptions(threads=1, ctx=128, knobs={"n_batch": 16, "kv_fill": n - 1}))
    real.reset()
    real.prefill(tokens[:n])  # n-1 tokens in chunks of 16, then the last one alone
    filled.reset()
    filled.prefill(tokens[n - 1 : n])  # the same updates: n-1 filled in chunks of 16, then one real token
    got, want = caches(filled), caches(real)
    assert [c[0] for c in want].count("RotatingKVCache") > 0 and [c[0] for c in want].count("KVCache") > 0
    assert got == want
    filled.decode(filled.next_token())
    assert filled.cache[0].offset == n + 1 and bool(mx.isfinite(filled.logits).all())
