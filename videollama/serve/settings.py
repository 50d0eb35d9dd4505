"""Server settings: every limit the HTTP API enforces, in one typed dataclass.

The CLI (``videollama serve``) fills one from its flags; tests and the benchmark build one directly.
All limits are per request unless said otherwise. ``docs/serving.md`` lists them for users.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError

MODEL_MAX_FRAMES = 32  # rows of the model's frame-position table: no request may sample more
BYTES_PER_MB = 1024 * 1024
# Base64 turns 3 bytes into 4 characters; JSON around a data URL adds a little more.
BASE64_EXPANSION = 4 / 3
BODY_SLACK_BYTES = 1 * BYTES_PER_MB


@dataclass
class ServeSettings:
    """What the HTTP server accepts and how it schedules work."""

    model_name: str = "videollama"
    """Id reported by ``GET /v1/models`` and in every response's ``model`` field."""
    media_root: Path | None = None
    """Local media paths are allowed only below this folder (symlinks resolved). None: no local paths."""
    allow_remote_media: bool = False
    """Fetch http(s) media URLs (public addresses only, size- and time-limited). Off by default."""
    max_queue: int = 64
    """Requests admitted but not yet generating (media being prepared or waiting for a batch); more -> 429."""
    max_batch: int = 8
    """Requests decoded together in one engine batch (1 = one at a time)."""
    batch_wait_ms: float = 10.0
    """How long an idle worker waits for more requests to join the first one before starting a batch."""
    timeout_s: float = 300.0
    """Per-request wall-clock limit from admission to the last token; past it the request ends with 504."""
    max_media_mb: float = 64.0
    """Largest media file (data URL payload, download or local file)."""
    max_duration_s: float = 600.0
    """Longest video or audio accepted, in seconds."""
    max_frames: int = MODEL_MAX_FRAMES
    """Most frames one request may ask to sample (``frames`` field); never above the model's 32."""
    default_frames: int = 8
    """Frames sampled when the request does not say (the official setting)."""
    max_sampled_frames: int = 3600
    """Most frames one request may sample through ``video_sampling`` (read in windows of 32; the duration
    limit applies first)."""
    max_pixels: int = 8192 * 4320
    """Largest width x height of a video frame or image (8K); bigger media are refused before decoding."""
    remote_timeout_s: float = 20.0
    """Total time allowed to download one remote media URL."""
    max_redirects: int = 3
    """Redirects followed for a remote media URL (each target is checked again)."""
    default_max_tokens: int = 256
    """New tokens generated when the request gives no ``max_tokens`` (cut to fit the context)."""
    default_temperature: float = 1.0
    """Sampling temperature when the request gives none (the official demo's); 0 means greedy."""
    default_top_p: float = 0.9
    """Nucleus sampling mass when the request gives none (the official demo's)."""
    media_workers: int = 1
    """Threads that read and encode media (encodes of one content hash never run twice at once with 1)."""
    max_text_chars: int | None = None
    """Most characters of text in one request's messages, checked before tokenising (400 ``text_too_long``).
    None: the model's context (4096 tokens if its config names none) x its vocabulary's longest token, a length
    no text that fits the context can exceed."""
    header_timeout_s: float = 10.0
    """A connection must deliver a request's complete headers within this many seconds (then 408, closed)."""
    body_timeout_s: float = 120.0
    """A request's whole body must arrive within this many seconds of its headers (then 408, closed)."""
    keep_alive_s: float = 5.0
    """An idle keep-alive connection is closed after this many seconds (uvicorn's ``timeout_keep_alive``)."""
    max_connections_per_client: int | None = None
    """Open connections one client address may hold; one more is answered 429 and closed. None: twice what the
    server can work on at once (2 x (max_queue + max_batch)), room for a client pool's idle keep-alive ones."""
    max_connections: int = 1024
    """Open connections (and in-flight requests) in all; past it uvicorn answers 503 (``limit_concurrency``)."""
    max_header_kb: int = 64
    """Largest request line + headers (h11's ``max_incomplete_event_size``); bigger ones get 400."""

    def __post_init__(self) -> None:
        if self.media_root is not None:
            self.media_root = Path(self.media_root).expanduser().resolve()
            if not self.media_root.is_dir():
                raise UsageError(f"--media-root {self.media_root}: not a directory")
        if self.max_connections_per_client is None:
            self.max_connections_per_client = 2 * (self.max_queue + self.max_batch)
        for name in ("max_queue", "max_batch", "default_max_tokens", "media_workers", "max_connections_per_client",
                     "max_connections", "max_header_kb", "max_sampled_frames"):
            if getattr(self, name) < 1:
                raise UsageError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 1 <= self.max_frames <= MODEL_MAX_FRAMES:
            raise UsageError(f"max_frames must be between 1 and {MODEL_MAX_FRAMES}, got {self.max_frames}")
        if not 1 <= self.default_frames <= self.max_frames:
            raise UsageError(f"default_frames must be between 1 and max_frames ({self.max_frames})")
        if self.max_text_chars is not None and self.max_text_chars < 1:
            raise UsageError(f"max_text_chars must be >= 1, got {self.max_text_chars}")
        for name in ("timeout_s", "max_media_mb", "max_duration_s", "remote_timeout_s", "header_timeout_s",
                     "body_timeout_s", "keep_alive_s"):
            if getattr(self, name) <= 0:
                raise UsageError(f"{name} must be > 0, got {getattr(self, name)}")

    @property
    def max_media_bytes(self) -> int:
        return int(self.max_media_mb * BYTES_PER_MB)

    @property
    def max_body_bytes(self) -> int:
        """Largest request body: one media item as base64 plus the text around it."""
        return int(self.max_media_bytes * BASE64_EXPANSION) + BODY_SLACK_BYTES
