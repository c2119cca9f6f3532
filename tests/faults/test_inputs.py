"""Wrongly typed and malformed input: each case is one exact line on stderr, its exit code, no
traceback, and nothing written that looks finished.

config.json values of the wrong type, targets/*.toml and quant/*.toml of the wrong type or not UTF-8,
a corrupt row in the results store, synth's --dtype / --preset / --out, a manifest.json that is a
folder, a rebuild on a read-only mount, and a mistyped local path.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess

import pytest
from faultkit import assert_one_line, hidden_leftovers, run_cli, tmpfs
from typer.testing import CliRunner

from edgekit.builder.manifest import verify
from edgekit.cli import app

runner = CliRunner()
RESTORE = "restore config.json from the original checkpoint"


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


# ---------------------------------------------------------------- config.json


def _set(cfg: dict, dotted: str, value) -> None:
    *parents, last = dotted.split(".")
    for p in parents:
        cfg = cfg[p]
    cfg[last] = value


CONFIG_CASES = [
    ("text_config", [], "text_config must be an object of fields, not a list"),
    ("text_config.hidden_size", "256", "text_config.hidden_size must be a positive integer, not the string '256'"),
    (
        "text_config.num_hidden_layers",
        True,
        "text_config.num_hidden_layers must be a positive integer, not the boolean true",
    ),
    ("text_config.head_dim", 0, "text_config.head_dim must be a positive integer, not the integer 0"),
    (
        "text_config.intermediate_size",
        1024.5,
        "text_config.intermediate_size must be a positive integer, not the number 1024.5",
    ),
    (
        "text_config.layer_types",
        "sliding_attention",
        "text_config.layer_types must be a list of strings from 'sliding_attention', 'full_attention', "
        "not the string 'sliding_attention'",
    ),
    (
        "text_config.rope_parameters",
        ["full_attention"],
        "text_config.rope_parameters must be an object of fields, not a list",
    ),
    (
        "text_config.rope_parameters.full_attention.rope_theta",
        "1e6",
        "text_config.rope_parameters.full_attention.rope_theta must be a positive number, not the string '1e6'",
    ),
    (
        "text_config.rope_parameters.full_attention.partial_rotary_factor",
        2.0,
        "text_config.rope_parameters.full_attention.partial_rotary_factor must be a positive number ≤ 1, not the "
        "number 2.0",
    ),
    ("text_config.rms_norm_eps", None, None),  # null = the default: not an error (control case)
    ("text_config.final_logit_softcapping", {}, "text_config.final_logit_softcapping must be a number, not an object"),
    (
        "text_config.use_double_wide_mlp",
        "false",
        "text_config.use_double_wide_mlp must be true or false, not the string 'false'",
    ),
    ("tie_word_embeddings", "yes", "tie_word_embeddings must be true or false, not the string 'yes'"),
    ("eos_token_id", "1", "eos_token_id must be a token id or a list of token ids, not the string '1'"),
]


@pytest.mark.parametrize(
    "key, value, says", CONFIG_CASES, ids=[c[0].rsplit(".", 1)[-1] + "=" + type(c[1]).__name__ for c in CONFIG_CASES]
)
def test_config_value_of_the_wrong_type(ckpt, tmp_path, key, value, says):
    cfg_path = ckpt / "config.json"
    cfg = json.loads(cfg_path.read_text())
    _set(cfg, key, value)
    cfg_path.write_text(json.dumps(cfg))
    res = run("build", "-m", ckpt, "-q", "f16", "--out", tmp_path / "out")
    if says is None:
        assert res.exit_code == 0, res.output
        return
    assert_one_line(res, 1, f"{cfg_path}: {says}; {RESTORE}")
    assert not (tmp_path / "out").exists()


def test_config_that_is_a_list(ckpt, tmp_path):
    cfg_path = ckpt / "config.json"
    cfg_path.write_text("[1, 2]")
    res = run("build", "-m", ckpt, "-q", "f16", "--out", tmp_path / "out")
    assert_one_line(res, 1, f"{cfg_path}: the file must be an object of fields, not a list; {RESTORE}")


# ---------------------------------------------------------------- targets/*.toml and quant/*.toml

GOOD_TARGET = (
    'name = "bad"\nengine = "llama.cpp"\nquants = ["q4_0"]\nthreads = 4\ncontext = 2048\n'
    "memory_budget_gb = 1.5\nbandwidth_gbs = 17.1\n"
)
TARGET_FIX = "fix the TOML (see targets/pi5.toml for the fields)"
GOOD_RECIPE = 'name = "bad"\nformat = "gguf"\nquant = "Q4_0"\nftype = "MOSTLY_Q4_0"\n'
RECIPE_FIX = "fix the TOML (see quant/q4_0.toml for the fields)"


def _registry(monkeypatch, tmp_path, module: str, loader: str, content: str | bytes):
    import importlib

    from edgekit.core.registry import Registry

    mod = importlib.import_module(f"edgekit.profiles.{module}")
    path = tmp_path / module / "bad.toml"
    path.parent.mkdir()
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    reg = Registry(module.rstrip("s"))
    reg.lazy(lambda: {"bad": getattr(mod, loader)(path)})
    monkeypatch.setattr(mod, module.upper(), reg)
    return path


TARGET_CASES = [
    ("threads = 4", 'threads = "four"', "threads must be a positive integer, not the string 'four'"),
    ("context = 2048", "context = -1", "context must be a positive integer, not the integer -1"),
    ('quants = ["q4_0"]', 'quants = "q4_0"', "quants must be a list of strings, not the string 'q4_0'"),
    ('quants = ["q4_0"]', "quants = [4]", "quants must be a list of strings, not a list"),
    (
        "memory_budget_gb = 1.5",
        "memory_budget_gb = true",
        "memory_budget_gb must be a positive number, not the boolean true",
    ),
    (
        "bandwidth_gbs = 17.1",
        'bandwidth_gbs = "fast"',
        "bandwidth_gbs must be a positive number, not the string 'fast'",
    ),
    ('engine = "llama.cpp"', "engine = 1", "engine must be a string, not the integer 1"),
    ("threads = 4", "threads = 4\nruntime = 3", "runtime must be an object of fields, not the integer 3"),
    ('engine = "llama.cpp"\n', "", "engine is missing"),
    ('name = "bad"', 'name = "../../etc"', None),  # the build folder's name: never a path
]


@pytest.mark.parametrize("old, new, says", TARGET_CASES, ids=[c[1].split("\n")[-1] or "missing" for c in TARGET_CASES])
def test_target_field_of_the_wrong_type(monkeypatch, tmp_path, old, new, says):
    path = _registry(monkeypatch, tmp_path, "targets", "load_target", GOOD_TARGET.replace(old, new))
    if says is None:
        says, fix = (
            (
                "name must be a plain name (letters, digits, . _ + -; no path separator or leading dot), "
                "not the string '../../etc'"
            ),
            "fix the target profile",
        )
    else:
        fix = TARGET_FIX
    assert_one_line(run("targets"), 1, f"{path}: {says}; {fix}")


EXTENDS_CASES = [
    (
        "extends = 3",
        "extends must be a plain name (letters, digits, . _ + -; no path separator or leading dot), "
        'not the integer 3; name a profile in the same folder (e.g. extends = "pi5")',
    ),
    (
        'extends = "../pi5"',
        "extends must be a plain name (letters, digits, . _ + -; no path separator or leading "
        "dot), not the string '../pi5'; name a profile in the same folder (e.g. extends = \"pi5\")",
    ),
    ('extends = "nope"', "extends 'nope': no nope.toml beside it; name a profile in {folder}"),
    ('extends = "bad"', "extends 'bad' makes a loop (bad -> bad); a profile cannot extend itself"),
]


@pytest.mark.parametrize("line, says", EXTENDS_CASES, ids=[c[0] for c in EXTENDS_CASES])
def test_target_that_extends_what_is_not_a_profile(monkeypatch, tmp_path, line, says):
    path = _registry(monkeypatch, tmp_path, "targets", "load_target", f"{line}\n{GOOD_TARGET}")
    assert_one_line(run("targets"), 1, f"{path}: {says.format(folder=path.parent)}")


def test_targets_that_extend_each_other_are_a_loop(monkeypatch, tmp_path):
    path = _registry(monkeypatch, tmp_path, "targets", "load_target", f'extends = "other"\n{GOOD_TARGET}')
    (path.parent / "other.toml").write_text(f'extends = "bad"\n{GOOD_TARGET}')
    assert_one_line(
        run("targets"),
        1,
        f"{path.parent / 'other.toml'}: extends 'bad' makes a loop "
        "(bad -> other -> bad); a profile cannot extend itself",
    )


RECIPE_CASES = [
    ('ftype = "MOSTLY_Q4_0"', "ftype = 4", None, "ftype must be a string, not the integer 4"),
    ('quant = "Q4_0"', 'quant = "../../evil"', "quant", "the string '../../evil'"),
    ('quant = "Q4_0"', 'quant = "/tmp/evil"', "quant", "the string '/tmp/evil'"),
    ('quant = "Q4_0"', 'quant = "Q4\\\\..\\\\x"', "quant", "the string 'Q4\\\\..\\\\x'"),
    ('name = "bad"', 'name = "a/b"', "name", "the string 'a/b'"),
    ('quant = "Q4_0"', "quant = 4", None, "quant must be a string, not the integer 4"),
    (
        'ftype = "MOSTLY_Q4_0"',
        'ftype = "MOSTLY_Q4_0"\noverrides = 5',
        None,
        "overrides must be an object of fields, not the integer 5",
    ),
    (
        'ftype = "MOSTLY_Q4_0"',
        'ftype = "MOSTLY_Q4_0"\n[overrides]\n"ffn_up" = [8]',
        None,
        'overrides.\'ffn_up\' must be a type name ("q8_0", "bf16") or bits (8), not a list',
    ),
]


@pytest.mark.parametrize("old, new, name_key, says", RECIPE_CASES, ids=[c[1].split("\n")[-1] for c in RECIPE_CASES])
def test_recipe_field_of_the_wrong_type(monkeypatch, tmp_path, old, new, name_key, says):
    path = _registry(monkeypatch, tmp_path, "recipes", "load_recipe", GOOD_RECIPE.replace(old, new))
    if name_key:  # a name that would become a path: refused before any file name is made from it
        line = (
            f"{path}: {name_key} must be a plain name (letters, digits, . _ + -; no path separator or leading "
            f"dot), not {says}; fix the recipe"
        )
    else:
        line = f"{path}: {says}; {RECIPE_FIX}"
    assert_one_line(run("recipes"), 1, line)


@pytest.mark.parametrize("module, loader", [("targets", "load_target"), ("recipes", "load_recipe")])
def test_toml_that_is_not_utf8(monkeypatch, tmp_path, module, loader):
    content = (GOOD_TARGET if module == "targets" else GOOD_RECIPE).replace('"bad"', '"b\xe9d"').encode("latin-1")
    path = _registry(monkeypatch, tmp_path, module, loader, content)
    assert_one_line(run(module), 1, f"{path}: not UTF-8 text (byte 0xe9 at offset 9); save the file as UTF-8")


# ---------------------------------------------------------------- the results store


def test_report_skips_and_names_corrupt_store_rows(tmp_path):
    pytest.importorskip("matplotlib")
    from edgekit.results import Record, Store

    good = Record(
        artifact="tiny-Q4_0.gguf",
        model="tiny",
        format="gguf",
        quant="Q4_0",
        engine="llama.cpp",
        sha256="ab" * 32,
        file_bytes=10,
        device="pi5-a",
        target="pi5",
        threads=4,
        ctx=64,
        n_prompt=8,
        n_gen=4,
        reps=1,
        load_ms=1.0,
        ttft_ms=2.0,
        ttft_ms_sd=0.0,
        pp_tps=100.0,
        pp_tps_sd=0.0,
        tg_tps=10.0,
        tg_tps_sd=0.0,
        peak_rss_bytes=100_000_000,
        timestamp="2026-12-01T00:00:00Z",
    )
    db = tmp_path / "r.db"
    with Store(db) as s:
        s.append([good])
    bad_rows = [
        "not json",
        json.dumps(["a", "list"]),
        json.dumps({"artifact": "x"}),
        json.dumps({**good.to_json(), "peak_rss_bytes": "big"}),
        json.dumps({**good.to_json(), "threads": True}),
    ]
    con = sqlite3.connect(db)
    for d in bad_rows:
        con.execute(
            "INSERT INTO records (timestamp, device, artifact, sha256, engine, quant, data) "
            "VALUES ('t', 'd', 'a', 's', 'e', 'q', ?)",
            (d,),
        )
    con.commit()
    con.close()
    res = run_cli("report", "--db", db, "--out", tmp_path / "rep")  # a process of its own: logging as a user sees it
    assert res.returncode == 0, res.stderr
    assert res.stdout == f"{tmp_path / 'rep' / 'report.md'}\n"
    assert res.stderr == (
        f"WARNING edgekit.results.report: {db}: skipped 5 corrupt row(s) (id 2, 3, 4, 5, 6): "
        "not a readable bench record\n"
    )
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "1 measurement(s)" in md and "5 corrupt row(s) were skipped." in md and "tiny-Q4_0.gguf" in md


# ---------------------------------------------------------------- synth


def test_synth_unknown_dtype_and_preset(tmp_path):
    assert_one_line(
        run("synth", "--out", tmp_path / "c", "--dtype", "q4"), 1, "unknown dtype 'q4'; choose bf16, f16 or f32"
    )
    assert_one_line(
        run("synth", "--out", tmp_path / "c", "--preset", "huge"),
        1,
        "unknown preset 'huge'; choose one of e2b, mid, tiny, tiny-16k",
    )
    assert not (tmp_path / "c").exists() and hidden_leftovers(tmp_path) == []


def test_synth_out_under_a_regular_file(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert_one_line(
        run("synth", "--out", blocker / "ck"),
        1,
        f"{blocker}: a file stands where a folder is needed; pass --out with a folder path",
    )
    assert blocker.read_text() == "x"


# ---------------------------------------------------------------- manifest.json that is a folder


def test_manifest_path_that_is_a_folder(tiny_ckpt, tmp_path):
    folder = tmp_path / "out" / "tiny-gemma4" / "pi5"
    (folder / "manifest.json").mkdir(parents=True)
    assert_one_line(
        run("build", "-m", tiny_ckpt, "-q", "f16", "--out", tmp_path / "out"),
        1,
        f"{folder / 'manifest.json'}: a folder stands where the manifest goes; remove it and build again",
    )
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json"]
    assert_one_line(
        run("bench", folder, "--no-store"),
        1,
        f"{folder}: no manifest.json; the build did not finish — run `edgekit build` again",
    )


# ---------------------------------------------------------------- read-only mount


def test_rebuild_on_a_read_only_mount(tiny_ckpt, tmp_path):
    with tmpfs(tmp_path / "ro", "64m") as mnt:
        assert run("build", "-m", tiny_ckpt, "-q", "f16", "--out", mnt).exit_code == 0
        folder = mnt / "tiny-gemma4" / "pi5"
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        assert_one_line(
            run("build", "-m", tiny_ckpt, "-q", "f16", "--out", mnt),
            1,
            f"{folder}: not writable (Read-only file system); pass --out with a folder you can write",
        )
        assert verify(folder) == [] and hidden_leftovers(mnt) == []


# ---------------------------------------------------------------- a mistyped local path

HUB_OFFLINE = (
    "the hub cannot be reached and the model is not in the local cache; download it where you are "
    "online, or pass a local directory"
)


@pytest.mark.parametrize(
    "model, says",
    [
        (
            "ck2/tinny",
            "ck2/tinny: no such folder (ck2 has no tinny; did you mean ck2/tiny?); also tried as a hub id: "
            f"{HUB_OFFLINE}",
        ),
        ("ck2/other", f"ck2/other: no such folder (ck2 has no other); also tried as a hub id: {HUB_OFFLINE}"),
        (
            "./ck2/tinny",
            "./ck2/tinny: no such folder (ck2 has no tinny; did you mean ck2/tiny?), and not a hub id of the form "
            "owner/name",
        ),
        ("ck2/tiny/x", "ck2/tiny/x: no such folder (ck2/tiny has no x), and not a hub id of the form owner/name"),
        ("nowhere/tiny", f"nowhere/tiny: {HUB_OFFLINE}"),  # no such parent here: a hub id, as before
    ],
)
def test_mistyped_local_path_says_the_folder_is_missing(tiny_ckpt, tmp_path, monkeypatch, model, says):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    (tmp_path / "ck2").mkdir()
    shutil.copytree(tiny_ckpt, tmp_path / "ck2" / "tiny")
    monkeypatch.chdir(tmp_path)
    assert_one_line(run("build", "-m", model, "-q", "f16", "--out", tmp_path / "out"), 1, says)
    assert not (tmp_path / "out").exists()


def test_a_folder_where_an_artifact_goes_is_refused_before_the_old_manifest_goes(tiny_ckpt, tmp_path):
    out = tmp_path / "out"
    assert run("build", "-m", tiny_ckpt, "-q", "q8_0", "--out", out).exit_code == 0
    folder = out / "tiny-gemma4" / "pi5"
    (folder / "tiny-gemma4-F16.gguf").mkdir()
    assert_one_line(
        run("build", "-m", tiny_ckpt, "-q", "q8_0,f16", "--out", out),
        1,
        f"{folder / 'tiny-gemma4-F16.gguf'}: a folder stands where this file goes; remove it and build again",
    )
    assert verify(folder) == [] and hidden_leftovers(out) == []  # the earlier Q8_0 build still stands
