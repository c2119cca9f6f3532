"""`edgekit serve`'s start and stop: bad flags as one line before the model loads, SIGTERM with a short
grace mid-stream, and the prefix cache's file (keyed by the artifact's sha256, never another file)."""

from __future__ import annotations

import json
import signal
import socket
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from serve_fixture import cli, free_port, start_server

THREADS = ("--threads", "1")
SYSTEM = "You are a terse assistant. Answer in one line."


@pytest.fixture(scope="module")
def dist(tiny_ckpt, tmp_path_factory):
    from edgekit.builder.pipeline import build

    return build(str(tiny_ckpt), target="pi5", quants=["q8_0"], out=tmp_path_factory.mktemp("dist"))


def one_line_error(r, *needles):
    err = r.stderr.strip()
    assert r.returncode == 1, (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr and len(err.splitlines()) == 1, r.stderr[-2000:]
    assert err.startswith("edgekit: error: ")
    for n in needles:
        assert n in err, err
    return err


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--grace", "-5"], "--grace -5"),
        (["--grace", "nan"], "--grace nan"),
        (["--grace", "inf"], "--grace inf"),
        (["--port", "70000"], "--port 70000"),
        (["--port", "-1"], "--port -1"),
        (["--port", "0"], "--port 0"),
        (["--host", ""], "--host is empty"),
        (["--host", "no such host.invalid"], "--host"),
        (["--max-body-mb", "0"], "--max-body-mb"),
        (["--body-timeout", "nan"], "--body-timeout"),
        (["--header-timeout", "-1"], "--header-timeout"),
        (["--alias", " "], "--alias"),
        (["--api-key", "two words"], "API key"),
        (["--api-key-file", "/nonexistent/key"], "--api-key-file"),
    ],
)
def test_bad_flags_are_one_line(dist, args, needle):
    t0 = time.monotonic()
    r = cli("serve", str(dist), *args, *THREADS, timeout=60)
    one_line_error(r, needle)
    assert time.monotonic() - t0 < 30


def test_a_busy_port_is_one_line(dist):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        r = cli("serve", str(dist), "--port", str(s.getsockname()[1]), *THREADS, timeout=60)
    one_line_error(r, "on 127.0.0.1 is in use (another server?); pass another --port")


def _raw_stream(port, body: dict, timeout=60) -> tuple[socket.socket, bytes]:
    data = json.dumps(body).encode()
    c = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    c.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % len(data) + data
    )
    return c


def test_sigterm_mid_stream_with_grace_1_ends_the_stream_properly(dist, tmp_path):
    """A stream that would run far past the grace: at the grace its generation is ended in the engine,
    so the client still gets a finish chunk and [DONE]; no CancelledError traceback; exit 0."""
    s = start_server(dist, tmp_path / "log", "--ctx", "8192", "--grace", "1", *THREADS)
    c = _raw_stream(
        s.port,
        {
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 8000,
            "ignore_eos": True,
            "stream": True,
            "temperature": 0,
        },
    )
    got = b""
    while b"data: " not in got:
        got += c.recv(65536)
    t0 = time.monotonic()
    s.proc.send_signal(signal.SIGTERM)
    c.settimeout(20)
    while not got.rstrip().endswith(b"0\r\n\r\n") and time.monotonic() - t0 < 20:
        piece = c.recv(65536)
        if not piece:
            break
        got += piece
    c.close()
    assert s.proc.wait(30) == 0
    took = time.monotonic() - t0
    text = got.decode("utf-8", "replace")
    events = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]
    finishes = [ch["finish_reason"] for e in events for ch in e["choices"] if ch["finish_reason"]]
    assert finishes == ["cancelled"] and "data: [DONE]" in text
    assert 0.8 < took < 15, took
    log = s.log.read_text()
    assert "Traceback" not in log and "CancelledError" not in log, log[-3000:]


# ---------------------------------------------------------------- --prefix-cache


def _chat(s):
    r = s.client().chat.completions.create(
        model="m",
        max_tokens=2,
        temperature=0,
        messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": "What is 2 + 2?"}],
    )
    return r.usage.prompt_tokens_details.cached_tokens


def test_prefix_cache_round_trip_is_keyed_by_the_artifact(dist, tmp_path):
    from edgekit.builder.manifest import read_manifest

    cache = tmp_path / "prefix.bin"
    s = start_server(dist, tmp_path / "log1", "--ctx", "512", "--prefix-cache", str(cache), *THREADS)
    try:
        assert _chat(s) == 0
    finally:
        assert s.stop() == 0
    meta = json.loads((tmp_path / "prefix.bin.edgekit.json").read_text())
    sha = read_manifest(dist).artifacts[0].sha256
    assert meta["artifact_sha256"] == sha and cache.stat().st_size > 0
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    s = start_server(dist, tmp_path / "log2", "--ctx", "512", "--prefix-cache", str(cache), *THREADS)
    try:
        assert _chat(s) > 0  # loaded: the system turn was not prefilled again
    finally:
        assert s.stop() == 0
    # the same file claimed by another artifact: refused before serving, left as it was
    before = cache.read_bytes()
    (tmp_path / "prefix.bin.edgekit.json").write_text(json.dumps({**meta, "artifact_sha256": "ab" * 32}))
    r = cli("serve", str(dist), "--port", str(free_port()), "--prefix-cache", str(cache), *THREADS, timeout=120)
    one_line_error(r, "saved by artifact sha256 abababababab", sha[:12])
    assert cache.read_bytes() == before


def test_prefix_cache_refuses_a_folder_and_an_unrelated_file(dist, tmp_path):
    r = cli("serve", str(dist), "--port", str(free_port()), "--prefix-cache", str(tmp_path), *THREADS, timeout=120)
    one_line_error(r, "a folder")
    assert not list(tmp_path.iterdir())  # no stray .tmp
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    r = cli("serve", str(dist), "--port", str(free_port()), "--prefix-cache", str(notes), *THREADS, timeout=120)
    one_line_error(r, "not an edgekit prefix cache", "not overwriting it")
    assert notes.read_text() == "my notes\n" and sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    r = cli(
        "serve",
        str(dist),
        "--port",
        str(free_port()),
        "--prefix-cache",
        str(tmp_path / "no" / "x.bin"),
        *THREADS,
        timeout=120,
    )
    one_line_error(r, "does not exist")
