"""`edgekit bench --image/--audio` on the tiny model with towers: what the records say is checked against
references (the processor's token counts, the files' sha256, the projector's tensor bytes, a text-only
run of the same length), and bad media end in one line."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from edgekit.cli import app
from edgekit.dev.synth import synth
from edgekit.results import Record, Store

P, N = 16, 2


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    import soundfile as sf
    from PIL import Image

    d = tmp_path_factory.mktemp("mmbench")
    ckpt = synth(d / "tiny-mm", preset="tiny", seed=0, towers=True)
    r = CliRunner().invoke(
        app, ["build", "-m", str(ckpt), "-q", "q8_0", "--modalities", "vision,audio", "--out", str(d / "dist")]
    )
    assert r.exit_code == 0, r.output
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (600, 900, 3), dtype=np.uint8)).save(d / "photo.png")
    t = np.arange(16000 * 1) / 16000
    sf.write(d / "clip.wav", 0.3 * np.sin(2 * np.pi * 300 * t * (1 + t)), 16000)  # 1 s: 25 tokens
    return d / "dist" / "tiny-mm" / "pi5", d


def _bench(args, db=None):
    r = CliRunner().invoke(app, ["bench", *args, "-o", "jsonl", *(["--db", str(db)] if db else ["--no-store"])])
    return r, [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]


@pytest.fixture(scope="module")
def runs(built):
    folder, d = built
    art = str(folder / "tiny-mm-Q8_0.gguf")
    # the tiny model (256 wide) attends inside a medium non-causally, which llama.cpp runs in one ubatch
    common = [art, "-p", str(P), "-n", str(N), "-r", "1", "--set", "n_ubatch=512"]
    media = ["--image", str(d / "photo.png"), "--image-tokens", "70,140", "--audio", str(d / "clip.wav")]
    r, recs = _bench([*common, *media, "--set", "towers=resident,on_demand"], db=d / "r.db")
    assert r.exit_code == 0, r.output
    # the text alone, one test per prompt length those runs had (BOS + soft tokens + 2 markers + P), one load
    lengths = ",".join(str(n) for n in sorted({r["n_positions"] for r in recs}))
    r2, text = _bench([common[0], "-p", lengths, *common[3:]])
    assert r2.exit_code == 0, r2.output
    return recs, {t["n_prompt"]: t for t in text}, d


@pytest.mark.slow  # two tiny-model bench children with 3 media each, and one text-only (≈1-2 min loaded)
def test_media_records_match_their_references(runs, built):
    recs, _, d = runs
    assert [(r["runtime"]["towers"], r["media_kind"], r["image_tokens_budget"]) for r in recs] == [
        (mode, kind, b)
        for mode in ("resident", "on_demand")
        for kind, b in (("image", 70), ("image", 140), ("audio", None))
    ]
    from PIL import Image
    from transformers import AutoImageProcessor

    sha = {
        k: hashlib.sha256((d / f).read_bytes()).hexdigest() for k, f in (("image", "photo.png"), ("audio", "clip.wav"))
    }
    # transformers' own processor for the images; 1 s of audio at its 25 tokens per second (40 ms each)
    proc = AutoImageProcessor.from_pretrained(d / "tiny-mm")
    img = Image.open(d / "photo.png").convert("RGB")
    want_tokens = {
        b: int(proc(images=[img], return_tensors="np", max_soft_tokens=b)["num_soft_tokens_per_image"][0])
        for b in (70, 140)
    }
    want_tokens[None] = 25
    for r in recs:
        assert r["media_sha256"] == sha[r["media_kind"]]
        assert r["media_tokens"] == want_tokens[r["image_tokens_budget"]] == r["extra"]["media"]["processor_tokens"]
        if r["media_kind"] == "image":
            assert (r["media_width"], r["media_height"], r["media_seconds"]) == (900, 600, None)
        else:
            assert (r["media_width"], r["media_seconds"]) == (None, 1.0)
        # BOS, the soft tokens framed by their two marker tokens, the P text tokens
        assert r["n_positions"] == 1 + r["media_tokens"] + 2 + P
        assert r["n_prompt"] == P and r["n_gen"] == N and r["tg_tps"] > 0 and r["encode_ms"] > 0
        assert r["ttft_ms"] > r["encode_ms"]  # TTFT holds the encode and the prompt's evaluation


@pytest.mark.slow
def test_the_memory_split(runs, built):
    from edgekit.backends.gguf.header import read_gguf_header

    recs, text, _ = runs
    folder, _ = built
    proj = next(folder.glob("*mmproj*.gguf"))
    tensor_bytes = sum(t.n_bytes for t in read_gguf_header(proj).tensors.values())
    for r in recs:
        t = r["extra"]["towers"]
        assert r["towers_bytes"] >= t["load_bytes"] > 0
        if r["runtime"]["towers"] == "resident":
            # mtmd copies every projector tensor into anonymous memory at load. (Loaded again and again, as
            # on_demand does, a 4 MB buffer may reuse heap glibc kept from the last one: not checked there.)
            assert t["load_bytes"] >= tensor_bytes
            assert r["text_bytes"] + r["towers_bytes"] == r["peak_rss_bytes"]
            assert r["towers_load_ms"] == 0
        else:
            assert r["towers_load_ms"] > 0  # loading the projector is inside TTFT
            assert r["text_bytes"] == t["rss_without_towers"] <= r["peak_rss_bytes"]
            assert t["rss_with_towers"] <= r["peak_rss_bytes"]
        # The text part against the text alone at the same prompt length. Below it by at most 8 MB: the
        # towers' windows also hold the medium's own buffers (the decoded and resized image, mtmd's bitmap
        # copy, the soft tokens: ≈4 MB here, heap glibc keeps), measured 3.4 MB under. Resident, above
        # it by what the media libraries' code and heap add (≈15-35 MB measured on this ≈95 MB process).
        # on_demand: the towers freed, their heap is handed back (core.host.trim_heap): measured -1.6 to
        # +8.7 MB over the text alone; without the trim glibc kept 23-52 MB of it.
        # A text-only child no longer imports the media libraries (backends/bench_media.py: Pillow,
        # libsndfile, backends/mtmd.py with the projector checks it reads); the media child measures what
        # they add (extra.towers.libs_bytes: 26.2-26.3 MB here) and the text alone is compared with that on.
        alone = text[r["n_positions"]]["peak_rss_bytes"] + t["libs_bytes"]
        assert r["text_bytes"] >= alone - 8e6, (r["text_bytes"], alone)
        over = 48e6 if r["runtime"]["towers"] == "resident" else 16e6
        assert r["text_bytes"] <= alone + over, (r["runtime"]["towers"], r["text_bytes"], alone)


@pytest.mark.slow
def test_media_records_go_through_the_store(runs):
    recs, _, d = runs
    with Store(d / "r.db") as s:
        stored = [r for r in s.records() if r.media_kind]
    assert [(r.media_kind, r.media_tokens, r.media_sha256) for r in stored] == [
        (r["media_kind"], r["media_tokens"], r["media_sha256"]) for r in recs
    ]
    assert isinstance(stored[0], Record) and stored[0].pp_test.startswith(f"pp{P}+image")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--image", "{d}/bad.png"], "not an image Pillow can decode"),
        (["--audio", "{d}/bad.png"], "not audio libsndfile can decode"),
        (["--image", "{d}/none.png"], "cannot read it"),
        (["--image", "{d}/photo.png", "--image-tokens", "100"], "--image-tokens 100: choose among"),
        (["--mmproj", "{d}/photo.png"], "apply to a bench with --image or --audio"),
        (["--image", "{d}/photo.png", "-d", "16"], "-d cannot be combined with --image/--audio"),
        (["--image", "{d}/photo.png", "--ctx", "128"], "--ctx 128 is shorter than the test with its media"),
        (["--image", "{d}/photo.png", "--set", "towers=sometimes"], "towers"),
    ],
)
def test_bad_media_are_one_line(built, args, message):
    folder, d = built
    (d / "bad.png").write_bytes(b"not a png at all")
    r = CliRunner().invoke(
        app,
        [
            "bench",
            str(folder / "tiny-mm-Q8_0.gguf"),
            "-p",
            "8",
            "-n",
            "2",
            "--no-store",
            *[a.format(d=d) for a in args],
        ],
    )
    assert r.exit_code != 0
    assert message in r.output and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1, r.output


def test_a_text_only_build_is_refused(tiny_ckpt, tmp_path):
    from PIL import Image

    r = CliRunner().invoke(app, ["build", "-m", str(tiny_ckpt), "-q", "q8_0", "--out", str(tmp_path / "dist")])
    assert r.exit_code == 0, r.output
    Image.new("RGB", (96, 96)).save(tmp_path / "p.png")
    art = next((tmp_path / "dist").rglob("*.gguf"))
    r = CliRunner().invoke(
        app, ["bench", str(art), "--image", str(tmp_path / "p.png"), "-p", "8", "-n", "2", "--no-store"]
    )
    assert r.exit_code != 0 and "was built without towers" in r.output and "Traceback" not in r.output


def test_an_engine_without_a_media_bench_or_a_towers_mode_is_one_line():
    """measure.media.check_media's rule (backends/bench_media.check_mode): an engine registers the towers
    modes it really does; anything else is refused before a child starts."""
    from edgekit.backends.bench_media import MediaBench, check_mode
    from edgekit.core.errors import ConfigError

    only_resident = MediaBench(modes=("resident",), projector=None, load=None, evaluate=None)  # type: ignore[arg-type]
    check_mode(only_resident, "x", "resident")
    with pytest.raises(ConfigError, match="towers = on_demand: x does not free its towers"):
        check_mode(only_resident, "x", "on_demand")
    with pytest.raises(ConfigError, match="fake artifacts have no media bench"):
        check_mode(None, "fake", "resident")
