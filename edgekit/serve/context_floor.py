"""The least context a chat can use: the chat template around a one-token message, plus one reply
token. `serve --ctx 1` used to start a server that refused every request; it is refused at start."""

from __future__ import annotations

from typing import Any

from ..core.errors import ConfigError


def shortest_chat(session: Any) -> int:
    """Tokens of the shortest chat prompt this session's template renders (one user message "x")."""
    ids, _ = session.prompt([{"role": "user", "content": "x"}])
    return len(ids)


def check_context(session: Any) -> None:
    """ConfigError when ``session.n_ctx`` cannot hold the shortest prompt and one reply token."""
    need = shortest_chat(session) + 1
    if session.n_ctx < need:
        raise ConfigError(f"--ctx {session.n_ctx} cannot hold a chat: the shortest prompt is {need - 1} tokens (the "
                          f"template around a one-token message) and a reply needs one more; use at least {need}, "
                          "or leave --ctx out for the target's")
