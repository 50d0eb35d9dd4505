"""Helpers for the serving tests: a real uvicorn server on a free loopback port, in a thread.

    with running_server(create_app(pipeline, settings)) as base_url:   # "http://127.0.0.1:PORT"
        ...

Startup and shutdown are bounded in time; a server that fails to start raises instead of hanging.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import uvicorn

from videollama.serve.connections import server_config

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
POLL_S = 0.02


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_server(app) -> Iterator[str]:
    """uvicorn configured as ``videollama serve`` configures it (connection guards included)."""
    port = free_port()
    settings = app.state.service.settings
    server = uvicorn.Server(server_config(app, host="127.0.0.1", port=port, settings=settings, log_level="warning",
                                         lifespan="on"))
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    wait_until(lambda: server.started or not thread.is_alive(), START_TIMEOUT_S, "server start")
    if not server.started:
        raise RuntimeError("uvicorn did not start (see the log above)")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(STOP_TIMEOUT_S)


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll ``condition`` until true; AssertionError naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(POLL_S)
