"""`edgekit serve` with images and audio: OpenAI content parts, 400s for bad media (the server goes on),
and the served modalities in /props and /v1/models. In-process (starlette's TestClient), tiny model."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from typer.testing import CliRunner

from edgekit.cli import app as cli_app
from edgekit.dev.synth import synth


def _png(w=120, h=90) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (w, h), (30, 120, 200)).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _wav_b64(seconds=1.0) -> str:
    import soundfile as sf

    buf = io.BytesIO()
    t = np.arange(int(16000 * seconds)) / 16000
    sf.write(buf, 0.5 * np.sin(2 * np.pi * 440 * t), 16000, format="WAV")
    return base64.b64encode(buf.getvalue()).decode()


def _client(art):
    from starlette.testclient import TestClient

    from edgekit.serve.http import make_app
    from edgekit.serve.session import open_session

    session = open_session(art, ctx=1024, threads=2)
    return TestClient(make_app(session)), session


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    d = tmp_path_factory.mktemp("srvmm")
    ckpt = synth(d / "tiny-mm", preset="tiny", seed=0, towers=True)
    r = CliRunner().invoke(cli_app, ["build", "-m", str(ckpt), "-q", "q8_0", "--modalities", "vision,audio", "--out", str(d)])
    assert r.exit_code == 0, r.output
    client, session = _client(d / "tiny-mm" / "pi5" / "tiny-mm-Q8_0.gguf")
    yield client
    session.close()


def _chat(client, parts, **kw):
    return client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": parts}],
                                                     "max_tokens": 3, **kw})


def test_modalities_are_advertised(served):
    assert served.get("/props").json()["modalities"] == ["text", "vision", "audio"]
    assert served.get("/v1/models").json()["data"][0]["modalities"] == ["text", "vision", "audio"]


def test_an_image_and_audio_reply(served):
    r = _chat(served, [{"type": "image_url", "image_url": {"url": _png()}},
                       {"type": "input_audio", "input_audio": {"data": _wav_b64(), "format": "wav"}},
                       {"type": "text", "text": "What is this?"}])
    assert r.status_code == 200, r.text
    body = r.json()
    # 120x90 at 280 tokens → 336x240 px (35 image tokens) + 1 s of audio (25) + markers and chat text.
    assert body["usage"]["completion_tokens"] == 3 and body["usage"]["prompt_tokens"] > 60
    assert body["choices"][0]["finish_reason"] == "length"


@pytest.mark.parametrize("part, message", [
    ({"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}, "only data: URIs"),
    ({"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}, "not an image Pillow can decode"),
    ({"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}}, "not valid base64"),
    ({"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}}, "not audio libsndfile can decode"),
    ({"type": "input_audio", "input_audio": {"data": "", "format": "aiff"}}, "input_audio.format 'aiff'"),
    ({"type": "video_url", "video_url": {}}, "unknown content part type 'video_url'"),
])
def test_bad_media_is_a_400_and_the_server_goes_on(served, part, message):
    r = _chat(served, [part, {"type": "text", "text": "hi"}])
    assert r.status_code == 400 and message in r.json()["error"]["message"], r.text
    ok = served.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    assert ok.status_code == 200


def test_too_long_audio_and_streaming_are_refused(served):
    r = _chat(served, [{"type": "input_audio", "input_audio": {"data": _wav_b64(31.0), "format": "wav"}}])
    assert r.status_code == 400 and "over the 30 s" in r.json()["error"]["message"]
    r = _chat(served, [{"type": "image_url", "image_url": {"url": _png()}}], stream=True)
    assert r.status_code == 400 and "streaming" in r.json()["error"]["message"]


def test_a_text_only_build_has_no_towers_to_serve(tiny_ckpt, tmp_path):
    r = CliRunner().invoke(cli_app, ["build", "-m", str(tiny_ckpt), "-q", "q8_0", "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    client, session = _client(next(tmp_path.rglob("*.gguf")))
    try:
        assert client.get("/props").json()["modalities"] == ["text"]
        r = _chat(client, [{"type": "image_url", "image_url": {"url": _png()}}])
        assert r.status_code == 400 and "no vision tower" in r.json()["error"]["message"]
    finally:
        session.close()
