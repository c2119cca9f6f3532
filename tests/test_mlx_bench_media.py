"""`edgekit bench --image/--audio` on an MLX build with towers (backends/mlx/bench_media.py): the records'
soft-token counts against transformers' processor and against what `edgekit run` lays out, the soft
tokens the bench evaluates against the served path's, the memory split, and the one-line refusals.
Tiny model with random towers: the figures check the wiring and the accounting, not a tower's speed."""

from __future__ import annotations

import hashlib
import json
import re
import urllib.request

import numpy as np
import pytest
from serve_fixture import cli
from typer.testing import CliRunner

from edgekit.cli import app
from tests.media_samples import chirp, gradient_image

pytest.importorskip("mlx_vlm.models.gemma4", reason="needs edgekit[mlx] (mlx-vlm)")

P, N = 16, 2


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    import soundfile as sf

    from edgekit.dev.synth import synth

    d = tmp_path_factory.mktemp("mlxbench")
    ckpt = synth(d / "tiny-mm", preset="tiny", seed=0, towers=True)
    for out, mods in (
        ("dist", ["--modalities", "vision,audio"]),
        ("dist-v", ["--modalities", "vision"]),
        ("dist-t", []),
    ):
        r = cli("build", "-m", str(ckpt), "-q", "mlx-bf16", *mods, "--out", str(d / out))
        assert r.returncode == 0, r.stderr
    gradient_image(h=600, w=900).save(d / "photo.png")
    gradient_image(h=600, w=900, seed=1).save(d / "other.png")
    sf.write(d / "clip.wav", chirp(1.0), 16000)  # 1 s: 25 tokens
    art = "tiny-mm/pi5/tiny-mm-mlx-bf16"
    return {"d": d, "ckpt": ckpt, "art": d / "dist" / art, "vision": d / "dist-v" / art, "text": d / "dist-t" / art}


def _bench(*args):
    r = cli("bench", *map(str, args), "-o", "jsonl", "--no-store", timeout=900)
    return r, [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]


@pytest.fixture(scope="module")
def runs(built):
    d, art = built["d"], built["art"]
    common = [art, "-p", P, "-n", N, "-r", "1"]
    media = ["--image", d / "photo.png", "--image-tokens", "70,140", "--audio", d / "clip.wav"]
    r, recs = _bench(*common, *media, "--set", "towers=resident,on_demand")
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    # the text alone at each prompt length those runs had (BOS + soft tokens + 2 markers + P), one load
    lengths = ",".join(str(n) for n in sorted({x["n_positions"] for x in recs}))
    r2, text = _bench(art, "-p", lengths, "-n", N, "-r", "1")
    assert r2.returncode == 0, r2.stderr
    return recs, {t["n_prompt"]: t for t in text}


def _processor_tokens(ckpt) -> dict:
    """Soft tokens transformers' own Gemma 4 processing gives photo.png at 70 and 140 (its image processor)
    and the 1 s clip (its feature extractor's mask through Gemma4Processor.replace_audio_token, the
    placeholders the processor writes; the full AutoProcessor needs torchvision for its video part)."""
    import types

    from PIL import Image
    from transformers import AutoFeatureExtractor, AutoImageProcessor
    from transformers.models.gemma4.processing_gemma4 import Gemma4Processor

    ip = AutoImageProcessor.from_pretrained(ckpt)
    img = Image.open(ckpt.parent / "photo.png").convert("RGB")
    out: dict = {
        b: int(ip(images=[img], return_tensors="np", max_soft_tokens=b)["num_soft_tokens_per_image"][0])
        for b in (70, 140)
    }
    feats = AutoFeatureExtractor.from_pretrained(ckpt)([chirp(1.0)], sampling_rate=16000, return_tensors="np")
    marks = types.SimpleNamespace(boa_token="[", audio_token="a", eoa_token="]")
    out[None] = Gemma4Processor.replace_audio_token(marks, feats, 0).count("a")
    return out


@pytest.mark.slow  # two MLX bench children with 3 media each (mlx-vlm's towers on the CPU), one text-only
def test_mlx_media_records_match_their_references(runs, built):
    recs, _ = runs
    d = built["d"]
    assert [(r["engine"], r["runtime"]["towers"], r["media_kind"], r["image_tokens_budget"]) for r in recs] == [
        ("mlx", mode, kind, b)
        for mode in ("resident", "on_demand")
        for kind, b in (("image", 70), ("image", 140), ("audio", None))
    ]
    want = _processor_tokens(built["ckpt"])
    print("transformers' processor:", want, "bench:", [r["media_tokens"] for r in recs])
    assert want[70] < want[140]  # the budget reaches the towers
    sha = {
        k: hashlib.sha256((d / f).read_bytes()).hexdigest() for k, f in (("image", "photo.png"), ("audio", "clip.wav"))
    }
    for r in recs:
        assert r["media_sha256"] == sha[r["media_kind"]]
        assert r["media_tokens"] == want[r["image_tokens_budget"]] == r["extra"]["media"]["processor_tokens"]
        if r["media_kind"] == "image":
            assert (r["media_width"], r["media_height"], r["media_seconds"]) == (900, 600, None)
        else:
            assert (r["media_width"], r["media_seconds"]) == (None, 1.0)
        assert r["n_positions"] == 1 + r["media_tokens"] + 2 + P  # BOS, <|image> n <image|>, P text tokens
        assert r["n_prompt"] == P and r["n_gen"] == N and r["tg_tps"] > 0 and r["encode_ms"] > 0
        assert r["ttft_ms"] > r["encode_ms"]  # TTFT holds the encode and the prompt's evaluation
        assert r["extra"]["projector"]["file"] == "towers.safetensors"
        assert "MLX" in r["extra"]["towers"]["measured"]


@pytest.mark.slow
def test_mlx_memory_split(runs, built):
    """The towers' bytes hold their weights (MLX copies towers.safetensors into malloc'd arrays: anonymous
    memory on Linux); on_demand frees them before the text (its text part near the text alone)."""
    from safetensors.numpy import load_file

    recs, text = runs
    weights = sum(t.nbytes for t in load_file(built["art"] / "towers.safetensors").values())
    for r in recs:
        t = r["extra"]["towers"]
        assert r["towers_bytes"] >= t["load_bytes"] >= 0.9 * weights, (t, weights)
        alone = text[r["n_positions"]]["peak_rss_bytes"]
        print(
            r["runtime"]["towers"],
            r["media_kind"],
            r["image_tokens_budget"],
            {k: v / 1e6 for k, v in t.items() if k != "measured"},
            "text",
            r["text_bytes"] / 1e6,
            "alone",
            alone / 1e6,
            "towers",
            r["towers_bytes"] / 1e6,
        )
        # The text part against the text alone at the same prompt length, with the media libraries the
        # child imported on (extra.towers.libs_bytes: Pillow, libsndfile, mlx-vlm's Gemma 4 modules, 16.2 MB
        # here): measured +1.9 to +10.1 MB over it (the decoded medium, heap glibc keeps), both modes.
        alone = text[r["n_positions"]]["peak_rss_bytes"] + t["libs_bytes"]
        assert alone - 8e6 <= r["text_bytes"] <= alone + 16e6, (r["text_bytes"], alone)
        if r["runtime"]["towers"] == "resident":
            assert r["text_bytes"] + r["towers_bytes"] == r["peak_rss_bytes"]
            assert r["towers_load_ms"] == 0
        else:
            assert r["towers_load_ms"] > 0  # loading the towers is inside TTFT
            assert r["text_bytes"] == t["rss_without_towers"] <= r["peak_rss_bytes"]
            # the towers really went: freeing them handed their weights back to the kernel
            assert t["freed_bytes"] >= 0.9 * weights, (t, weights)


def _run_layout(built, *media) -> str:
    r = cli("-v", "run", str(built["art"]), "-p", "hi", "-n", "1", "--temperature", "0", *media)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    return re.search(r"media: (.*) encoded in", r.stderr).group(1)


@pytest.mark.slow
def test_run_lays_out_the_bench_counts(runs, built):
    """`edgekit run` on the same folder and files: the soft tokens it lays out equal the records'."""
    recs, _ = runs
    d = built["d"]
    got = {(r["media_kind"], r["image_tokens_budget"]): r["media_tokens"] for r in recs}
    a = _run_layout(built, "--image", str(d / "photo.png"), "--image-tokens", "70", "--audio", str(d / "clip.wav"))
    b = _run_layout(built, "--image", str(d / "photo.png"), "--image-tokens", "140")
    print("run:", a, "|", b)
    assert a == f"vision {got[('image', 70)]} tokens, audio {got[('audio', None)]} tokens"
    assert b == f"vision {got[('image', 140)]} tokens"  # MLX's span names its tower


@pytest.mark.slow
def test_bench_soft_tokens_equal_the_served_ones(built):
    """The soft tokens the bench evaluates (its MediaBench: load, prepare, encode, evaluate) against those
    run/serve's towers make for the same file (serve/towers.py on a session), number for number; and the
    logits after the bench's evaluate against the served span prefilled at the same positions."""
    import base64

    from edgekit.backends.bench_media import MediaSpec, Segment, decoded_medium
    from edgekit.backends.mlx.bench_media import BENCH
    from edgekit.backends.mlx.media import MlxSpan, prefill_media
    from edgekit.backends.mlx.runner import MlxRunner
    from edgekit.backends.runner import RunOptions
    from edgekit.serve.media_parts import MediaLimits
    from edgekit.serve.session import open_session
    from edgekit.serve.towers import attach

    d, art = built["d"], built["art"]
    png = base64.b64encode((d / "photo.png").read_bytes()).decode()
    wav = base64.b64encode((d / "clip.wav").read_bytes()).decode()
    parts = {
        "image": {"type": "image_url", "image_url": {"url": "data:image/png;base64," + png}},
        "audio": {"type": "input_audio", "input_audio": {"data": wav, "format": "wav"}},
    }
    served = {}
    s = open_session(art, ctx=512)
    try:
        towers = attach(s, MediaLimits(1 << 22, 10**7, 30.0, 70), max_waiting=1)
        for kind, part in parts.items():
            ids, _, spans = towers.build_prompt(
                [{"role": "user", "content": [part, {"type": "text", "text": "hi"}]}], None, False
            )
            (sp,) = spans
            served[kind] = (sp.embd, ids[sp.start - 1], ids[sp.start + sp.n_pos])
    finally:
        s.close()

    runner = MlxRunner()
    runner.load(art, RunOptions(threads=1, ctx=512))
    specs = {
        "image": MediaSpec("image", str(d / "photo.png"), "", budget=70),
        "other": MediaSpec("image", str(d / "other.png"), "", budget=70),
        "audio": MediaSpec("audio", str(d / "clip.wav"), ""),
    }
    towers = BENCH.load(runner, art / "towers.safetensors", art, 1, 70)
    try:
        bench = {k: towers.encode(towers.prepare(m, decoded_medium(m))) for k, m in specs.items()}
        text = [11, 12, 13]
        for kind in ("image", "audio"):
            segs, n, _ = bench[kind]
            embd, boi, eoi = served[kind]
            assert segs[1].embd.shape == embd.shape == (n, 256)
            assert np.array_equal(segs[1].embd, embd), float(np.abs(segs[1].embd - embd).max())
            assert (segs[0].tokens, segs[2].tokens) == ([boi], [eoi])  # the same markers around them
            prompt = [Segment(tokens=[runner.bos()], n_pos=1), *segs, Segment(tokens=text, n_pos=3)]
            BENCH.evaluate(runner, prompt)
            got = np.array(runner.logits.astype(runner.mx.float32))
            sp = MlxSpan(kind, n, {})
            sp.embd, sp.start = embd, 2
            runner.reset()
            prefill_media(runner, [runner.bos(), boi, *[-1] * n, eoi, *text], [sp])
            assert np.array_equal(got, np.array(runner.logits.astype(runner.mx.float32)))
        other = bench["other"][0][1].embd
        moved = float(np.linalg.norm(other - served["image"][0]) / np.linalg.norm(served["image"][0]))
        print(f"bench vs served soft tokens: equal; another image moves them {moved:.2f} relative L2")
        assert moved > 0.01  # the comparison can fail
    finally:
        towers.close()
        runner.close()


@pytest.mark.parametrize(
    "which, args, message",
    [
        ("art", ["--image", "{d}/bad.png"], "not an image Pillow can decode"),
        ("art", ["--audio", "{d}/bad.png"], "not audio libsndfile can decode"),
        ("art", ["--image", "{d}/photo.png", "--mmproj", "{d}/photo.png"], "towers live in its folder"),
        ("art", ["--image", "{d}/photo.png", "--set", "towers=sometimes"], "towers"),
        ("vision", ["--audio", "{d}/clip.wav"], "this build has no audio tower"),
        ("text", ["--image", "{d}/photo.png"], "was built without towers"),
    ],
)
def test_bad_media_and_builds_are_one_line(built, which, args, message):
    d = built["d"]
    (d / "bad.png").write_bytes(b"not a png at all")
    r = CliRunner().invoke(
        app, ["bench", str(built[which]), "-p", "8", "-n", "2", "--no-store", *[a.format(d=d) for a in args]]
    )
    assert r.exit_code != 0
    assert message in r.output and "Traceback" not in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1, r.output


def test_towers_on_demand_in_run_and_serve_give_the_resident_numbers(built):
    """run and serve on MLX take towers = on_demand too (pi5's runtime sets it): the tower modules are loaded
    per prompt with media and dropped once encoded. Served logprobs (each token and its top 3) for an
    image and a clip equal the resident server's; /props counts the loads; run gives the served reply."""
    import base64

    from serve_fixture import start_server

    img = base64.b64encode((built["d"] / "photo.png").read_bytes()).decode()
    wav = base64.b64encode((built["d"] / "clip.wav").read_bytes()).decode()
    parts = [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + img, "detail": "low"}},
        {"type": "input_audio", "input_audio": {"data": wav, "format": "wav"}},
        {"type": "text", "text": "What is this?"},
    ]
    servers = {
        mode: start_server(built["art"], built["d"] / f"{mode}.log", "--set", f"towers={mode}")
        for mode in ("resident", "on_demand")
    }
    try:
        got = {}
        for mode, srv in servers.items():
            r = srv.client().chat.completions.create(
                model="m", messages=[{"role": "user", "content": parts}], max_tokens=4, temperature=0,
                logprobs=True, top_logprobs=3,
            )  # fmt: skip
            lps = [(t.logprob, [x.logprob for x in t.top_logprobs]) for t in r.choices[0].logprobs.content]
            got[mode] = (r.choices[0].message.content, r.usage.prompt_tokens, lps)
            with urllib.request.urlopen(srv.url + "/props", timeout=10) as resp:
                got[mode] += (json.loads(resp.read())["towers"],)
    finally:
        for srv in servers.values():
            assert srv.stop() == 0
    assert got["on_demand"][:3] == got["resident"][:3]  # measured: equal to the last bit
    assert got["resident"][3] == {"mode": "resident", "loaded": True, "loads": 1}
    assert got["on_demand"][3] == {"mode": "on_demand", "loaded": False, "loads": 2}  # at start, then the prompt
    media = ["--image", str(built["d"] / "photo.png"), "--image-tokens", "70", "--audio", str(built["d"] / "clip.wav")]
    r = cli("run", str(built["art"]), "-p", "What is this?", *media, "-n", "4", "--set", "towers=on_demand")
    assert r.returncode == 0, r.stderr
    assert r.stdout[:-1] == got["resident"][0]
