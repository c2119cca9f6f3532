"""Build, profiles and deploy on bad input (issue 23, part 6): one exact line and exit 1, no traceback,
no hang, and an earlier build (manifest included) left whole.

A recipe listed twice, or two recipes making one file; a safetensors shard that is a FIFO; two
profiles of one name, an unknown profile key, a bad value in a base profile reached through extends;
an inventory port of true and a timeout of nan; --vocab below the real minimum and at or above the
vocabulary; a recipe whose quant label and ftype disagree; a checkpoint without tokenizer_config.json;
a manifest listing no artifacts; zeros that used to mean a default; serve --ctx 1; a large bench grid.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace

import pytest
from faultkit import ROOT, assert_one_line, hidden_leftovers, run_cli
from test_inputs import run  # the CLI in-process (ckpt, a fresh copy of the tiny checkpoint: conftest.py)

from edgekit.builder.manifest import verify


@pytest.fixture(scope="module")
def dist(tiny_ckpt, tmp_path_factory):
    from edgekit.builder.pipeline import build

    return build(str(tiny_ckpt), target="pi5", quants=["q8_0"], out=tmp_path_factory.mktemp("dist"))


# ---------------------------------------------------------------- one artifact name, twice


def test_recipe_listed_twice_keeps_the_earlier_build(tiny_ckpt, tmp_path):
    """The regression: since builds are staged (299fb34), commit removed the old manifest, then found the
    duplicate's file already renamed: "cannot write (No such file or directory)" and no manifest."""
    out = tmp_path / "out"
    assert run("build", "-m", tiny_ckpt, "-q", "q8_0", "--out", out).exit_code == 0
    folder = out / "tiny-gemma4" / "pi5"
    assert_one_line(
        run("build", "-m", tiny_ckpt, "-q", "q4_0,q4_0", "--out", out),
        1,
        "--quant q4_0,q4_0: recipe 'q4_0' is listed twice; list each recipe once",
    )
    assert verify(folder) == [] and hidden_leftovers(out) == []
    assert run("bench", folder, "--no-store", "-p", 4, "-n", 2, "-r", 1).exit_code == 0  # still an artifact


def test_two_recipes_making_one_file_keep_the_earlier_build(tiny_ckpt, tmp_path, monkeypatch):
    import edgekit.profiles.recipes as recipes_mod
    from edgekit.core.registry import Registry
    from edgekit.profiles.recipes import RECIPES

    q4 = RECIPES.get("q4_0")
    reg = Registry("recipe")
    reg.lazy(lambda: {"q8_0": RECIPES.get("q8_0"), "q4_0": q4, "q4_0-copy": replace(q4, name="q4_0-copy")})
    monkeypatch.setattr(recipes_mod, "RECIPES", reg)
    out = tmp_path / "out"
    assert run("build", "-m", tiny_ckpt, "-q", "q8_0", "--out", out).exit_code == 0
    assert_one_line(
        run("build", "-m", tiny_ckpt, "-q", "q4_0,q4_0-copy", "--out", out),
        1,
        "recipes 'q4_0' and 'q4_0-copy' both make tiny-gemma4-Q4_0.gguf; build them apart, or give one "
        "a different quant label",
    )
    folder = out / "tiny-gemma4" / "pi5"
    assert verify(folder) == [] and hidden_leftovers(out) == []
    assert [a["file"] for a in json.loads((folder / "manifest.json").read_text())["artifacts"]] == [
        "tiny-gemma4-Q8_0.gguf"
    ]


def test_commit_of_a_name_twice_keeps_the_manifest(tmp_path):
    from edgekit.builder.staging import BuildStage
    from edgekit.core.errors import OutputError

    folder = tmp_path / "b"
    folder.mkdir()
    (folder / "manifest.json").write_text("{}")
    with (
        pytest.raises(OutputError, match=r"^a\.gguf: the build made it twice; nothing was swapped in$"),
        BuildStage(folder, "manifest.json") as stage,
    ):
        (stage.path / "a.gguf").write_bytes(b"x")
        stage.commit(["a.gguf", "a.gguf"], lambda f: None)
    assert (folder / "manifest.json").read_text() == "{}"


# ---------------------------------------------------------------- a shard that is not a file


@pytest.mark.parametrize("index", [False, True])
def test_fifo_shard_is_one_line_not_a_hang(ckpt, tmp_path, index):
    shard = ckpt / "model-00001-of-00001.safetensors"
    if not index:
        (ckpt / "model.safetensors.index.json").unlink()
    shard.unlink()
    os.mkfifo(shard)
    res = run_cli("build", "-m", ckpt, "-q", "f16", "--out", tmp_path / "out", timeout=120)  # before: forever
    assert_one_line(res, 1, f"{shard}: not a regular file (a FIFO); a safetensors shard must be a file, fetch it again")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- target profiles


@pytest.fixture()
def profiles(tmp_path, monkeypatch):
    """targets/pi5.toml and pi5-lean.toml copied to a folder the registry reads instead."""
    import edgekit.profiles.targets as targets_mod
    from edgekit.core.registry import Registry

    folder = tmp_path / "targets"
    folder.mkdir()
    for name in ("pi5.toml", "pi5-lean.toml"):
        shutil.copy(ROOT / "targets" / name, folder / name)
    monkeypatch.setattr(targets_mod, "data_dir", lambda kind: folder)
    reg = Registry("target")
    reg.lazy(targets_mod._load_all)
    monkeypatch.setattr(targets_mod, "TARGETS", reg)
    return folder


def _edit(path, old, new):
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))


def test_two_profiles_of_one_name(profiles):
    (profiles / "my-pi.toml").write_text((profiles / "pi5.toml").read_text())  # name = "pi5" inside
    assert_one_line(
        run("targets"),
        1,
        f"{profiles / 'pi5.toml'}: name 'pi5' is also the name of "
        f"{profiles / 'my-pi.toml'}; two profiles cannot share a name, rename one",
    )


@pytest.mark.parametrize(
    "old, new, says",
    [
        ("threads = 4", "threds = 4", "unknown key 'threds'; did you mean 'threads'? known: "),
        (
            "[bench]",
            "[bench]\npage_sise = 16384",
            "unknown key bench.'page_sise'; did you mean bench.'page_size'? known: ",
        ),
    ],
)
def test_unknown_profile_key_has_a_did_you_mean(profiles, old, new, says):
    _edit(profiles / "pi5.toml", old, new)
    res = run("targets")
    assert res.exit_code == 1 and "Traceback" not in res.stderr
    assert res.stderr.startswith(f"edgekit: error: {profiles / 'pi5.toml'}: {says}") and res.stderr.count("\n") == 1, (
        res.stderr
    )


def test_bad_value_in_the_base_is_reported_against_the_base(profiles):
    """pi5-lean.toml extends pi5.toml and is read first: the bad budget is pi5.toml's line to fix."""
    from edgekit.profiles.targets import load_target

    _edit(profiles / "pi5.toml", "memory_budget_gb = 1.5", 'memory_budget_gb = "1.5"')
    line = (
        f"{profiles / 'pi5.toml'}: memory_budget_gb must be a positive number, not the string '1.5'; "
        "fix the TOML (see targets/pi5.toml for the fields)"
    )
    assert_one_line(run("targets"), 1, line)
    with pytest.raises(Exception) as e:
        load_target(profiles / "pi5-lean.toml")
    assert str(e.value) == line
    _edit(profiles / "pi5.toml", 'memory_budget_gb = "1.5"', "memory_budget_gb = 1.5")
    _edit(profiles / "pi5-lean.toml", 'quants = ["iq4_xs-edge-lean"]', "quants = 3")  # the variant's own: its file
    with pytest.raises(Exception) as e:
        load_target(profiles / "pi5-lean.toml")
    assert str(e.value).startswith(f"{profiles / 'pi5-lean.toml'}: quants must be a list of strings")


# ---------------------------------------------------------------- the lab inventory


@pytest.mark.parametrize(
    "line, says",
    [
        ("port = true", "port must be an integer 1-65535, not the boolean true"),
        ('port = "22"', "port must be an integer 1-65535, not the string '22'"),
        ("port = 22.0", "port must be an integer 1-65535, not the number 22.0"),
        ("timeout = nan", "timeout must be a positive number of seconds, not the number nan"),
        ("timeout = inf", "timeout must be a positive number of seconds, not the number inf"),
        ("timeout = -1", "timeout must be a positive number of seconds, not the integer -1"),
        ("connect_timeout = 0", "connect_timeout must be a positive integer of seconds, not the integer 0"),
        ("connect_timeout = true", "connect_timeout must be a positive integer of seconds, not the boolean true"),
    ],
)
def test_inventory_numbers_are_numbers(tmp_path, line, says):
    inv = tmp_path / "lab.toml"
    inv.write_text(f'[devices.pi]\ntarget = "pi5"\nhost = "pi.local"\n{line}\n')
    assert_one_line(run("lab", "list", "-i", inv), 1, f"{inv} [devices.'pi']: {says}")


def test_inventory_good_numbers_still_load(tmp_path):
    inv = tmp_path / "lab.toml"
    inv.write_text('[devices.pi]\ntarget = "pi5"\nhost = "pi.local"\nport = 2222\ntimeout = 90\nconnect_timeout = 5\n')
    res = run("lab", "list", "-i", inv)
    assert res.exit_code == 0 and res.stdout == "pi\tpi5\tpi.local:2222\t./edgekit\n"


# ---------------------------------------------------------------- --vocab


def test_vocab_minimum_is_the_one_that_works(tiny_ckpt, tmp_path):
    """The must-keep set is 304 tokens on the tiny model, and llama.cpp needs one BPE merge (two more
    tokens): 304 and 305 used to pass the check and fail on the lean tokenizer in the temp folder."""
    for n in (257, 305):
        assert_one_line(
            run("build", "-m", tiny_ckpt, "-q", "q4_0", "--vocab", n, "--out", tmp_path / "out"),
            1,
            f"vocab {n} is smaller than the 306 tokens every Gemma 4 deployment keeps (special, control, "
            "template and multimodal tokens, 256 byte-fallback tokens, and 2 for one BPE merge, which "
            "llama.cpp's tokenizer needs); use at least 306",
        )
    assert not (tmp_path / "out").exists()
    res = run("build", "-m", tiny_ckpt, "-q", "q4_0", "--vocab", 306, "--out", tmp_path / "out")
    assert res.exit_code == 0, res.output
    folder = tmp_path / "out" / "tiny-gemma4" / "pi5"
    (art,) = json.loads((folder / "manifest.json").read_text())["artifacts"]
    assert art["extra"]["vocab"]["size"] == 306 and art["extra"]["vocab"]["merges"] >= 1
    res = run("run", folder, "-p", "hi", "-n", 2)  # llama.cpp loads the lean tokenizer and generates
    assert res.exit_code == 0, res.output


@pytest.mark.parametrize("n", [1024, 1025, 5000])
def test_vocab_at_or_above_the_vocabulary_writes_no_lean_copy(tiny_ckpt, tmp_path, n):
    assert_one_line(
        run("build", "-m", tiny_ckpt, "-q", "q4_0", "--vocab", n, "--out", tmp_path / "out"),
        1,
        f"--vocab {n}: the model's vocabulary has 1024 tokens, so there is nothing to trim; build without "
        "--vocab, or with --vocab below 1024",
    )
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- recipes


@pytest.mark.parametrize(
    "recipe, says",
    [
        (
            'name = "bad"\nformat = "gguf"\nquant = "Q4_0"\nftype = "ALL_F32"\n',
            "quant 'Q4_0' does not match ftype 'ALL_F32', which writes F32; set quant = \"F32\" (or \"F32-<suffix>\"), "
            "or the ftype that writes Q4_0",
        ),
        (
            'name = "bad"\nformat = "gguf"\nquant = "Q4_K_M"\nftype = "MOSTLY_Q4_0"\n',
            "quant 'Q4_K_M' does not match ftype 'MOSTLY_Q4_0', which writes Q4_0; set quant = \"Q4_0\" (or "
            '"Q4_0-<suffix>"), or the ftype that writes Q4_K_M',
        ),
        (
            'name = "bad"\nformat = "mlx"\nquant = "4bit-g64"\nbits = 8\ngroup_size = 64\n',
            "quant '4bit-g64' does not match bits = 8; set quant = \"8bit-g64\", or the bits it names",
        ),
    ],
)
def test_recipe_whose_label_and_settings_disagree(monkeypatch, tmp_path, recipe, says):
    import edgekit.profiles.recipes as recipes_mod
    from edgekit.core.registry import Registry

    path = tmp_path / "quant" / "bad.toml"
    path.parent.mkdir()
    path.write_text(recipe)
    reg = Registry("recipe")
    reg.lazy(lambda: {"bad": recipes_mod.load_recipe(path)})
    monkeypatch.setattr(recipes_mod, "RECIPES", reg)
    assert_one_line(run("recipes"), 1, f"{path}: {says}")


def test_shipped_recipes_all_pass_the_label_check():
    from edgekit.profiles.recipes import RECIPES

    assert len(RECIPES.names()) >= 11


# ---------------------------------------------------------------- the chat template

FIX = "copy tokenizer_config.json (and chat_template.jinja, if it has one) from the original checkpoint"


def test_checkpoint_without_tokenizer_config_is_refused_at_build(ckpt, tmp_path):
    (ckpt / "tokenizer_config.json").unlink()
    assert_one_line(
        run("build", "-m", ckpt, "-q", "f16", "--out", tmp_path / "out"),
        1,
        f"{ckpt}: no tokenizer_config.json, so no chat template or special tokens reach the artifacts "
        f"(run and serve need them); {FIX}",
    )
    assert not (tmp_path / "out").exists()


def test_checkpoint_without_a_chat_template_is_refused_at_build(ckpt, tmp_path):
    cfg = json.loads((ckpt / "tokenizer_config.json").read_text())
    template = cfg.pop("chat_template")
    (ckpt / "tokenizer_config.json").write_text(json.dumps(cfg))
    assert_one_line(
        run("build", "-m", ckpt, "-q", "f16", "--out", tmp_path / "out"),
        1,
        f"{ckpt}: no chat template (tokenizer_config.json's chat_template or chat_template.jinja), which "
        f"run and serve need; {FIX}",
    )
    # in chat_template.jinja beside tokenizer_config.json, as newer checkpoints ship it: built, and it chats
    (ckpt / "chat_template.jinja").write_text(template)
    assert run("build", "-m", ckpt, "-q", "f16", "--out", tmp_path / "out").exit_code == 0
    res = run("run", tmp_path / "out" / "tiny-gemma4" / "pi5", "-p", "hi", "-n", 2)
    assert res.exit_code == 0, res.output


# ---------------------------------------------------------------- a manifest with no artifacts


@pytest.mark.parametrize("command", ["run", "serve", "bench"])
def test_manifest_listing_no_artifacts(dist, tmp_path, command):
    folder = tmp_path / "empty"
    folder.mkdir()
    m = json.loads((dist / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps({**m, "artifacts": []}))
    args = {"run": ["-p", "hi"], "serve": ["--port", 1], "bench": ["--no-store"]}[command]
    res = run_cli(command, folder, *args, timeout=120)
    assert_one_line(res, 1, f"{folder / 'manifest.json'}: lists no artifacts; rebuild with `edgekit build`")


# ---------------------------------------------------------------- zeros that meant a default


@pytest.fixture
def no_child(monkeypatch):
    import edgekit.measure.bench as bench_mod

    def started(*a, **kw):
        raise AssertionError("a child process was started")

    monkeypatch.setattr(bench_mod, "run_child", started)


THREADS_0 = "--threads 0: use at least 1 thread (default: the target's, capped at this host's cores)"
CTX_0 = "--ctx 0: use at least 1 token (leave it out for the target's context)"


@pytest.mark.parametrize(
    "args, line",
    [
        (["-t", "0"], THREADS_0),
        (["-t", "1,0"], THREADS_0),
        (["--ctx", "0"], CTX_0),
        (["--ctx", "64,0"], CTX_0),
    ],
)
def test_bench_zero_is_not_the_default(dist, no_child, args, line):
    assert_one_line(run("bench", dist, "--no-store", "-p", 8, "-n", 2, *args), 1, line)


@pytest.mark.parametrize("command", ["run", "serve"])
@pytest.mark.parametrize("args, flag", [(["-t", "0"], "'--threads' / '-t'"), (["--ctx", "0"], "'--ctx' / '-c'")])
def test_run_and_serve_zero_is_not_the_default(dist, command, args, flag):
    """run and serve declare these bounds on their options (a usage error, exit 2, as click gives)."""
    extra = ["-p", "hi"] if command == "run" else ["--port", 1]
    res = run_cli(command, dist, *extra, *args, timeout=120)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert f"Invalid value for {flag}" in res.stderr and "Input should be greater" in res.stderr, res.stderr


def test_serve_context_too_short_for_any_chat(dist):
    """Before: a server started and refused every request. Refused at start since the doors merge
    (serve/session.py measures the floor with the artifact's template); kept here as issue 23's case."""
    res = run_cli("serve", dist, "--ctx", 1, "--port", 1, timeout=120)  # port 1: it must not get that far
    assert res.returncode == 1 and "Traceback" not in res.stderr
    (line,) = res.stderr.splitlines()
    assert line.startswith("edgekit: error: --ctx 1 cannot hold an empty chat turn ("), line


# ---------------------------------------------------------------- a large bench grid


def test_large_grid_needs_yes(dist, no_child):
    p = ",".join(str(i) for i in range(1, 11))
    assert_one_line(
        run("bench", dist, "--no-store", "-p", p, "-n", p, "-t", "1,2"),
        1,
        "the grid is 200 rows per artifact (10 -p values × 10 -n values × 2 --threads values); pass --yes "
        "to run it, or give fewer values",
    )
    # at the limit (100 rows) it starts without a word (the stub child stops it at once)
    with pytest.raises(AssertionError, match="a child process was started"):
        res = run("bench", dist, "--no-store", "-p", p, "-n", p)
        raise res.exception
    with pytest.raises(AssertionError, match="a child process was started"):
        res = run("bench", dist, "--no-store", "-p", p, "-n", p, "-t", "1,2", "--yes")
        assert res.stderr.startswith("edgekit: a grid of 200 rows per artifact (--yes)\n"), res.stderr
        raise res.exception
