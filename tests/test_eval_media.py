"""eval with media: suite cases carrying an image or an audio clip (sha256-pinned, beside the suite) run
on `edgekit run --image`'s path (a GGUF here; tests/test_mlx_media.py has an MLX build); and projector
precision (each type against F16) on the tiny model with towers (random weights: the figures check
wiring and ordering, they cannot rank types for a trained tower)."""

from __future__ import annotations

import hashlib
import json
import re

import pytest
from typer.testing import CliRunner

from edgekit.cli import app
from edgekit.core.errors import ConfigError
from edgekit.eval.suite import SuiteOptions, load_suite, run_suites
from tests.media_samples import chirp, gradient_image

pytest.importorskip("llama_cpp.mtmd_cpp", reason="needs edgekit[runtime]")


def _sha(p) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    from edgekit.dev.synth import synth

    d = tmp_path_factory.mktemp("evalmedia")
    ckpt = synth(d / "tiny-mm", preset="tiny", seed=0, towers=True)
    r = CliRunner().invoke(
        app, ["build", "-m", str(ckpt), "-q", "f16", "--modalities", "vision,audio", "--out", str(d / "dist")]
    )
    assert r.exit_code == 0, r.output
    return ckpt, d / "dist" / "tiny-mm" / "pi5"


@pytest.fixture
def suite(tmp_path):
    import soundfile as sf

    (tmp_path / "media").mkdir()
    gradient_image().save(tmp_path / "media" / "img.png")
    sf.write(tmp_path / "media" / "chirp.wav", chirp(), 16000)
    img, wav = tmp_path / "media" / "img.png", tmp_path / "media" / "chirp.wav"
    cases = [
        {"id": "t", "suite": "text", "prompt": "Say hi.", "expected": "hi", "scorer": "contains"},
        {
            "id": "i",
            "suite": "vision",
            "prompt": "What is in this picture?",
            "expected": "cat",
            "scorer": "contains",
            "image": {"file": "media/img.png", "sha256": _sha(img)},
        },
        {
            "id": "a",
            "suite": "audio",
            "prompt": "Transcribe this.",
            "expected": "hello",
            "scorer": "contains",
            "audio": {"file": "media/chirp.wav", "sha256": _sha(wav)},
        },
    ]
    path = tmp_path / "suite.jsonl"
    path.write_text("".join(json.dumps(c) + "\n" for c in cases))
    return path


def test_cases_load_their_media_pinned(suite):
    cases = {c.id: c for c in load_suite(suite)}
    assert cases["t"].media == ()
    (img,) = cases["i"].media
    assert img.kind == "image" and img.path == (suite.parent / "media" / "img.png").resolve()
    assert img.sha256 == _sha(suite.parent / "media" / "img.png")
    assert [m.kind for m in cases["a"].media] == ["audio"]


@pytest.mark.parametrize(
    "edit, said",
    [
        (lambda c: c["image"].update(sha256="0" * 64), "restore the file or update the case's sha256"),
        (lambda c: c["image"].update(file="media/none.png"), "not found beside suite.jsonl"),
        (lambda c: c["image"].update(file="../img.png"), "outside the suite's folder"),
        (lambda c: c.update(image="media/img.png"), '{"file": "relative/path", "sha256": "hex digest"}'),
    ],
)
def test_bad_media_is_refused_at_load_with_its_line(suite, edit, said):
    lines = suite.read_text().splitlines()
    c = json.loads(lines[1])
    edit(c)
    (suite.parent.parent / "img.png").write_bytes(b"x")  # a real file outside, for the ../ case
    lines[1] = json.dumps(c)
    suite.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match=re.escape(f"{suite}:2: ")) as e:
        load_suite(suite)
    assert said in str(e.value)


@pytest.mark.slow
def test_media_cases_reply_as_edgekit_run_does(built, suite):
    """The eval path and `edgekit run --image/--audio` give the same greedy reply for the same case, with
    the same knobs (the tiny model attends inside an image at once in llama.cpp: its 266 soft tokens need
    a ubatch that holds them, pi5's is 64)."""
    _, folder = built
    recs = run_suites([folder], suite, SuiteOptions(max_tokens=6, threads=2, runtime={"n_ubatch": 512}))
    out = {a["id"]: a["output"] for r in recs for a in r.answers}
    assert set(out) == {"t", "i", "a"}
    art = folder / "tiny-mm-F16.gguf"
    for cid, prompt, media in (
        ("i", "What is in this picture?", ["--image", str(suite.parent / "media" / "img.png")]),
        ("a", "Transcribe this.", ["--audio", str(suite.parent / "media" / "chirp.wav")]),
    ):
        r = CliRunner().invoke(
            app, ["run", str(art), "-p", prompt, *media, "-n", "6", "--temperature", "0", "--no-think", "-ub", "512"]
        )
        assert r.exit_code == 0, r.output
        assert out[cid] == r.stdout[:-1], (cid, out[cid], r.stdout)
    assert {r.suite: r.suite_sha256 for r in recs}["vision"] == _sha(suite)


def test_media_cases_are_refused_on_a_build_without_towers(built, suite, tmp_path):
    ckpt, _ = built
    r = CliRunner().invoke(app, ["build", "-m", str(ckpt), "-q", "f16", "--out", str(tmp_path / "dist")])
    assert r.exit_code == 0, r.output
    with pytest.raises(ConfigError, match="built without towers, so its suite cases with images or audio"):
        run_suites([tmp_path / "dist" / "tiny-mm" / "pi5"], suite, SuiteOptions(max_tokens=2))


@pytest.mark.slow
def test_projector_precision_against_f16(built, tmp_path):
    """Measured on this model (random 2-layer towers, F32 text): see docs/multimodal.md's table."""
    from edgekit.backends.gguf.mmproj import write_mmproj
    from edgekit.eval.projector_precision import Medium, compare_projectors
    from edgekit.model.checkpoint import load_checkpoint
    from edgekit.serve.media import Audio, prepare_image

    ckpt = load_checkpoint(built[0])
    both = ("vision", "audio")
    from edgekit.backends.gguf.convert import convert

    text = convert(ckpt, tmp_path / "text-F32.gguf", "F32")
    projs = {
        t: write_mmproj(ckpt, tmp_path / f"p-{t}.gguf", both, dict.fromkeys(both, t)) for t in ("F16", "BF16", "Q8_0")
    }
    media = [
        Medium("image", "image", prepare_image(gradient_image(), 70)),
        Medium("image 2", "image", prepare_image(gradient_image(seed=1), 70)),
        Medium("audio", "audio", Audio(chirp(), 16000)),
    ]
    rows = {(r.projector, r.medium): r for r in compare_projectors(text, projs, media, threads=2)}
    for m in ("image", "audio"):
        f16, bf16, q8 = (rows[(t, m)] for t in ("F16", "BF16", "Q8_0"))
        print(m, {t: (f"{rows[(t, m)].soft_rel_l2:.2e}", f"{rows[(t, m)].next_kl:.2e}") for t in projs})
        assert f16.soft_rel_l2 == 0.0 and abs(f16.next_kl) < 1e-12 and f16.same_top  # the same file twice
        assert 0 < bf16.soft_rel_l2 < q8.soft_rel_l2 < 0.1, (bf16, q8)
        assert bf16.next_kl > 0 and q8.next_kl > 0
        assert f16.tokens == (63 if m == "image" else 50)
    # the KL sees the medium: another image moves the next token far more than a projector's rounding
    from edgekit.eval.metrics import full_kl
    from edgekit.eval.projector_precision import _measure

    (_, a), (_, b), _ = _measure(text, projs["F16"], media, threads=2)
    assert full_kl(a[None], b[None])[0] > 10 * rows[("Q8_0", "image")].next_kl
