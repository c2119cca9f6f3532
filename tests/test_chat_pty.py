"""The interactive chat in a real terminal (a pty): the banner, /help and /clear handled here, Up
recalling the last line (readline), Ctrl-C stopping a reply but not the chat, Ctrl-C with text typed
dropping the line, and Ctrl-D or Ctrl-C at an empty prompt ending it with the stats, exit 0."""

from __future__ import annotations

import os
import pty
import select
import shutil
import sys
import time

import pytest
from serve_fixture import REPO


@pytest.fixture(scope="module")
def gguf(tiny_ckpt, tmp_path_factory):
    from edgekit.builder.pipeline import build

    d = build(str(tiny_ckpt), target="pi5", quants=["q4_0"], out=tmp_path_factory.mktemp("dist"))
    out = tmp_path_factory.mktemp("loose") / "tiny-Q4_0.gguf"
    shutil.copy(d / "tiny-gemma4-Q4_0.gguf", out)
    return out


class Term:
    def __init__(self, argv: list[str], home):
        env = {**os.environ, "PYTHONPATH": str(REPO), "XDG_CACHE_HOME": str(home), "TERM": "xterm"}
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: a session leader with the pty as its terminal, as a shell starts it
            os.execve(sys.executable, [sys.executable, "-m", "edgekit.cli", *argv], env)
        self.seen = ""

    def read_until(self, text: str, timeout: float = 60) -> str:
        deadline, start = time.monotonic() + timeout, len(self.seen)
        while text not in self.seen[start:]:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {text!r} after {timeout} s; the terminal shows:\n{self.seen[-2000:]}")
            if select.select([self.fd], [], [], left)[0]:
                try:
                    chunk = os.read(self.fd, 65536)
                except OSError:  # EIO: the child closed the terminal
                    chunk = b""
                if not chunk:
                    raise AssertionError(f"the chat ended before {text!r}:\n{self.seen[-2000:]}")
                self.seen += chunk.decode("utf-8", "replace")
        return self.seen[start:]

    def send(self, data: str) -> None:
        os.write(self.fd, data.encode())

    def wait(self, timeout: float = 30) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:  # keep draining, or a full pty buffer blocks the child's last writes
                if select.select([self.fd], [], [], 0.1)[0]:
                    self.seen += os.read(self.fd, 65536).decode("utf-8", "replace")
            except OSError:
                pass
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                return os.waitstatus_to_exitcode(status)
        os.kill(self.pid, 9)
        os.waitpid(self.pid, 0)
        raise AssertionError(f"the chat did not end:\n{self.seen[-2000:]}")


def test_chat_in_a_terminal(gguf, tmp_path):
    # -n -1: greedy random weights never end a turn, so a reply runs until Ctrl-C (or the context)
    t = Term(["run", str(gguf), "-t", "1", "-n", "-1", "--ctx", "4096"], tmp_path)
    banner = t.read_until(">>> ")
    assert "/help" in banner and "Ctrl-D" in banner and "/bye" in banner
    t.send("/help\r")
    assert "Available commands" in t.read_until(">>> ")
    t.send("Hi\r")
    time.sleep(1.0)  # well into the reply (≈100+ tokens a second here)
    t.send("\x03")
    stopped = t.read_until(">>> ", timeout=30)
    assert "reply stopped" in stopped
    t.send("\x1b[A")  # Up: readline recalls "Hi", no ^[[A
    recalled = t.read_until("Hi", timeout=10)
    assert "^[[A" not in recalled
    t.send("\x03")  # Ctrl-C with text typed drops the line; the chat goes on
    t.read_until(">>> ", timeout=10)
    t.send("/clear\r")
    assert "Cleared" in t.read_until(">>> ")
    t.send("\x04")  # Ctrl-D at an empty prompt: the end, with the stats
    assert t.wait() == 0
    assert "peak RSS" in t.seen and "Traceback" not in t.seen
    assert (tmp_path / "edgekit" / "chat_history").read_text().splitlines()[-1] == "/clear"


def test_ctrl_c_at_an_empty_prompt_and_bye(gguf, tmp_path):
    t = Term(["run", str(gguf), "-t", "1", "-n", "4"], tmp_path)
    t.read_until(">>> ")
    t.send("Hello\r")
    t.read_until(">>> ")
    # A person's Ctrl-C comes after readline is waiting. Sent the instant the prompt was drawn, it was lost
    # once under a loaded full make test (the chat kept waiting); the likely cause, not proven, is a
    # signal landing before readline's select() starts.
    time.sleep(0.5)
    t.send("\x03")
    assert t.wait() == 0 and "(4 tokens, prompt" in t.seen
    t2 = Term(["run", str(gguf), "-t", "1", "-n", "4"], tmp_path)
    t2.read_until(">>> ")
    t2.send("/bye\r")
    assert t2.wait() == 0
