"""A hostile or unlucky client never hurts another one: the real server (uvicorn on loopback, tiny model).

Covers: one request whose generation fails in a batch of eight (the seven others get the answers they
get alone; the culprit a clear 500), inputs that used to give 500 (deep nesting, a lone surrogate, a
10,000-character path, an out-of-range seed or penalty) and OpenAI's strictness (``"stream": "yes"``,
a text/plain body) all answered 4xx in OpenAI's error shape, ``/health`` answering while a request is
being tokenised, the text limit checked before tokenising, an image under a video's name, and the
connection guards driven with raw sockets (slow headers, a 1-byte-at-a-time body, a client hanging
up mid-body, the per-client connection cap).
"""

from __future__ import annotations

import json
import logging
import select
import socket
import threading
import time

import httpx
import numpy as np
import openai
import pytest
from PIL import Image

from serve_helpers import running_server, wait_until
from videollama import engine as engine_module
from videollama.serve.api import create_app
from videollama.serve.connections import LINGER_S
from videollama.serve.settings import ServeSettings

WAIT_S = 30.0
BATCH = 8
POISON_SEED = 4242  # the row whose sampling is made to fail (greedy rows ignore their seed otherwise)
HEADER_TIMEOUT_S = 0.5
BODY_TIMEOUT_S = 1.0
PER_CLIENT = 3
# Pause between the bytes a slow client sends. Not a divisor of either timeout, so the server's answer falls
# inside a pause, not next to a send (a byte sent after the server closed draws a reset, and some network
# stacks then drop the answer already received).
SLOW_SEND_S = 0.3
MAX_SLOW_BYTES = 100  # bound on a slow sender's loop: 30 s at SLOW_SEND_S, far past both timeouts


@pytest.fixture(scope="module")
def media_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("media")
    Image.fromarray(np.linspace(0, 255, 48 * 64 * 3).astype(np.uint8).reshape(48, 64, 3)).save(root / "still.mp4",
                                                                                               format="PNG")
    return root


@pytest.fixture(scope="module")
def server(tiny_pipeline, media_root):
    settings = ServeSettings(model_name="m", media_root=media_root, max_batch=BATCH, max_queue=2 * BATCH,
                             batch_wait_ms=5, timeout_s=60, default_max_tokens=8)
    app = create_app(tiny_pipeline, settings)
    with running_server(app) as url:
        yield url, app


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server[0]}/v1", api_key="unused", max_retries=0, timeout=WAIT_S)


def _health(url: str) -> dict:
    return httpx.get(f"{url}/health", timeout=WAIT_S).json()


# ------------------------------------------------------------------------------------------ batch isolation
def test_one_failing_request_never_fails_its_batch(server, client, monkeypatch):
    url, app = server
    scheduler = app.state.scheduler
    requests = [dict(model="m", temperature=0, max_tokens=6 + i, messages=[{"role": "user", "content": f"Question {i}?"}])
                for i in range(BATCH - 1)]
    alone = [client.chat.completions.create(**r).choices[0].message.content for r in requests]
    poisoned = dict(model="m", temperature=0, max_tokens=12, seed=POISON_SEED,
                    messages=[{"role": "user", "content": "The poisoned question."}])
    original = engine_module._pick

    def pick(logits, history, gen, generator):
        if gen.seed == POISON_SEED and len(history) == 2:  # after two tokens: the failure comes mid-answer
            raise FloatingPointError("simulated failure while sampling this row")
        return original(logits, history, gen, generator)

    monkeypatch.setattr(engine_module, "_pick", pick)
    results: dict = {}

    def send(key, request):
        try:
            results[key] = client.chat.completions.create(**request)
        except Exception as err:  # asserted on below
            results[key] = err

    batches_before = scheduler.stats.batches
    scheduler.pause()
    try:
        threads = [threading.Thread(target=send, args=(i, r)) for i, r in enumerate([*requests, poisoned])]
        for thread in threads:
            thread.start()
        wait_until(lambda: scheduler.queued == BATCH, WAIT_S, "all eight requests queued")
    finally:
        scheduler.resume()
    for thread in threads:
        thread.join(WAIT_S)
    assert scheduler.stats.batches == batches_before + 1 and scheduler.stats.batch_sizes[-1] == BATCH
    assert [results[i].choices[0].message.content for i in range(BATCH - 1)] == alone
    failure = results[BATCH - 1]
    assert isinstance(failure, openai.InternalServerError), failure
    assert failure.body["code"] == "generation_failed" and failure.body["type"] == "server_error"
    assert "generation failed for this request: FloatingPointError: simulated failure" in failure.message


# ------------------------------------------------------------------------------------------ malformed input
def _chat(**extra) -> dict:
    return {"model": "m", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}], **extra}


def _video(path: str) -> dict:
    return _chat(messages=[{"role": "user", "content": [{"type": "video_url", "video_url": {"url": path}},
                                                        {"type": "text", "text": "what?"}]}])


JSON = {"content-type": "application/json"}
HOSTILE = [
    # (name, body bytes, headers, status, code, fragment of the message)
    ("nested 100,000 deep", b'{"messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", JSON, 400, "invalid_json",
     "nested too deeply"),
    ("lone surrogate", b'{"messages": [{"role": "user", "content": "hi \\ud800 there"}]}', JSON, 400, "invalid_text",
     "messages.0.content: the text holds a lone UTF-16 surrogate"),
    ("surrogate in a media path", json.dumps(_video("clip\ud800.mp4")).encode(), JSON, 400, "invalid_text",
     "lone UTF-16 surrogate"),
    ("10,000-character file name", json.dumps(_video("a" * 10_000 + ".mp4")).encode(), JSON, 400,
     "invalid_media_path", "not a usable media path (File name too long)"),
    ("10,000-character path", json.dumps(_video("a/" * 5_000 + "x.mp4")).encode(), JSON, 400, "invalid_media_path",
     "File name too long"),
    ("seed 2**70", json.dumps(_chat(seed=2**70)).encode(), JSON, 400, None, "seed: Input should be less than"),
    ("seed below -2**63", json.dumps(_chat(seed=-(2**63) - 1)).encode(), JSON, 400, None, "seed"),
    ("repetition_penalty 1e-300", json.dumps(_chat(repetition_penalty=1e-300)).encode(), JSON, 400, None,
     "repetition_penalty: Input should be greater than or equal to 0.01"),
    ("NaN temperature", b'{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}', JSON, 400,
     "invalid_json", "NaN is not a JSON number"),
    ('"stream": "yes"', json.dumps(_chat(stream="yes")).encode(), JSON, 400, None, "stream: Input should be a valid boolean"),
    ('"max_tokens": "5"', json.dumps(_chat(max_tokens="5")).encode(), JSON, 400, None, "max_tokens"),
    ("text/plain body", json.dumps(_chat()).encode(), {"content-type": "text/plain"}, 415, "unsupported_media_type",
     "send the request as application/json"),
    ("form body", json.dumps(_chat()).encode(), {"content-type": "application/x-www-form-urlencoded"}, 415,
     "unsupported_media_type", "application/json"),
    ("latin-1 JSON", json.dumps(_chat()).encode(), {"content-type": "application/json; charset=latin-1"}, 415,
     "unsupported_media_type", "UTF-8"),
]


def test_malformed_requests_get_4xx_in_openai_shape(server):
    url, _ = server
    failures = []
    with httpx.Client(timeout=WAIT_S) as http:
        for name, body, headers, status, code, fragment in HOSTILE:
            response = http.post(f"{url}/v1/chat/completions", content=body, headers=headers)
            error = response.json().get("error", {}) if response.headers.get("content-type") == "application/json" else {}
            if (response.status_code != status or set(error) != {"message", "type", "param", "code"}
                    or fragment not in error["message"] or (code is not None and error["code"] != code)):
                failures.append(f"{name}: {response.status_code} {response.text[:300]}")
        assert not failures, "\n".join(failures)
        ok = http.post(f"{url}/v1/chat/completions", json=_chat(seed=2**64 - 1, stream=False))
        assert ok.status_code == 200  # the largest seed is accepted


# ------------------------------------------------------------------------------------------ the event loop
def test_health_answers_while_a_request_is_being_tokenised(server, tiny_pipeline, monkeypatch):
    url, _ = server
    entered, release = threading.Event(), threading.Event()
    original = tiny_pipeline.prompt_ids

    def slow_prompt_ids(*args, **kwargs):  # stands in for tokenising a huge prompt
        entered.set()
        assert release.wait(WAIT_S), "the test never released the tokeniser"
        return original(*args, **kwargs)

    monkeypatch.setattr(tiny_pipeline, "prompt_ids", slow_prompt_ids)
    result: dict = {}
    thread = threading.Thread(target=lambda: result.setdefault(
        "response", httpx.post(f"{url}/v1/chat/completions", json=_chat(temperature=0), timeout=WAIT_S)))
    thread.start()
    try:
        assert entered.wait(WAIT_S), "the request never reached the tokeniser"
        health = httpx.get(f"{url}/health", timeout=WAIT_S)  # on the event loop: must not wait for the tokeniser
        assert health.status_code == 200 and health.json()["status"] == "ok"
        assert "response" not in result  # the request was still being tokenised when /health answered
    finally:
        release.set()
        thread.join(WAIT_S)
    assert result["response"].status_code == 200


def test_text_over_the_limit_is_refused_before_tokenising(server, tiny_pipeline, monkeypatch):
    url, app = server
    limit = app.state.service.max_text_chars
    longest = max(len(token) for token in tiny_pipeline.tokenizer.get_vocab())
    assert limit == tiny_pipeline.engine.max_positions * longest  # the default: no text that fits is refused
    calls = []
    monkeypatch.setattr(tiny_pipeline, "prompt_ids", lambda *a, **k: calls.append(1))
    body = _chat(messages=[{"role": "system", "content": "s" * (limit // 2)},
                           {"role": "user", "content": "u" * (limit // 2 + 1)}])
    response = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=WAIT_S)
    error = response.json()["error"]
    assert response.status_code == 400 and error["code"] == "text_too_long" and f"at most {limit:,}" in error["message"]
    assert calls == []


# ------------------------------------------------------------------------------------------ media kind by content
def test_an_image_under_a_video_name_is_answered_as_an_image(server, client, tiny_pipeline, media_root):
    media = tiny_pipeline.encode_media(media_root / "still.mp4")
    assert media.kind == "image"  # what the CLI answers from
    reply = client.chat.completions.create(model="m", temperature=0, max_tokens=4, messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "still.mp4"}}, {"type": "text", "text": "Describe it."}]}])
    assert reply.usage.prompt_tokens == len(tiny_pipeline.prompt_ids(media, [("Describe it.", None)]))
    with pytest.raises(openai.BadRequestError, match=r"still.mp4: this is an image \(PNG\); send it as image_url"):
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": [
            {"type": "video_url", "video_url": {"url": "still.mp4"}}, {"type": "text", "text": "Describe it."}]}])


# ------------------------------------------------------------------------------------------ connections
@pytest.fixture(scope="module")
def guarded(tiny_pipeline):
    settings = ServeSettings(header_timeout_s=HEADER_TIMEOUT_S, body_timeout_s=BODY_TIMEOUT_S, default_max_tokens=2)
    app = create_app(tiny_pipeline, settings)
    with running_server(app) as url:
        yield url


def _connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=WAIT_S)
    return sock


def _read_until_closed(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def _post_head(length: int) -> bytes:
    return (f"POST /v1/chat/completions HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\n\r\n").encode()


def _send_slowly(sock: socket.socket, data: bytes) -> bytes:
    """Send one byte per SLOW_SEND_S until the server answers or closes, then read to the end (its reply).

    Each byte goes only after a pause in which the server sent nothing, so the client stops sending as soon
    as the answer is there (as a careful client would) instead of writing into a closed connection.
    """
    for byte in data[:MAX_SLOW_BYTES]:
        answered, _, _ = select.select([sock], [], [], SLOW_SEND_S)
        if answered:
            break
        try:
            sock.sendall(bytes([byte]))
        except (BrokenPipeError, ConnectionResetError):
            break
    sock.settimeout(WAIT_S)
    return _read_until_closed(sock)


def test_slow_or_unfinished_headers_are_cut_off(guarded):
    before = _health(guarded)["connections"]["header_timeouts"]
    with _connect(guarded) as silent:  # connects and sends nothing
        assert _read_until_closed(silent).startswith(b"HTTP/1.1 408 ")
    with _connect(guarded) as slowloris:  # a header byte at a time, never finishing
        reply = _send_slowly(slowloris, b"GET /health HTTP/1.1\r\nHost: test\r\nX-Padding: " + b"a" * MAX_SLOW_BYTES)
    assert reply.startswith(b"HTTP/1.1 408 ") and b'"code": "header_timeout"' in reply
    assert _health(guarded)["connections"]["header_timeouts"] == before + 2


def test_a_body_sent_a_byte_at_a_time_is_cut_off(guarded):
    body = json.dumps(_chat()).encode()
    with _connect(guarded) as sock:
        sock.sendall(_post_head(len(body)))
        reply = _send_slowly(sock, body)
    head, _, payload = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 ") and b"connection: close" in head.lower()
    assert json.loads(payload)["error"]["code"] == "body_timeout"
    assert _health(guarded)["connections"]["body_timeouts"] >= 1


def test_a_client_still_sending_after_the_408_reads_it_not_a_reset(guarded):
    """The server lingers after a 408: the client's later bytes are taken in, not answered with a reset."""
    with _connect(guarded) as sock:
        sock.sendall(_post_head(10**6))
        deadline = time.monotonic() + BODY_TIMEOUT_S + LINGER_S / 2  # well past the 408, inside the linger
        while time.monotonic() < deadline:  # a client that writes its whole body before reading anything
            sock.sendall(b"x")  # raises BrokenPipeError / ConnectionResetError if the server reset
            time.sleep(0.05)
        sock.shutdown(socket.SHUT_WR)
        reply = _read_until_closed(sock)
    head, _, payload = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 ") and json.loads(payload)["error"]["code"] == "body_timeout"


def test_a_body_declared_too_large_is_refused_and_the_connection_closed_before_the_upload(guarded):
    """413 from the Content-Length alone, with Connection: close: the server does not take in the rest of the
    upload (without it, uvicorn reads and drops the whole body to keep the connection), and the answer arrives
    before the server's FIN."""
    with _connect(guarded) as sock:
        sock.sendall(_post_head(ServeSettings().max_body_bytes + 1) + b'{"messages": [')
        reply = _read_until_closed(sock)
    head, _, payload = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413 ") and b"connection: close" in head.lower()
    assert json.loads(payload)["error"]["code"] == "request_too_large"


def test_a_client_hanging_up_mid_body_is_not_an_error(guarded, caplog):
    before = _health(guarded)["connections"]["client_aborts"]
    with caplog.at_level(logging.WARNING):
        with _connect(guarded) as sock:
            sock.sendall(_post_head(1000) + b'{"messages": [')
        wait_until(lambda: _health(guarded)["connections"]["client_aborts"] == before + 1, WAIT_S, "the hang-up seen")
        ok = httpx.post(f"{guarded}/v1/chat/completions", json=_chat(temperature=0), timeout=WAIT_S)
    assert ok.status_code == 200
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


def test_per_client_connection_cap(tiny_pipeline):
    app = create_app(tiny_pipeline, ServeSettings(max_connections_per_client=PER_CLIENT, header_timeout_s=WAIT_S))
    with running_server(app) as url:
        held = [_connect(url) for _ in range(PER_CLIENT)]
        try:
            wait_until(lambda: app.state.connections.open_per_client["127.0.0.1"] == PER_CLIENT, WAIT_S,
                       "the held connections counted")
            with _connect(url) as extra:
                reply = _read_until_closed(extra)
            assert reply.startswith(b"HTTP/1.1 429 ") and b"too_many_connections" in reply
        finally:
            for sock in held:
                sock.close()
        wait_until(lambda: "127.0.0.1" not in app.state.connections.open_per_client, WAIT_S, "the connections released")
        health = httpx.get(f"{url}/health", timeout=WAIT_S).json()
        assert health["connections"]["refused_per_client"] == 1
