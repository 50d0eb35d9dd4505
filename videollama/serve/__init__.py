"""Serving: an OpenAI-compatible HTTP API (``api``) and a Gradio web demo (``web``).

    videollama serve --model DIR --port 8000      # POST /v1/chat/completions, GET /v1/models, GET /health
    videollama web --model DIR --port 7860        # upload a clip and chat about it

Modules: ``settings`` (limits), ``schemas`` (OpenAI wire format), ``body`` (strict body reading and
JSON decoding), ``media_input`` (content parts -> checked files), ``scheduler`` (bounded queue +
batching engine worker), ``answer`` (ids -> text, stop strings), ``api`` (FastAPI app),
``connections`` (header/body timeouts, per-client cap, the uvicorn config), ``web`` (Gradio),
``cli`` (subcommands). Importing this package imports neither FastAPI nor Gradio.
"""

__all__ = ["create_app", "ServeSettings", "Scheduler", "build_demo"]


def __getattr__(name: str):
    if name == "create_app":
        from .api import create_app

        return create_app
    if name == "ServeSettings":
        from .settings import ServeSettings

        return ServeSettings
    if name == "Scheduler":
        from .scheduler import Scheduler

        return Scheduler
    if name == "build_demo":
        from .web import build_demo

        return build_demo
    raise AttributeError(f"module 'videollama.serve' has no attribute {name!r}")
