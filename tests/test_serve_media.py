"""`edgekit serve` with images and audio (OpenAI content parts) on the tiny model with towers, through the
real `openai` client: replies equal `edgekit run --image` and the library's mtmd path, streaming and
sampling work as for text, every bad medium is a 400 and the server goes on, modalities are listed."""

from __future__ import annotations

import base64
import http.server
import io
import json
import threading
import urllib.request

import numpy as np
import pytest
from serve_fixture import cli, start_server

from edgekit.serve.media import MediaError
from edgekit.serve.media_parts import MediaLimits, split

CTX = 1024
BASE = ("--ctx", str(CTX), "--threads", "1", "--image-tokens", "70")
# -ub 512: the tiny model's width gets non-causal image attention in llama.cpp (E2B's does not), so an
# image's tokens must fit one ubatch; pi5's is 64. F16 cache, no flash attention: the library's mtmd path
# (media_run.MediaModel, llama.cpp's defaults) that the served log-probabilities are compared with.
KNOBS = ("-ub", "512", "--set", "kv_type=f16", "--set", "flash_attn=off")
PROMPT = "What is this?"


def _png(w=300, h=200, color=(200, 100, 50), noise=False) -> bytes:
    from PIL import Image

    img = (
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8))
        if noise
        else Image.new("RGB", (w, h), color)
    )
    b = io.BytesIO()
    img.save(b, "PNG")
    return b.getvalue()


def _wav(seconds=1.0, rate=16000, fmt="WAV") -> bytes:
    import soundfile as sf

    t = np.arange(int(rate * seconds)) / rate
    b = io.BytesIO()
    sf.write(b, 0.5 * np.sin(2 * np.pi * 440 * t), rate, format=fmt)
    return b.getvalue()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _image(data: bytes, **kw) -> dict:
    return {"type": "image_url", "image_url": {"url": "data:image/png;base64," + _b64(data), **kw}}


def _audio(data: bytes, fmt="wav") -> dict:
    return {"type": "input_audio", "input_audio": {"data": _b64(data), "format": fmt}}


def _ask(*parts, text=PROMPT) -> list[dict]:
    return [{"role": "user", "content": [*parts, {"type": "text", "text": text}]}]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    d = tmp_path_factory.mktemp("servemm")
    assert cli("synth", "--out", str(d / "tiny-mm"), "--preset", "tiny", "--towers").returncode == 0
    for mods, out in (("vision,audio", "dist"), ("vision", "dist-v")):
        r = cli("build", "-m", str(d / "tiny-mm"), "-q", "q8_0", "--modalities", mods, "--out", str(d / out))
        assert r.returncode == 0, r.stderr
    (d / "media").mkdir()
    (d / "media" / "photo.png").write_bytes(_png())
    (d / "secret.png").write_bytes(_png())
    return d


@pytest.fixture(scope="module")
def art(built):
    return built / "dist" / "tiny-mm" / "pi5" / "tiny-mm-Q8_0.gguf"


@pytest.fixture(scope="module")
def server(built, art):
    s = start_server(
        art,
        built / "serve.log",
        *BASE,
        *KNOBS,
        "--set",
        "towers=resident",  # the reference of the on_demand test (pi5, the artifact's target, loads per prompt)
        "--parallel",
        "2",
        "--max-media-mb",
        "1",
        "--max-image-pixels",
        "1000000",
        "--max-audio-seconds",
        "2",
        "--media-path",
        str(built / "media"),
        "--allow-remote-media",
    )
    yield s
    assert s.stop() == 0


def _reply(server, messages, **kw):
    kw.setdefault("temperature", 0)
    r = server.client().chat.completions.create(model="m", messages=messages, max_tokens=kw.pop("n_tokens", 6), **kw)
    return r


def test_reply_with_an_image_equals_run_and_the_library(server, art, built, tmp_path):
    (tmp_path / "photo.png").write_bytes(_png())
    # run --image goes through the session's scheduler with the knobs it is given, as serve does
    r = cli("run", str(art), "-p", PROMPT, "--image", str(tmp_path / "photo.png"), "-n", "6", *BASE, *KNOBS)
    assert r.returncode == 0, r.stderr
    got = _reply(server, _ask(_image(_png())), logprobs=True, top_logprobs=5)
    assert got.choices[0].message.content == r.stdout[:-1]
    assert f"prompt {got.usage.prompt_tokens})" in r.stderr  # the image's 60 soft tokens and the text

    # The same positions through the library's mtmd path (media_run.MediaModel, its own context): the
    # served log-probabilities of each greedy token and its top 5.
    from edgekit.serve.chat import ChatTemplate
    from edgekit.serve.media import open_image, prepare_image
    from edgekit.serve.media_run import MediaModel, MediaPrompt, media_marker

    proj = next(art.parent.glob("*mmproj*.gguf"))
    model = MediaModel(art, proj, n_ctx=CTX, threads=1, image_budget=70)
    try:
        text = ChatTemplate.from_artifact(art).render([{"role": "user", "content": media_marker() + "\n" + PROMPT}])
        img = prepare_image(open_image(_png()), 70)
        model.eval_prompt(text, MediaPrompt([img], []))
        worst = 0.0
        for served in got.choices[0].logprobs.content:
            x = model._logits().astype(np.float64)
            lp = x - (x.max() + np.log(np.exp(x - x.max()).sum()))
            tok = int(np.argmax(lp))
            assert model.piece(tok) == bytes(served.bytes)
            worst = max(
                worst,
                abs(lp[tok] - served.logprob),
                *(abs(lp[np.argsort(-lp)[i]] - t.logprob) for i, t in enumerate(served.top_logprobs)),
            )
            model.llm.eval([tok])
    finally:
        model.close()
    print("served vs library log-probabilities, worst abs difference:", worst)
    assert worst < 1e-5, worst  # measured 0.0: the same positions, cache type and batch on both paths
    # The image reaches the model: another one moves the first token's distribution.
    other = _reply(server, _ask(_image(_png(color=(0, 0, 255)))), logprobs=True, top_logprobs=5)
    first = lambda r: [t.logprob for t in r.choices[0].logprobs.content[0].top_logprobs]
    assert max(abs(a - b) for a, b in zip(first(got), first(other), strict=True)) > 1e-2


def test_run_applies_sampling_and_knobs_with_media(server, art, tmp_path):
    """Sampling options and --set knobs now apply to `run --image/--audio`: a seeded sampled reply equals
    the served one with the same seed; another seed, or greedy, is another reply."""
    (tmp_path / "photo.png").write_bytes(_png())
    (tmp_path / "clip.wav").write_bytes(_wav(1.0))
    media = ("--image", str(tmp_path / "photo.png"), "--audio", str(tmp_path / "clip.wav"))
    sampled = ("--temperature", "0.9", "--top-p", "0.95", "-n", "8")
    runs = {
        seed: cli("run", str(art), "-p", PROMPT, *media, *sampled, "--seed", str(seed), *BASE, *KNOBS)
        for seed in (7, 8)
    }
    for r in runs.values():
        assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    served = {
        seed: _reply(
            server, _ask(_image(_png()), _audio(_wav(1.0))), temperature=0.9, top_p=0.95, seed=seed, n_tokens=8
        )
        .choices[0]
        .message.content
        for seed in (7, 8)
    }
    assert {seed: r.stdout[:-1] for seed, r in runs.items()} == served
    greedy = _reply(server, _ask(_image(_png()), _audio(_wav(1.0))), n_tokens=8).choices[0].message.content
    assert len({served[7], served[8], greedy}) == 3, (served, greedy)


def test_streaming_sampling_audio_and_n(server):
    messages = _ask(_image(_png()), _audio(_wav(1.0)))
    kw = {"temperature": 0.9, "seed": 7, "n_tokens": 8}
    whole = _reply(server, messages, **kw)
    image_only = _reply(server, _ask(_image(_png())), n_tokens=1).usage.prompt_tokens
    # 1 s of audio: 25 soft tokens, mtmd's <|audio> and <audio|> around them, the newline after the image
    assert whole.usage.prompt_tokens - image_only == 25 + 2 + 1
    stream = server.client().chat.completions.create(
        model="m", messages=messages, max_tokens=8, temperature=0.9, seed=7, stream=True
    )
    chunks = list(stream)
    assert sum(bool(c.choices and c.choices[0].delta.content) for c in chunks) > 1  # token by token
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole.choices[0].message.content
    two = _reply(server, messages, n=2, **kw)  # two slots decode the same embeddings
    assert two.choices[0].message.content == whole.choices[0].message.content


def test_concurrent_media_requests_equal_their_sequential_replies(server):
    asks = [_ask(_image(_png(color=c))) for c in ((200, 100, 50), (0, 0, 255), (20, 200, 20))]
    alone = [_reply(server, m).choices[0].message.content for m in asks]
    out: list = [None] * 3
    threads = [
        threading.Thread(target=lambda i=i: out.__setitem__(i, _reply(server, asks[i]).choices[0].message.content))
        for i in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert out == alone


def _big_noise_png() -> bytes:
    data = _png(700, 700, noise=True)
    assert len(data) > 1 << 20
    return data


BAD = [
    (lambda: [_image(b"not an image at all")], "not an image Pillow can decode"),
    (lambda: [_image(_big_noise_png())], "this server takes at most 1,048,576"),
    (lambda: [_image(_png(2000, 600))], "over 1,000,000 pixels"),
    (lambda: [{"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@@"}}], "not valid base64"),
    (lambda: [{"type": "image_url", "image_url": {"url": "file://../secret.png"}}], "outside --media-path"),
    (lambda: [{"type": "image_url", "image_url": {"url": "ftp://x/y.png"}}], "ftp: URLs are not read"),
    (lambda: [{"type": "image_url", "image_url": {"url": "x", "size": 1}}], "image_url.size: unknown field"),
    (lambda: [_audio(_wav(3.0))], "over the 2 s a clip may last"),
    (lambda: [_audio(_wav(1.0), "mp3")], "says mp3, but the data is WAV"),
    (lambda: [_audio(_wav(1.0), "aac")], "input_audio.format: one of wav, mp3"),
    (lambda: [_audio(b"RIFF....WAVEnope")], "not audio libsndfile can decode"),
    (lambda: [{"type": "input_image", "image_url": "x"}], "input_image parts are not read here"),
]


@pytest.mark.parametrize("parts, message", BAD)
def test_bad_media_is_a_400_and_the_server_goes_on(server, parts, message):
    import openai

    with pytest.raises(openai.BadRequestError) as e:
        _reply(server, _ask(*parts()))
    assert e.value.status_code == 400 and message in e.value.body["message"], e.value.body
    assert _reply(server, _ask(_image(_png())), n_tokens=1).usage.completion_tokens == 1


def test_local_files_and_remote_urls_behind_their_flags(server, built):
    want = _reply(server, _ask(_image(_png()))).choices[0].message.content
    local = {"type": "image_url", "image_url": {"url": "file://photo.png"}}
    assert _reply(server, _ask(local)).choices[0].message.content == want

    class Files(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(built / "media"), **kw)

        def log_message(self, *a):
            pass

    (built / "media" / "big.png").write_bytes(_big_noise_png())
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Files)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{httpd.server_address[1]}"
        remote = {"type": "image_url", "image_url": {"url": base + "/photo.png"}}
        assert _reply(server, _ask(remote)).choices[0].message.content == want
        import openai

        for name, message in (("/big.png", "this server takes at most"), ("/none.png", "could not fetch it")):
            with pytest.raises(openai.BadRequestError, match=message):
                _reply(server, _ask({"type": "image_url", "image_url": {"url": base + name}}))
    finally:
        httpd.shutdown()


def test_without_the_flags_no_file_or_url_is_read(built):
    for url, message in (
        ("file://photo.png", "--media-path DIR"),
        ("http://127.0.0.1:9/x.png", "--allow-remote-media"),
    ):
        with pytest.raises(MediaError, match=message):
            split(_ask({"type": "image_url", "image_url": {"url": url}}), "<__media__>", MediaLimits())


def _get(server, path):
    with urllib.request.urlopen(server.url + path, timeout=10) as r:
        return json.loads(r.read())


def test_modalities_listed_and_media_without_a_tower_refused(server, built, art):
    import openai

    assert _get(server, "/props")["modalities"] == {"vision": True, "audio": True}
    assert _get(server, "/v1/models")["data"][0]["modalities"] == ["text", "vision", "audio"]
    vision = start_server(built / "dist-v" / "tiny-mm" / "pi5" / "tiny-mm-Q8_0.gguf", built / "v.log", *BASE)
    text = start_server(art, built / "t.log", *BASE, "--no-mmproj")
    try:
        assert _get(vision, "/props")["modalities"] == {"vision": True, "audio": False}
        assert _get(vision, "/v1/models")["data"][0]["modalities"] == ["text", "vision"]
        assert _get(text, "/props")["modalities"] == {"vision": False, "audio": False}
        # pi5's towers = on_demand is applied where a projector is (and /props says so), and only there
        assert _get(vision, "/props")["runtime"]["towers"] == "on_demand"
        assert "towers" not in _get(text, "/props")["runtime"] and _get(text, "/props")["towers"] is None
        with pytest.raises(openai.BadRequestError, match="no audio tower"):
            _reply(vision, _ask(_audio(_wav())))
        # pi5's ubatch (64) on a model whose image attention is non-causal: warned at start, and an image
        # of 70 soft tokens (480x336) is a 400 naming the fix, while one of 60 is served
        assert "those over 64 soft tokens (the ubatch) are refused" in (built / "v.log").read_text()
        with pytest.raises(openai.BadRequestError, match=r"makes 70 soft tokens.*--ubatch-size 70"):
            _reply(vision, _ask(_image(_png(480, 336))))
        assert _reply(vision, _ask(_image(_png())), n_tokens=1).usage.completion_tokens == 1
        with pytest.raises(openai.BadRequestError, match="no vision tower"):
            _reply(text, _ask(_image(_png())))
        assert _reply(text, [{"role": "user", "content": PROMPT}], n_tokens=2).usage.completion_tokens == 2
    finally:
        assert vision.stop() == 0 and text.stop() == 0


def test_requests_waiting_for_the_towers_are_bounded():
    import asyncio

    from edgekit.serve.towers import Busy, Towers

    t = Towers.__new__(Towers)  # the bound alone: no model behind it
    t.max_waiting, t._waiting, t._lock = 2, 2, threading.Lock()
    with pytest.raises(Busy, match="2 requests with media are waiting"):
        asyncio.run(t.prompt([], None, None))
    assert t._waiting == 2


def _logprobs(r) -> list[tuple[float, list[float]]]:
    return [(t.logprob, [x.logprob for x in t.top_logprobs]) for t in r.choices[0].logprobs.content]


def test_towers_on_demand_give_the_resident_numbers_and_free_the_projector(server, built, art, tmp_path):
    """towers = on_demand: mtmd's context is loaded for each prompt with media and freed once they are
    encoded; the soft tokens then reach the model without it (backends.mtmd.decode_embeddings, not mtmd's
    helper). Served log-probabilities equal the resident server's for an image, a clip, and both."""
    import openai

    assert _get(server, "/props")["towers"] == {"mode": "resident", "loaded": True, "loads": 1}
    od = start_server(art, built / "od.log", *BASE, *KNOBS, "--set", "towers=on_demand")
    try:
        # loaded once at start (modalities, the pair's checks, the ubatch warning), then freed
        assert _get(od, "/props")["towers"] == {"mode": "on_demand", "loaded": False, "loads": 1}
        cases = [
            _ask(_image(_png())),
            _ask(_audio(_wav())),
            _ask(_image(_png(color=(0, 0, 255))), _audio(_wav(0.5))),
        ]
        for i, messages in enumerate(cases, start=1):
            want = _reply(server, messages, logprobs=True, top_logprobs=5)
            got = _reply(od, messages, logprobs=True, top_logprobs=5)
            assert got.choices[0].message.content == want.choices[0].message.content
            assert got.usage.prompt_tokens == want.usage.prompt_tokens
            assert _logprobs(got) == _logprobs(want)  # measured: equal to the last bit
            assert _get(od, "/props")["towers"] == {"mode": "on_demand", "loaded": False, "loads": 1 + i}
        # a prompt refused after the projector tokenized its media (too long for the context) frees it too
        with pytest.raises(openai.BadRequestError, match="the context is"):
            _reply(od, _ask(_image(_png()), text="word " * CTX))
        assert _get(od, "/props")["towers"]["loaded"] is False
        # `run` takes the knob as serve does
        (tmp_path / "photo.png").write_bytes(_png())
        r = cli(
            "run", str(art), "-p", PROMPT, "--image", str(tmp_path / "photo.png"), "-n", "6", *BASE, *KNOBS,
            "--set", "towers=on_demand",
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert r.stdout[:-1] == _reply(server, _ask(_image(_png()))).choices[0].message.content
    finally:
        assert od.stop() == 0


def test_a_medium_placed_in_2d_keeps_its_projector():
    """on_demand decodes soft tokens at one position each; a projector whose media take 2-D positions
    (M-RoPE: n_pos < n_tokens) needs mtmd's helper and its context, so a span of it does not detach."""
    from edgekit.backends.mtmd import MediaSpan

    class Mtmd:  # the five calls a span makes, for a 64-token image laid out on an 8x8 M-RoPE grid
        mtmd_input_chunk_get_n_tokens = staticmethod(lambda c: 64)
        mtmd_input_chunk_get_n_pos = staticmethod(lambda c: 8)
        mtmd_decode_use_non_causal = staticmethod(lambda ctx, c: False)
        mtmd_decode_use_mrope = staticmethod(lambda ctx: True)
        mtmd_input_chunk_free = staticmethod(lambda c: None)

    span = MediaSpan(Mtmd(), object(), object(), "image")
    assert not span.plain_positions
    with pytest.raises(MediaError, match="2-D"):
        span.detach()
