"""The GGUF projector (mmproj): llama.cpp's converter's file tensor for tensor plus clip.use_gelu, tower
types from the recipe, build --modalities with the projector linked in the manifest, and refusals."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest
from typer.testing import CliRunner

from edgekit.backends.gguf.mmproj import write_mmproj
from edgekit.cli import app
from edgekit.dev.synth import synth
from edgekit.model.checkpoint import load_checkpoint

GQT = gguf.GGMLQuantizationType
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def mm_ckpt(tmp_path_factory):
    return synth(tmp_path_factory.mktemp("mm") / "tiny-mm", preset="tiny", seed=0, towers=True)


def _fields(r: gguf.GGUFReader) -> dict:
    return {f.name: f.contents() for f in r.fields.values() if not f.name.startswith("GGUF.")}


def _reference(ckpt: Path, outtype: str, out: Path) -> Path:
    sys.path.insert(0, str(ROOT))
    from benchmarks import llamacpp_tools

    convert_py, env = llamacpp_tools.converter()
    subprocess.run(
        [sys.executable, str(convert_py), str(ckpt), "--mmproj", "--outtype", outtype, "--outfile", str(out)],
        env=env,
        check=True,
        capture_output=True,
    )
    return out


@pytest.mark.slow
@pytest.mark.parametrize("ttype", ["F16", "Q8_0", "BF16"])
def test_matches_llamacpp_converter_but_for_use_gelu(mm_ckpt, tmp_path, ttype):
    """Tensor for tensor (names, order, types, shapes, bytes) and key for key what llama.cpp's
    convert_hf_to_gguf.py --mmproj writes from the same checkpoint. Where they differ, llama.cpp's is
    wrong or less exact, and this says where:
    - clip.use_gelu: llama.cpp's converter omits it, so mtmd runs gelu_quick instead of the tanh GELU
      (soft-token error 6.0e-3 vs 3.6e-4 on this model, tests/test_mmproj_numbers.py);
    - per_dim_scale (softplus applied at conversion): ours is rounded once from float64, torch's float32
      softplus is 1 ulp off on some values; nothing else may differ by a single bit;
    - general.name / size_label: provenance (llama.cpp title-cases the folder name)."""
    ref = gguf.GGUFReader(_reference(mm_ckpt, ttype.lower(), tmp_path / "ref.gguf"))
    ours = gguf.GGUFReader(
        write_mmproj(
            load_checkpoint(mm_ckpt), tmp_path / "ours.gguf", ("vision", "audio"), {"vision": ttype, "audio": ttype}
        )
    )
    fo, fr = _fields(ours), _fields(ref)
    assert fo.pop("clip.use_gelu") is True and "clip.use_gelu" not in fr
    for k in ("general.name", "general.size_label"):
        fo.pop(k, None), fr.pop(k, None)
    assert fo == fr
    assert [t.name for t in ours.tensors] == [t.name for t in ref.tensors]
    softplus_ulps = 0
    for a, b in zip(ours.tensors, ref.tensors, strict=True):
        assert (a.tensor_type, list(a.shape)) == (b.tensor_type, list(b.shape)), a.name
        if a.name.endswith("per_dim_scale.weight"):
            d = np.abs(a.data - b.data)
            assert np.all(d <= np.spacing(np.abs(b.data))), a.name
            softplus_ulps += int((d > 0).sum())
        else:
            assert bytes(a.data) == bytes(b.data), a.name
    assert softplus_ulps > 0  # the one known difference is there (else this test no longer says where)


def test_tower_types_follow_the_recipe(mm_ckpt, tmp_path):
    ckpt = load_checkpoint(mm_ckpt)
    r = gguf.GGUFReader(
        write_mmproj(ckpt, tmp_path / "m.gguf", ("vision", "audio"), {"vision": "Q8_0", "audio": "BF16"})
    )
    types = {t.name: t.tensor_type for t in r.tensors}
    assert types["v.blk.0.attn_q.weight"] == GQT.Q8_0 and types["mm.input_projection.weight"] == GQT.Q8_0
    assert types["a.blk.0.attn_q.weight"] == GQT.BF16 and types["mm.a.input_projection.weight"] == GQT.BF16
    # What llama.cpp needs in F32 stays F32 whatever the recipe says.
    for name in (
        "v.position_embd.weight",
        "v.patch_embd.weight",
        "a.conv1d.0.weight",
        "a.blk.0.conv_dw.weight",
        "v.blk.0.attn_q.input_min",
        "a.blk.0.per_dim_scale.weight",
        "v.blk.0.ln1.weight",
        "a.pre_encode.out.bias",
    ):
        assert types[name] == GQT.F32, name
    f = _fields(r)
    assert f["clip.use_gelu"] is True and f["clip.vision.projection_dim"] == 256 and f["clip.audio.num_mel_bins"] == 128
    only = gguf.GGUFReader(write_mmproj(ckpt, tmp_path / "v.gguf", ("vision",), {"vision": "F16"}))
    assert {t.name[:2] for t in only.tensors} == {"v.", "mm"} and "clip.has_audio_encoder" not in _fields(only)
    assert {t.tensor_type for t in only.tensors if t.name == "v.patch_embd.weight"} == {GQT.F16}  # F16 stays F16


def test_build_links_the_projector_in_the_manifest(mm_ckpt, tmp_path):
    r = CliRunner().invoke(
        app,
        [
            "build",
            "-m",
            str(mm_ckpt),
            "--target",
            "pi5",
            "-q",
            "q8_0,f16",
            "--modalities",
            "vision,audio",
            "--out",
            str(tmp_path),
        ],
    )
    assert r.exit_code == 0, r.output
    folder = tmp_path / "tiny-mm" / "pi5"
    m = json.loads((folder / "manifest.json").read_text())
    projs = {a["file"]: a["extra"]["projector"] for a in m["artifacts"]}
    q8, f16 = projs["tiny-mm-Q8_0.gguf"], projs["tiny-mm-F16.gguf"]
    assert q8["types"] == {"vision": "Q8_0", "audio": "BF16"} and f16["types"] == {"vision": "F16", "audio": "F16"}
    assert q8["file"] != f16["file"] and q8["modalities"] == ["vision", "audio"]
    from edgekit.builder.manifest import read_manifest
    from edgekit.builder.projector import projector_file

    for a in read_manifest(folder).artifacts:
        assert a.extra["projector"]["text_sha256"] == a.sha256
        assert projector_file(folder, a).name == a.extra["projector"]["file"]  # sha256 checked
    assert "mmproj" in r.output

    # deploy's sidecars: the projectors go along, and a changed one is refused before anything is sent.
    from edgekit.core.errors import ArtifactError
    from edgekit.lab.deploy import sidecars

    assert {s.file for s in sidecars(folder, read_manifest(folder))} == {q8["file"], f16["file"]}
    with open(folder / q8["file"], "r+b") as f:
        f.seek(-1, 2)
        f.write(b"\x01")
    with pytest.raises(ArtifactError, match="does not match the sha256"):
        sidecars(folder, read_manifest(folder))


def test_text_only_stays_the_default(mm_ckpt, tmp_path):
    r = CliRunner().invoke(app, ["build", "-m", str(mm_ckpt), "--target", "pi5", "-q", "f16", "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    folder = tmp_path / "tiny-mm" / "pi5"
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json", "tiny-mm-F16.gguf"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--modalities", "vision,smell"], "modality 'smell'"),
        (
            ["--modalities", "audio", "-q", "mlx-bf16"],
            "always builds the vision tower",
        ),  # MLX: tests/test_mlx_towers.py
    ],
)
def test_bad_requests_are_one_line(mm_ckpt, tmp_path, args, message):
    r = CliRunner().invoke(
        app, ["build", "-m", str(mm_ckpt), "--target", "pi5", "-q", "f16", "--out", str(tmp_path), *args]
    )
    assert r.exit_code != 0 and message in r.output and "Traceback" not in r.output
    assert not (tmp_path / "tiny-mm").exists()


def test_a_checkpoint_without_towers_is_refused(tiny_ckpt, tmp_path):
    r = CliRunner().invoke(
        app, ["build", "-m", str(tiny_ckpt), "-q", "f16", "--modalities", "audio", "--out", str(tmp_path)]
    )
    assert r.exit_code != 0 and "no audio tower" in r.output and "Traceback" not in r.output


def test_a_projector_for_another_model_is_refused(mm_ckpt, tiny_ckpt, tmp_path):
    """Widths from the headers; the marker tokens from the loaded text model's vocabulary."""
    from edgekit.backends.gguf.convert import convert
    from edgekit.builder.projector import check_pair
    from edgekit.core.errors import ArtifactError

    proj = write_mmproj(load_checkpoint(mm_ckpt), tmp_path / "m.gguf", ("vision",), {"vision": "F16"})
    mm_text = convert(load_checkpoint(mm_ckpt), tmp_path / "mm.gguf", "F16")
    assert check_pair(mm_text, proj, lambda t: True) == ("vision",)
    plain = convert(load_checkpoint(tiny_ckpt), tmp_path / "plain.gguf", "F16")  # same width, no marker tokens
    with pytest.raises(ArtifactError, match="has no <\\|image> token"):
        check_pair(plain, proj, lambda t: t not in ("<|image>", "<image|>"))
    w = gguf.GGUFWriter(tmp_path / "wide.gguf", "clip")
    w.add_clip_has_vision_encoder(True)
    w.add_vision_projection_dim(512)
    w.add_tensor("mm.input_projection.weight", np.zeros((512, 128), dtype=np.float32))
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    with pytest.raises(ArtifactError, match="projects to width 512, the text model is 256 wide"):
        check_pair(mm_text, tmp_path / "wide.gguf")
    with pytest.raises(ArtifactError, match="not a multimodal projector"):
        check_pair(mm_text, mm_text)


def test_a_profile_with_modalities_ships_the_towers_by_default(mm_ckpt, tmp_path):
    from edgekit.builder.pipeline import build
    from edgekit.profiles.targets import TARGETS

    assert TARGETS.get("pi5-8gb").modalities == ("vision", "audio") and TARGETS.get("pi5").modalities == ()
    folder = build(str(mm_ckpt), target="pi5-8gb", quants=["f16"], out=tmp_path)
    m = json.loads((folder / "manifest.json").read_text())
    assert m["artifacts"][0]["extra"]["projector"]["modalities"] == ["vision", "audio"]
    folder = build(str(mm_ckpt), target="pi5-8gb", quants=["f16"], out=tmp_path / "t", modalities=["text"])
    assert "projector" not in json.loads((folder / "manifest.json").read_text())["artifacts"][0]["extra"]
