"""Malformed headers (issue 11.4 / 11.6): safetensors headers that are valid JSON of the wrong shape
or point outside / across their data, an MLX folder with such a header, a GGUF whose
general.alignment is 0. Each is edgekit's typed error in one line, never a traceback."""

from __future__ import annotations

import json
import shutil
import struct

import gguf
import numpy as np
import pytest
from typer.testing import CliRunner

from edgekit.cli import app
from edgekit.core.errors import ArtifactError, CheckpointError
from edgekit.model.safetensors_io import read_tensors


def write_raw(path, header, data: bytes = b"\0" * 64) -> None:
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + data)


def entry(offsets, shape=(4, 4), dtype="F32"):
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


CASES = [
    (
        "list",
        [],
        "cannot read safetensors header (header is a JSON list, not an object); the file is truncated or corrupt, "
        "fetch the file again",
    ),
    (
        "string entry",
        {"w": "F32"},
        "tensor w has no dtype/shape/data_offsets entry; the file is corrupt, fetch the file again",
    ),
    (
        "no dtype",
        {"w": {"shape": [4], "data_offsets": [0, 16]}},
        "tensor w has no dtype; the file is corrupt, fetch the file again",
    ),
    (
        "shape string",
        {"w": {"dtype": "F32", "shape": "4x4", "data_offsets": [0, 64]}},
        "tensor w has shape '4x4', not a list of sizes; the file is corrupt, fetch the file again",
    ),
    (
        "negative offset",
        {"w": entry((-16, 48))},
        "tensor w has data_offsets [-16, 48], not two ordered byte offsets; the file is corrupt, fetch the file again",
    ),
    (
        "reversed offsets",
        {"w": entry((64, 0))},
        "tensor w has data_offsets [64, 0], not two ordered byte offsets; the file is corrupt, fetch the file again",
    ),
    (
        "one offset",
        {"w": entry((0,))},
        "tensor w has data_offsets [0], not two ordered byte offsets; the file is corrupt, fetch the file again",
    ),
    (
        "wrong span",
        {"w": entry((0, 32))},
        "tensor w has 32 bytes for shape (4, 4); the file is corrupt, fetch the file again",
    ),
    (
        "overlap",
        {"a": entry((0, 64)), "b": entry((32, 96))},
        "tensors a and b overlap in the file; the file is corrupt, fetch the file again",
    ),
    ("past the end", {"w": entry((64, 128))}, None),
    (
        "metadata list",
        {"__metadata__": [1], "w": entry((0, 64))},
        "cannot read safetensors header (__metadata__ is not an object); the file is truncated or corrupt, fetch the "
        "file again",
    ),
]


@pytest.mark.parametrize("name, header, why", CASES, ids=[c[0] for c in CASES])
def test_malformed_safetensors_header_is_one_checkpoint_error(tmp_path, name, header, why):
    path = tmp_path / "model.safetensors"
    write_raw(path, header, b"\0" * (96 if name == "overlap" else 64))
    with pytest.raises(CheckpointError) as e:
        read_tensors(path)
    if why is None:  # past the end: says the file is truncated, with the sizes
        blob = len(json.dumps(header).encode())
        why = f"truncated ({8 + blob + 64} bytes, tensor w ends at {8 + blob + 128}); fetch the file again"
    assert str(e.value) == f"model.safetensors: {why}"


def test_checkpoint_with_a_wrong_shaped_header_is_one_line_on_build(tiny_ckpt, tmp_path):
    ckpt = tmp_path / "ck"
    shutil.copytree(tiny_ckpt, ckpt)
    shard = sorted(ckpt.glob("*.safetensors"))[0]
    raw = shard.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    name = next(k for k in header if k != "__metadata__")
    header[name]["data_offsets"] = [-2, header[name]["data_offsets"][1]]
    blob = json.dumps(header).encode()
    shard.write_bytes(struct.pack("<Q", len(blob)) + blob + raw[8 + n :])
    res = CliRunner().invoke(app, ["build", "-m", str(ckpt), "-q", "f16", "--out", str(tmp_path / "out")])
    assert res.exit_code == 1
    assert res.stderr == (
        f"edgekit: error: {shard.name}: tensor {name} has data_offsets {header[name]['data_offsets']}, "
        "not two ordered byte offsets; the file is corrupt, fetch the file again\n"
    )
    assert not (tmp_path / "out").exists()  # nothing written: the checkpoint is read before the output folder


def test_mlx_folder_with_a_malformed_header_is_one_line_on_bench(tmp_path):
    folder = tmp_path / "tiny-mlx-4bit"
    folder.mkdir()
    (folder / "config.json").write_text(
        json.dumps({"model_type": "gemma4", "quantization": {"bits": 4, "group_size": 64}})
    )
    write_raw(folder / "model.safetensors", {"w": {"dtype": "F32", "shape": [4], "data_offsets": "0-16"}})
    res = CliRunner().invoke(app, ["bench", str(folder), "--no-store"])
    assert res.exit_code == 1
    assert res.stderr == (
        "edgekit: error: model.safetensors: tensor w has data_offsets '0-16', not two ordered byte "
        "offsets; the file is corrupt, rebuild it with `edgekit build`\n"
    )


def test_mlx_ple_table_with_a_malformed_header_is_an_artifact_error(tmp_path):
    from edgekit.backends.mlx.ple import PLE_FILE, open_ple

    write_raw(tmp_path / PLE_FILE, {"x": 1})
    with pytest.raises(ArtifactError) as e:
        open_ple(tmp_path, None)
    assert str(e.value) == (
        f"{PLE_FILE}: tensor x has no dtype/shape/data_offsets entry; the file is corrupt, "
        "rebuild the artifact with `edgekit build`"
    )


def _gguf_with_alignment(path, alignment: int) -> None:
    w = gguf.GGUFWriter(path, "gemma4")
    w.add_uint32("general.alignment", alignment)  # the key only: the writer pads by its own default
    w.add_tensor("token_embd.weight", np.ones((8, 32), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.mark.parametrize("alignment", [0, 3])
def test_gguf_with_a_bad_alignment_is_one_line(tmp_path, alignment):
    from edgekit.backends.gguf.header import read_gguf_header

    path = tmp_path / "bad.gguf"
    _gguf_with_alignment(path, alignment)
    with pytest.raises(ArtifactError) as e:
        read_gguf_header(path)
    assert str(e.value) == "bad.gguf: not a complete GGUF file (corrupt or truncated); rebuild it with `edgekit build`"
    res = CliRunner().invoke(app, ["bench", str(path), "--no-store"])
    assert (res.exit_code, res.stderr) == (1, f"edgekit: error: {e.value}\n")


def test_gguf_with_the_default_alignment_reads(tmp_path):
    from edgekit.backends.gguf.header import read_gguf_header

    _gguf_with_alignment(tmp_path / "ok.gguf", 32)
    assert read_gguf_header(tmp_path / "ok.gguf").tensors["token_embd.weight"].n_bytes == 8 * 32 * 4
