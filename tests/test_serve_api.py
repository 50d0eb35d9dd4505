"""The real HTTP server (uvicorn on loopback, tiny random model) driven by the official ``openai`` client.

Covers: plain and streamed answers (identical under greedy decoding), usage counts (media placeholder
tokens included), video with audio, input_audio, images as data URLs, multi-turn with a system
prompt, stop sequences, seeds, the media cache, a table of bad inputs (each a 4xx in OpenAI's error
format), a 500 that leaves the server serving, batching of concurrent requests, 429 + Retry-After,
client disconnects cancelling generation, and per-request timeouts.
"""

from __future__ import annotations

import base64
import json
import threading
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
from PIL import Image

from media_fixtures import make_numbered_video, make_tone_audio, truncate_file
from serve_helpers import running_server, wait_until
from videollama.inference import MediaOptions
from videollama.serve.api import create_app
from videollama.serve.settings import ServeSettings

WAIT_S = 30.0
MAX_QUEUE = 4
MAX_PIXELS = 320 * 240
MAX_DURATION_S = 30.0
MAX_MEDIA_MB = 1.0
LONG_GENERATION = 1500  # tokens: far longer than any test waits for (prompt + this < the tiny model's 2048)


@pytest.fixture(scope="module")
def media_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("media-root")
    make_numbered_video(root / "clip.mp4", 16, fps=8, size=(160, 128), with_audio=True)
    make_numbered_video(root / "other.mp4", 12, fps=6, size=(96, 64), with_audio=True, audio_freq=880.0)
    make_tone_audio(root / "tone.wav", 1.0)
    Image.fromarray(np.linspace(0, 255, 48 * 64 * 3).astype(np.uint8).reshape(48, 64, 3)).save(root / "image.png")
    (root / "empty.mp4").write_bytes(b"")
    (root / "junk.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    truncate_file(make_numbered_video(root / "truncated.mp4", 16, fps=8, size=(160, 128)), 0.3)
    make_numbered_video(root / "huge.mp4", 2, fps=8, size=(480, 360))
    make_numbered_video(root / "long.mp4", 12, fps=0.25, size=(64, 64))  # 48 s
    (root / "notes.txt").write_text("not media")
    (root.parent / "outside.mp4").write_bytes((root / "clip.mp4").read_bytes())
    return root


@pytest.fixture(scope="module")
def server(tiny_pipeline, media_root):
    settings = ServeSettings(model_name="videollama-test", media_root=media_root, max_queue=MAX_QUEUE, max_batch=4,
                             batch_wait_ms=5, timeout_s=60, max_media_mb=MAX_MEDIA_MB, max_duration_s=MAX_DURATION_S,
                             max_pixels=MAX_PIXELS, default_max_tokens=16)
    app = create_app(tiny_pipeline, settings)
    with running_server(app) as url:
        yield url, app.state.scheduler


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server[0]}/v1", api_key="unused", max_retries=0, timeout=WAIT_S)


def video_part(path: str = "clip.mp4") -> dict:
    return {"type": "video_url", "video_url": {"url": path}}


def user(*parts, text: str = "What happens in this video?") -> dict:
    return {"role": "user", "content": [*parts, {"type": "text", "text": text}]}


def expected_prompt_tokens(pipeline, media_path, turns, system=None, options=MediaOptions()) -> int:
    media = pipeline.encode_media(media_path, options) if media_path else None
    return len(pipeline.prompt_ids(media, turns, system))


def stream_text(client, **kwargs) -> tuple[str, list]:
    chunks = list(client.chat.completions.create(stream=True, **kwargs))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return text, chunks


# ------------------------------------------------------------------------------------------ happy paths
def test_models_and_health(server, client):
    assert [m.id for m in client.models.list().data] == ["videollama-test"]
    health = httpx.get(f"{server[0]}/health").json()
    assert health["status"] == "ok" and health["queue"]["max_queue"] == MAX_QUEUE
    missing = httpx.get(f"{server[0]}/v1/models/gpt-4")
    assert missing.status_code == 404 and "videollama-test" in missing.json()["error"]["message"]


def test_text_answer_and_usage(client, tiny_pipeline):
    reply = client.chat.completions.create(model="videollama-test", temperature=0, max_tokens=12,
                                           messages=[{"role": "user", "content": "Say hello."}])
    choice = reply.choices[0]
    assert reply.object == "chat.completion" and reply.model == "videollama-test" and reply.id.startswith("chatcmpl-")
    assert isinstance(choice.message.content, str) and choice.message.role == "assistant"
    assert reply.usage.prompt_tokens == expected_prompt_tokens(tiny_pipeline, None, [("Say hello.", None)])
    assert 1 <= reply.usage.completion_tokens <= 12
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    assert choice.finish_reason == ("length" if reply.usage.completion_tokens == 12 else "stop")


def test_video_streamed_equals_plain_with_usage(client, tiny_pipeline, media_root):
    request = dict(model="videollama-test", temperature=0, max_tokens=24, messages=[user(video_part())])
    plain = client.chat.completions.create(**request)
    text, chunks = stream_text(client, stream_options={"include_usage": True}, **request)
    assert text == plain.choices[0].message.content and text
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == [plain.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage == plain.usage
    turns = [("What happens in this video?", None)]
    with_media = expected_prompt_tokens(tiny_pipeline, media_root / "clip.mp4", turns)
    text_only = expected_prompt_tokens(tiny_pipeline, None, turns)
    assert plain.usage.prompt_tokens == with_media
    config = tiny_pipeline.model.config
    assert with_media > text_only + config.num_video_tokens + config.num_audio_tokens  # placeholders are counted


def test_stream_without_include_usage_has_no_usage(client):
    _, chunks = stream_text(client, model="m", temperature=0, max_tokens=4, messages=[{"role": "user", "content": "Hi"}])
    assert all(c.usage is None for c in chunks) and chunks[-1].choices[0].finish_reason is not None


def test_audio_input(client, tiny_pipeline, media_root):
    data = base64.b64encode((media_root / "tone.wav").read_bytes()).decode()
    part = {"type": "input_audio", "input_audio": {"data": data, "format": "wav"}}
    reply = client.chat.completions.create(model="m", temperature=0, max_tokens=8, messages=[user(part, text="What do you hear?")])
    assert reply.usage.prompt_tokens == expected_prompt_tokens(tiny_pipeline, media_root / "tone.wav",
                                                               [("What do you hear?", None)])
    audio_off = httpx.post(f"{client.base_url}chat/completions",
                           json={"messages": [user(part)], "audio": False, "max_tokens": 2})
    assert audio_off.status_code == 400 and "audio is switched off" in audio_off.json()["error"]["message"]


def test_image_as_data_url(client, tiny_pipeline, media_root):
    data = base64.b64encode((media_root / "image.png").read_bytes()).decode()
    part = {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{data}", "detail": "low"}}
    reply = client.chat.completions.create(model="m", temperature=0, max_tokens=6, messages=[user(part, text="Describe it.")])
    assert reply.usage.prompt_tokens == expected_prompt_tokens(tiny_pipeline, media_root / "image.png",
                                                               [("Describe it.", None)])


def test_multi_turn_with_system_prompt(client, tiny_pipeline, media_root):
    messages = [{"role": "system", "content": "You are terse."}, user(video_part(), text="What is shown?"),
                {"role": "assistant", "content": "Numbers."}, {"role": "user", "content": "And the sound?"}]
    reply = client.chat.completions.create(model="m", temperature=0, max_tokens=6, messages=messages, extra_body={"frames": 4})
    turns = [("What is shown?", "Numbers."), ("And the sound?", None)]
    expected = expected_prompt_tokens(tiny_pipeline, media_root / "clip.mp4", turns, "You are terse.",
                                      MediaOptions(num_frames=4))
    assert reply.usage.prompt_tokens == expected


def test_stop_sequences_cut_the_answer(client):
    request = dict(model="m", temperature=0, max_tokens=30, messages=[{"role": "user", "content": "Count for me."}])
    full = client.chat.completions.create(**request).choices[0].message.content
    stop = next(full[i:i + 2] for i in range(4, len(full) - 2) if full[i:i + 2].strip() == full[i:i + 2])
    cut = full[: full.index(stop)].rstrip()
    for stream in (False, True):
        if stream:
            text, _ = stream_text(client, stop=[stop], **request)
        else:
            reply = client.chat.completions.create(stop=stop, **request)
            text = reply.choices[0].message.content
            assert reply.choices[0].finish_reason == "stop" and reply.usage.completion_tokens < 30
        assert text == cut and stop not in text


def test_sampling_with_a_seed_is_reproducible(client):
    request = dict(model="m", temperature=0.9, top_p=0.95, seed=1234, max_tokens=12,
                   messages=[{"role": "user", "content": "Tell me something."}])
    first = client.chat.completions.create(**request).choices[0].message.content
    assert client.chat.completions.create(**request).choices[0].message.content == first


def test_media_are_encoded_once_per_content(client, tiny_pipeline, media_root, monkeypatch):
    fresh = make_numbered_video(media_root / "fresh.mp4", 10, fps=5, size=(64, 48), with_audio=True, audio_freq=300.0)
    calls = []
    original = tiny_pipeline.model.encode_video
    monkeypatch.setattr(tiny_pipeline.model, "encode_video", lambda *a, **k: calls.append(1) or original(*a, **k))
    data = base64.b64encode(fresh.read_bytes()).decode()
    for part in (video_part("fresh.mp4"), video_part(f"data:video/mp4;base64,{data}"), video_part("fresh.mp4")):
        client.chat.completions.create(model="m", temperature=0, max_tokens=2, messages=[user(part)])
    assert len(calls) == 1  # same bytes, same options: encoded once, whatever the source


# ------------------------------------------------------------------------------------------ bad input
def _bad_cases(media_root: Path) -> list[tuple[str, object, int, str]]:
    def body(*messages, **extra):
        return {"model": "m", "max_tokens": 2, "messages": list(messages), **extra}

    big = base64.b64encode(b"\x00" * int(1.2 * MAX_MEDIA_MB * 2**20)).decode()
    return [
        ("malformed JSON", b'{"messages": [', 400, "not valid JSON"),
        ("empty body", b"", 400, "body is empty"),
        ("JSON array", b"[1, 2]", 400, "must be a JSON object"),
        ("no messages", {"model": "m"}, 400, "messages: Field required"),
        ("empty messages", body(), 400, "messages"),
        ("unknown part type", body(user({"type": "hologram", "hologram": {}})), 400,
         "unknown content part type 'hologram'"),
        ("part missing url", body(user({"type": "video_url", "video_url": {}})), 400, "video_url.url"),
        ("tool role", body({"role": "tool", "content": "x"}), 400, "role"),
        ("assistant last", body({"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}), 400,
         "last message must come from the user"),
        ("assistant first", body({"role": "assistant", "content": "b"}, {"role": "user", "content": "a"}), 400,
         "must follow a user message"),
        ("media in system", body({"role": "system", "content": [video_part()]}, {"role": "user", "content": "a"}),
         400, "text only"),
        ("two media", body(user(video_part(), video_part("other.mp4"))), 400, "one media item"),
        ("media over turns", body(user(video_part()), {"role": "assistant", "content": "ok"}, user(video_part("other.mp4"))),
         400, "one media item"),
        ("traversal", body(user(video_part("../outside.mp4"))), 403, "outside the media root"),
        ("absolute outside", body(user(video_part("/etc/passwd"))), 403, "outside the media root"),
        ("missing file", body(user(video_part("nope.mp4"))), 404, "no such file"),
        ("remote disabled", body(user(video_part("http://127.0.0.1:9/x.mp4"))), 403, "--allow-remote-media"),
        ("bad scheme", body(user(video_part("ftp://host/x.mp4"))), 400, "unsupported URL scheme"),
        ("bad base64", body(user(video_part("data:video/mp4;base64,%%%"))), 400, "not valid base64"),
        ("media too big", body(user(video_part(f"data:video/mp4;base64,{big}"))), 413, "--max-media-mb"),
        ("zero-byte file", body(user(video_part("empty.mp4"))), 400, "empty"),
        ("corrupt file", body(user(video_part("junk.mp4"))), 400, "junk.mp4"),
        ("truncated file", body(user(video_part("truncated.mp4"))), 400, "truncated.mp4"),
        ("text as video", body(user(video_part("notes.txt"))), 400, "notes.txt"),
        ("image as video", body(user(video_part("image.png"))), 400, "send it as image_url"),
        ("video as image", body(user({"type": "image_url", "image_url": {"url": "clip.mp4"}})), 400, "video_url"),
        ("huge resolution", body(user(video_part("huge.mp4"))), 400, "480x360"),
        ("too long", body(user(video_part("long.mp4"))), 400, "over the limit of 30 s"),
        ("no usable stream", body(user(video_part("tone.wav")), audio=False), 400, "no video stream"),
        ("bad audio format", body(user({"type": "input_audio", "input_audio": {"data": "AAAA", "format": "exe"}})),
         400, "format"),
        ("frames zero", body(user(video_part()), frames=0), 400, "frames must be between 1 and 32"),
        ("frames too many", body(user(video_part()), frames=99), 400, "frames must be between 1 and 32"),
        ("negative temperature", body(user(video_part()), temperature=-1), 400, "temperature"),
        ("top_p zero", body(user(video_part()), top_p=0), 400, "top_p"),
        ("n=2", body({"role": "user", "content": "a"}, n=2), 400, "only one choice"),
        ("tools", body({"role": "user", "content": "a"}, tools=[{"type": "function"}]), 400, "tool calling"),
        ("five stops", body({"role": "user", "content": "a"}, stop=["a", "b", "c", "d", "e"]), 400, "at most 4"),
        ("max_tokens over context", body({"role": "user", "content": "a"}, max_tokens=100_000), 400, "context"),
        ("prompt over context", body({"role": "user", "content": "word " * 3000}), 400, "context"),
        ("empty question", body({"role": "user", "content": ""}), 400, "empty"),
    ]


def test_bad_inputs_get_4xx_in_openai_format(server, media_root):
    url = f"{server[0]}/v1/chat/completions"
    failures = []
    with httpx.Client(timeout=WAIT_S) as http:
        for name, payload, status, fragment in _bad_cases(media_root):
            if isinstance(payload, bytes):
                response = http.post(url, content=payload, headers={"content-type": "application/json"})
            else:
                response = http.post(url, json=payload)
            error = response.json().get("error", {}) if response.headers.get("content-type", "").startswith(
                "application/json") else {}
            if response.status_code != status or fragment not in error.get("message", "") or \
                    set(error) != {"message", "type", "param", "code"}:
                failures.append(f"{name}: {response.status_code} {response.text[:200]}")
        assert not failures, "\n".join(failures)
        assert http.get(f"{server[0]}/v1/nothing-here").json()["error"]["type"] == "not_found_error"
        assert http.get(f"{server[0]}/health").json()["status"] == "ok"  # still serving
        ok = http.post(url, json={"messages": [user(video_part())], "max_tokens": 2, "temperature": 0})
        assert ok.status_code == 200


def test_openai_client_raises_typed_errors(client):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="m", messages=[user(video_part(), video_part("other.mp4"))])
    assert "one media item" in err.value.message
    with pytest.raises(openai.PermissionDeniedError):
        client.chat.completions.create(model="m", messages=[user(video_part("../outside.mp4"))])


def test_internal_error_is_500_and_the_server_keeps_serving(client, tiny_pipeline, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("simulated bug")

    with monkeypatch.context() as patch:
        patch.setattr(tiny_pipeline, "prompt_ids", broken)
        with pytest.raises(openai.InternalServerError) as err:
            client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
        assert "internal error (RuntimeError)" in err.value.message and err.value.body["type"] == "server_error"
    reply = client.chat.completions.create(model="m", max_tokens=2, messages=[{"role": "user", "content": "hi"}])
    assert reply.choices[0].message.content is not None


# ------------------------------------------------------------------------------------------ concurrency
def _in_thread(fn, results: dict, key) -> threading.Thread:
    def run():
        try:
            results[key] = fn()
        except Exception as err:  # recorded and asserted on by the test
            results[key] = err

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_concurrent_requests_are_batched_and_not_mixed_up(server, client):
    _, scheduler = server
    requests = {
        "video": dict(model="m", temperature=0, max_tokens=20, messages=[user(video_part(), text="What moves?")]),
        "text": dict(model="m", temperature=0, max_tokens=14, seed=3, messages=[{"role": "user", "content": "Hello!"}]),
        "other": dict(model="m", temperature=0, max_tokens=9, messages=[user(video_part("other.mp4"), text="Colour?")]),
    }
    alone = {k: client.chat.completions.create(**r).choices[0].message.content for k, r in requests.items()}
    batches_before = scheduler.stats.batches
    scheduler.pause()
    results: dict = {}
    try:
        threads = [_in_thread(lambda r=r: client.chat.completions.create(**r), results, k) for k, r in requests.items()]
        wait_until(lambda: scheduler.queued == len(requests), WAIT_S, "all requests queued")
    finally:
        scheduler.resume()
    for thread in threads:
        thread.join(WAIT_S)
    for key in requests:
        assert not isinstance(results[key], Exception), results[key]
        assert results[key].choices[0].message.content == alone[key], key
    assert scheduler.stats.batches == batches_before + 1  # all three decoded in one engine batch
    assert scheduler.stats.batch_sizes[-1] == len(requests) and scheduler.stats.max_batch_seen >= len(requests)


def test_full_queue_answers_429_with_retry_after(server):
    url, scheduler = server
    body = {"model": "m", "max_tokens": 2, "messages": [{"role": "user", "content": "queued"}]}
    scheduler.pause()
    results: dict = {}
    try:
        threads = [_in_thread(lambda: httpx.post(f"{url}/v1/chat/completions", json=body, timeout=WAIT_S), results, i)
                   for i in range(MAX_QUEUE)]
        wait_until(lambda: scheduler.queued == MAX_QUEUE, WAIT_S, "queue filled")
        refused = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=WAIT_S)
        assert refused.status_code == 429
        assert int(refused.headers["retry-after"]) >= 1
        error = refused.json()["error"]
        assert error["type"] == "rate_limit_error" and error["code"] == "queue_full" and "busy" in error["message"]
    finally:
        scheduler.resume()
    for thread in threads:
        thread.join(WAIT_S)
    assert [results[i].status_code for i in range(MAX_QUEUE)] == [200] * MAX_QUEUE


def _cancel_records(scheduler) -> list:
    return [r for r in scheduler.stats.jobs if r.finish_reason == "cancelled"]


def test_stream_disconnect_cancels_generation(server):
    url, scheduler = server
    cancelled_before = len(_cancel_records(scheduler))
    body = {"model": "m", "stream": True, "temperature": 0, "max_tokens": LONG_GENERATION,
            "messages": [{"role": "user", "content": "Tell me a very long story."}]}
    with httpx.Client(timeout=WAIT_S) as http, http.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: ") and json.loads(line[6:])["choices"][0]["delta"].get("content"):
                break  # first text arrived: generation is running; now hang up
    wait_until(lambda: len(_cancel_records(scheduler)) > cancelled_before, WAIT_S, "the scheduler to see the cancel")
    record = _cancel_records(scheduler)[-1]
    assert record.completion_tokens < LONG_GENERATION


def test_plain_request_disconnect_cancels_generation(server):
    url, scheduler = server
    cancelled_before = len(_cancel_records(scheduler))
    body = {"model": "m", "temperature": 0, "max_tokens": LONG_GENERATION,
            "messages": [{"role": "user", "content": "Another very long story, please."}]}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{url}/v1/chat/completions", json=body, timeout=httpx.Timeout(WAIT_S, read=1.0))
    wait_until(lambda: len(_cancel_records(scheduler)) > cancelled_before, WAIT_S, "the scheduler to see the cancel")
    assert _cancel_records(scheduler)[-1].completion_tokens < LONG_GENERATION


def test_per_request_timeout(tiny_pipeline):
    app = create_app(tiny_pipeline, ServeSettings(timeout_s=1.0))
    body = {"model": "m", "temperature": 0, "max_tokens": LONG_GENERATION,
            "messages": [{"role": "user", "content": "A story that never ends."}]}
    with running_server(app) as url:
        response = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=WAIT_S)
        assert response.status_code == 504 and "--timeout" in response.json()["error"]["message"]
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=WAIT_S)
        with pytest.raises(openai.APIError) as err:
            stream_text(client, **body)
        assert "--timeout" in str(err.value)
        wait_until(lambda: app.state.scheduler.stats.timed_out == 2, WAIT_S, "both timeouts recorded")
