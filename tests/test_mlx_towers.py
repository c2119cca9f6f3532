"""MLX artifacts with towers (``build --modalities`` on an MLX recipe) loaded by stock mlx-vlm, against
transformers on the tiny model with towers (random weights, fp32 reference).

The same image and 2 s chirp go to both: transformers' processor makes the pixels and log-mel, so the
towers alone are compared; a run through mlx-vlm's own processor and generate shows the folder works as a
user would use it. Random towers cannot rank tower types (docs/multimodal.md); these check the wiring."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from edgekit.cli import app
from edgekit.serve.media import prepare_image
from tests.media_samples import chirp, gradient_image, transformers_reference

pytest.importorskip("mlx_vlm.models.gemma4", reason="needs edgekit[mlx] (mlx-vlm)")
runner = CliRunner()


@pytest.fixture(scope="module")
def mm(tmp_path_factory):
    from edgekit.backends.mlx.convert import convert
    from edgekit.dev.synth import synth
    from edgekit.model.checkpoint import load_checkpoint
    from edgekit.profiles.recipes import get_recipe

    d = tmp_path_factory.mktemp("mlxtowers")
    ckpt = synth(d / "tiny-mm", preset="tiny", seed=0, towers=True)
    c = load_checkpoint(ckpt)
    bf16 = get_recipe("mlx-bf16")
    f32 = dataclasses.replace(
        bf16, name="mlx-f32", quant="f32", dtype="float32", towers={"vision": "F32", "audio": "F32"}
    )
    both = ("vision", "audio")
    return {
        "ckpt": ckpt,
        "f32": convert(c, f32, d / "f32", both),
        "f16": convert(c, bf16, d / "bf16-towers-f16", both),  # towers unnamed: F16
        "text": convert(c, bf16, d / "bf16-text"),
    }


@pytest.fixture(scope="module")
def hf(mm):
    return transformers_reference(mm["ckpt"])


def _rel(a, b) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _inputs(hf):

    _, ip, fe = hf
    x = ip(images=[prepare_image(gradient_image(), 70)], return_tensors="pt", max_soft_tokens=70)
    a = fe([chirp()], sampling_rate=16000, return_tensors="pt")
    return x, a


def _mlx_soft_tokens(folder, x, a):
    import mlx.core as mx
    from mlx_vlm import load

    model, _ = load(str(folder))
    img = model.encode_image(mx.array(x["pixel_values"].numpy()), mx.array(x["image_position_ids"].numpy()))
    mask = ~mx.array(a["input_features_mask"].numpy().astype(bool))
    enc, _ = model.audio_tower(mx.array(a["input_features"].numpy()), mask)
    aud = model.embed_audio(enc)
    return model, np.array(img.astype(mx.float32))[0], np.array(aud.astype(mx.float32))[0]


@pytest.mark.slow
def test_mlx_vlm_soft_tokens_match_transformers(mm, hf):
    """Measured on this model, image (63 tokens) / audio (2 s, 50 tokens) relative L2 against transformers:
    F32 towers 6.5e-7 / 8.6e-7; F16 towers (the default) 8.2e-4 / 3.0e-5."""
    import torch

    model = hf[0]
    x, a = _inputs(hf)
    with torch.no_grad():
        ref_img = model.model.get_image_features(x["pixel_values"], x["image_position_ids"]).pooler_output[0].numpy()
        out = model.model.get_audio_features(a["input_features"], a["input_features_mask"])
        ref_aud = out.pooler_output[0].numpy()[out.attention_mask[0].numpy().astype(bool)]
    errs = {}
    for kind, bound_img, bound_aud in (("f32", 1e-5, 1e-5), ("f16", 2e-3, 1e-4)):
        _, img, aud = _mlx_soft_tokens(mm[kind], x, a)
        assert img.shape == ref_img.shape == (63, 256)
        assert aud[: len(ref_aud)].shape == ref_aud.shape == (50, 256)
        errs[kind] = (_rel(img, ref_img), _rel(aud[: len(ref_aud)], ref_aud))
        print(f"{kind} towers: image {errs[kind][0]:.1e}, audio {errs[kind][1]:.1e} relative L2")
        assert errs[kind][0] < bound_img and errs[kind][1] < bound_aud, (kind, errs[kind])
    assert errs["f16"][0] > errs["f32"][0]  # the stored type is what mlx-vlm computes in


@pytest.mark.slow
def test_mlx_vlm_logits_with_an_image_match_transformers(mm, hf):
    """The whole model with an image in the prompt: mlx-vlm on the F32 folder vs transformers (both causal
    over the image, as the tiny config asks). Measured: max |Δlogit| 7.9e-6 over a logit range of 12.6."""
    import mlx.core as mx
    import torch
    from mlx_vlm import load

    cfg = json.loads((mm["ckpt"] / "config.json").read_text())
    x, _ = _inputs(hf)
    ids = [2, 10, 11, cfg["boi_token_id"], *[cfg["image_token_id"]] * 63, cfg["eoi_token_id"], 12, 13]
    with torch.no_grad():
        ref = (
            hf[0](
                input_ids=torch.tensor([ids]),
                pixel_values=x["pixel_values"],
                image_position_ids=x["image_position_ids"],
            )
            .logits[0]
            .numpy()
        )
    model, _ = load(str(mm["f32"]))
    got = model(
        mx.array([ids]),
        pixel_values=mx.array(x["pixel_values"].numpy()),
        image_position_ids=mx.array(x["image_position_ids"].numpy()),
    ).logits
    got = np.array(got.astype(mx.float32))[0]
    diff = float(np.abs(got - ref)[-3:].max())
    span = float(ref[-3:].max() - ref[-3:].min())
    print(f"last 3 positions: max |dlogit| {diff:.1e} (logit range {span:.1f})")
    assert diff < 1e-3 * span
    # the image reaches the logits: another image moves them by far more than the difference above

    y = hf[1](images=[prepare_image(gradient_image(seed=1), 70)], return_tensors="pt", max_soft_tokens=70)
    other = model(
        mx.array([ids]),
        pixel_values=mx.array(y["pixel_values"].numpy()),
        image_position_ids=mx.array(y["image_position_ids"].numpy()),
    ).logits
    assert float(np.abs(np.array(other.astype(mx.float32))[0] - got)[-3:].max()) > 100 * diff


@pytest.mark.slow
def test_stock_mlx_vlm_generates_with_image_and_audio(mm, hf, tmp_path):
    """mlx-vlm's own processor and generate, as a user runs the folder (greedy, 4 tokens). Its processor
    makes transformers' token counts: 300×400 at the default budget (280) is 266 image tokens, 2 s is 50."""
    import soundfile as sf
    from mlx_vlm import generate, load

    cfg = json.loads((mm["ckpt"] / "config.json").read_text())
    gradient_image().save(tmp_path / "img.png")
    sf.write(tmp_path / "chirp.wav", chirp(), 16000)
    model, proc = load(str(mm["f16"]))
    turn = "<|turn>user\n{}Describe.<turn|>\n<|turn>model\n"
    ids = np.asarray(
        proc(text=[turn.format(proc.image_token)], images=[gradient_image()], return_tensors="np")["input_ids"]
    )
    want = int(
        hf[1](images=[gradient_image()], return_tensors="np", max_soft_tokens=280)["num_soft_tokens_per_image"][0]
    )
    assert int((ids == cfg["image_token_id"]).sum()) == want == 266
    ids = np.asarray(proc(text=[turn.format(proc.audio_token)], audio=[chirp()], return_tensors="np")["input_ids"])
    assert int((ids == cfg["audio_token_id"]).sum()) == 50
    for kind, path in (("image", "img.png"), ("audio", "chirp.wav")):
        prompt = turn.format(getattr(proc, f"{kind}_token"))
        r = generate(
            model, proc, prompt, **{kind: [str(tmp_path / path)]}, max_tokens=4, temperature=0.0, verbose=False
        )
        assert r.generation_tokens == 4 and r.prompt_tokens > 50, (kind, r.prompt_tokens)


def test_text_tensors_unchanged_and_mlx_lm_still_loads(mm):
    """Towers add files; the text tensors are byte for byte those of the text-only build, and mlx-lm
    (which globs model*.safetensors and drops tower names) loads the folder as before."""
    from mlx_lm import load as lm_load

    for name in ("model.safetensors", "model-ple.safetensors"):
        assert (mm["f16"] / name).read_bytes() == (mm["text"] / name).read_bytes()
    assert (mm["f16"] / "towers.safetensors").is_file() and not (mm["text"] / "towers.safetensors").exists()
    cfg = json.loads((mm["f16"] / "config.json").read_text())
    assert cfg["edgekit"]["towers"] == {
        "file": "towers.safetensors",
        "modalities": ["vision", "audio"],
        "types": {"vision": "F16", "audio": "F16"},
    }
    assert cfg["vision_config"]["num_hidden_layers"] == 2 and cfg["audio_config"]["hidden_size"] == 128
    lm_load(str(mm["f16"]))


def test_build_links_towers_in_the_manifest(mm, tmp_path):
    r = runner.invoke(
        app, ["build", "-m", str(mm["ckpt"]), "-q", "mlx-bf16", "--modalities", "vision", "--out", str(tmp_path)]
    )
    assert r.exit_code == 0, r.output
    folder = tmp_path / "tiny-mm" / "pi5"
    art = json.loads((folder / "manifest.json").read_text())["artifacts"][0]
    t = art["extra"]["towers"]
    assert t["modalities"] == ["vision"] and t["types"] == {"vision": "F16"} and t["format"] == "mlx"
    from edgekit.model.checkpoint import sha256_file

    assert t["sha256"] == sha256_file(folder / art["file"] / "towers.safetensors")
    cfg = json.loads((folder / art["file"] / "config.json").read_text())
    assert cfg["audio_config"] is None and "vision_config" in cfg


@pytest.mark.parametrize(
    "args, said",
    [
        (["-q", "mlx-4bit", "--modalities", "audio"], "always builds the vision tower"),
        (["-q", "mlx-4bit-lean", "--modalities", "vision"], "lean vocabulary"),
    ],
)
def test_refusals_write_nothing(mm, tmp_path, args, said):
    r = runner.invoke(app, ["build", "-m", str(mm["ckpt"]), *args, "--out", str(tmp_path)])
    assert r.exit_code != 0 and said in r.output, r.output
    assert "Traceback" not in r.output
    assert not any(p.is_file() for p in tmp_path.rglob("*"))


def test_refusals_of_recipes(mm):
    from edgekit.backends.mlx.convert import check_towers
    from edgekit.core.errors import ConfigError
    from edgekit.profiles.recipes import get_recipe

    r = get_recipe("mlx-4bit")
    with pytest.raises(ConfigError, match=r"Q8_0.*unquantized"):
        check_towers(dataclasses.replace(r, towers={"vision": "Q8_0"}), ("vision",))
    with pytest.raises(ConfigError, match="per-layer embeddings at 4 bits"):
        check_towers(dataclasses.replace(r, overrides={}), ("vision",))
    check_towers(r, ("vision", "audio"))  # the shipped recipe keeps its PLE at 8 bits
