"""Images and audio on an MLX build (`build --modalities` on an MLX recipe): `edgekit run --image/--audio`,
`serve` with content parts and their 400s, against transformers on the tiny model with towers (random
weights, fp32 reference; they check the wiring, not a tower type's quality: docs/multimodal.md).

The soft tokens come from the towers in the folder (mlx-vlm's modules, backends/mlx/media.py) and go into
mlx-lm's text model as input embeddings at prefill; serve/towers.py lays the prompt out as for a GGUF."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import test_serve_media
from serve_fixture import cli, start_server, wait_until
from test_serve_media import PROMPT, _ask, _audio, _get, _image, _png, _reply, _wav

from edgekit.serve.media import Audio, prepare_image
from edgekit.serve.media_parts import MediaLimits, Medium
from tests.media_samples import chirp, gradient_image, transformers_reference

pytest.importorskip("mlx_vlm.models.gemma4", reason="needs edgekit[mlx] (mlx-vlm)")

MEDIA_FLAGS = (
    "--ctx", "1024", "--image-tokens", "70", "--max-media-mb", "1", "--max-image-pixels", "1000000",
    "--max-audio-seconds", "2",
)  # fmt: skip


@pytest.fixture(scope="module")
def mm(tmp_path_factory):
    from edgekit.backends.mlx.convert import convert
    from edgekit.dev.synth import synth
    from edgekit.model.checkpoint import load_checkpoint
    from edgekit.profiles.recipes import get_recipe

    d = tmp_path_factory.mktemp("mlxmedia")
    ckpt = synth(d / "tiny-mm", preset="tiny", seed=0, towers=True)
    bf16 = get_recipe("mlx-bf16")
    f32 = dataclasses.replace(
        bf16, name="mlx-f32", quant="f32", dtype="float32", towers={"vision": "F32", "audio": "F32"}
    )
    for out, q, mods in (("dist", "mlx-bf16", "vision,audio"), ("dist-v", "mlx-bf16", "vision")):
        r = cli("build", "-m", str(ckpt), "-q", q, "--modalities", mods, "--out", str(d / out))
        assert r.returncode == 0, r.stderr
    (d / "media").mkdir()
    (d / "media" / "photo.png").write_bytes(_png())
    (d / "secret.png").write_bytes(_png())
    return {
        "d": d,
        "ckpt": ckpt,
        "f32": convert(load_checkpoint(ckpt), f32, d / "f32", ("vision", "audio")),
        "art": d / "dist" / "tiny-mm" / "pi5" / "tiny-mm-mlx-bf16",
        "vision": d / "dist-v" / "tiny-mm" / "pi5" / "tiny-mm-mlx-bf16",
    }


@pytest.fixture(scope="module")
def hf(mm):
    return transformers_reference(mm["ckpt"])


def _rel(a, b) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.slow
def test_soft_tokens_fed_equal_transformers(mm, hf):
    """What the MLX run feeds the text model, against transformers' features for the same input, F32 towers.
    Measured: image (63 tokens) 6.8e-7 relative L2. Audio (50 tokens) 1.4e-5: mlx-vlm's log-mel extractor
    (the one the MLX path uses, as mlx-vlm does) differs from transformers' by 3.0e-5 relative on this clip;
    with transformers' log-mel fed to the same towers it is 8.6e-7. The default build's F16 towers add
    8.2e-4 / 3.0e-5 (tests/test_mlx_towers.py)."""
    import torch

    from edgekit.backends.mlx.media import MlxProjector, MlxSpan

    model, ip, fe = hf
    proj = MlxProjector(mm["f32"], 70, call=lambda fn: fn())  # on this thread
    try:
        spans = []
        for m in (
            Medium("vision", prepare_image(gradient_image(), 70), "image"),
            Medium("audio", Audio(chirp(), 16000), "audio"),
        ):
            _, span, _ = proj.span(m)
            feats = dict(span.inputs)
            proj.encode_span(span)
            spans.append((span, feats))
        a = fe([chirp()], sampling_rate=16000, return_tensors="pt")
        theirs = MlxSpan(
            "audio", 50, {"features": a["input_features"].numpy(), "mask": a["input_features_mask"].numpy()}
        )
        proj.encode_span(theirs)
    finally:
        proj.close()
    (img, _), (aud, aud_feats) = spans
    x = ip(images=[prepare_image(gradient_image(), 70)], return_tensors="pt", max_soft_tokens=70)
    with torch.no_grad():
        ref_img = model.model.get_image_features(x["pixel_values"], x["image_position_ids"]).pooler_output[0].numpy()
        out = model.model.get_audio_features(a["input_features"], a["input_features_mask"])
        ref_aud = out.pooler_output[0].numpy()[out.attention_mask[0].numpy().astype(bool)]
    assert img.embd.shape == ref_img.shape == (63, 256) and aud.embd.shape == ref_aud.shape == (50, 256)
    errs = _rel(img.embd, ref_img), _rel(aud.embd, ref_aud), _rel(theirs.embd, ref_aud)
    mel = _rel(aud_feats["features"], a["input_features"].numpy())
    print(
        f"soft tokens vs transformers: image {errs[0]:.1e}, audio {errs[1]:.1e} (log-mel {mel:.1e} apart; "
        f"transformers' log-mel through the same towers {errs[2]:.1e}) relative L2"
    )
    assert errs[0] < 1e-5 and errs[2] < 1e-5, errs  # the towers and the splice: float32 rounding
    assert errs[1] < mel, (errs, mel)  # the whole audio path: no further than its input features are apart


def _session_reply(folder, messages, n):
    """Greedy ids of the reply through the session's scheduler (run's and serve's path), and the prompt."""
    from edgekit.serve.generate import Sampling
    from edgekit.serve.session import open_session
    from edgekit.serve.towers import attach

    s = open_session(folder, ctx=512)
    try:
        towers = attach(s, MediaLimits(1 << 20, 10**6, 30.0, 70), max_waiting=1)
        assert towers is not None and towers.modalities == ("vision", "audio")
        ids, prefix, spans = towers.build_prompt(messages, None, False)
        req = s.request(ids, Sampling(max_tokens=n, temperature=0.0), prefix, stop=False)
        req.media = tuple(spans)
        events = []
        req.on_event = events.append
        s.engine.submit(req)
        assert wait_until(lambda: events and events[-1].kind == "done", 120)
        return ids, [e.token for e in events if e.kind == "token"]
    finally:
        s.close()


@pytest.mark.slow
def test_greedy_reply_with_an_image_equals_transformers(mm, hf):
    """8 greedy tokens after an image (and after a clip), MLX on the F32 folder vs transformers' generate on
    the same ids and pixels (both causal over the media, as the tiny config asks). The margin is wide:
    mlx-vlm's logits with this image differ from transformers' by 7.9e-6 (tests/test_mlx_towers.py)."""
    import torch

    model, ip, fe = hf
    cfg = json.loads((mm["ckpt"] / "config.json").read_text())
    img_part = _image(_png(300, 300))  # 300x300 at 70 tokens: 64 soft tokens
    wav = _wav(1.0)
    n = 8
    replies = {}
    for kind, part in (("image", img_part), ("audio", _audio(wav))):
        ids, got = _session_reply(mm["f32"], _ask(part), n)
        tid = cfg["image_token_id" if kind == "image" else "audio_token_id"]
        inp = torch.tensor([[tid if t < 0 else t for t in ids]])
        if kind == "image":
            from edgekit.serve.media import open_image

            x = ip(images=[prepare_image(open_image(_png(300, 300)), 70)], return_tensors="pt", max_soft_tokens=70)
            kw = {"pixel_values": x["pixel_values"], "image_position_ids": x["image_position_ids"]}
        else:
            import io

            import soundfile as sf

            samples, _ = sf.read(io.BytesIO(wav), dtype="float32")
            a = fe([samples], sampling_rate=16000, return_tensors="pt")
            kw = {"input_features": a["input_features"], "input_features_mask": a["input_features_mask"]}
        with torch.no_grad():
            ref = model.generate(inp, attention_mask=torch.ones_like(inp), max_new_tokens=n, do_sample=False, **kw)
        want = ref[0, inp.shape[1] :].tolist()
        print(kind, "soft tokens", sum(t < 0 for t in ids), "mlx", got, "transformers", want)
        assert len(got) == n and got == want, (kind, got, want)
        replies[kind] = got
    assert replies["image"] != replies["audio"]  # the media reach the reply


@pytest.mark.slow
def test_prefill_logits_with_an_image_equal_transformers(mm, hf):
    """The random tiny model repeats one token greedily (above), so the logits are compared too: the MLX
    runner's prefill with the soft tokens spliced in (backends/mlx/media.prefill_media) vs transformers'
    forward on the same ids and pixels, last position, prefill chunks of 16 crossing the image. Measured:
    max |dlogit| 6.0e-6 over a logit range of 9.7 (mlx-vlm's own forward: 7.9e-6, tests/test_mlx_towers.py);
    another image moves them by 0.81."""
    import torch

    from edgekit.backends.mlx.media import MlxProjector, prefill_media
    from edgekit.backends.mlx.runner import MlxRunner
    from edgekit.backends.runner import RunOptions

    model, ip, _ = hf
    cfg = json.loads((mm["ckpt"] / "config.json").read_text())
    proj = MlxProjector(mm["f32"], 70, call=lambda fn: fn())  # on this thread
    runner = MlxRunner()
    runner.load(mm["f32"], RunOptions(threads=1, ctx=512, knobs={"n_batch": 16}))  # chunks cross the image
    out = {}
    try:
        for seed in (0, 1):
            img = prepare_image(gradient_image(seed=seed), 70)
            before, span, after = proj.span(Medium("vision", img, "image"))
            proj.encode_span(span)
            ids = [2, 10, 11, *before, *[-1] * span.n_pos, *after, 12, 13]
            span.start = 3 + len(before)
            runner.reset()
            prefill_media(runner, ids, [span])
            got = np.array(runner.logits.astype(runner.mx.float32))[0]
            x = ip(images=[img], return_tensors="pt", max_soft_tokens=70)
            inp = torch.tensor([[cfg["image_token_id"] if t < 0 else t for t in ids]])
            with torch.no_grad():
                ref = (
                    model(input_ids=inp, pixel_values=x["pixel_values"], image_position_ids=x["image_position_ids"])
                    .logits[0, -1]
                    .numpy()
                )
            out[seed] = got, ref
    finally:
        proj.close()
        runner.close()
    got, ref = out[0]
    diff, span_ = float(np.abs(got - ref).max()), float(ref.max() - ref.min())
    moved = float(np.abs(out[1][0] - got).max())
    print(f"last position: max |dlogit| {diff:.1e} (range {span_:.1f}); another image moves them {moved:.1e}")
    assert diff < 1e-4 * span_ and moved > 100 * diff
    assert np.abs(out[1][0] - out[1][1]).max() < 1e-4 * span_


@pytest.fixture(scope="module")
def server(mm):
    s = start_server(
        mm["art"],
        mm["d"] / "serve.log",
        *MEDIA_FLAGS,
        "--media-path",
        str(mm["d"] / "media"),
        "--allow-remote-media",
    )
    yield s
    assert s.stop() == 0


@pytest.mark.slow
def test_served_reply_equals_run(mm, server, tmp_path):
    """A seeded sampled reply with an image and a clip: `edgekit run` and the server give the same text;
    another seed gives another one (so the comparison can fail)."""
    (tmp_path / "photo.png").write_bytes(_png())
    (tmp_path / "clip.wav").write_bytes(_wav(1.0))
    media = ("--image", str(tmp_path / "photo.png"), "--audio", str(tmp_path / "clip.wav"))
    sampled = ("--temperature", "0.9", "-n", "8", "--ctx", "1024", "--image-tokens", "70")
    served, ran = {}, {}
    for seed in (7, 8):
        r = cli("run", str(mm["art"]), "-p", PROMPT, *media, *sampled, "--seed", str(seed))
        assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
        ran[seed] = r.stdout[:-1]
        got = _reply(server, _ask(_image(_png()), _audio(_wav(1.0))), temperature=0.9, seed=seed, n_tokens=8)
        served[seed] = got.choices[0].message.content
        assert f"prompt {got.usage.prompt_tokens})" in r.stderr
    assert ran == served and served[7] != served[8], (ran, served)


# The GGUF server's bad-media cases, collected again here against this module's MLX ``server``.
test_bad_media_is_a_400_and_the_server_goes_on = test_serve_media.test_bad_media_is_a_400_and_the_server_goes_on


@pytest.mark.slow
def test_modalities_listed_and_media_without_a_tower_refused(mm, server):
    import openai

    assert _get(server, "/props")["modalities"] == {"vision": True, "audio": True}
    assert _get(server, "/props")["mmproj"] == "towers.safetensors"
    assert _get(server, "/v1/models")["data"][0]["modalities"] == ["text", "vision", "audio"]
    vision = start_server(mm["vision"], mm["d"] / "v.log", "--ctx", "1024")
    text = start_server(mm["art"], mm["d"] / "t.log", "--ctx", "1024", "--no-mmproj")
    try:
        assert _get(vision, "/v1/models")["data"][0]["modalities"] == ["text", "vision"]
        assert _get(text, "/props")["modalities"] == {"vision": False, "audio": False}
        with pytest.raises(openai.BadRequestError, match="no audio tower"):
            _reply(vision, _ask(_audio(_wav())))
        with pytest.raises(openai.BadRequestError, match="no vision tower"):
            _reply(text, _ask(_image(_png())))
        assert _reply(vision, _ask(_image(_png())), n_tokens=2).usage.completion_tokens == 2
    finally:
        assert vision.stop() == 0 and text.stop() == 0


def test_mmproj_and_text_builds_are_refused_in_one_line(mm, tmp_path):
    (tmp_path / "p.png").write_bytes(_png())
    r = cli("run", str(mm["art"]), "-p", "hi", "--image", str(tmp_path / "p.png"), "--mmproj", str(tmp_path / "p.png"))
    assert r.returncode != 0 and "towers live in its folder" in r.stderr and "Traceback" not in r.stderr, r.stderr
    (tmp_path / "c.wav").write_bytes(_wav(1.0))
    r = cli("run", str(mm["vision"]), "-p", "hi", "--audio", str(tmp_path / "c.wav"))
    assert r.returncode != 0 and "no audio tower" in r.stderr and "Traceback" not in r.stderr, r.stderr


@pytest.mark.slow
def test_eval_cases_with_media_reply_as_run_does(mm, tmp_path):
    """Suite cases carrying an image and a clip run on the MLX build (eval/media_cases.py, run's path):
    each greedy reply equals `edgekit run`'s with the same file and prompt."""
    import hashlib

    import soundfile as sf

    from edgekit.eval.suite import SuiteOptions, run_suites

    (tmp_path / "media").mkdir()
    gradient_image().save(tmp_path / "media" / "img.png")
    sf.write(tmp_path / "media" / "chirp.wav", chirp(), 16000)
    sha = {n: hashlib.sha256((tmp_path / "media" / n).read_bytes()).hexdigest() for n in ("img.png", "chirp.wav")}
    cases = [
        {"id": "t", "suite": "text", "prompt": "Say hi.", "expected": "hi", "scorer": "contains"},
        {"id": "i", "suite": "vision", "prompt": "What is in this picture?", "expected": "cat", "scorer": "contains",
         "image": {"file": "media/img.png", "sha256": sha["img.png"]}},
        {"id": "a", "suite": "audio", "prompt": "Transcribe this.", "expected": "hello", "scorer": "contains",
         "audio": {"file": "media/chirp.wav", "sha256": sha["chirp.wav"]}},
    ]  # fmt: skip
    suite = tmp_path / "suite.jsonl"
    suite.write_text("".join(json.dumps(c) + "\n" for c in cases))
    recs = run_suites([mm["art"]], suite, SuiteOptions(max_tokens=6))
    out = {a["id"]: a["output"] for r in recs for a in r.answers}
    assert set(out) == {"t", "i", "a"}
    for cid, prompt, media in (
        ("i", "What is in this picture?", ["--image", str(tmp_path / "media" / "img.png")]),
        ("a", "Transcribe this.", ["--audio", str(tmp_path / "media" / "chirp.wav")]),
    ):
        r = cli("run", str(mm["art"]), "-p", prompt, *media, "-n", "6", "--temperature", "0", "--no-think")
        assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
        assert out[cid] == r.stdout[:-1], (cid, out[cid], r.stdout)


@pytest.mark.parametrize("with_manifest", [True, False])
def test_damaged_towers_are_one_line(mm, tmp_path, with_manifest):
    """A towers file whose bytes changed: with its manifest, the resolver refuses the folder (its sha256
    covers every file); alone, mlx-vlm's strict load does."""
    import shutil

    src = mm["art"].parent if with_manifest else mm["art"]
    shutil.copytree(src, tmp_path / "copy")
    folder = tmp_path / "copy" / mm["art"].name if with_manifest else tmp_path / "copy"
    (folder / "towers.safetensors").write_bytes(b"\0" * 64)
    (tmp_path / "p.png").write_bytes(_png())
    r = cli("run", str(folder), "-p", "hi", "--image", str(tmp_path / "p.png"))
    said = "differ from manifest.json" if with_manifest else "mlx-vlm's towers do not load it"
    assert r.returncode != 0 and said in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) <= 2, r.stderr  # the artifact line and the error


@pytest.mark.slow
def test_tower_precision_against_f16(mm, tmp_path):
    """eval's projector precision on MLX builds: one bf16 text model, its towers stored F16 (the
    reference), BF16 or F32. Random towers: the figures check wiring and order (F32 is closer to F16 than
    BF16 is), they cannot rank types for a trained tower (docs/multimodal.md)."""
    from edgekit.backends.mlx.convert import convert
    from edgekit.eval.metrics import full_kl
    from edgekit.eval.projector_precision import Medium as PMedium
    from edgekit.eval.projector_precision import compare_mlx_towers, format_rows
    from edgekit.model.checkpoint import load_checkpoint
    from edgekit.profiles.recipes import get_recipe

    ckpt, bf16 = load_checkpoint(mm["ckpt"]), get_recipe("mlx-bf16")
    both = ("vision", "audio")
    folders = {
        t: convert(ckpt, dataclasses.replace(bf16, name=f"t-{t}", towers=dict.fromkeys(both, t)), tmp_path / t, both)
        for t in ("F16", "BF16", "F32")
    }
    media = [
        PMedium("image", "image", prepare_image(gradient_image(), 70)),
        PMedium("image 2", "image", prepare_image(gradient_image(seed=1), 70)),
        PMedium("audio", "audio", Audio(chirp(), 16000)),
    ]
    rows = compare_mlx_towers(folders, media)
    print(format_rows(rows))
    by = {(r.projector, r.medium): r for r in rows}
    for m in ("image", "audio"):
        f16, bf, f32 = (by[(t, m)] for t in ("F16", "BF16", "F32"))
        assert f16.soft_rel_l2 == 0.0 and abs(f16.next_kl) < 1e-12 and f16.same_top  # the same towers twice
        assert 0 < f32.soft_rel_l2 < bf.soft_rel_l2 < 0.1, (f32, bf)
        assert f16.tokens == (63 if m == "image" else 50)
    # the KL sees the medium: another image moves the next token far more than a tower type's rounding
    from edgekit.backends.mlx.media import soft_and_logits

    head, tail = "<bos><|turn>user\n", "\nDescribe this.<turn|>\n<|turn>model\n"
    (_, a), (_, b) = soft_and_logits(
        folders["F16"], [("image", media[0].data), ("image", media[1].data)], (head, tail), 70
    )
    assert full_kl(a[None], b[None])[0] > 10 * max(by[(t, "image")].next_kl for t in ("BF16", "F32"))
