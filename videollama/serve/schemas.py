"""OpenAI chat-completions wire format: request and response models, and the error shape.

Requests follow OpenAI's ``POST /v1/chat/completions`` body. Content parts are ``text``,
``image_url`` ``{url}``, ``video_url`` ``{url}`` (vLLM's convention for video) and ``input_audio``
``{data, format}``; extra fields ``frames``, ``audio`` and ``video_sampling`` control media reading.
A response about a video carries the extension field ``video_timeline`` (the windows' time ranges
and the sampled frame times). Responses are
``chat.completion`` objects, or ``chat.completion.chunk`` objects sent as server-sent events.

Every error, whatever its cause, is sent as ``{"error": {"message", "type", "param", "code"}}``
with a 4xx/5xx status: :class:`ServeError` carries those four fields plus the status.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_serializer

from ..engine import REPETITION_PENALTY_MAX, REPETITION_PENALTY_MIN, SEED_MAX, SEED_MIN

MAX_STOP_SEQUENCES = 4  # OpenAI's limit on ``stop``


# ------------------------------------------------------------------------------------------ errors
class ServeError(Exception):
    """An HTTP error in OpenAI's format. ``message`` is one line a user can act on."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = " ".join(str(message).split())
        self.type = type
        self.code = code
        self.param = param
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad_request(message: str, *, param: str | None = None, code: str | None = None) -> ServeError:
    return ServeError(400, message, param=param, code=code)


# ------------------------------------------------------------------------------------------ request
# Strict types, as OpenAI's API: "stream": "yes", "max_tokens": "5" or 5.0 are refused, not coerced.
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class MediaURL(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)  # e.g. OpenAI's ``detail`` on images: accepted, not used
    url: str = Field(min_length=1)


class ImagePart(_Strict):
    type: Literal["image_url"]
    image_url: MediaURL


class VideoPart(_Strict):
    type: Literal["video_url"]
    video_url: MediaURL


class InputAudio(_Strict):
    data: str = Field(min_length=1, description="base64 audio file bytes")
    format: str = Field(min_length=1, description="file format: wav, mp3, flac, m4a, ogg, ...")


class AudioPart(_Strict):
    type: Literal["input_audio"]
    input_audio: InputAudio


ContentPart = Annotated[TextPart | ImagePart | VideoPart | AudioPart, Field(discriminator="type")]
MediaPart = ImagePart | VideoPart | AudioPart


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)  # e.g. ``name``
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    include_usage: bool = False


class VideoSamplingField(_Strict):
    """Extension ``video_sampling``: how densely a video is read (long videos go in windows of 32 frames).

    ``frames`` (a count, up to the server's ``max_sampled_frames``) or ``fps`` (a rate, capped by
    ``max_frames``), ``max_windows`` (merge the most similar frames to fit that many windows) and
    ``window_frames`` (frames per window, at most the model's 32: shorter windows, finer times; default the
    model's own)."""

    frames: int | None = Field(default=None, ge=1)
    fps: float | None = Field(default=None, gt=0)
    max_frames: int | None = Field(default=None, ge=1)
    max_windows: int | None = Field(default=None, ge=1)
    window_frames: int | None = Field(default=None, ge=1)


class ChatCompletionRequest(BaseModel):
    """The request body. Unknown OpenAI fields that change nothing here (``user``, ``metadata``...) are ignored."""

    model_config = ConfigDict(extra="ignore", strict=True)

    model: str | None = None
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    seed: int | None = Field(default=None, ge=SEED_MIN, le=SEED_MAX)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(default=1, ge=1)
    # extensions (vLLM-style extra fields)
    frames: int | None = Field(default=None, description="frames sampled from a video (1..max_frames)")
    audio: bool | None = Field(default=None, description="use the audio track of a video (default true)")
    video_sampling: VideoSamplingField | None = Field(default=None, description="long videos: frames/fps/windows")
    top_k: int | None = Field(default=None, ge=0)
    repetition_penalty: float | None = Field(default=None, ge=REPETITION_PENALTY_MIN, le=REPETITION_PENALTY_MAX)
    # OpenAI features this model does not have: refused when set to a non-default value
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    functions: list[Any] | None = None
    response_format: dict[str, Any] | None = None

    def stop_sequences(self) -> tuple[str, ...]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > MAX_STOP_SEQUENCES:
            raise bad_request(f"stop: at most {MAX_STOP_SEQUENCES} sequences, got {len(stops)}", param="stop")
        if any(not s for s in stops):
            raise bad_request("stop: sequences must be non-empty strings", param="stop")
        return tuple(stops)

    def check_supported(self) -> None:
        """Refuse OpenAI options this server cannot honour (instead of silently ignoring them)."""
        if self.n != 1:
            raise bad_request(f"n={self.n}: only one choice per request is supported", param="n")
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name) not in (None, 0, 0.0):
                raise bad_request(f"{name} is not supported (use repetition_penalty)", param=name)
        if self.logprobs or self.top_logprobs:
            raise bad_request("logprobs are not supported", param="logprobs")
        for name in ("tools", "functions"):
            if getattr(self, name):
                raise bad_request(f"{name}: tool calling is not supported by this model", param=name)
        if self.response_format and self.response_format.get("type", "text") != "text":
            raise bad_request("response_format: only plain text answers are supported", param="response_format")


def parse_request(payload: Any) -> ChatCompletionRequest:
    """Validate a decoded JSON body; a ValidationError becomes one clear 400 line."""
    if not isinstance(payload, dict):
        raise bad_request(f"request body must be a JSON object, got {type(payload).__name__}")
    try:
        return ChatCompletionRequest.model_validate(payload)
    except ValidationError as err:
        message, param = describe_validation_error(err)
        raise bad_request(message, param=param) from None


_UNION_LABELS = ("str", "none", "int", "float", "bool")  # whole location parts naming a union branch
_UNION_PREFIXES = ("list[", "function-", "tagged-union[")


def describe_validation_error(err: ValidationError) -> tuple[str, str]:
    """(one-line message, dotted parameter path) for the most specific error pydantic reported.

    A ``str | list[parts]`` field reports one error per union branch; the deepest location is the
    one that names the actual problem (e.g. an unknown content-part type)."""
    errors = err.errors(include_url=False)

    def path(e: dict) -> list[str]:
        parts = [str(p) for p in e["loc"]]
        return [p for p in parts if p.lower() not in _UNION_LABELS and not p.lower().startswith(_UNION_PREFIXES)]

    best = max(errors, key=lambda e: len(path(e)))
    where = ".".join(path(best)) or "body"
    message = best["msg"]
    if best["type"] == "union_tag_invalid":
        tag = best.get("ctx", {}).get("tag")
        expected = best.get("ctx", {}).get("expected_tags", "")
        message = f"unknown content part type {tag!r}; supported types: {expected}"
    elif best["type"] == "literal_error" and where.endswith("role"):
        message = f"{message} (got {best.get('input')!r})"
    elif best["type"] == "extra_forbidden":
        message = "unknown field"
    return f"{where}: {message}", where


# ------------------------------------------------------------------------------------------ response
class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int) -> "Usage":
        return cls(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                   total_tokens=prompt_tokens + completion_tokens)


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    logprobs: None = None
    finish_reason: Literal["stop", "length"]


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None

    @model_serializer
    def _only_set(self) -> dict[str, Any]:  # OpenAI omits absent delta fields
        return {k: v for k, v in (("role", self.role), ("content", self.content)) if v is not None}


class ChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    logprobs: None = None
    finish_reason: Literal["stop", "length"] | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "videollama"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())
