"""Media in: decoding with Pillow and libsndfile, sizing and resampling, faults as one-line errors, and
`edgekit run --image/--audio` on the tiny model with towers."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from edgekit.cli import app
from edgekit.dev.synth import synth
from edgekit.serve.media import (
    MediaError,
    image_tokens,
    open_audio,
    open_image,
    prepare_image,
)


def _wav(path, seconds=1.0, rate=44100, channels=1, fmt=None):
    import soundfile as sf

    t = np.arange(int(rate * seconds)) / rate
    x = 0.5 * np.sin(2 * np.pi * 440 * t)
    sf.write(path, np.stack([x] * channels, -1) if channels > 1 else x, rate, format=fmt)
    return path


def test_audio_formats_resample_to_16k_mono(tmp_path):
    for name, kw in (
        ("a.wav", {}),
        ("b.flac", {"rate": 16000, "channels": 2}),
        ("c.mp3", {}),
        ("d.ogg", {"rate": 22050}),
    ):
        a = open_audio(_wav(tmp_path / name, 1.5, **kw))
        assert a.samples.dtype == np.float32 and a.samples.ndim == 1
        assert abs(a.seconds - 1.5) < 0.06, name  # mp3 pads a frame or so
        assert 0.3 < np.abs(a.samples).max() < 0.7, name  # the sine survived decoding and resampling
    assert open_audio(_wav(tmp_path / "e.wav", 2.0)).tokens == 50  # 25 per second, transformers' count


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p.write_bytes(b"RIFF....WAVEnot really"), "not audio libsndfile can decode"),
        (lambda p: _wav(p, 31.0, rate=8000), "over the 30 s"),
        (lambda p: _wav(p, 0.0), "empty"),
    ],
)
def test_bad_audio_is_one_line(tmp_path, make, message):
    p = tmp_path / "x.wav"
    make(p)
    with pytest.raises(MediaError, match=message) as e:
        open_audio(p)
    assert "\n" not in str(e.value)


def test_images_are_sized_as_transformers_does(tmp_path):
    from PIL import Image

    Image.new("RGB", (224, 224), (10, 20, 30)).save(tmp_path / "a.png")
    img = prepare_image(open_image(tmp_path / "a.png"), 280)
    assert img.size == (768, 768) and image_tokens(img.height, img.width) == 256  # llama.cpp alone: 81
    Image.new("RGBA", (1920, 1080)).save(tmp_path / "b.png")
    img = prepare_image(open_image(tmp_path / "b.png"), 280)
    assert img.mode == "RGB" and image_tokens(img.height, img.width) == 264  # llama.cpp alone: 920
    with pytest.raises(MediaError, match="choose one of 70, 140"):
        prepare_image(img, 100)


def test_bad_images_are_one_line(tmp_path):
    (tmp_path / "x.jpg").write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(MediaError, match="not an image Pillow can decode"):
        open_image(tmp_path / "x.jpg")
    with pytest.raises(MediaError, match="cannot read it"):
        open_image(tmp_path / "missing.jpg")
    from PIL import Image

    Image.new("L", (10000, 6000)).save(tmp_path / "big.png")  # 60 M pixels, a few KB compressed
    with pytest.raises(MediaError, match="over 50,000,000 pixels"):
        open_image(tmp_path / "big.png")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    d = tmp_path_factory.mktemp("mmrun")
    ckpt = synth(d / "tiny-mm", preset="tiny", seed=0, towers=True)
    r = CliRunner().invoke(
        app, ["build", "-m", str(ckpt), "-q", "q8_0", "--modalities", "vision,audio", "--out", str(d / "dist")]
    )
    assert r.exit_code == 0, r.output
    return d / "dist" / "tiny-mm" / "pi5", d


@pytest.mark.slow  # 39 s on this loaded host (load average 19 on 2 cores); the model is tiny
def test_run_with_an_image_and_audio(built, tmp_path):
    from PIL import Image

    folder, _ = built
    Image.new("RGB", (300, 200), (200, 100, 50)).save(tmp_path / "photo.jpg")
    _wav(tmp_path / "clip.wav", 1.0)
    r = CliRunner().invoke(
        app,
        [
            "run",
            str(folder / "tiny-mm-Q8_0.gguf"),
            "-p",
            "What is this?",
            "-n",
            "4",
            "--image",
            str(tmp_path / "photo.jpg"),
            "--audio",
            str(tmp_path / "clip.wav"),
            "--image-tokens",
            "70",
        ],
    )
    assert r.exit_code == 0, r.output
    # 70-token budget: 300x200 → 336x192 px, 28 image tokens; 1 s of audio: 25 tokens; plus the chat text.
    assert "towers" in r.output and "(4 tokens, prompt " in r.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["--image", "{tmp}/bad.jpg"], "not an image Pillow can decode"),
        (["--image", "{tmp}/none.jpg"], "none.jpg: cannot read it"),
        (["--audio", "{tmp}/photo.jpg", "--temperature", "0.5"], "photo.jpg: not audio libsndfile can decode"),
        (["--audio", "{tmp}/photo.jpg"], "not audio libsndfile can decode"),
        (["--image", "{tmp}/photo.jpg", "--mmproj", "{tmp}/none.gguf"], "no such projector file"),
    ],
)
def test_run_faults_are_one_line(built, tmp_path, args, message):
    from PIL import Image

    folder, _ = built
    Image.new("RGB", (64, 64)).save(tmp_path / "photo.jpg")
    (tmp_path / "bad.jpg").write_bytes(b"nope")
    r = CliRunner().invoke(
        app, ["run", str(folder / "tiny-mm-Q8_0.gguf"), "-p", "hi", "-n", "2", *[a.format(tmp=tmp_path) for a in args]]
    )
    assert r.exit_code != 0 and message in r.output and "Traceback" not in r.output, r.output


def test_run_refuses_a_text_only_build_and_a_foreign_projector(built, tiny_ckpt, tmp_path):
    from PIL import Image

    r = CliRunner().invoke(app, ["build", "-m", str(tiny_ckpt), "-q", "q8_0", "--out", str(tmp_path / "dist")])
    assert r.exit_code == 0, r.output
    Image.new("RGB", (64, 64)).save(tmp_path / "photo.jpg")
    art = next((tmp_path / "dist").rglob("*.gguf"))
    r = CliRunner().invoke(app, ["run", str(art), "-p", "hi", "--image", str(tmp_path / "photo.jpg")])
    assert r.exit_code != 0 and "built without towers" in r.output and "Traceback" not in r.output
    # The tiny text-only model has the same width but no <|image> token: the other model's projector is refused.
    proj = next(built[0].glob("*mmproj*.gguf"))
    r = CliRunner().invoke(
        app, ["run", str(art), "-p", "hi", "--image", str(tmp_path / "photo.jpg"), "--mmproj", str(proj)]
    )
    assert r.exit_code != 0 and "does not belong to" in r.output and "Traceback" not in r.output, r.output
