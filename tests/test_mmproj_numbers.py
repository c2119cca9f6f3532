"""Soft tokens through edgekit's projector and llama.cpp's mtmd against transformers' own features, and
token counts against transformers' processors, on the tiny model with towers (random weights, fp32
reference). edgekit sizes each image as transformers' processor does (media.prepare_image), so both
engines see the same pixels at the same token budget."""

from __future__ import annotations

import numpy as np
import pytest

from edgekit.backends.gguf.convert import convert
from edgekit.backends.gguf.mmproj import write_mmproj
from edgekit.dev.synth import synth
from edgekit.model.checkpoint import load_checkpoint
from edgekit.serve.media import Audio, image_size_for_budget, prepare_image


@pytest.fixture(scope="module")
def mm(tmp_path_factory):
    d = tmp_path_factory.mktemp("mmnum")
    ckpt = synth(d / "tiny-mm", preset="tiny", seed=0, towers=True)
    c = load_checkpoint(ckpt)
    text = convert(c, d / "text-F16.gguf", "F16")
    proj = write_mmproj(c, d / "mmproj-F16.gguf", ("vision", "audio"), {"vision": "F16", "audio": "F16"})
    return ckpt, text, proj


@pytest.fixture(scope="module")
def llm(mm):
    import llama_cpp

    return llama_cpp.Llama(str(mm[1]), n_ctx=1024, n_threads=2, verbose=False)


@pytest.fixture(scope="module")
def hf(mm):
    import torch
    from safetensors.torch import load_file
    from transformers import (
        AutoFeatureExtractor,
        AutoImageProcessor,
        Gemma4Config,
        Gemma4ForConditionalGeneration,
    )

    ckpt = mm[0]
    model = Gemma4ForConditionalGeneration(Gemma4Config.from_pretrained(ckpt)).float().eval()
    state = {k: v.float() for f in ckpt.glob("*.safetensors") for k, v in load_file(f).items()}
    model.load_state_dict(state, strict=False)
    torch.set_num_threads(2)
    return model, AutoImageProcessor.from_pretrained(ckpt), AutoFeatureExtractor.from_pretrained(ckpt)


def _projector(llm, mm, budget=280):
    from edgekit.backends.mtmd import Projector

    return Projector(llm, mm[2], mm[1], threads=2, image_budget=budget)


def _image(h: int, w: int, seed: int = 0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    arr = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) % 255], -1) + rng.normal(0, 20, (h, w, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_image_size_is_transformers_own():
    from transformers.models.gemma4.processing_gemma4 import (
        get_aspect_ratio_preserving_size,
    )

    rng = np.random.default_rng(1)
    for h, w in [(224, 224), (1080, 1920), (1920, 1080), (48, 2000), (2000, 40), *rng.integers(30, 4000, (40, 2))]:
        for budget in (70, 140, 280, 560, 1120):
            assert image_size_for_budget(int(h), int(w), budget) == get_aspect_ratio_preserving_size(
                int(h), int(w), patch_size=16, max_patches=budget * 9, pooling_kernel_size=3
            ), (h, w, budget)


@pytest.mark.parametrize("h, w, budget", [(224, 224, 280), (1080, 1920, 280), (300, 400, 70), (60, 900, 140)])
def test_image_token_counts_equal_transformers(llm, mm, hf, h, w, budget):
    """224×224 is 256 tokens and 1080×1920 264 in transformers (llama.cpp alone: 81 and 920)."""
    img = prepare_image(_image(h, w), budget)
    want = int(hf[1](images=[img], return_tensors="np", max_soft_tokens=budget)["num_soft_tokens_per_image"][0])
    with _projector(llm, mm, budget) as p:
        assert p.image_tokens(img) == want
    assert (h, w, budget, want) != (224, 224, 280, 0)
    if (h, w) == (224, 224):
        assert want == 256
    if (h, w) == (1080, 1920):
        assert want == 264


def test_image_soft_tokens_match_transformers(llm, mm, hf):
    """Measured on this model, F16 projector: 3.6e-4 relative L2 (llama.cpp's converter's file, without
    clip.use_gelu, 6.0e-3 on the same image)."""
    import torch

    model, ip, _ = hf
    img = prepare_image(_image(300, 400), 70)
    x = ip(images=[img], return_tensors="pt", max_soft_tokens=70)
    with torch.no_grad():
        ref = model.model.get_image_features(x["pixel_values"], x["image_position_ids"]).pooler_output[0].numpy()
    with _projector(llm, mm, 70) as p:
        got = p.encode_image(img).embeddings
    assert got.shape == ref.shape == (63, 256)
    err = _rel(got, ref)
    print(f"image soft tokens: relative L2 {err:.2e}")
    assert err < 1e-3


def _chirp(seconds: float) -> Audio:
    t = np.arange(int(16000 * seconds)) / 16000
    return Audio((0.5 * np.sin(2 * np.pi * (200 + 300 * t) * t)).astype(np.float32), 16000)


@pytest.mark.parametrize("seconds", [0.5, 1.3, 2.0])
def test_audio_token_counts_equal_transformers(llm, mm, hf, seconds):
    import torch

    model, _, fe = hf
    audio = _chirp(seconds)
    a = fe([audio.samples], sampling_rate=16000, return_tensors="pt")
    with torch.no_grad():
        mask = model.model.get_audio_features(a["input_features"], a["input_features_mask"]).attention_mask[0]
    with _projector(llm, mm) as p:
        assert p.audio_tokens(audio) == int(mask.sum()) == audio.tokens


def test_audio_soft_tokens_and_the_log_mel_floor(llm, mm, hf):
    """llama.cpp floors the log-mel as log(max(mel, 1e-3)), transformers as log(mel + 1e-3) (C++, not
    fixable from the GGUF). Measured on a 2 s chirp, F16 projector: 8.6e-3 relative L2 against
    transformers as is, 5.0e-4 against transformers fed the llama.cpp-floored features: the floor is
    nearly all of the difference."""
    import torch

    model, _, fe = hf
    audio = _chirp(2.0)
    a = fe([audio.samples], sampling_rate=16000, return_tensors="pt")
    floored = np.log(np.maximum(np.exp(a["input_features"].double().numpy()) - 1e-3, 1e-3)).astype(np.float32)
    with torch.no_grad():
        plain = model.model.get_audio_features(a["input_features"], a["input_features_mask"]).pooler_output[0].numpy()
        same_floor = (
            model.model.get_audio_features(torch.from_numpy(floored), a["input_features_mask"]).pooler_output[0].numpy()
        )
    with _projector(llm, mm) as p:
        got = p.encode_audio(audio).embeddings
    assert got.shape == plain.shape == (50, 256)
    e_plain, e_floor = _rel(got, plain), _rel(got, same_floor)
    print(f"audio soft tokens: relative L2 {e_plain:.2e} vs transformers, {e_floor:.2e} with llama.cpp's floor")
    assert e_floor < 1e-3
    assert e_plain > 5 * e_floor  # what remains is the floor, not the tower


@pytest.mark.slow
def test_greedy_generation_with_an_image_agrees_with_transformers(mm, tmp_path):
    """F32 text model, F32 cache and F32 vision tower; one 63-token image and a chat prompt.

    llama.cpp (this version) attends bidirectionally inside an image for every text width but E2B's and
    E4B's (1536, 2560), where it is causal, as transformers is for a config without
    use_bidirectional_attention (E2B's). The tiny model is 256 wide, so its reference is transformers
    with use_bidirectional_attention="vision": measured max |Δlogit| 2.6e-3 (logit range 10.4) at the
    first reply position, and the same 16 greedy tokens. Against transformers as configured (causal) it
    is 0.86, the size of the change a different image makes (4.6-5.5): the mask, not the numbers.
    (A random model's greedy reply repeats one token; the logits carry the comparison.)"""
    import torch
    from safetensors.torch import load_file
    from tokenizers import Tokenizer
    from transformers import Gemma4Config, Gemma4ForConditionalGeneration

    from edgekit.serve.chat import ChatTemplate
    from edgekit.serve.media_run import MediaModel, MediaPrompt, media_marker

    ckpt = mm[0]
    c = load_checkpoint(ckpt)
    text = convert(c, tmp_path / "t32.gguf", "F32")
    proj = write_mmproj(c, tmp_path / "p32.gguf", ("vision",), {"vision": "F32"})
    img = prepare_image(_image(300, 400), 70)
    rendered = ChatTemplate.from_artifact(ckpt).render(
        [{"role": "user", "content": media_marker() + "\nWhat is in this picture?"}]
    )
    model = MediaModel(text, proj, n_ctx=512, threads=2, image_budget=70, f32_cache=True)
    try:
        model.eval_prompt(rendered, MediaPrompt([img], []))
        first = model._logits().copy()
        ours = list(model.greedy(16))
    finally:
        model.close()

    from transformers import AutoImageProcessor

    x = AutoImageProcessor.from_pretrained(ckpt)(images=[img], return_tensors="pt", max_soft_tokens=70)
    n = int(x["num_soft_tokens_per_image"][0])
    ids = (
        Tokenizer.from_file(str(ckpt / "tokenizer.json"))
        .encode(rendered.replace(media_marker(), "<|image>" + "<|image|>" * n + "<image|>"), add_special_tokens=False)
        .ids
    )
    state = {k: v.float() for f in ckpt.glob("*.safetensors") for k, v in load_file(f).items()}
    ref = {}
    for mode in (None, "vision"):
        cfg = Gemma4Config.from_pretrained(ckpt)
        cfg.text_config.use_bidirectional_attention = mode
        hf = Gemma4ForConditionalGeneration(cfg).float().eval()
        hf.load_state_dict(state, strict=False)
        ids_t = torch.tensor([ids])
        kw = dict(
            attention_mask=torch.ones_like(ids_t),
            pixel_values=x["pixel_values"],
            image_position_ids=x["image_position_ids"],
            mm_token_type_ids=(ids_t == cfg.image_token_id).long(),
        )
        with torch.no_grad():
            logits = hf(input_ids=ids_t, **kw).logits[0, -1].numpy()
            gen = hf.generate(input_ids=ids_t, max_new_tokens=16, do_sample=False, **kw)[0, len(ids) :].tolist()
        ref[mode] = (logits, gen)
    d_bidir = float(np.abs(first - ref["vision"][0]).max())
    d_causal = float(np.abs(first - ref[None][0]).max())
    print(f"max |dlogit|: {d_bidir:.2e} vs bidirectional-image transformers, {d_causal:.2f} vs causal")
    assert d_bidir < 1e-2
    assert ours == ref["vision"][1]
    assert d_causal > 20 * d_bidir  # the difference from the causal reference is the mask
