"""The request body, read and decoded as strictly as OpenAI's API does.

* :func:`check_content_type`: only ``application/json`` (charset utf-8 if one is named) is parsed; a
  ``text/plain`` or form body gets **415**, it is never guessed to be JSON.
* :func:`read_body` (on the event loop: it only gathers bytes): the size cap (**413**, then the connection
  closes, so the rest of an upload too large is not read); a client that
  hangs up mid-body ends the request as **499** ``client_closed`` without an error log.
* :func:`decode_json` (CPU work: run it on a worker thread): invalid JSON, ``NaN``/``Infinity``, a
  body nested too deeply for the parser (``RecursionError``) and a lone UTF-16 surrogate in any
  string (``"\\ud800"``: valid JSON, not valid Unicode) are all **400**, never a 500.
"""

from __future__ import annotations

import json
import re
from typing import Any

from starlette.requests import ClientDisconnect, Request

from .schemas import ServeError, bad_request

JSON_MEDIA_TYPE = "application/json"
LONE_SURROGATE = re.compile("[\ud800-\udfff]")  # json.loads joins valid pairs, so any left is alone


def check_content_type(http: Request) -> None:
    """Refuse a body that does not say it is JSON (OpenAI answers such requests with an error too)."""
    header = http.headers.get("content-type", "")
    media_type, *params = (part.strip().lower() for part in header.split(";"))
    charset = next((p.partition("=")[2].strip('"') for p in params if p.startswith("charset=")), "utf-8")
    if media_type != JSON_MEDIA_TYPE or charset not in ("utf-8", "utf8"):
        shown = header or "none"
        raise ServeError(415, f"Content-Type {shown!r} is not supported: send the request as {JSON_MEDIA_TYPE} "
                         "(UTF-8)", code="unsupported_media_type")


async def read_body(http: Request, limit: int) -> bytes:
    """The whole body, at most ``limit`` bytes (checked against Content-Length first, then while reading)."""
    declared = http.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise body_too_large(limit)
    body = bytearray()
    try:
        async for chunk in http.stream():
            body += chunk
            if len(body) > limit:
                raise body_too_large(limit)
    except ClientDisconnect:
        raise ServeError(499, "client closed the request while sending its body", code="client_closed") from None
    if not body:
        raise bad_request("the request body is empty; send a JSON chat-completions request")
    return bytes(body)


def decode_json(body: bytes) -> Any:
    """Parse a JSON body strictly (see the module docstring); every refusal is a 400 ServeError."""
    try:
        payload = json.loads(body, parse_constant=_refuse_constant)
    except RecursionError:
        raise bad_request("the request body is nested too deeply to parse", code="invalid_json") from None
    except (ValueError, UnicodeDecodeError) as err:
        raise bad_request(f"the request body is not valid JSON ({err})", code="invalid_json") from None
    where = _lone_surrogate(payload)
    if where is not None:
        raise bad_request(f"{where or 'body'}: the text holds a lone UTF-16 surrogate (an unpaired \\ud800-\\udfff "
                          "escape), which is not valid Unicode", param=where or None, code="invalid_text")
    return payload


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _lone_surrogate(payload: Any) -> str | None:
    """Dotted path of the first string (or key) holding a lone surrogate; None if there is none.

    Iterative, so a body as deep as the parser accepts cannot exhaust the stack here."""
    stack: list[tuple[str, Any]] = [("", payload)]
    while stack:
        where, value = stack.pop()
        if isinstance(value, str):
            if LONE_SURROGATE.search(value):
                return where
        elif isinstance(value, dict):
            for key, item in value.items():
                path = f"{where}.{key}" if where else str(key)
                if LONE_SURROGATE.search(key):
                    return where or "body"
                stack.append((path, item))
        elif isinstance(value, list):
            stack += [(f"{where}.{i}" if where else str(i), item) for i, item in enumerate(value)]
    return None


def body_too_large(limit: int) -> ServeError:
    """413, and the connection closes after it: the rest of the upload is not taken in (the lingering close in
    ``connections.py`` still lets a client that keeps sending read the answer)."""
    return ServeError(413, f"the request body is larger than {limit / 2**20:.1f} MB (media are limited by "
                      "--max-media-mb)", code="request_too_large", headers={"Connection": "close"})
