"""`build --q-bits/--q-group-size` as mlx_lm.convert takes them (issue 22.11)."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from edgekit.cli import app


def test_q_bits_and_group_size_reach_the_mlx_artifact(tiny_ckpt, tmp_path):
    r = CliRunner().invoke(
        app,
        [
            "build",
            "--model",
            str(tiny_ckpt),
            "--quant",
            "mlx-4bit,q4_0",
            "--q-bits",
            "3",
            "--q-group-size",
            "32",
            "--out",
            str(tmp_path),
        ],
    )
    assert r.exit_code == 0, r.output
    folder = tmp_path / "tiny-gemma4" / "pi5"
    m = json.loads((folder / "manifest.json").read_text())
    mlx = [a for a in m["artifacts"] if a["format"] == "mlx"]
    assert [(a["quant"], a["recipe"]) for a in mlx] == [("3bit-g32", "mlx-3bit-g32")]
    q = json.loads((folder / mlx[0]["file"] / "config.json").read_text())["quantization"]
    assert (q["bits"], q["group_size"]) == (3, 32)
    assert [a["quant"] for a in m["artifacts"] if a["format"] == "gguf"] == ["Q4_0"]


def test_q_bits_errors(tiny_ckpt, tmp_path):
    for args, msg in (
        (["--quant", "q4_0", "--q-bits", "3"], "none of these recipes is a quantized MLX one"),
        (["--quant", "mlx-4bit", "--q-bits", "7"], "--q-bits 7: MLX quantizes to 2, 3, 4, 5, 6, 8 bits"),
        (["--quant", "mlx-4bit", "--q-group-size", "48"], "--q-group-size 48: MLX quantizes in groups of"),
    ):
        r = CliRunner().invoke(app, ["build", "--model", str(tiny_ckpt), *args, "--out", str(tmp_path)])
        assert r.exit_code == 1 and msg in r.stderr, r.output
        assert not (tmp_path / "tiny-gemma4").exists()
