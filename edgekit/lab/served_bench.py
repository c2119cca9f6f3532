"""The client's side of ``edgekit lab run --served`` (and of benchmarks/ that time a server): requests
timed as a client sees them. TTFT (request sent → the first streamed text) and decode t/s (streamed tokens
after the first over their time); ``bench_served`` puts them in a results Record marked ``via = "served"``.
"""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Optional

from ..backends.runner import mean_sd
from ..core.errors import ConfigError, LabError
from ..results import Record, utc_now


class NoServer(LabError):
    """Nothing answers at the URL (refused, unresolvable, timed out)."""


def _open(url: str, timeout: float, data: Optional[bytes] = None, key: Optional[str] = None) -> Any:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    req = urllib.request.Request(url, data=data, headers=headers)
    try:
        return urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        try:
            why = json.loads(e.read())["error"]["message"]
        except (ValueError, KeyError, TypeError):
            why = e.reason
        raise LabError(f"{url}: HTTP {e.code}: {why}") from None
    except (urllib.error.URLError, OSError) as e:
        why = getattr(e, "reason", e)
        if isinstance(why, ConnectionRefusedError):
            why = "connection refused"
        elif isinstance(why, (socket.timeout, TimeoutError)):
            why = f"no answer within {timeout:g} s"
        elif isinstance(why, socket.gaierror):
            why = "unknown host name"
        u = urllib.parse.urlsplit(url)
        raise NoServer(f"no server answers at {u.scheme}://{u.netloc} ({why})") from None


def _sse(url: str, body: dict[str, Any], timeout: float, key: Optional[str] = None) -> Any:
    r = _open(url, timeout, json.dumps(body).encode(), key)
    with r:
        for raw in r:
            line = raw.decode("utf-8", "replace").strip()
            if line.startswith("data: ") and line != "data: [DONE]":
                yield json.loads(line[6:])


def one_request(
    base: str,
    model: str,
    messages: list[dict[str, Any]],
    max_tokens: int,
    timeout: float = 600.0,
    key: Optional[str] = None,
) -> dict[str, Any]:
    """One streamed greedy chat of exactly ``max_tokens`` (``ignore_eos``), timed as its client sees it:
    ttft_ms (request sent → the first generated text, content or thinking), decode_tps (the tokens after
    the first over the time from the first text to the finish chunk), total_ms (request sent → [DONE]),
    and the server's token counts."""
    body = {
        "model": model,
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
        "ignore_eos": True,
    }
    t0 = time.perf_counter()
    first = end = None
    usage: dict[str, Any] = {}
    for chunk in _sse(base.rstrip("/") + "/chat/completions", body, timeout, key):
        if chunk.get("usage"):
            usage = chunk["usage"]
        for ch in chunk.get("choices") or []:
            delta = ch.get("delta") or {}
            if first is None and (delta.get("content") or delta.get("reasoning_content") or delta.get("tool_calls")):
                first = time.perf_counter()
            if ch.get("finish_reason"):
                end = time.perf_counter()
    total = time.perf_counter()
    n = usage.get("completion_tokens", 0)
    if end is None:
        raise LabError(f"{base}: the stream ended without a finish chunk")
    first = end if first is None else first  # no text at all (e.g. one token, half a UTF-8 character)
    return {
        "ttft_ms": (first - t0) * 1e3,
        "total_ms": (total - t0) * 1e3,
        "decode_tps": (n - 1) / (end - first) if end > first and n > 1 else 0.0,
        "completion_tokens": n,
        "prompt_tokens": usage.get("prompt_tokens", 0),
        "cached_tokens": (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0),
    }


def _get(url: str, timeout: float = 30.0, key: Optional[str] = None) -> Any:
    with _open(url, timeout, key=key) as r:
        return json.loads(r.read())


def model_id(base: str, timeout: float = 30.0, key: Optional[str] = None) -> str:
    return _get(base.rstrip("/") + "/models", timeout, key)["data"][0]["id"]


def server_props(base: str, timeout: float = 30.0, key: Optional[str] = None) -> dict[str, Any]:
    """The server's GET /props (what it serves, its knobs, its peak RSS so far); ``base`` ends in /v1."""
    root = base.rstrip("/").removesuffix("/v1")
    return _get(root + "/props", timeout, key)


def prompt_of(
    base: str, model: str, n_tokens: int, tries: int = 6, key: Optional[str] = None
) -> tuple[list[dict[str, Any]], int]:
    """A one-turn chat whose rendered prompt is ``n_tokens`` tokens as the server counts them (words are
    added or dropped by the difference until it is), or the closest found; returns it and its count."""

    def chat(k: int) -> list[dict[str, Any]]:
        return [{"role": "user", "content": " ".join(["a"] * max(k, 1))}]

    k, best = n_tokens, None
    for _ in range(tries):
        got = one_request(base, model, chat(k), 1, key=key)["prompt_tokens"]
        if best is None or abs(got - n_tokens) < abs(best[1] - n_tokens):
            best = (k, got)
        if got == n_tokens or (k <= 1 and got > n_tokens):
            break
        k = max(1, k + n_tokens - got)
    return chat(best[0]), best[1]


def bench_served(
    base: str,
    device: str,
    n_prompt: int = 64,
    n_gen: int = 64,
    reps: int = 3,
    ssh_host: str = "",
    key: Optional[str] = None,
) -> Any:
    """A results Record (``via = "served"``) of the endpoint as its client sees it: after one warm-up
    request, ``reps`` streamed greedy chats of an ``n_prompt``-token prompt and exactly ``n_gen`` tokens;
    what is served (artifact, sha256, knobs, threads, context) and the peak RSS come from its /props."""

    if min(n_prompt, n_gen, reps) < 1:
        raise LabError("-p, -n and -r must be at least 1")
    props = server_props(base, key=key)
    a = props.get("artifact") or {}
    model = model_id(base, key=key)
    messages, p = prompt_of(base, model, n_prompt, key=key)
    one_request(base, model, messages, min(n_gen, 4), key=key)
    runs = [one_request(base, model, messages, n_gen, key=key) for _ in range(reps)]
    for r in runs:
        if r["completion_tokens"] != n_gen or r["prompt_tokens"] != p:
            raise LabError(
                f"{base}: asked for {n_gen} tokens after {p}, the server counted "
                f"{r['completion_tokens']} after {r['prompt_tokens']}; is it an edgekit serve?"
            )
    after = server_props(base, key=key)
    samples = {
        "ttft_ms": [r["ttft_ms"] for r in runs],
        "tg_tps": [r["decode_tps"] for r in runs],
        "total_ms": [r["total_ms"] for r in runs],
        # a client cannot time the prefill alone: the prompt's tokens over the TTFT it waited
        "pp_tps": [p / (r["ttft_ms"] / 1e3) for r in runs],
    }
    (ttft, ttft_sd), (pp, pp_sd), (tg, tg_sd) = (mean_sd(samples[k]) for k in ("ttft_ms", "pp_tps", "tg_tps"))
    vers = props.get("versions") or {}
    engine = props.get("engine") or ""
    return Record(
        artifact=a.get("file", model),
        model=props.get("model_name") or model,
        format=a.get("format", ""),
        quant=a.get("quant", ""),
        engine=engine,
        sha256=a.get("sha256", ""),
        file_bytes=a.get("bytes", 0),
        device=device,
        target=props.get("target") or "",
        threads=props.get("threads"),
        ctx=props.get("n_ctx", 0),
        n_prompt=p,
        n_gen=n_gen,
        reps=reps,
        load_ms=props.get("load_ms", 0.0),
        ttft_ms=ttft,
        ttft_ms_sd=ttft_sd,
        pp_tps=pp,
        pp_tps_sd=pp_sd,
        tg_tps=tg,
        tg_tps_sd=tg_sd,
        peak_rss_bytes=after.get("peak_rss_bytes", 0),
        kv_cache_bytes=props.get("kv_cache_bytes"),
        compute_buffer_bytes=props.get("compute_buffer_bytes"),
        budget_bytes=props.get("budget_bytes"),
        via="served",
        timestamp=utc_now(),
        edgekit_version=vers.get("edgekit", ""),
        engine_version=props.get("engine_version") or "",
        host=props.get("host") or {},
        versions=vers,
        runtime=props.get("runtime") or {},
        samples=samples,
        extra={
            "served": {"url": base, "model": model, "slots": props.get("slots")},
            "lab": {"device": device, "ssh_host": ssh_host, "remote_device": props.get("hostname", "")},
        },
    )


def served_args(args: list[str]) -> tuple[int, int, int]:
    """bench's ``-p N -n N -r N`` (``--n-prompt``, ``--n-gen``, ``--reps``) for ``lab run --served``
    (defaults 64, 64, 3); anything else is an error rather than silently not applied."""
    names = {"-p": 0, "--n-prompt": 0, "-n": 1, "--n-gen": 1, "-r": 2, "--reps": 2}
    out, i = [64, 64, 3], 0
    while i < len(args):
        a = args[i]
        key, _, val = a.partition("=") if a.startswith("--") else (a, "", "")
        if key not in names or (not val and i + 1 >= len(args)):
            raise ConfigError(
                f"lab run --served takes -p, -n and -r (prompt tokens, generated tokens, repetitions), not {a!r}"
            )
        if not val:
            i += 1
            val = args[i]
        try:
            out[names[key]] = int(val)
        except ValueError:
            raise ConfigError(f"{key} {val!r}: give a whole number") from None
        i += 1
    if min(out) < 1:
        raise ConfigError("-p, -n and -r must be at least 1")
    return out[0], out[1], out[2]
