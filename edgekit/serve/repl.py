"""`edgekit run`: one prompt, or an interactive chat as `ollama run` and llama-cli behave.

The chat: line editing and history (readline, kept in ~/.cache/edgekit/chat_history), `/help`,
`/clear`, `/bye` handled here and never sent to the model; Ctrl-C during a reply stops that reply
only, Ctrl-C at an empty prompt or Ctrl-D ends the chat with its stats. A history that outgrows the
context loses its oldest turns (said on stderr); a message that cannot fit alone is refused and the
chat goes on. Replies go to stdout, everything else to stderr.
"""

from __future__ import annotations

import errno
import json
import math
import os
import queue
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional

from ..core.errors import BenchError, ConfigError, OutputError
from .chat import StreamSplitter

HELP = """Available commands:
  /clear        forget the conversation (the system prompt stays)
  /bye          end the chat (also Ctrl-D, or Ctrl-C at an empty prompt)
  /help, /?     this list
Ctrl-C during a reply stops that reply; Up/Down recall earlier lines.
"""
COMMANDS = ("/bye", "/clear", "/help", "/?")
HISTORY_FILE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "edgekit" / "chat_history"


# ---------------------------------------------------------------- checking what the user typed


def clean_text(s: str) -> tuple[str, bool]:
    """``s`` as valid UTF-8 text, and whether anything had to be replaced. Command-line arguments that
    are not UTF-8 arrive as lone surrogates (surrogateescape), which no tokenizer can encode: each such
    byte becomes U+FFFD, as a UTF-8 decoder with errors="replace" makes of it."""
    try:
        s.encode("utf-8")
        return s, False
    except UnicodeEncodeError:
        pass
    try:
        raw = s.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # surrogates no byte decoded into (e.g. "\ud800" typed as text)
        raw = s.encode("utf-8", "replace")
    return raw.decode("utf-8", "replace"), True


def max_tokens(n: int) -> Optional[int]:
    """-n as llama-cli reads it: N > 0 tokens at most, -1 until the end of the turn or of the context
    (None); 0 and other negatives are refused."""
    if n == -1:
        return None
    if n < 1:
        raise ConfigError(f"-n {n}: generate at least 1 token, or -1 for no limit but the context")
    return n


def check_sampling(temperature: float, top_p: float, top_k: int, min_p: float, repeat_penalty: float) -> None:
    """The bounds `edgekit serve` applies to a request's sampling fields, for the command line."""
    if not math.isfinite(temperature) or temperature < 0:
        raise ConfigError(f"--temperature {temperature}: use a finite number >= 0 (0 is greedy)")
    if not math.isfinite(top_p) or not 0 < top_p <= 1:
        raise ConfigError(f"--top-p {top_p}: use a number in (0, 1] (1 is off)")
    if top_k < 0:
        raise ConfigError(f"--top-k {top_k}: use 0 (off) or more")
    if not math.isfinite(min_p) or not 0 <= min_p < 1:
        raise ConfigError(f"--min-p {min_p}: use a number in [0, 1) (0 is off)")
    if not math.isfinite(repeat_penalty) or repeat_penalty <= 0:
        raise ConfigError(f"--repeat-penalty {repeat_penalty}: use a finite number > 0 (1 is off)")


def read_prompt(prompt: Optional[str], positional: Optional[str], file: Optional[Path]) -> Optional[str]:
    """One prompt from -p, the positional argument or -f FILE (at most one of them)."""
    given = [x for x in (prompt, positional, file) if x is not None]
    if len(given) > 1:
        raise ConfigError("give the prompt once: as an argument, with -p or with -f FILE")
    if file is None:
        return prompt if prompt is not None else positional
    try:
        raw = sys.stdin.buffer.read() if str(file) == "-" else Path(file).read_bytes()
    except OSError as e:
        raise ConfigError(f"-f {file}: cannot read it ({e.strerror or e})") from None
    return raw.decode("utf-8", "replace")


# ---------------------------------------------------------------- writing


class Writer:
    """stdout and stderr writes that end in one OutputError line, never a traceback (a full disk, a
    closed pipe)."""

    def __init__(self, out: Any = None, err: Any = None):
        self._out, self._err = out or sys.stdout, err or sys.stderr

    def out(self, text: str) -> None:
        try:
            self._out.write(text)
            self._out.flush()
        except OSError as e:
            _silence(self._out)
            what = "the reader went away" if e.errno == errno.EPIPE else e.strerror or str(e)
            raise OutputError(f"cannot write the reply to stdout ({what})") from None

    def err(self, text: str) -> None:
        try:
            self._err.write(text)
            self._err.flush()
        except OSError:
            pass  # nowhere left to say it


def _silence(stream: Any) -> None:
    """Point the file descriptor at /dev/null so the interpreter's final flush cannot fail again."""
    try:
        fd = stream.fileno()
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, fd)
        os.close(null)
    except (OSError, ValueError):
        pass


# ---------------------------------------------------------------- one reply


@dataclass
class Chat:
    session: Any
    sampling: Any
    think: Optional[bool]
    w: Writer
    system: Optional[str] = None
    history: list[dict[str, Any]] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    turns: int = 0
    interactive: bool = False  # Ctrl-C stops the reply only; in a one-shot run it ends the run (130)

    def __post_init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self.history = [{"role": "system", "content": self.system}] if self.system else []

    def _fit(self) -> Optional[tuple[list[int], int]]:
        """The prompt's ids, dropping the oldest turns while they leave less than a full reply's room
        (-n, at most half the context); None when the newest message alone leaves no room at all."""
        s, dropped = self.session, 0
        head = 1 if self.history and self.history[0]["role"] == "system" else 0
        room = min(self.sampling.max_tokens or s.n_ctx, s.n_ctx // 2)
        while True:
            ids, prefix = s.prompt(self.history, enable_thinking=self.think)
            if len(ids) <= s.n_ctx - room or (len(self.history) - head <= 1 and len(ids) < s.n_ctx - 1):
                break
            if len(self.history) - head <= 1:
                return None
            # the oldest user turn and what answered it
            del self.history[head]
            while len(self.history) > head + 1 and self.history[head]["role"] != "user":
                del self.history[head]
            dropped += 1
        if dropped:
            self.w.err(
                f"edgekit: the conversation outgrew the context ({s.n_ctx} tokens): dropped the "
                f"oldest {dropped} turn(s)\n"
            )
        return ids, prefix

    def reply(self, text: str) -> bool:
        """Send one user message and stream the reply; False when it was refused (too long)."""

        text, replaced = clean_text(text)
        if replaced:
            self.w.err("edgekit: warning: the input was not valid UTF-8; those bytes were replaced by U+FFFD\n")
        self.history.append({"role": "user", "content": text})
        fitted = self._fit()
        if fitted is None:
            n = len(self.session.prompt(self.history, enable_thinking=self.think)[0])
            self.history.pop()
            self.w.err(
                f"edgekit: that message is {n} tokens with the chat template; the context is "
                f"{self.session.n_ctx} tokens: shorten it or start with a larger --ctx\n"
            )
            return False
        ids, prefix = fitted
        sampling = self.sampling
        if sampling.max_tokens is None:  # -n -1: until the end of the turn or of the context
            sampling = replace(sampling, max_tokens=self.session.n_ctx)
        split, done, stopped = StreamSplitter(), None, False
        emit = {"content": self.w.out, "thinking": self.w.err}
        events: queue.SimpleQueue[Any] = queue.SimpleQueue()
        req = self.session.request(ids, sampling, prefix, events.put)
        self.session.engine.submit(req)
        try:
            try:
                while True:
                    e = events.get()
                    if e.kind == "done":
                        done = e
                        break
                    for kind, piece in split.feed(e.text):
                        emit.get(kind, self.w.err)(piece)
            except KeyboardInterrupt:  # stops this reply only: the engine ends it at its next step
                stopped = True
                req.cancel()
                while done is None:  # its stats, and an idle engine for the next message
                    e = events.get()
                    done = e if e.kind == "done" else None
                if not self.interactive:
                    raise
        except BaseException:
            req.cancel()
            raise
        for kind, piece in split.rest():
            emit.get(kind, self.w.err)(piece)
        reply = split.finish()
        msg: dict[str, Any] = {"role": "assistant", "content": reply.content}
        if reply.tool_calls and not stopped:
            msg["tool_calls"] = reply.openai_tool_calls()
            self.w.out("\n" + "\n".join(json.dumps(c["function"]) for c in msg["tool_calls"]))
        self.history.append(msg)
        self.w.out("\n")
        if stopped:
            self.w.err("edgekit: reply stopped (Ctrl-C)\n")
        elif done is not None and done.finish_reason == "error":
            raise BenchError(f"generation failed: {done.text}")
        if done is not None and done.stats:
            self.stats = done.stats
        self.turns += 1
        return True


# ---------------------------------------------------------------- the loop


def _readline_setup() -> Callable[[], None]:
    """Line editing and a history file when stdin is a terminal; returns the function that saves it."""
    try:
        # deferred: importing readline turns on line editing for input(): only the interactive chat wants it
        import readline
    except ImportError:  # e.g. a Python built without it: plain input() still works
        return lambda: None
    try:
        readline.read_history_file(HISTORY_FILE)
    except OSError:
        pass
    readline.set_history_length(1000)
    readline.parse_and_bind("tab: complete")
    readline.set_completer(
        lambda text, i: ([c for c in COMMANDS if c.startswith(text)] + [None])[i] if text.startswith("/") else None
    )

    def save() -> None:
        try:
            HISTORY_FILE.parent.mkdir(parents=True, exist_ok=True)
            readline.write_history_file(HISTORY_FILE)
        except OSError:
            pass

    return save


def _line_buffer() -> str:
    try:
        # deferred: readline, as _readline_setup() above
        import readline

        return readline.get_line_buffer()
    except ImportError:
        return ""


def interactive(chat: Chat, banner: str) -> None:
    """Read lines until /bye, Ctrl-D, or Ctrl-C at an empty prompt. A terminal gets readline, the
    banner and Ollama's `>>> ` prompt; piped stdin is read as UTF-8 bytes (invalid ones replaced)."""
    tty = sys.stdin.isatty()
    chat.interactive = True
    save = _readline_setup() if tty else (lambda: None)
    if tty:
        chat.w.err(banner)
    try:
        while True:
            if tty:
                try:
                    line = input(">>> ")
                except EOFError:
                    chat.w.err("\n")
                    return
                except KeyboardInterrupt:
                    if _line_buffer().strip():
                        chat.w.err("\n")  # Ctrl-C with text typed: drop the line, as a shell does
                        continue
                    chat.w.err("\n")
                    return
            else:
                chat.w.err(">>> ")
                raw = sys.stdin.buffer.readline()
                if not raw:
                    return
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
            cmd = line.strip()
            if not cmd:
                continue
            if cmd.split()[0] in COMMANDS:
                word = cmd.split()[0]
                if word == "/bye":
                    return
                if word == "/clear":
                    chat.clear()
                    chat.w.err("Cleared the conversation.\n")
                else:
                    chat.w.err(HELP)
                continue
            if cmd.startswith("/") and " " not in cmd:
                chat.w.err(
                    f"Unknown command {cmd!r}; type /help for the list (a message starting with / "
                    "needs a space in it or a leading space)\n"
                )
                continue
            chat.reply(line)
    finally:
        save()
