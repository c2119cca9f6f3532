"""`edgekit run` and `serve`: a chat in the terminal, an OpenAI-compatible server."""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Optional

import typer

from ..core.errors import ConfigError, EdgekitError
from ..profiles.knobs import parse_set
from .app import app
from .options import ART, BATCH, CTX, FLASH, KNOB, MODEL, TARGET, THREADS, UBATCH, artifact_arg, knob_items, verbosity


def _picked(session, artifact: Path) -> None:
    """Name the artifact a build folder resolved to (its manifest's first, recommended one)."""
    a = session.artifact
    typer.echo(
        f"edgekit: {session.path} ({a.format} {a.quant}, {a.bytes / 1e6:.1f} MB; ctx {session.n_ctx}, "
        f"threads {session.threads or '-'}, target {session.target or '-'})"
        + (
            "; the build's first, recommended artifact"
            if Path(artifact).is_dir() and session.path != Path(artifact)
            else ""
        ),
        err=True,
    )


@app.command()
def run(
    artifact: Optional[Path] = ART,
    prompt_arg: Optional[str] = typer.Argument(
        None, metavar="[PROMPT]", help="The prompt, as `ollama run MODEL PROMPT`."
    ),
    model: Optional[Path] = MODEL,
    target: Optional[str] = TARGET,
    prompt: Optional[str] = typer.Option(
        None, "--prompt", "-p", help="One prompt; without a prompt, an interactive chat."
    ),
    file: Optional[Path] = typer.Option(None, "--file", "-f", help="Read the prompt from FILE (- for stdin)."),
    system: Optional[str] = typer.Option(None, "--system", "-sys", help="System prompt."),
    max_tokens: int = typer.Option(
        256, "--max-tokens", "-n", "--n-predict", help="Most tokens per reply; -1: until the turn or the context ends."
    ),
    think: Optional[bool] = typer.Option(
        None, "--think/--no-think", help="Gemma 4 thinking on/off (default: the template's, off)."
    ),
    temperature: float = typer.Option(0.0, "--temperature", "--temp", help="0 is greedy."),
    top_p: float = typer.Option(1.0, "--top-p", help="Nucleus sampling (1: off)."),
    top_k: int = typer.Option(0, "--top-k", help="Keep the k most likely tokens (0: off)."),
    min_p: float = typer.Option(0.0, "--min-p", help="Drop tokens under min_p x the top probability (0: off)."),
    repeat_penalty: float = typer.Option(
        1.0, "--repeat-penalty", help="Penalize the last 64 tokens (1: off), as llama.cpp's."
    ),
    seed: Optional[int] = typer.Option(
        None, "--seed", "-s", help="Sampling seed (default: a random one, printed with -v)."
    ),
    ctx: Optional[int] = CTX,
    threads: Optional[int] = THREADS,
    knob: Optional[list[str]] = KNOB,
    ubatch: Optional[str] = UBATCH,
    batch: Optional[str] = BATCH,
    flash: Optional[str] = FLASH,
    image: Optional[list[Path]] = typer.Option(
        None, "--image", help="An image for the prompt (any format Pillow reads); repeatable. Needs -p."
    ),
    audio: Optional[list[Path]] = typer.Option(
        None, "--audio", help="An audio clip for the prompt (WAV, FLAC, OGG, MP3; ≤ 30 s); repeatable. Needs -p."
    ),
    mmproj: Optional[Path] = typer.Option(
        None, "--mmproj", help="The projector file (default: the one the manifest links to the artifact)."
    ),
    image_tokens: int = typer.Option(
        280, "--image-tokens", help="Soft tokens per image: 70, 140, 280, 560 or 1120 (transformers' budgets)."
    ),
) -> None:
    """Chat with an artifact through its own chat template; timings and peak RSS on stderr at exit.

    `edgekit run ART "Hi"` answers once; `edgekit run ART` opens a chat (/help lists its commands)."""
    # deferred: the command's library loads when it runs, so --help stays fast (docs/design-notes.md)
    from ..serve.generate import Sampling
    from ..serve.repl import Chat, Writer, check_sampling, clean_text, interactive, read_prompt
    from ..serve.repl import max_tokens as check_n
    from ..serve.session import open_session, peak_rss_bytes

    artifact, prompt_arg = artifact_arg(artifact, model, prompt_arg)
    check_sampling(temperature, top_p, top_k, min_p, repeat_penalty)
    n = check_n(max_tokens)
    text = read_prompt(prompt, prompt_arg, file)
    if (image or audio) and text is None:
        raise ConfigError(
            "--image/--audio need a prompt (-p or PROMPT); an interactive chat with media is not there yet"
        )
    if mmproj is not None and not (image or audio):
        raise ConfigError("--mmproj is for --image/--audio")
    if seed is None:
        seed = random.SystemRandom().randrange(2**32)
        logging.getLogger("edgekit").info("seed %d", seed)
    knobs = parse_set(knob_items(knob, ubatch, batch, flash))
    session = open_session(
        artifact, target=target, threads=threads, ctx=ctx, knobs=knobs, verbose=verbosity(), block=True
    )
    w = Writer()
    if text is None or verbosity() or Path(artifact).is_dir():
        _picked(session, artifact)
    sampling = Sampling(
        max_tokens=n,
        temperature=temperature,
        seed=seed,
        top_p=top_p,
        top_k=top_k,  # type: ignore[arg-type]
        min_p=min_p,
        repeat_penalty=repeat_penalty,
    )
    chat = Chat(session, sampling, think, w, system=clean_text(system)[0] if system else None)
    towers_s = None
    try:
        if image or audio:
            # deferred: the command's library loads when it runs, so --help stays fast (docs/design-notes.md)
            from ..serve.media_reply import reply_with_media

            assert text is not None  # refused above
            towers_s = reply_with_media(chat, text, list(image or []), list(audio or []), mmproj, image_tokens)
        elif text is not None:
            if not chat.reply(text):
                raise typer.Exit(1)
        else:
            interactive(
                chat,
                f"edgekit: chatting with {session.path.name}. Type /help for commands; "
                f"/bye, Ctrl-D or Ctrl-C at an empty prompt to exit; Ctrl-C stops a reply.\n",
            )
    finally:
        session.close()
    st = chat.stats
    if st:
        w.err(
            f"ttft {st['ttft_ms']:.0f} ms, {st['decode_tps']:.1f} t/s ({st['completion_tokens']} tokens, "
            f"prompt {st['prompt_tokens']}), peak RSS {peak_rss_bytes() / 1e6:.0f} MB"
            + (f", {chat.turns} replies" if chat.turns > 1 else "")
            + (f", towers {towers_s * 1e3:.0f} ms before the prompt" if towers_s is not None else "")
            + "\n"
        )


@app.command()
def serve(
    artifact: Optional[Path] = ART,
    model: Optional[Path] = MODEL,
    target: Optional[str] = TARGET,
    host: str = typer.Option(
        "127.0.0.1", "--host", help="Address to listen on (0.0.0.0: every interface; then give --api-key)."
    ),
    port: int = typer.Option(8080, "--port", help="TCP port."),
    parallel: int = typer.Option(
        1, "--parallel", "-np", min=1, help="Requests generated at once (slots of one context)."
    ),
    queue: int = typer.Option(
        8, "--queue", min=0, help="Requests that may wait for a slot; beyond it: 503 + Retry-After."
    ),
    ctx: Optional[int] = typer.Option(
        None,
        "--ctx",
        "-c",
        "--ctx-size",
        min=1,
        help="Context per request. Default: the target's, else min(the model's n_ctx_train, 4096).",
    ),
    threads: Optional[int] = THREADS,
    prefix_cache: Optional[Path] = typer.Option(
        None,
        "--prefix-cache",
        help=(
            "File keeping the shared system prefix's KV state across restarts (llama.cpp), keyed by the artifact's "
            "sha256."
        ),
    ),
    grace: float = typer.Option(
        30.0,
        "--grace",
        help='Seconds in-flight requests may finish after SIGTERM; then they end with finish_reason "cancelled".',
    ),
    alias: Optional[str] = typer.Option(
        None,
        "--alias",
        "-a",
        help="The model id /v1/models lists and replies name (default: the artifact's file name).",
    ),
    strict_model: bool = typer.Option(
        False,
        "--strict-model",
        help=(
            "Refuse (404) a request naming another model; by default any name is served, as llama-server does with "
            "one model."
        ),
    ),
    api_key: Optional[str] = typer.Option(
        None,
        "--api-key",
        envvar="EDGEKIT_API_KEY",
        help="Require Authorization: Bearer KEY (or X-Api-Key) on every route but /health.",
    ),
    api_key_file: Optional[Path] = typer.Option(
        None, "--api-key-file", help="Read the key from this file (first line)."
    ),
    allowed_origin: Optional[list[str]] = typer.Option(
        None,
        "--allowed-origin",
        help="A web origin (https://app.example) allowed besides localhost's; repeatable; * allows any.",
    ),
    max_body_mb: float = typer.Option(8.0, "--max-body-mb", help="Largest request body (413 beyond)."),
    max_prompt_chars: Optional[int] = typer.Option(
        None, "--max-prompt-chars", help="Most characters of text a request may hold (default 16 per token of context)."
    ),
    header_timeout: float = typer.Option(
        10.0, "--header-timeout", help="Seconds a client may take to send its request headers (slowloris guard)."
    ),
    body_timeout: float = typer.Option(
        30.0, "--body-timeout", help="Seconds a client may take to send its request body (408 beyond)."
    ),
    reuse_port: bool = typer.Option(
        False, "--reuse-port", hidden=True, help="Share the port with the server being replaced (deploy --serve)."
    ),
    knob: Optional[list[str]] = KNOB,
    ubatch: Optional[str] = UBATCH,
    batch: Optional[str] = BATCH,
    flash: Optional[str] = FLASH,
    mmproj: Optional[Path] = typer.Option(
        None, "--mmproj", help="Projector serving images/audio (default: the one the manifest links to the artifact)."
    ),
    no_mmproj: bool = typer.Option(False, "--no-mmproj", help="Serve text only, even when the build has towers."),
    image_tokens: int = typer.Option(
        280, "--image-tokens", help="Soft tokens per image: 70, 140, 280, 560 or 1120 (detail low: 70)."
    ),
    media_path: Optional[Path] = typer.Option(
        None, "--media-path", help="Folder whose files image_url may name (file://NAME); none are read otherwise."
    ),
    allow_remote_media: bool = typer.Option(
        False, "--allow-remote-media", help="Fetch http(s) image_url URLs (never fetched otherwise)."
    ),
    media_fetch_timeout: float = typer.Option(10.0, "--media-fetch-timeout", help="Seconds a remote image may take."),
    max_media_mb: float = typer.Option(
        20.0, "--max-media-mb", help="Largest image or audio clip, decoded (400 beyond)."
    ),
    max_image_pixels: int = typer.Option(50_000_000, "--max-image-pixels", help="Largest image, width x height."),
    max_audio_seconds: float = typer.Option(30.0, "--max-audio-seconds", help="Longest audio clip (at most 30)."),
) -> None:
    """An OpenAI-compatible API (/v1/chat/completions, /v1/completions, /v1/models, /health) on the target's knobs."""
    # deferred: the command's library loads when it runs, so --help stays fast (docs/design-notes.md)
    from ..serve.guard import Limits, Policy, is_loopback, read_api_key
    from ..serve.lifecycle import bind
    from ..serve.lifecycle import serve as run_server
    from ..serve.session import open_session

    if not (grace >= 0 and grace < float("inf")):
        raise EdgekitError(f"--grace {grace}: give the seconds in-flight requests may finish, 0 or more")
    if not (0 < max_body_mb < float("inf")):
        raise EdgekitError(f"--max-body-mb {max_body_mb}: give a positive size")
    for name, v in (("--header-timeout", header_timeout), ("--body-timeout", body_timeout)):
        if not (0 < v < float("inf")):
            raise EdgekitError(f"{name} {v}: give a positive number of seconds")
    if max_prompt_chars is not None and max_prompt_chars < 1:
        raise EdgekitError(f"--max-prompt-chars {max_prompt_chars}: give a positive count")
    if alias is not None and not alias.strip():
        raise EdgekitError("--alias is empty: give the model id clients will use")
    key = read_api_key(api_key, api_key_file)
    limits = _media_limits(
        image_tokens,
        media_path,
        allow_remote_media,
        media_fetch_timeout,
        max_media_mb,
        max_image_pixels,
        max_audio_seconds,
    )
    if no_mmproj and mmproj is not None:
        raise ConfigError("--mmproj and --no-mmproj contradict each other; drop one")
    artifact, _ = artifact_arg(artifact, model)
    bind(host, port, reuse_port).close()  # a bad --host/--port or a busy port: one line before the model loads
    policy = Policy(
        api_key=key,
        origins=tuple(allowed_origin or ()),
        loopback_only=is_loopback(host),
        limits=Limits(
            max_body=int(max_body_mb * (1 << 20)), header_timeout_s=header_timeout, body_timeout_s=body_timeout
        ),
    )
    session = open_session(
        artifact,
        target=target,
        threads=threads,
        ctx=ctx,
        knobs=parse_set(knob_items(knob, ubatch, batch, flash)),
        slots=parallel,
        max_queue=queue,
        prefix_file=prefix_cache,
        verbose=verbosity(),
        block=True,
    )
    _picked(session, artifact)
    _towers(session, limits, mmproj, no_mmproj, queue)
    if alias:
        session.model = alias.strip()
    shown = f"[{host}]" if ":" in host else host

    def announce() -> None:
        typer.echo(
            f"edgekit: serving {session.model} at http://{shown}:{port}/v1 ({parallel} slot(s), "
            f"ctx {session.n_ctx}, target {session.target or '-'}{', API key required' if key else ''})",
            err=True,
        )
        if not policy.loopback_only and not key:
            typer.echo(
                f"edgekit: warning: listening on {host} without --api-key: anyone who reaches this "
                "port can use the model",
                err=True,
            )

    run_server(
        session,
        host=host,
        port=port,
        grace_s=grace,
        policy=policy,
        strict_model=strict_model,
        max_prompt_chars=max_prompt_chars,
        announce=announce,
        reuse_port=reuse_port,
    )


def _media_limits(image_tokens, media_path, remote, timeout, mb, pixels, seconds):
    # deferred: the command's library loads when it runs, so --help stays fast (docs/design-notes.md)
    from ..serve.media import IMAGE_BUDGETS
    from ..serve.media_parts import MediaLimits

    if image_tokens not in IMAGE_BUDGETS:
        raise ConfigError(f"--image-tokens {image_tokens}: one of {', '.join(map(str, IMAGE_BUDGETS))}")
    if not 0 < mb < float("inf"):
        raise ConfigError(f"--max-media-mb {mb}: give a positive size")
    limits = MediaLimits(int(mb * (1 << 20)), pixels, seconds, image_tokens, media_path, remote, timeout)
    limits.check()
    return limits


def _towers(session, limits, mmproj, off, queue) -> None:
    """The projector beside the served model (serve/towers.py), and one line saying what it serves."""
    # deferred: the command's library loads when it runs, so --help stays fast (docs/design-notes.md)
    from ..serve.towers import attach

    try:
        towers = attach(session, limits, mmproj, off, max_waiting=max(queue, 1))
    except BaseException:
        session.close()
        raise
    if towers is not None:
        typer.echo(f"edgekit: {towers.mmproj.name} serves {', '.join(towers.modalities)}", err=True)
        if towers.warning:
            typer.echo(f"edgekit: warning: {towers.warning}", err=True)
