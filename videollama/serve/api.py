"""The OpenAI-compatible HTTP API: ``create_app(pipeline, settings)`` returns a FastAPI app.

Routes: ``POST /v1/chat/completions`` (plain JSON or server-sent events), ``GET /v1/models``,
``GET /v1/models/{id}``, ``GET /health``. Run it with ``videollama serve`` or any ASGI server::

    settings = ServeSettings(media_root=Path("clips"))
    app = create_app(Pipeline.from_pretrained("model/"), settings)
    uvicorn.Server(server_config(app, host="127.0.0.1", port=8000, settings=settings)).run()  # .connections

One request, in order: check the content type (415 unless JSON) -> read the body (size-capped;
``body``) -> on a worker thread: decode and validate it (400 with the offending field), build the
conversation (roles, one media item), check its text length (400 before any tokenising) -> take a
queue slot (429 + Retry-After when full) -> fetch, check and encode the media on the media thread
(4xx for anything wrong with them; encoded features are cached by content hash) -> tokenise and check
the context length on a worker thread -> queue the engine request -> stream or collect tokens. No
CPU-heavy step runs on the event loop, so ``/health`` and other streams keep answering. A client
that goes away, or the per-request timeout, cancels the request in the scheduler. Any error is
answered in OpenAI's ``{"error": {...}}`` format and the server keeps serving.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..engine import GenerationConfig
from ..engine import Request as EngineRequest
from ..inference import MediaFeatures, MediaOptions, Pipeline
from .answer import AnswerText, make_stop_check
from .body import check_content_type, decode_json, read_body
from .connections import BodyTimeoutMiddleware, ConnectionGuard
from .media_input import ContentLimits, MediaLimits, check_media, describe_media_error, materialize, new_workdir
from .scheduler import JobChannel, QueueFull, Scheduler, Ticket
from .schemas import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChunkChoice,
    Delta,
    MediaPart,
    ModelCard,
    ModelList,
    ServeError,
    TextPart,
    Usage,
    bad_request,
    completion_id,
    now,
    parse_request,
)
from .settings import ServeSettings

logger = logging.getLogger(__name__)

DISCONNECT_POLL_S = 0.25  # how often a non-streamed request checks whether its client is still there
DEFAULT_CONTEXT_TOKENS = 4096  # for the text limit of a model whose config names no context length
SYSTEM_ROLES = ("system", "developer")


# ------------------------------------------------------------------------------------ conversation
@dataclass
class Conversation:
    system: str | None
    turns: list[tuple[str, str | None]]  # [(user, assistant), ..., (user, None)]
    media: MediaPart | None


def _split_content(content, where: str) -> tuple[str, list[tuple[MediaPart, str]]]:
    if content is None or isinstance(content, str):
        return content or "", []
    texts, media = [], []
    for j, part in enumerate(content):
        if isinstance(part, TextPart):
            texts.append(part.text)
        else:
            media.append((part, f"{where}.content.{j}"))
    return "\n".join(texts), media


def build_conversation(req: ChatCompletionRequest) -> Conversation:
    """Messages -> (system prompt, turns, the one media item). Earlier assistant messages become history."""
    system: list[str] = []
    turns: list[tuple[str, str | None]] = []
    media: list[tuple[MediaPart, str]] = []
    user: list[str] | None = None
    for i, message in enumerate(req.messages):
        where = f"messages.{i}"
        text, parts = _split_content(message.content, where)
        if message.role in SYSTEM_ROLES:
            if parts:
                raise bad_request(f"{where}: a {message.role} message may hold text only", param=where)
            system.append(text)
        elif message.role == "user":
            media += parts
            user = [*(user or []), text]
        else:  # assistant
            if parts:
                raise bad_request(f"{where}: an assistant message may hold text only", param=where)
            if user is None:
                raise bad_request(f"{where}: an assistant message must follow a user message", param=where)
            turns.append(("\n".join(user).strip(), text.strip()))
            user = None
    if user is None:
        raise bad_request("the last message must come from the user", param="messages")
    turns.append(("\n".join(user).strip(), None))
    if len(media) > 1:
        raise bad_request(
            f"this model takes one media item (a video, an image or an audio clip) per conversation; got "
            f"{len(media)} ({', '.join(where for _, where in media)})", param=media[1][1], code="too_many_media")
    if not turns[-1][0] and not media:
        raise bad_request("the user message is empty", param="messages")
    return Conversation(system="\n".join(system) if system else None, turns=turns, media=media[0][0] if media else None)


@dataclass
class ParsedRequest:
    request: ChatCompletionRequest
    conversation: Conversation
    stops: tuple[str, ...]  # the request's own stop strings
    options: MediaOptions | None  # how to read its media item (None: no media)


def text_chars(conv: Conversation, stops: tuple[str, ...]) -> int:
    """Characters of text the prompt will hold (system, every turn, stop strings)."""
    turns = sum(len(user) + len(answer or "") for user, answer in conv.turns)
    return len(conv.system or "") + turns + sum(len(s) for s in stops)


# ------------------------------------------------------------------------------------ the app
class ChatService:
    """Everything a chat-completions request needs; owned by the app (``app.state.service``)."""

    def __init__(self, pipeline: Pipeline, settings: ServeSettings, scheduler: Scheduler | None = None) -> None:
        self.pipeline = pipeline
        self.settings = settings
        self.scheduler = scheduler or Scheduler(pipeline.engine, max_queue=settings.max_queue,
                                                max_batch=settings.max_batch, timeout_s=settings.timeout_s,
                                                batch_wait_s=settings.batch_wait_ms / 1000)
        self.media_pool = ThreadPoolExecutor(settings.media_workers, thread_name_prefix="videollama-media")
        self.workdir = new_workdir()
        self.media_limits = MediaLimits(max_bytes=settings.max_media_bytes, media_root=settings.media_root,
                                        allow_remote=settings.allow_remote_media,
                                        remote_timeout_s=settings.remote_timeout_s, max_redirects=settings.max_redirects)
        self.created = now()
        self.max_text_chars = settings.max_text_chars or default_max_text_chars(pipeline)

    def close(self) -> None:
        self.scheduler.stop()
        self.media_pool.shutdown(wait=False, cancel_futures=True)
        shutil.rmtree(self.workdir, ignore_errors=True)

    # -------------------------------------------------------------- pieces of one request
    def parse(self, body: bytes) -> ParsedRequest:
        """Body bytes -> a checked request and conversation (CPU work: the handler runs it on a thread)."""
        req = parse_request(decode_json(body))
        req.check_supported()
        stops = req.stop_sequences()
        conv = build_conversation(req)
        chars = text_chars(conv, stops)
        if chars > self.max_text_chars:
            raise ServeError(400, f"the messages hold {chars:,} characters of text; this server accepts at most "
                             f"{self.max_text_chars:,} (--max-text-chars; the model's context is "
                             f"{self.pipeline.engine.max_positions} tokens)", param="messages", code="text_too_long")
        return ParsedRequest(req, conv, stops, self.media_options(req) if conv.media is not None else None)

    def media_options(self, req: ChatCompletionRequest) -> MediaOptions:
        s = self.settings
        frames = s.default_frames if req.frames is None else req.frames
        if not 1 <= frames <= s.max_frames:
            raise bad_request(f"frames must be between 1 and {s.max_frames}, got {frames}", param="frames")
        use_audio = True if req.audio is None else req.audio
        if req.video_sampling is not None:
            return self._sampled_options(req, use_audio)
        return MediaOptions(num_frames=frames, use_audio=use_audio,
                            max_bytes=s.max_media_bytes, max_duration=s.max_duration_s)

    def _sampled_options(self, req: ChatCompletionRequest, use_audio: bool) -> MediaOptions:
        """MediaOptions of the ``video_sampling`` extension (long videos, read in windows)."""
        s, vs = self.settings, req.video_sampling
        if req.frames is not None:
            raise bad_request("give frames or video_sampling, not both", param="video_sampling")
        if vs.frames is not None and vs.frames > s.max_sampled_frames:
            raise bad_request(f"video_sampling.frames must be at most {s.max_sampled_frames}, got {vs.frames}",
                              param="video_sampling.frames")
        if vs.max_frames is not None and vs.max_frames > s.max_sampled_frames:
            raise bad_request(f"video_sampling.max_frames must be at most {s.max_sampled_frames}, got {vs.max_frames}",
                              param="video_sampling.max_frames")
        model_frames = self.pipeline.model.config.max_frames
        if vs.window_frames is not None and vs.window_frames > model_frames:
            raise bad_request(f"video_sampling.window_frames must be at most the model's max_frames ({model_frames}), "
                              f"got {vs.window_frames}", param="video_sampling.window_frames")
        try:
            return MediaOptions(num_frames=vs.frames, fps=vs.fps, max_frames=vs.max_frames or s.max_sampled_frames,
                                max_windows=vs.max_windows, window_frames=vs.window_frames, use_audio=use_audio,
                                max_bytes=s.max_media_bytes, max_duration=s.max_duration_s)
        except ValueError as err:
            raise bad_request(f"video_sampling: {err}", param="video_sampling") from None

    def prepare_media(self, part: MediaPart, options: MediaOptions) -> MediaFeatures:
        """Fetch, check and encode one media item (runs on the media thread)."""
        from ..media.errors import MediaError

        file = materialize(part, self.media_limits, self.workdir)
        try:
            check_media(file, ContentLimits(
                max_bytes=self.settings.max_media_bytes, max_pixels=self.settings.max_pixels,
                max_duration_s=self.settings.max_duration_s, use_audio=options.use_audio,
                model_has_audio=bool(self.pipeline.model.config.with_audio),
                model_has_vision=bool(self.pipeline.model.config.with_vision)))
            try:
                return self.pipeline.encode_media(file.path, options)
            except MediaError as err:
                raise ServeError(400, describe_media_error(err, file), code="invalid_media") from None
            except Exception as err:
                if _is_decode_error(err) or (file.kind == "image" and isinstance(err, OSError)):
                    raise ServeError(400, f"{file.source}: cannot decode the media ({describe_media_error(err, file)})",
                                     code="invalid_media") from None
                raise
        finally:
            file.cleanup()

    def generation(self, req: ChatCompletionRequest, prompt_tokens: int) -> GenerationConfig:
        s = self.settings
        temperature = s.default_temperature if req.temperature is None else req.temperature
        greedy = temperature == 0
        requested = req.max_completion_tokens or req.max_tokens
        context = self.pipeline.engine.max_positions
        room = None if context is None else context - prompt_tokens
        if room is not None and room < 1:
            raise ServeError(400, f"the prompt has {prompt_tokens} tokens (media placeholders included); the model's "
                             f"context is {context} tokens", param="messages", code="context_length_exceeded")
        max_new = requested or (s.default_max_tokens if room is None else min(s.default_max_tokens, room))
        try:
            return GenerationConfig(
                max_new_tokens=max_new, do_sample=not greedy, temperature=1.0 if greedy else temperature,
                top_p=s.default_top_p if req.top_p is None else req.top_p, top_k=req.top_k or 0,
                repetition_penalty=req.repetition_penalty or 1.0, seed=req.seed)
        except ValueError as err:
            raise bad_request(str(err)) from None

    def engine_request(self, media: MediaFeatures | None, conv: Conversation, req: ChatCompletionRequest,
                       stops: tuple[str, ...]) -> EngineRequest:
        try:
            ids = self.pipeline.prompt_ids(media, conv.turns, conv.system)
        except ValueError as err:
            raise bad_request(str(err), param="messages") from None
        request = EngineRequest(input_ids=ids, video_features=None if media is None else media.video,
                                audio_features=None if media is None else media.audio,
                                generation=self.generation(req, len(ids)),
                                stop=make_stop_check(self.pipeline.tokenizer, stops))
        try:
            self.pipeline.engine.check_length(request)
        except ValueError as err:
            raise ServeError(400, f"{err}; lower max_tokens or shorten the conversation", param="max_tokens",
                             code="context_length_exceeded") from None
        return request


def with_timeline(body: dict, media: MediaFeatures | None) -> dict:
    """``body`` plus the extension field ``video_timeline`` when the media are a video: its windows' time
    ranges and labels, and the sampled frame times (``Timeline.to_dict``; docs/serving.md)."""
    if media is not None and media.timeline is not None:
        body["video_timeline"] = media.timeline.to_dict()
    return body


def default_max_text_chars(pipeline: Pipeline) -> int:
    """Text longer than the context x the vocabulary's longest token (in characters) can never fit the context."""
    longest = max(len(token) for token in pipeline.tokenizer.get_vocab())
    context = pipeline.engine.max_positions or DEFAULT_CONTEXT_TOKENS
    return context * longest


def _is_decode_error(err: Exception) -> bool:
    try:
        import av

        return isinstance(err, av.FFmpegError)
    except ImportError:  # pragma: no cover - av is a core dependency
        return False


def create_app(pipeline: Pipeline, settings: ServeSettings | None = None, *, scheduler: Scheduler | None = None) -> FastAPI:
    """The API app. The scheduler's worker starts with the app and stops (cancelling all work) with it.

    Serve it with ``uvicorn.Server(connections.server_config(app, ...))`` to get the header timeout and the
    per-client connection cap as well (``videollama serve`` does)."""
    service = ChatService(pipeline, settings or ServeSettings(), scheduler)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service.scheduler.start()
        try:
            yield
        finally:
            service.close()

    app = FastAPI(title="videollama", version="1", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.service = service
    app.state.scheduler = service.scheduler
    app.state.connections = guard = ConnectionGuard.from_settings(service.settings)
    app.add_middleware(BodyTimeoutMiddleware, guard=guard)
    _install_error_handlers(app)

    @app.get("/health")
    async def health() -> dict:
        sched = service.scheduler
        return {"status": "ok", "model": service.settings.model_name,
                "queue": {"pending": sched.pending, "running": sched.running, "max_queue": sched.max_queue,
                          "max_batch": sched.max_batch},
                "scheduler": sched.stats.summary(), "connections": guard.stats.summary()}

    @app.get("/v1/models")
    async def models() -> dict:
        return ModelList(data=[ModelCard(id=service.settings.model_name, created=service.created)]).model_dump()

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str) -> dict:
        if model_id != service.settings.model_name:
            raise ServeError(404, f"model {model_id!r} not found; this server serves {service.settings.model_name!r}",
                             code="model_not_found", param="model")
        return ModelCard(id=model_id, created=service.created).model_dump()

    @app.post("/v1/chat/completions")
    async def chat_completions(http: Request):
        try:
            return await _chat_completions(http)
        except (ServeError, asyncio.CancelledError):
            raise
        except Exception as err:  # answered here: a generic handler would also drop the connection
            logger.exception("unexpected error while serving a chat completion")
            raise _internal_error(err) from None

    async def _chat_completions(http: Request):
        check_content_type(http)
        body = await read_body(http, service.settings.max_body_bytes)
        parsed = await asyncio.to_thread(service.parse, body)  # JSON decoding and validation are CPU work
        req, conv, stops, options = parsed.request, parsed.conversation, parsed.stops, parsed.options
        try:
            ticket = service.scheduler.reserve()
        except QueueFull as err:
            raise ServeError(429, str(err), type="rate_limit_error", code="queue_full",
                             headers={"Retry-After": str(err.retry_after)}) from None
        try:
            media = None
            if conv.media is not None:
                media = await _with_deadline(ticket, asyncio.wrap_future(
                    service.media_pool.submit(service.prepare_media, conv.media, options)))
            all_stops = tuple(pipeline.template.stop_strings) + stops
            engine_request = await asyncio.to_thread(service.engine_request, media, conv, req, all_stops)
            channel = JobChannel()
            job = service.scheduler.submit(ticket, engine_request, channel.emit)
        finally:
            service.scheduler.release(ticket)  # no-op once submitted
        headers = {"x-videollama-notice": media.notice} if media is not None and media.notice else {}
        reply = _Reply(service, job, channel, AnswerText(pipeline.tokenizer, all_stops), req, media)
        if req.stream:
            return StreamingResponse(reply.sse(), media_type="text/event-stream",
                                     headers={**headers, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        completion = await reply.collect(http)
        return JSONResponse(with_timeline(completion.model_dump(), media), headers=headers)

    return app


async def _with_deadline(ticket: Ticket, awaitable):
    try:
        return await asyncio.wait_for(awaitable, timeout=max(0.0, ticket.deadline - time.monotonic()))
    except asyncio.TimeoutError:
        raise ServeError(504, "reading the media took longer than the server's time limit (--timeout)",
                         type="timeout_error", code="timeout") from None


class _ClientGone(Exception):
    pass


class _Reply:
    """Turns one job's token events into a chat.completion or a stream of chunks."""

    def __init__(self, service: ChatService, job, channel: JobChannel, answer: AnswerText, req: ChatCompletionRequest,
                 media: MediaFeatures | None = None):
        self.service, self.job, self.channel, self.answer, self.req = service, job, channel, answer, req
        self.media = media
        self.id = completion_id()
        self.created = now()
        self.model = service.settings.model_name
        self._next_check = 0.0  # when to ask again whether the client is still connected

    def _usage(self) -> Usage:
        return Usage.of(self.job.prompt_tokens, len(self.job.tokens))

    async def _next(self, http: Request | None) -> tuple[str, object]:
        """Next event from the worker; enforces the deadline and (when ``http`` is given) watches the client."""
        while True:
            now = time.monotonic()
            left = self.job.deadline - now
            if left <= 0:
                self.service.scheduler.cancel(self.job, "timeout")
                raise ServeError(504, f"the request took longer than the server's limit of "
                                 f"{self.service.settings.timeout_s:g} s (--timeout)", type="timeout_error", code="timeout")
            if http is not None and now >= self._next_check:
                self._next_check = now + DISCONNECT_POLL_S
                if await http.is_disconnected():
                    raise _ClientGone
            try:
                return await self.channel.get(min(left, DISCONNECT_POLL_S) if http is not None else left)
            except asyncio.TimeoutError:
                continue

    def _finish_reason(self, reason: str) -> str:
        return "stop" if self.answer.stopped else reason

    async def collect(self, http: Request) -> ChatCompletion:
        try:
            while True:
                kind, value = await self._next(http)
                if kind == "token":
                    self.answer.push(value)
                elif kind == "error":
                    raise value
                elif value == "cancelled":
                    raise _ClientGone
                else:
                    self.answer.finish()
                    return ChatCompletion(
                        id=self.id, created=self.created, model=self.model, usage=self._usage(),
                        choices=[Choice(message=AssistantMessage(content=self.answer.text),
                                        finish_reason=self._finish_reason(value))])
        except _ClientGone:
            raise ServeError(499, "client closed the request", code="client_closed") from None
        finally:
            self.service.scheduler.cancel(self.job)  # no-op when finished

    def _chunk(self, delta: Delta, finish_reason: str | None = None, *, timeline: bool = False) -> str:
        chunk = ChatCompletionChunk(id=self.id, created=self.created, model=self.model,
                                    choices=[ChunkChoice(delta=delta, finish_reason=finish_reason)]).model_dump()
        return f"data: {json.dumps(with_timeline(chunk, self.media) if timeline else chunk)}\n\n"

    async def sse(self) -> AsyncIterator[str]:
        """Server-sent events in OpenAI's chunk format; a disconnect cancels the generator (and the job)."""
        try:
            yield self._chunk(Delta(role="assistant", content=""), timeline=True)  # the first chunk carries it
            while True:
                try:
                    kind, value = await self._next(None)
                except ServeError as err:  # timeout: headers are sent, so say it in the stream
                    yield f"data: {json.dumps(err.body())}\n\n"
                    break
                if kind == "token":
                    if delta := self.answer.push(value):
                        yield self._chunk(Delta(content=delta))
                elif kind == "error":
                    yield f"data: {json.dumps(value.body())}\n\n"
                    break
                elif value == "cancelled":
                    break
                else:
                    if delta := self.answer.finish():
                        yield self._chunk(Delta(content=delta))
                    yield self._chunk(Delta(), self._finish_reason(value))
                    if self.req.stream_options is not None and self.req.stream_options.include_usage:
                        usage = ChatCompletionChunk(id=self.id, created=self.created, model=self.model, choices=[],
                                                    usage=self._usage())
                        yield f"data: {json.dumps(usage.model_dump())}\n\n"
                    break
            yield "data: [DONE]\n\n"
        finally:
            self.service.scheduler.cancel(self.job)  # no-op when finished; stops generation on disconnect


# ------------------------------------------------------------------------------------ errors
def _error_response(err: ServeError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServeError)
    async def serve_error(_, err: ServeError):
        return _error_response(err)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_, err: StarletteHTTPException):
        kind = "not_found_error" if err.status_code == 404 else "invalid_request_error"
        return _error_response(ServeError(err.status_code, str(err.detail), type=kind, headers=dict(err.headers or {})))

    @app.exception_handler(RequestValidationError)
    async def validation_error(_, err: RequestValidationError):
        first = err.errors()[0] if err.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first["loc"])
        return _error_response(bad_request(f"{where}: {first['msg']}", param=where))

    @app.exception_handler(Exception)
    async def internal_error(_, err: Exception):
        logger.exception("unexpected error while serving a request")
        return _error_response(_internal_error(err))


def _internal_error(err: Exception) -> ServeError:
    return ServeError(500, f"internal error ({type(err).__name__}); the server logged the details", type="server_error")
