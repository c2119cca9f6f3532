"""``edgekit serve``'s process: the listening socket and uvicorn, with its limits and a shutdown that
ends every stream properly (the routes are in http.py)."""

from __future__ import annotations

import errno
import math
import signal
import socket
import threading
from typing import Any, Optional

from ..core.errors import ConfigError
from .guard import Policy, guarded_h11, is_loopback
from .http import App, make_app
from .session import Session


def bind(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    """The listening socket, or one line saying why not (a busy port was uvicorn's raw Errno 98).
    ``reuse_port``: share the port with another server that also asked (SO_REUSEPORT), so that ``deploy
    --serve`` starts the new server while the old one still answers, and stops the old one after."""
    if not host:
        raise ConfigError("--host is empty: give an address (127.0.0.1: this machine only; 0.0.0.0: every interface)")
    if not 0 < port < 65536:
        raise ConfigError(f"--port {port}: give a TCP port from 1 to 65535")
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[
            0
        ]
    except (socket.gaierror, UnicodeError) as e:
        raise ConfigError(f"--host {host!r}: not an address this machine can listen on ({e})") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port and hasattr(socket, "SO_REUSEPORT"):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(addr)
        sock.listen(128)
    except OSError as e:
        sock.close()
        what = "is in use (another server?)" if e.errno == errno.EADDRINUSE else f"cannot be bound ({e.strerror or e})"
        raise ConfigError(f"port {port} on {host} {what}; pass another --port") from None
    sock.set_inheritable(True)
    return sock


def serve(
    session: Session,
    host: str = "127.0.0.1",
    port: int = 8080,
    grace_s: float = 30.0,
    policy: Optional[Policy] = None,
    strict_model: bool = False,
    max_prompt_chars: Optional[int] = None,
    announce: Any = None,
    reuse_port: bool = False,
) -> None:
    """Run until SIGTERM/SIGINT: stop accepting, let in-flight requests finish for up to ``grace_s``, then
    end them in the engine (each stream still gets its finish chunk and [DONE]), free the engine, return
    (the CLI exits 0)."""

    # deferred: uvicorn loads only when serving
    import uvicorn

    if not (math.isfinite(grace_s) and grace_s >= 0):
        raise ConfigError(f"--grace {grace_s}: give the seconds in-flight requests may finish, 0 or more")
    policy = policy or Policy(loopback_only=is_loopback(host))
    sock = bind(host, port, reuse_port)
    app = make_app(session, policy, strict_model, max_prompt_chars)
    api: App = app.app.state.api
    lim = policy.limits
    # uvicorn's own limits: header size (h11), keep-alive, concurrent connections; its graceful timeout
    # only backs ours up (it cancels tasks, which cut streams with a CancelledError traceback).
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=grace_s + 10,
        http=guarded_h11(lim.header_timeout_s),
        h11_max_incomplete_event_size=lim.max_header_bytes,
        timeout_keep_alive=lim.keep_alive_s,
        limit_concurrency=lim.max_connections,
    )

    class _Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            if not self.should_exit:
                t = threading.Timer(grace_s, api.cancel_all)
                t.daemon = True
                t.start()
            super().handle_exit(sig, frame)

    server = _Server(config)
    # uvicorn restores the previous handlers after its graceful shutdown and raises the signal again,
    # which with the default SIGTERM action kills the process (exit 143) after a clean stop. A no-op
    # previous handler turns that re-raise into nothing, so a clean stop exits 0.
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        if announce:
            announce()
        server.run(sockets=[sock])
    finally:
        for sig, h in previous.items():
            signal.signal(sig, h)
        sock.close()
        api.pool.shutdown(wait=False, cancel_futures=True)
        session.close()
