"""Connection guards: header and body read timeouts, a per-client connection cap, and the uvicorn config.

uvicorn (h11) has settings for part of this, used as they are: ``timeout_keep_alive`` (an idle
keep-alive connection is closed), ``h11_max_incomplete_event_size`` (largest request head: 400 past
it) and ``limit_concurrency`` (open connections + in-flight requests: 503 past it). It has no
header read timeout (a client sending its headers a byte at a time, or never finishing them, holds
its connection forever), no body read timeout and no per-client cap. They are added here:

* :class:`GuardedH11Protocol`: uvicorn's h11 protocol plus the header timeout (the request line and
  headers must be complete within ``header_timeout_s`` of the connection opening or the previous
  response ending: else 408, closed) and the per-client cap (a client address holding
  ``max_connections_per_client`` open connections gets 429 on the next one, closed).
* Lingering close (:class:`_LingeringTransport`): when the server ends a connection whose client is
  still sending its request (a 408 for slow headers or body), it sends its answer and a FIN, then reads
  and drops what the client still sends for up to ``LINGER_S`` before closing. Closing at once would
  answer the client's next bytes with a reset, and a client's network stack may then drop the answer it
  had already received: the client would see "connection reset" instead of the 408 (nginx's
  ``lingering_close`` is the same idea).
* :class:`BodyTimeoutMiddleware` (ASGI): the whole body must arrive within ``body_timeout_s`` of the
  headers (a 1-byte-per-second body is cut off: 408, closed); a client hanging up mid-body is counted,
  not logged as an error.
* :func:`server_config`: the ``uvicorn.Config`` with all of it, used by ``videollama serve`` and the tests.

:class:`ConnectionStats` counts what the guards did; ``GET /health`` reports it under ``connections``.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from .schemas import ServeError
from .settings import ServeSettings

KB = 1024
LINGER_S = 2.0  # how long a closed-on connection still takes in (and drops) what its client sends


@dataclass
class ConnectionStats:
    header_timeouts: int = 0  # connections closed with 408 for slow or unfinished headers
    body_timeouts: int = 0  # requests answered 408 for a body that did not arrive in time
    client_aborts: int = 0  # clients that hung up while sending their body
    refused_per_client: int = 0  # connections refused with 429 by the per-client cap

    def summary(self) -> dict[str, int]:
        return asdict(self)


@dataclass
class ConnectionGuard:
    """The limits and the state shared by every connection of one server (event-loop thread only)."""

    header_timeout_s: float
    body_timeout_s: float
    max_connections_per_client: int
    stats: ConnectionStats = field(default_factory=ConnectionStats)
    open_per_client: Counter = field(default_factory=Counter)

    @classmethod
    def from_settings(cls, settings: ServeSettings) -> "ConnectionGuard":
        return cls(header_timeout_s=settings.header_timeout_s, body_timeout_s=settings.body_timeout_s,
                   max_connections_per_client=settings.max_connections_per_client)


def _raw_error(status: int, reason: str, error: ServeError) -> bytes:
    """A complete ``Connection: close`` HTTP/1.1 response, for answers sent outside any ASGI request."""
    body = json.dumps(error.body()).encode()
    head = (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            "connection: close\r\n\r\n")
    return head.encode() + body


class _LingeringTransport:
    """A connection's transport whose ``close()`` lingers while the client is still sending its request.

    Everything else is the asyncio transport's own. Lingering: the answer already written goes out with
    a FIN (``write_eof``), reading goes on (the protocol drops what arrives), and the socket closes when
    the client closes its side or after ``LINGER_S``.
    """

    def __init__(self, transport, client_sending: Callable[[], bool]) -> None:
        self._transport = transport
        self._client_sending = client_sending
        self.lingering = False
        self._timer: asyncio.TimerHandle | None = None

    def __getattr__(self, name: str):
        return getattr(self._transport, name)

    def is_closing(self) -> bool:
        return self.lingering or self._transport.is_closing()

    def close(self) -> None:
        if self.is_closing():
            return
        if not (self._client_sending() and self._transport.can_write_eof()):
            self._transport.close()
            return
        self.lingering = True
        self._transport.write_eof()
        self._transport.resume_reading()
        self._timer = asyncio.get_running_loop().call_later(LINGER_S, self._transport.close)

    def cancel_linger(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a header read timeout and a per-client connection cap."""

    def __init__(self, *args, guard: ConnectionGuard, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.guard = guard
        self._counted_host: str | None = None
        self._header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:  # type: ignore[override]
        transport = _LingeringTransport(transport, self._client_sending)
        super().connection_made(transport)
        host = self.client[0] if self.client else ""
        if self.guard.open_per_client[host] >= self.guard.max_connections_per_client:
            self.guard.stats.refused_per_client += 1
            error = ServeError(429, f"too many open connections from this client (at most "
                               f"{self.guard.max_connections_per_client}, --max-connections-per-client)",
                               type="rate_limit_error", code="too_many_connections")
            transport.write(_raw_error(429, "Too Many Requests", error))
            transport.close()
            return
        self.guard.open_per_client[host] += 1
        self._counted_host = host
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        self.transport.cancel_linger()
        if self._counted_host is not None:
            self.guard.open_per_client[self._counted_host] -= 1
            if self.guard.open_per_client[self._counted_host] <= 0:
                del self.guard.open_per_client[self._counted_host]
            self._counted_host = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.transport.lingering:  # answered and closing: the rest of the request is dropped
            return
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:  # the request line and headers are complete
            self._cancel_header_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_header_timer()  # the next request's headers get the same time (idle time: keep-alive)

    def _client_sending(self) -> bool:
        """Whether the client is part-way through sending a request (its head or its body)."""
        state = self.conn.their_state
        return state is h11.SEND_BODY or (state is h11.IDLE and bool(self.conn.trailing_data[0]))

    def _arm_header_timer(self) -> None:
        self._cancel_header_timer()
        self._header_timer = self.loop.call_later(self.guard.header_timeout_s, self._header_timeout)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        self.guard.stats.header_timeouts += 1
        error = ServeError(408, f"the request headers did not arrive within {self.guard.header_timeout_s:g} s "
                           "(--header-timeout)", code="header_timeout")
        self.transport.write(_raw_error(408, "Request Timeout", error))
        self.transport.close()


class BodyTimeoutMiddleware:
    """ASGI middleware: a request's body must arrive within ``guard.body_timeout_s`` of its headers."""

    def __init__(self, app, guard: ConnectionGuard) -> None:
        self.app = app
        self.guard = guard

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.guard.body_timeout_s
        body_done = False

        async def guarded_receive():
            nonlocal body_done
            if body_done:  # afterwards receive() only reports a disconnect: no limit
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), timeout=max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                self.guard.stats.body_timeouts += 1
                raise ServeError(408, f"the request body did not arrive within {self.guard.body_timeout_s:g} s "
                                 "(--body-timeout)", code="body_timeout", headers={"Connection": "close"}) from None
            if message["type"] == "http.disconnect":
                self.guard.stats.client_aborts += 1
                body_done = True
            elif not message.get("more_body", False):
                body_done = True
            return message

        await self.app(scope, guarded_receive, send)


def server_config(app, *, host: str, port: int, settings: ServeSettings, **uvicorn_options) -> uvicorn.Config:
    """The uvicorn config for ``app`` (from ``create_app``): h11 with the guards above and uvicorn's own limits."""
    guard: ConnectionGuard = app.state.connections
    return uvicorn.Config(
        app, host=host, port=port, http=functools.partial(GuardedH11Protocol, guard=guard),
        timeout_keep_alive=settings.keep_alive_s, limit_concurrency=settings.max_connections,
        h11_max_incomplete_event_size=settings.max_header_kb * KB, **uvicorn_options)
