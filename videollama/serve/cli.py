"""``videollama serve`` (OpenAI-compatible HTTP API) and ``videollama web`` (Gradio demo).

    videollama serve --model DIR --host 127.0.0.1 --port 8000 --media-root ./clips
    videollama web --model DIR --port 7860

Registered into the main CLI (``videollama.cli.EXTENSIONS``) through :func:`register`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from ..cli import add_model_args
from .settings import MODEL_MAX_FRAMES, ServeSettings

DEFAULT_CACHE_SIZE = 64
GRACEFUL_SHUTDOWN_S = 5
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}


def register(subparsers, commands: dict[str, Callable]) -> None:
    d = ServeSettings()
    p = subparsers.add_parser("serve", help="OpenAI-compatible HTTP API (chat completions with video/image/audio)",
                              description="Serve POST /v1/chat/completions, GET /v1/models and GET /health. "
                                          "See docs/serving.md.")
    add_model_args(p)
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--model-name", default=None, help="model id reported to clients (default: the model folder name)")
    m = p.add_argument_group("media sources and limits")
    m.add_argument("--media-root", type=Path, default=None,
                   help="allow local media paths, but only files below this folder (default: none allowed)")
    m.add_argument("--allow-remote-media", action="store_true",
                   help="fetch http(s) media URLs (public addresses only; size and time limited)")
    m.add_argument("--max-media-mb", type=float, default=d.max_media_mb, help="largest media file (MB)")
    m.add_argument("--max-duration-s", type=float, default=d.max_duration_s, help="longest video/audio (seconds)")
    m.add_argument("--max-frames", type=int, default=d.max_frames,
                   help=f"most frames a request may sample (1..{MODEL_MAX_FRAMES})")
    m.add_argument("--default-frames", type=int, default=d.default_frames, help="frames sampled when a request says none")
    m.add_argument("--max-sampled-frames", type=int, default=d.max_sampled_frames,
                   help="most frames a request's video_sampling may read (long videos, in windows of 32)")
    m.add_argument("--max-pixels", type=int, default=d.max_pixels, help="largest frame/image width x height")
    m.add_argument("--remote-timeout", type=float, default=d.remote_timeout_s, help="download time limit per URL (s)")
    m.add_argument("--cache-size", type=int, default=DEFAULT_CACHE_SIZE,
                   help="encoded media kept in memory (LRU by content hash)")
    q = p.add_argument_group("scheduling")
    q.add_argument("--max-queue", type=int, default=d.max_queue, help="requests waiting at most; more get 429")
    q.add_argument("--max-batch", type=int, default=d.max_batch, help="requests decoded together (1 = one at a time)")
    q.add_argument("--batch-wait-ms", type=float, default=d.batch_wait_ms,
                   help="idle wait for more requests to join a batch (ms)")
    q.add_argument("--timeout", type=float, default=d.timeout_s, help="per-request time limit (s); then 504")
    q.add_argument("--default-max-tokens", type=int, default=d.default_max_tokens,
                   help="new tokens when a request gives no max_tokens")
    m.add_argument("--max-text-chars", type=int, default=None,
                   help="most characters of text per request, checked before tokenising (default: the model's "
                        "context x its longest token)")
    c = p.add_argument_group("connections")
    c.add_argument("--header-timeout", type=float, default=d.header_timeout_s,
                   help="seconds a connection has to send a request's complete headers; then 408")
    c.add_argument("--body-timeout", type=float, default=d.body_timeout_s,
                   help="seconds a request has to send its whole body after its headers; then 408")
    c.add_argument("--keep-alive", type=float, default=d.keep_alive_s,
                   help="seconds an idle keep-alive connection stays open")
    c.add_argument("--max-connections-per-client", type=int, default=None,
                   help="open connections one client address may hold; one more gets 429 (default: "
                        "2 x (max queue + max batch))")
    c.add_argument("--max-connections", type=int, default=d.max_connections,
                   help="open connections and in-flight requests in all; more get 503")
    c.add_argument("--max-header-kb", type=int, default=d.max_header_kb, help="largest request line + headers (KB)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    commands["serve"] = cmd_serve

    p = subparsers.add_parser("web", help="Gradio web demo: upload a clip and chat about it (works offline)")
    add_model_args(p)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--cache-size", type=int, default=DEFAULT_CACHE_SIZE, help="encoded media kept in memory")
    commands["web"] = cmd_web


def load_pipeline(args: argparse.Namespace):
    """The pipeline for ``--model`` (default: shipped model, else the tiny random one) with ``--cache-size``.

    Loads through ``videollama.cli.load_pipeline``, as chat and eval do (--device, --dtype, --device-map, --load-in).
    """
    from .. import cli

    pipe, resolved = cli.load_pipeline(args, cache_size=args.cache_size)
    if not resolved.trained:
        print(f"[using the {resolved.description}]", file=sys.stderr)
    return pipe, resolved


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the OpenAI-compatible API until interrupted."""
    import uvicorn

    from .api import create_app
    from .connections import server_config

    settings = ServeSettings(
        media_root=args.media_root, allow_remote_media=args.allow_remote_media, max_queue=args.max_queue,
        max_batch=args.max_batch, batch_wait_ms=args.batch_wait_ms, timeout_s=args.timeout,
        max_media_mb=args.max_media_mb, max_duration_s=args.max_duration_s, max_frames=args.max_frames,
        max_sampled_frames=args.max_sampled_frames,
        default_frames=args.default_frames, max_pixels=args.max_pixels, remote_timeout_s=args.remote_timeout,
        default_max_tokens=args.default_max_tokens, max_text_chars=args.max_text_chars,
        header_timeout_s=args.header_timeout, body_timeout_s=args.body_timeout, keep_alive_s=args.keep_alive,
        max_connections_per_client=args.max_connections_per_client, max_connections=args.max_connections,
        max_header_kb=args.max_header_kb)
    pipe, resolved = load_pipeline(args)
    settings.model_name = args.model_name or ("videollama-tiny" if not resolved.trained else Path(resolved.path).name)
    if args.host not in LOOPBACK_HOSTS:
        print(f"[listening on {args.host}: the API has no authentication; put it behind a proxy that has]",
              file=sys.stderr)
    print(f"serving {settings.model_name!r} on http://{_url_host(args.host)}:{args.port}/v1 "
          f"(max batch {settings.max_batch}, queue {settings.max_queue})", file=sys.stderr)
    app = create_app(pipe, settings)
    uvicorn.Server(server_config(app, host=args.host, port=args.port, settings=settings, log_level=args.log_level,
                                 timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S)).run()
    return 0


def cmd_web(args: argparse.Namespace) -> int:
    """Run the Gradio demo until interrupted."""
    from .web import build_demo, launch_demo

    pipe, _ = load_pipeline(args)
    print(f"web demo on http://{_url_host(args.host)}:{args.port}/", file=sys.stderr)
    launch_demo(build_demo(pipe), host=args.host, port=args.port, block=True)
    return 0


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
