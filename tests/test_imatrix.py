"""Importance-matrix quantization (edgekit/backends/gguf/calibrate.py, imatrix.py) and llama.cpp types by name.

The cross-checks against llama.cpp's own llama-imatrix and llama-quantize need those tools, built from
the vendored sources by benchmarks/llamacpp_tools.py (≈5 min once; `make tools`, which `make test`
runs first); without them those tests skip and say so.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgekit.backends.gguf.calibrate import add_rows, calibrate
from edgekit.backends.gguf.imatrix import Entry, Imatrix, read_imatrix, write_imatrix
from edgekit.builder.calibration import DEFAULT_TEXT

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "edgekit" / "eval" / "data"
sys.path.insert(0, str(ROOT / "benchmarks"))
import llamacpp_tools  # noqa: E402

# Six 512-token chunks of the shipped calibration text: enough for every weight, quick on a loaded host.
SHORT_BYTES = 7_000


def _tool(name: str) -> Path:
    exe = llamacpp_tools.cache_dir() / "build" / "bin" / name
    if not exe.is_file():
        pytest.skip(f"{name} is not built (run `make tools` or python benchmarks/llamacpp_tools.py, ≈5 min once)")
    return exe


def _run(cmd: list, cwd: Path | None = None) -> subprocess.CompletedProcess:
    p = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, env=llamacpp_tools.tool_env())
    assert p.returncode == 0, p.stderr[-2000:]
    return p


# ---------------------------------------------------------------- units


def test_add_rows_is_one_addition_per_row_in_order():
    rng = np.random.default_rng(0)
    for n in (256, 4096):
        rows = (rng.standard_normal((512, n)) * rng.uniform(0.01, 100, n)).astype(np.float32)
        acc = rng.uniform(0, 1e4, n).astype(np.float32)
        want = acc.copy()
        for r in rows:
            want += r * r  # llama-imatrix: acc[j] += x[j] * x[j], row after row
        got = add_rows(acc, rows)
        assert got.dtype == np.float32 and np.array_equal(got, want)


def test_calibration_text_is_disjoint_from_heldout():
    cal, held = DEFAULT_TEXT.read_text(encoding="utf-8"), (DATA / "heldout.txt").read_text(encoding="utf-8")
    assert DEFAULT_TEXT.parent == DATA and len(cal) > 50_000

    def lines(t: str) -> set[str]:
        return {x.strip() for x in t.splitlines() if len(x.strip()) >= 40}

    assert not lines(cal) & lines(held)
    assert not [p for p in cal.split("\n\n") if len(p) > 80 and p in held]


def test_imatrix_file_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    m = Imatrix(datasets=["calibration.txt"], chunk_count=3, chunk_size=512)
    m.entries["blk.0.ffn_up.weight"] = Entry(rng.uniform(0, 9, (1, 64)).astype(np.float32), np.array([1536]))
    m.entries["blk.0.ffn_up_exps.weight"] = Entry(
        rng.uniform(0, 9, (4, 32)).astype(np.float32), np.array([10, 0, 7, 3])
    )
    back = read_imatrix(write_imatrix(tmp_path / "m.imatrix.gguf", m))
    assert back.datasets == m.datasets and (back.chunk_count, back.chunk_size) == (3, 512) and not back.legacy
    for k, e in m.entries.items():
        assert np.array_equal(back.entries[k].sums, e.sums) and np.array_equal(back.entries[k].counts, e.counts)
    means = back.means()
    assert np.array_equal(means["blk.0.ffn_up.weight"], m.entries["blk.0.ffn_up.weight"].sums[0] / np.float32(1536))
    exps = means["blk.0.ffn_up_exps.weight"].reshape(4, 32)
    assert (exps[1] == 1).all()  # an expert no token reached: 1, as llama-quantize loads it
    assert np.array_equal(exps[2], m.entries["blk.0.ffn_up_exps.weight"].sums[2] / np.float32(7))


def test_legacy_dat_is_read_as_llama_quantize_reads_it(tmp_path):
    vals = np.arange(1, 9, dtype=np.float32) * 3
    name = b"blk.1.attn_q.weight"
    raw = struct.pack("<i", 1) + struct.pack("<i", len(name)) + name + struct.pack("<ii", 3, 8) + vals.tobytes()
    raw += struct.pack("<i", 5) + struct.pack("<i", 8) + b"wiki.txt"
    (tmp_path / "old.dat").write_bytes(raw)
    m = read_imatrix(tmp_path / "old.dat")
    assert m.legacy and m.datasets == ["wiki.txt"] and m.chunk_count == 5
    assert np.array_equal(m.means()["blk.1.attn_q.weight"], vals / np.float32(3))


def test_bad_imatrix_is_one_line(tmp_path):
    from edgekit.core.errors import ConfigError

    (tmp_path / "x.gguf").write_bytes(b"GGUF" + b"\0" * 20)
    with pytest.raises(ConfigError, match="not an importance matrix"):
        read_imatrix(tmp_path / "x.gguf")


# ---------------------------------------------------------------- type names


def test_type_names_are_llama_cpp_file_types():
    import llama_cpp

    from edgekit.backends.gguf.quantize import llama_ftype
    from edgekit.profiles.recipes import RECIPES, get_recipe

    for name, ftype in [
        ("q5_k_m", "Q5_K_M"),
        ("q6_k", "Q6_K"),
        ("q3_k_m", "Q3_K_M"),
        ("iq4_nl", "IQ4_NL"),
        ("iq3_xxs", "IQ3_XXS"),
        ("q2_k", "Q2_K"),
        ("q5_k_s", "Q5_K_S"),
        ("iq2_xs", "IQ2_XS"),
        ("q4_k", "Q4_K_M"),
    ]:
        r = RECIPES.get(name)
        assert r.format == "gguf" and llama_ftype(r.ftype) == getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{ftype}")
        assert r.quant == name.upper()  # the file's label: the name asked for, as llama-quantize names it
    edge = get_recipe("iq4_xs-edge+q5_k_m")  # the recipe's overrides on top of the type
    assert edge.ftype == "MOSTLY_Q5_K_M" and edge.overrides == RECIPES.get("iq4_xs-edge").overrides
    from edgekit.core.errors import ConfigError

    for bad in ("mlx-4bit+q4_0", "iq4_xs-edge+iq4_xs-edge", "iq4_xs-edge+q9_k"):
        with pytest.raises(ConfigError):
            get_recipe(bad)


def test_type_by_name_builds_that_file_type_with_overrides_on_top(tmp_path):
    import gguf
    import llama_cpp

    from edgekit.backends.gguf.header import read_gguf_header
    from edgekit.builder.manifest import read_manifest
    from edgekit.builder.pipeline import build

    folder = build(str(ROOT / "tests" / "data" / "tiny-trained"), quants=["q6_k", "iq4_xs-edge+q5_k_m"], out=tmp_path)
    q6, edge = (read_gguf_header(folder / a.file) for a in read_manifest(folder).artifacts)
    assert q6.scalars["general.file_type"] == llama_cpp.LLAMA_FTYPE_MOSTLY_Q6_K
    assert q6.tensors["blk.0.ffn_up.weight"].type == gguf.GGMLQuantizationType.Q6_K
    assert edge.scalars["general.file_type"] == llama_cpp.LLAMA_FTYPE_MOSTLY_Q5_K_M
    assert edge.tensors["token_embd.weight"].type == gguf.GGMLQuantizationType.Q4_K  # the recipe's override
    assert edge.tensors["per_layer_token_embd.weight"].type == gguf.GGMLQuantizationType.Q6_K
    assert edge.tensors["blk.0.attn_q.weight"].type == gguf.GGMLQuantizationType.Q5_K  # the type's layers


def test_type_table_is_llama_quantizes():
    from edgekit.backends.gguf.ftypes import FILE_TYPES

    p = subprocess.run(
        [str(_tool("llama-quantize")), "--help"], capture_output=True, text=True, env=llamacpp_tools.tool_env()
    )
    listed = {}
    for line in p.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[1] == "or" and parts[3] == ":":
            listed[parts[2]] = int(parts[0])
    import llama_cpp

    assert listed and set(listed) == set(FILE_TYPES)
    assert all(getattr(llama_cpp, f"LLAMA_FTYPE_{FILE_TYPES[k]}") == v for k, v in listed.items())


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edgekit.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**__import__("os").environ, "PYTHONPATH": str(ROOT)},
    )


def test_unknown_type_is_one_line_listing_names(tmp_path):
    p = _cli("build", "-m", "tests/data/tiny-trained", "--quant", "q9_k", "--out", str(tmp_path))
    assert p.returncode != 0 and len(p.stderr.strip().splitlines()) == 1
    assert "q5_k_m" in p.stderr and "iq2_xs" in p.stderr and "iq4_xs-edge" in p.stderr


@pytest.mark.parametrize("quant", ["iq3_xxs", "iq2_xs", "q2_k_s", "iq4_xs-edge+iq2_xxs"])
def test_low_bit_iq_needs_a_matrix(tmp_path, quant):
    p = _cli("build", "-m", "tests/data/tiny-trained", "--quant", quant, "--out", str(tmp_path))
    assert p.returncode != 0 and len(p.stderr.strip().splitlines()) == 1 and "--calibrate" in p.stderr
    assert not any(tmp_path.rglob("*.gguf"))


def test_calibration_faults_are_one_line(tmp_path):
    (tmp_path / "short.txt").write_text("def f():\n    return 1\n", encoding="utf-8")
    (tmp_path / "junk.gguf").write_bytes(b"not a matrix at all")
    for args, says in (
        (["--calibrate", str(tmp_path / "short.txt")], "calibration needs at least 1024"),
        (["--calibrate", str(tmp_path / "missing.txt")], "cannot read"),
        (["--imatrix", str(tmp_path / "junk.gguf")], "not an importance matrix"),
        (["--calibrate", "builtin", "--imatrix", str(tmp_path / "junk.gguf")], "pass one of them"),
    ):
        p = _cli("build", "-m", "tests/data/tiny-trained", "--quant", "q4_0", "--out", str(tmp_path / "d"), *args)
        assert p.returncode != 0 and len(p.stderr.strip().splitlines()) == 1 and says in p.stderr, p.stderr
    p = _cli(
        "build",
        "-m",
        "tests/data/tiny-trained",
        "--quant",
        "f16",
        "--out",
        str(tmp_path / "d"),
        "--calibrate",
        "builtin",
    )
    assert p.returncode != 0 and "no importance matrix would be used" in p.stderr
    assert not any((tmp_path / "d").rglob("*.gguf"))


# ---------------------------------------------------------------- against llama.cpp's own tools


@pytest.fixture(scope="module")
def intermediate(tmp_path_factory):
    """The trained tiny model as the build's lossless intermediate (BF16), and a short calibration text."""
    from edgekit.backends.gguf.convert import convert
    from edgekit.model.checkpoint import load_checkpoint

    d = tmp_path_factory.mktemp("imatrix")
    ck = load_checkpoint(str(ROOT / "tests" / "data" / "tiny-trained"))
    convert(ck, d / "tiny-BF16.gguf", "BF16", name=ck.name)
    (d / "cal.txt").write_text(DEFAULT_TEXT.read_text(encoding="utf-8")[:SHORT_BYTES], encoding="utf-8")
    return d


@pytest.fixture(scope="module")
def ours(intermediate):
    """Our matrix over the short text (one thread: the host is shared)."""
    d = intermediate
    calibrate(d / "tiny-BF16.gguf", d / "cal.txt", d / "ours.imatrix.gguf", dataset="cal.txt", threads=1)
    return read_imatrix(d / "ours.imatrix.gguf")


@pytest.fixture(scope="module")
def both(intermediate, ours):
    """Ours and llama-imatrix's matrix over the same text and file (-c 512 -b 512, one thread each)."""
    exe = _tool("llama-imatrix")
    _run(
        [
            exe,
            "-m",
            "tiny-BF16.gguf",
            "-f",
            "cal.txt",
            "-o",
            "ref.imatrix.gguf",
            "-c",
            512,
            "-b",
            512,
            "-t",
            1,
            "--no-ppl",
        ],
        cwd=intermediate,
    )
    return ours, read_imatrix(intermediate / "ref.imatrix.gguf")


# Measured: every sum and count equal to llama-imatrix's bit for bit, at -b 512 and at its default
# -b 2048 (four chunks per decode) alike, when both run the same way: same library code, same graph,
# same order of float32 additions. Our -b 512 against its -b 2048 differs by summation order only:
# 6.0e-6 relative at most on this text. A layout, filter or ordering mistake is far larger.
REL_TOL = 0.0


def _worst(ours: Imatrix, ref: Imatrix) -> float:
    assert set(ours.entries) == set(ref.entries) and len(ours.entries) > 50
    assert (ours.chunk_count, ours.chunk_size, ours.datasets) == (ref.chunk_count, ref.chunk_size, ref.datasets)
    worst = 0.0
    for name, e in ref.entries.items():
        o = ours.entries[name]
        assert np.array_equal(o.counts, e.counts), name
        rel = np.abs(o.sums - e.sums) / np.maximum(np.abs(e.sums), 1e-30)
        worst = max(worst, float(rel.max()))
    return worst


@pytest.mark.slow
def test_matrix_matches_llama_imatrix(both):
    worst = _worst(*both)
    assert worst <= REL_TOL, f"largest relative difference {worst:.3g}"


@pytest.mark.slow
def test_matrix_matches_llama_imatrix_four_chunks_per_decode(intermediate, ours):
    """llama-imatrix's default batch (-b 2048: four chunks decoded as four sequences), on both sides; and
    the comparison sees a change of summation order alone (our -b 512 against its -b 2048)."""
    d = intermediate
    _run(
        [
            _tool("llama-imatrix"),
            "-m",
            "tiny-BF16.gguf",
            "-f",
            "cal.txt",
            "-o",
            "ref4.imatrix.gguf",
            "-c",
            512,
            "-t",
            1,
            "--no-ppl",
        ],
        cwd=d,
    )
    calibrate(d / "tiny-BF16.gguf", d / "cal.txt", d / "ours4.imatrix.gguf", dataset="cal.txt", threads=1, n_batch=2048)
    ref4 = read_imatrix(d / "ref4.imatrix.gguf")
    worst = _worst(read_imatrix(d / "ours4.imatrix.gguf"), ref4)
    assert worst <= REL_TOL, f"largest relative difference {worst:.3g}"
    assert 0 < _worst(ours, ref4) < 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("quant,ftype", [("iq3_xxs", "IQ3_XXS"), ("q4_k_m", "Q4_K_M"), ("iq4_xs-edge", "IQ4_XS")])
def test_quantized_with_our_matrix_equals_llama_quantize(intermediate, ours, quant, ftype):
    """The same matrix file through our quantizer and through `llama-quantize --imatrix`: the same bytes."""
    from edgekit.backends.gguf.quantize import quantize
    from edgekit.profiles.recipes import get_recipe

    d = intermediate
    exe = _tool("llama-quantize")
    r = get_recipe(quant)
    ours = quantize(d / "tiny-BF16.gguf", d / f"ours-{quant}.gguf", r, threads=1, imatrix=d / "ours.imatrix.gguf")
    args = [exe, "--imatrix", "ours.imatrix.gguf"]
    for pattern, t in r.overrides.items():  # llama-quantize's --tensor-type takes the same regex=type pairs
        args += ["--tensor-type", f"{pattern}={t}"]
    _run([*args, "tiny-BF16.gguf", f"ref-{quant}.gguf", ftype, "1"], cwd=d)
    assert ours.read_bytes() == (d / f"ref-{quant}.gguf").read_bytes()
    from edgekit.backends.gguf.header import read_gguf_header

    kv = read_gguf_header(ours).scalars
    assert kv["quantize.imatrix.file"] == "ours.imatrix.gguf" and kv["quantize.imatrix.dataset"] == "cal.txt"
    plain = quantize(d / "tiny-BF16.gguf", d / f"plain-{quant}.gguf", r, threads=1) if quant != "iq3_xxs" else None
    if plain is not None:  # and the matrix changed the weights
        assert plain.read_bytes() != ours.read_bytes()


@pytest.mark.slow
def test_build_writes_and_records_the_matrix(tmp_path):
    from edgekit.builder.manifest import read_manifest
    from edgekit.builder.pipeline import build
    from edgekit.model.checkpoint import sha256_file

    text = tmp_path / "cal.txt"
    text.write_text(DEFAULT_TEXT.read_text(encoding="utf-8")[:SHORT_BYTES], encoding="utf-8")
    folder = build(
        str(ROOT / "tests" / "data" / "tiny-trained"),
        quants=["q4_k_m", "f16"],
        out=tmp_path / "dist",
        calibrate=str(text),
    )
    m = read_manifest(folder)
    q4, f16 = m.artifacts
    im = q4.extra["imatrix"]
    assert "imatrix" not in f16.extra  # written by the converter, no quantizer, no matrix
    assert im["text"] == "cal.txt" and im["text_sha256"] == sha256_file(text) and im["chunks"] >= 2
    assert im["tokens"] >= im["chunks"] * im["chunk_size"] and "eval callback" in im["computed"]
    assert sha256_file(folder / im["file"]) == im["sha256"]
    # reused: the written matrix, given back with --imatrix, quantizes to the same bytes
    again = build(
        str(ROOT / "tests" / "data" / "tiny-trained"),
        quants=["q4_k_m"],
        out=tmp_path / "again",
        imatrix=folder / im["file"],
    )
    a = read_manifest(again).artifacts[0]
    assert a.sha256 == q4.sha256 and a.extra["imatrix"]["computed"].startswith("precomputed")
    assert json.loads((folder / "manifest.json").read_text())["artifacts"][0]["extra"]["imatrix"]["file"] == im["file"]
