"""What stands between a client and ``edgekit serve``'s routes: an ASGI middleware and uvicorn's limits.

Defaults follow llama-server and Ollama:
- API key (llama-server's ``--api-key``): ``Authorization: Bearer KEY`` or ``X-Api-Key: KEY``, compared
  with hmac.compare_digest; 401 without it. ``/health`` stays open, as llama-server's does.
- Origins (Ollama's OLLAMA_ORIGINS): a request carrying an ``Origin`` header is refused (403) unless the
  origin is this machine (http(s)://localhost, 127.0.0.1, [::1], any port) or listed with
  ``--allowed-origin``; allowed ones get CORS headers and their preflight (OPTIONS) a 204. A browser
  always sends Origin on a cross-origin POST, so a web page cannot drive the server.
- Host (Ollama's allowedHostsMiddleware, against DNS rebinding): when bound to loopback, the Host header
  must name a loopback address or localhost, else 403.
- Body: at most ``max_body`` bytes, refused on Content-Length before reading and counted while reading
  (413); the whole body must arrive within ``body_timeout_s`` (408): a stalled body holds nothing.

uvicorn has no limit on how long request headers may take (slowloris: 40 of 40 connections were still
open after 10 s), so ``GuardedH11`` closes a connection whose headers are not complete within
``header_timeout_s``. uvicorn's own limits are used for the rest: h11's incomplete-event size (headers),
``timeout_keep_alive`` and ``limit_concurrency``.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlsplit

from ..core.errors import ConfigError

log = logging.getLogger("edgekit.serve.http")

OPEN_PATHS = frozenset({"/health"})  # answer without a key, as llama-server's /health does
LOCAL_NAMES = frozenset({"localhost"})
CORS_HEADERS = (
    "Authorization, Content-Type, X-Api-Key, OpenAI-Organization, OpenAI-Project, X-Stainless-Arch, "
    "X-Stainless-Lang, X-Stainless-OS, X-Stainless-Package-Version, X-Stainless-Runtime, "
    "X-Stainless-Runtime-Version, X-Stainless-Retry-Count, X-Stainless-Timeout, User-Agent"
)


@dataclass
class Limits:
    max_body: int = 8 << 20  # bytes; a 4,096-token prompt is ≈16 KB of JSON
    bodies_per_max: int = 4  # bodies held at once, in max_body units (64 connections × 8 MiB
    # would be 512 MiB beside a 1.2 GB model): 503 beyond
    body_timeout_s: float = 30.0  # the whole body, from the headers' end
    header_timeout_s: float = 10.0
    keep_alive_s: int = 5
    max_connections: int = 64  # uvicorn's limit_concurrency: 503 beyond it
    max_header_bytes: int = 64 << 10  # h11_max_incomplete_event_size


@dataclass
class Policy:
    api_key: Optional[str] = None
    origins: tuple[str, ...] = ()  # extra allowed origins; "*" allows any
    loopback_only: bool = True  # bound to loopback: check the Host header
    limits: Limits = field(default_factory=Limits)


def read_api_key(key: Optional[str], key_file: Optional[Path]) -> Optional[str]:
    """The key from ``--api-key`` or the first line of ``--api-key-file``; ConfigError if unusable."""

    if key is not None and key_file is not None:
        raise ConfigError("give --api-key or --api-key-file, not both")
    if key_file is not None:
        try:
            lines = Path(key_file).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"--api-key-file {key_file}: unreadable ({getattr(e, 'strerror', None) or e})") from None
        key = lines[0] if lines else ""
    if key is not None:
        key = key.strip()
        if not key or any(ord(c) < 33 or ord(c) > 126 for c in key):
            raise ConfigError("the API key is empty or holds spaces or non-ASCII characters: use printable ASCII")
    return key


def is_loopback(host: str) -> bool:
    h = host.strip("[]").lower()
    if h in LOCAL_NAMES or h.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def _host_of(value: str) -> str:
    """The host of a Host header: ``name:port``, ``[v6]:port`` or a bare name."""
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def origin_allowed(origin: str, extra: tuple[str, ...]) -> bool:
    if "*" in extra or origin in extra:
        return True
    u = urlsplit(origin)
    return u.scheme in ("http", "https") and is_loopback(u.hostname or "")


def _json(status: int, message: str, code: str, headers: Optional[list[tuple[bytes, bytes]]] = None) -> tuple:
    body = json.dumps({"error": {"message": message, "type": code, "code": status}}).encode()
    return (
        status,
        [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *(headers or [])],
        body,
    )


class Guard:
    """The ASGI middleware: host, origin and key checks, the bounded body, a log line per request (-v)."""

    def __init__(self, app: Any, policy: Policy):
        self.app, self.p = app, policy
        self.key = policy.api_key.encode() if policy.api_key else None
        self.held = 0  # body bytes held by requests in progress (declared or read)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        status = [0]
        cors: list[tuple[bytes, bytes]] = []
        origin = headers.get("origin")
        if origin is not None and origin_allowed(origin, self.p.origins):
            cors = [(b"access-control-allow-origin", origin.encode("latin-1")), (b"vary", b"Origin")]

        async def respond(answer: tuple) -> None:
            code, hdrs, body = answer
            status[0] = code
            await send({"type": "http.response.start", "status": code, "headers": hdrs + cors})
            await send({"type": "http.response.body", "body": body})

        async def send_cors(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                if cors:
                    message = {**message, "headers": [*message.get("headers", []), *cors]}
            await send(message)

        held = [0]
        try:
            refusal = self._refusal(scope, headers, origin)
            if refusal is not None:
                return await respond(refusal)
            if scope["method"] == "OPTIONS" and origin is not None:  # a preflight from an allowed origin
                return await respond(
                    (
                        204,
                        [
                            (b"access-control-allow-methods", b"GET, POST, OPTIONS"),
                            (b"access-control-allow-headers", CORS_HEADERS.encode()),
                            (b"access-control-max-age", b"600"),
                        ],
                        b"",
                    )
                )
            if scope["method"] in ("POST", "PUT", "PATCH"):
                body = await self._read_body(headers, receive, held)
                if isinstance(body, tuple):
                    return await respond(body)
                receive = _replay(body, receive)
            await self.app(scope, receive, send_cors)
        finally:
            self.held -= held[0]
            if log.isEnabledFor(logging.INFO):
                client = scope.get("client") or ("-", 0)
                log.info(
                    "%s %s %s %d %.0f ms",
                    client[0],
                    scope["method"],
                    scope["path"],
                    status[0],
                    (time.perf_counter() - t0) * 1e3,
                )

    def _refusal(self, scope: dict, headers: dict[str, str], origin: Optional[str]) -> Optional[tuple]:
        if self.p.loopback_only and not is_loopback(_host_of(headers.get("host", "localhost"))):
            return _json(
                403,
                f"Host {headers.get('host')!r} is not this machine; this server is bound to "
                "loopback and answers only to localhost names (DNS rebinding guard)",
                "forbidden",
            )
        if origin is not None and not origin_allowed(origin, self.p.origins):
            return _json(
                403,
                f"origin {origin!r} is not allowed; start the server with --allowed-origin "
                f"{origin} to let that page use it",
                "forbidden",
            )
        if self.key is not None and scope["path"] not in OPEN_PATHS and scope["method"] != "OPTIONS":
            given = headers.get("x-api-key") or ""
            auth = headers.get("authorization", "")
            if auth[:7].lower() == "bearer ":
                given = auth[7:].strip()
            if not hmac.compare_digest(given.encode("utf-8", "replace"), self.key):
                return _json(
                    401,
                    "invalid or missing API key (Authorization: Bearer KEY)",
                    "invalid_api_key",
                    [(b"www-authenticate", b"Bearer")],
                )
        return None

    def _hold(self, held: list[int], n: int) -> bool:
        """Count ``n`` more body bytes against the bound on bodies held at once; False if over it."""
        if n > held[0]:
            if self.held + n - held[0] > self.p.limits.max_body * self.p.limits.bodies_per_max:
                return False
            self.held += n - held[0]
            held[0] = n
        return True

    async def _read_body(self, headers: dict[str, str], receive: Any, held: list[int]) -> Any:
        """The whole body (bytes), or the error answer: 413 over the limit (on Content-Length before
        reading, and while reading when it is absent or wrong), 408 when it does not arrive in time,
        503 when other requests' bodies already hold the memory bodies may take."""
        lim = self.p.limits
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > lim.max_body:
            return _json(
                413,
                f"the request body is {int(declared):,} bytes; this server takes at most "
                f"{lim.max_body:,} (--max-body-mb)",
                "request_too_large",
            )
        busy = _json(
            503,
            "server busy: other requests' bodies hold the memory set aside for bodies; retry after 1 s",
            "server_busy",
            [(b"retry-after", b"1"), (b"connection", b"close")],
        )
        if declared is not None and declared.isdigit() and not self._hold(held, int(declared)):
            return busy
        chunks, n = [], 0
        deadline = time.monotonic() + lim.body_timeout_s
        while True:
            left = deadline - time.monotonic()
            try:
                message = await asyncio.wait_for(receive(), timeout=max(left, 0.001))
            except TimeoutError:
                return _json(
                    408,
                    f"the request body did not arrive within {lim.body_timeout_s:g} s",
                    "request_timeout",
                    [(b"connection", b"close")],
                )
            if message["type"] == "http.disconnect":
                return _json(400, "the client went away while sending the body", "invalid_request_error")
            piece = message.get("body", b"")
            n += len(piece)
            if n > lim.max_body:
                return _json(
                    413,
                    f"the request body is over {lim.max_body:,} bytes, this server's limit (--max-body-mb)",
                    "request_too_large",
                    [(b"connection", b"close")],
                )
            if not self._hold(held, n):
                return busy
            chunks.append(piece)
            if not message.get("more_body", False):
                return b"".join(chunks)


def _replay(body: bytes, receive: Any) -> Any:
    sent = False

    async def again() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # then the real stream: http.disconnect when the client goes

    return again


def guarded_h11(header_timeout_s: float) -> Any:
    """uvicorn's h11 protocol, closing a connection whose request headers are not complete within
    ``header_timeout_s`` of its opening or of the previous response's end (slowloris)."""
    # deferred: uvicorn and h11 load only when serving
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class GuardedH11(H11Protocol):
        def _arm(self) -> None:
            self._header_timer = self.loop.call_later(header_timeout_s, self._headers_late)

        def _headers_late(self) -> None:
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.close()

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._header_timer.cancel()
            self._arm()

        def connection_lost(self, exc: Optional[Exception]) -> None:
            self._header_timer.cancel()
            super().connection_lost(exc)

    return GuardedH11
