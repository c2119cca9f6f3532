"""`edgekit run` and `serve` as a newcomer types them (issues 22 and 23.5): a plain model file, a stock
MLX or Hugging Face folder, exit codes for real (subprocesses), bad input, and the small doors
(--version, targets, recipes, list, busy port, -v after the command, one meaning per short flag)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys

import pytest
from serve_fixture import REPO, cli, free_port, start_server

T1 = ("-t", "1")


@pytest.fixture(scope="module")
def loose(tiny_ckpt, tmp_path_factory):
    """A GGUF file and an MLX folder with no manifest beside them, as a user downloads them."""
    from edgekit.builder.pipeline import build

    d = build(str(tiny_ckpt), target="pi5", quants=["q4_0"], out=tmp_path_factory.mktemp("dist"))
    m = build(str(tiny_ckpt), target="m2", quants=["mlx-4bit"], out=tmp_path_factory.mktemp("dist-mlx"))
    out = tmp_path_factory.mktemp("loose")
    shutil.copy(d / "tiny-gemma4-Q4_0.gguf", out / "tiny-Q4_0.gguf")
    mlx = next(p for p in m.iterdir() if p.is_dir())
    shutil.copytree(mlx, out / "tiny-mlx-4bit")
    stock = out / "stock-mlx"  # what `mlx_lm.convert --hf-path CKPT -q` writes
    subprocess.run(
        [sys.executable, "-m", "mlx_lm", "convert", "--hf-path", str(tiny_ckpt), "--mlx-path", str(stock), "-q"],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return {
        "gguf": out / "tiny-Q4_0.gguf",
        "mlx": out / "tiny-mlx-4bit",
        "stock": stock,
        "hf": tiny_ckpt,
        "dist": d,
        "mlx_dist": m,
    }


def _clean(r: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in r.stderr and "terminate called" not in r.stderr, r.stderr
    assert "PyTorch was not found" not in r.stderr


@pytest.mark.parametrize("kind", ["gguf", "mlx", "stock", "hf"])
def test_plain_model_runs_with_the_models_context(loose, kind):
    from edgekit.profiles.resolve import default_ctx, resolve

    trained = resolve(loose[kind])[0].format.max_context(loose[kind])
    r = cli("run", str(loose[kind]), "Hi", "-n", "6", *T1, "-v")
    assert r.returncode == 0, r.stderr  # the MLX run ended in abort (134) before
    _clean(r)
    assert f"ctx {default_ctx(trained)}," in r.stderr and "(6 tokens, prompt" in r.stderr
    assert r.stdout.endswith("\n")


def test_default_context_is_capped_as_llama_cpp_and_ollama():
    from edgekit.profiles.resolve import default_ctx

    assert default_ctx(131072) == 4096 and default_ctx(2048) == 2048 and default_ctx(None) == 4096


def test_model_flag_and_prompt_file(loose, tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("Hi there")
    a = cli("run", "-m", str(loose["gguf"]), "-f", str(f), "-n", "5", *T1)
    b = cli("run", str(loose["gguf"]), "-p", "Hi there", "-n", "5", *T1)
    assert a.returncode == b.returncode == 0 and a.stdout == b.stdout
    prompt = lambda r: r.stderr.split("prompt ")[1].split(")")[0]
    assert prompt(a) == prompt(b) != prompt(cli("run", str(loose["gguf"]), "Hi", "-n", "5", *T1))
    r = cli("run", str(loose["gguf"]), "Hi", "-p", "Hi", *T1)
    assert (
        r.returncode == 1
        and r.stderr.strip() == "edgekit: error: give the prompt once: as an argument, with -p or with -f FILE"
    )


def test_too_long_prompt_names_ctx(loose):
    r = cli("run", str(loose["gguf"]), "word " * 300, "--ctx", "64", *T1)
    assert r.returncode == 1 and "--ctx" in r.stderr and "Traceback" not in r.stderr
    r = cli("serve", str(loose["gguf"]), "--ctx", "4", *T1, "--port", str(free_port()))
    assert r.returncode == 1 and r.stderr.startswith("edgekit: error: --ctx 4 cannot hold an empty chat turn")


@pytest.mark.parametrize(
    "args, message",
    [
        (("-n", "0"), "-n 0: generate at least 1 token"),
        (("-n", "-5"), "-n -5: generate at least 1 token"),
        (("--temperature", "nan"), "--temperature nan: use a finite number >= 0"),
        (("--temperature", "inf"), "--temperature inf: use a finite number >= 0"),
        (("--temperature", "-1"), "--temperature -1.0: use a finite number >= 0"),
        (("--top-p", "0"), "--top-p 0.0: use a number in (0, 1]"),
        (("--min-p", "1.5"), "--min-p 1.5: use a number in [0, 1)"),
        (("--repeat-penalty", "0"), "--repeat-penalty 0.0: use a finite number > 0"),
    ],
)
def test_bad_values_are_refused(loose, args, message):
    r = cli("run", str(loose["gguf"]), "Hi", *args, *T1)
    assert r.returncode == 1 and r.stderr == f"edgekit: error: {message}" + r.stderr.split(message, 1)[1]
    assert r.stderr.count("\n") == 1


def test_n_minus_one_runs_to_the_context(loose):
    r = cli("run", str(loose["gguf"]), "Hi", "-n", "-1", "--ctx", "48", *T1)
    assert r.returncode == 0, r.stderr
    stats = r.stderr.strip().splitlines()[-1]
    prompt = int(stats.split("prompt ")[1].split(")")[0])
    assert f"({48 - prompt} tokens," in stats  # greedy random weights never end the turn: the context does


@pytest.mark.slow
def test_sampling_options_change_the_reply(loose):
    base = ("run", str(loose["gguf"]), "Hi", "-n", "12", "--temperature", "1", "--seed", "3", *T1)
    plain, again = cli(*base), cli(*base)
    assert plain.returncode == 0 and plain.stdout == again.stdout  # seeded: reproducible
    for extra in (("--top-k", "1"), ("--repeat-penalty", "5"), ("--min-p", "0.9")):
        r = cli(*base, *extra)
        assert r.returncode == 0 and r.stdout != plain.stdout, extra  # each option reaches the sampler
    greedy = cli("run", str(loose["gguf"]), "Hi", "-n", "12", *T1)
    assert cli(*base, "--top-k", "1").stdout == greedy.stdout  # top-k 1 is greedy


def test_bad_bytes_and_binary_stdin(loose):
    r = subprocess.run(
        [sys.executable, "-m", "edgekit.cli", "run", str(loose["gguf"]), "-p", b"\xff\xfehi", "-n", "3", *T1],
        capture_output=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=120,
    )
    assert r.returncode == 0 and b"not valid UTF-8" in r.stderr and b"Traceback" not in r.stderr
    r = subprocess.run(
        [sys.executable, "-m", "edgekit.cli", "run", str(loose["gguf"]), "-n", "3", *T1],
        input=b"\x00\xff\xfe\x80 binary\n\xc3\x28\n",
        capture_output=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=120,
    )
    assert r.returncode == 0 and b"Traceback" not in r.stderr and r.stderr.count(b">>> ") == 3


def test_output_to_a_full_disk(loose):
    with open("/dev/full", "w") as full:
        r = subprocess.run(
            [sys.executable, "-m", "edgekit.cli", "run", str(loose["gguf"]), "Hi", "-n", "3", *T1],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            timeout=120,
        )
    assert r.returncode == 1
    assert r.stderr.strip() == "edgekit: error: cannot write the reply to stdout (No space left on device)"


def test_history_outgrowing_the_context_drops_old_turns(loose):
    lines = ["hello there", "word " * 200, "short one", "and another", "and more", "still here", "one more", "last"]
    r = cli("run", str(loose["gguf"]), "--ctx", "64", "-n", "8", *T1, input="\n".join(lines) + "\n")
    assert r.returncode == 0, r.stderr
    assert "that message is" in r.stderr and "shorten it or start with a larger --ctx" in r.stderr
    assert "dropped the oldest" in r.stderr
    assert f", {len(lines) - 1} replies" in r.stderr  # every message but the refused one got a reply
    assert "(8 tokens, prompt" in r.stderr  # and the last one its whole -n


def test_verbose_after_the_command_is_a_summary(loose):
    r = cli("run", str(loose["gguf"]), "Hi", "-n", "2", *T1, "-v")
    assert r.returncode == 0
    assert "log lines (-vv shows them)" in r.stderr and len(r.stderr.splitlines()) < 10
    r2 = cli("-vv", "run", str(loose["gguf"]), "Hi", "-n", "2", *T1)
    assert len(r2.stderr.splitlines()) > 100  # llama.cpp's full log


def test_build_folder_says_what_it_picked(loose):
    from edgekit.builder.manifest import read_manifest

    first = read_manifest(loose["dist"]).artifacts[0].file
    r = cli("run", str(loose["dist"]), "Hi", "-n", "2", *T1)
    assert r.returncode == 0 and f"{first} (gguf" in r.stderr and "recommended" in r.stderr


def _wait_exit(proc: subprocess.Popen, timeout: float = 60) -> int:
    try:
        return proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_serve_plain_gguf_and_mlx_sigterm_exit_0(loose, tmp_path):
    s = start_server(loose["gguf"], tmp_path / "g.log", *T1)
    try:
        from edgekit.profiles.resolve import default_ctx, resolve

        assert s.health()["n_ctx"] == default_ctx(resolve(loose["gguf"])[0].format.max_context(loose["gguf"]))
        r = s.client().chat.completions.create(
            model=s.client().models.list().data[0].id, messages=[{"role": "user", "content": "Hi"}], max_tokens=4
        )
        assert r.choices[0].message.content is not None
    finally:
        assert s.stop() == 0
    m = start_server(loose["mlx"], tmp_path / "m.log")
    try:
        r = m.client().chat.completions.create(
            model=m.client().models.list().data[0].id, messages=[{"role": "user", "content": "Hi"}], max_tokens=4
        )
        assert r.usage.completion_tokens >= 1
    finally:
        code = m.stop()
    log = (tmp_path / "m.log").read_text()
    assert code == 0, log  # 134 (abort at interpreter exit) before
    assert "terminate called" not in log and "PyTorch was not found" not in log


def test_busy_port_is_one_line_exit_1(loose):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = cli("serve", str(loose["gguf"]), "--port", str(port), *T1)
    assert r.returncode == 1
    assert (
        r.stderr.strip() == f"edgekit: error: port {port} on 127.0.0.1 is in use (another server?); pass another --port"
    )


def test_version_targets_recipes_list(loose):
    from edgekit import __version__

    r = cli("--version")
    assert r.returncode == 0 and r.stdout.startswith(f"edgekit {__version__} (llama-cpp-python ")
    r = cli("targets")
    assert r.stdout.splitlines()[0].split() == [
        "TARGET",
        "ENGINE",
        "RECIPES",
        "THREADS",
        "CTX",
        "BUDGET",
        "DESCRIPTION",
    ]
    assert any(line.split()[0] == "pi5" for line in r.stdout.splitlines()[1:])
    r = cli("targets", "pi5")
    fields = dict(line.split(None, 1) for line in r.stdout.splitlines() if len(line.split(None, 1)) == 2)
    assert r.returncode == 0 and "runtime" in r.stdout and fields["memory_budget_gb"].strip() == "1.5"
    assert fields["quants_with_towers"].strip() == "iq4_xs-edge-lean, iq4_xs-edge, q4_0, q8_0, q4_k_m"
    assert cli("targets", "nope").returncode == 1
    r = cli("recipes")
    assert r.stdout.splitlines()[0].split() == ["RECIPE", "FORMAT", "QUANT", "DESCRIPTION"]
    r = cli("list", str(loose["dist"].parent.parent))
    head, *rows = r.stdout.splitlines()
    assert head.split() == ["NAME", "FORMAT", "QUANT", "SIZE", "MODIFIED"]
    assert rows[0].split()[:5] == [
        str(loose["dist"] / "tiny-gemma4-Q4_0.gguf"),
        "*",
        "gguf",
        "Q4_0",
        "%.1f" % ((loose["dist"] / "tiny-gemma4-Q4_0.gguf").stat().st_size / 1e6),
    ]


def test_one_meaning_per_short_flag():
    """Every short flag of every command means one thing (its parameter name), across the CLI."""
    import typer.main

    from edgekit.cli import app

    meaning: dict[str, set[str]] = {}

    def walk(cmd, path):
        for p in cmd.params:
            for o in getattr(p, "opts", []) + getattr(p, "secondary_opts", []):
                if o.startswith("-") and not o.startswith("--"):
                    meaning.setdefault(o, set()).add(p.name)
        for name, sub in getattr(cmd, "commands", {}).items():
            walk(sub, [*path, name])

    walk(typer.main.get_command(app), [])
    # the same concept under another Python name in one command is still one meaning
    same = {"-n": {"n_gen", "max_tokens"}, "-p": {"n_prompt", "prompt"}, "-m": {"model"}}
    for flag, names in meaning.items():
        assert names <= same.get(flag, names) and (len(names) == 1 or flag in same), (flag, names)
    assert meaning["-t"] == {"threads"} and meaning["-o"] == {"output"} and meaning["-d"] == {"depth"}
    assert meaning["-r"] == {"reps"} and meaning["-c"] == {"ctx"}
    assert {"-ub", "-fa", "-b", "-m", "-v", "-s", "-f"} <= set(meaning)
    r = cli("run", "-h")
    assert r.returncode == 0 and "--repeat-penalty" in r.stdout


def test_llama_bench_spellings_reach_the_knobs(tiny_ckpt, tmp_path):
    from edgekit.cli.options import knob_items
    from edgekit.core.errors import ConfigError

    assert knob_items(None, "128", None, "1") == ["n_ubatch=128", "flash_attn=on"]
    assert knob_items(["kv_type=f16"], None, "256,512", "0,1") == [
        "kv_type=f16",
        "n_batch=256,512",
        "flash_attn=off,on",
    ]
    with pytest.raises(ConfigError, match="n_ubatch is given twice"):
        knob_items(["n_ubatch=64"], "128")


@pytest.mark.slow
def test_mlx_run_exits_0_every_time(loose):
    """The abort at exit was a race (MLX's per-thread compile cache freed while the interpreter shut down):
    before the fix, 2 to 4 of 6 runs here ended in 134, so several runs are checked."""
    for _ in range(4):
        r = cli("run", str(loose["mlx"]), "Hi", "-n", "2")
        assert r.returncode == 0, r.stderr
        _clean(r)


def test_ctrl_c_in_a_one_shot_run_is_130(loose):
    """Outside the chat, Ctrl-C ends the run as any command (130), after the engine has stopped."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgekit.cli", "run", str(loose["gguf"]), "Hi", "-n", "-1", *T1],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    first = proc.stdout.read(8)  # the reply has started
    assert first
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.strip().endswith("edgekit: interrupted; partial files were removed") and "Traceback" not in err
