"""OpenAI media content parts -> a checked file on disk, ready for ``Pipeline.encode_media``.

Where media may come from, and what is refused:

* ``data:<mime>;base64,<data>`` URLs (and ``input_audio.data``): decoded into a private temporary
  file; the payload size is checked before decoding.
* local paths (``/abs/path``, ``relative/path`` or ``file://`` URLs): only with ``--media-root``, and
  only files whose real path (every symlink resolved) lies below that root; ``..`` and symlinks that
  lead out are refused with 403.
* ``http(s)://`` URLs: only with ``--allow-remote-media``. The host name is resolved once and every
  address must be public (no loopback, private, link-local, multicast or reserved ranges, IPv4-mapped
  forms included); the download then connects to that checked address (so a second DNS answer cannot
  point elsewhere), follows at most ``max_redirects`` redirects (each target checked again), and stops
  at ``max_media_mb`` bytes or ``remote_timeout_s`` seconds.

:func:`check_media` then reads only the headers (PyAV probe, or Pillow for images) and refuses
empty files, files with no usable stream, frames over ``max_pixels``, media over ``max_duration_s``
and a part holding another kind of media (an image in ``video_url`` or ``input_audio``, anything but
an image in ``image_url``) before any frame is decoded. The content decides, never the file name or
MIME type: an image named ``clip.mp4`` is an image, as the CLI reads it. Every refusal is a
:class:`ServeError` (4xx).
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
import socket
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, unquote_to_bytes, urljoin, urlsplit

from .schemas import AudioPart, ImagePart, MediaPart, ServeError

KIND_OF_PART = {"image_url": "image", "video_url": "video", "input_audio": "audio"}
DEFAULT_SUFFIX = {"image": ".png", "video": ".mp4", "audio": ".wav"}
MIME_SUFFIXES = {
    "image/png": ".png", "image/jpeg": ".jpg", "image/jpg": ".jpg", "image/gif": ".gif", "image/webp": ".webp",
    "image/bmp": ".bmp", "image/tiff": ".tiff",
    "video/mp4": ".mp4", "video/webm": ".webm", "video/quicktime": ".mov", "video/x-matroska": ".mkv",
    "video/x-msvideo": ".avi", "video/mpeg": ".mpg", "video/ogg": ".ogv",
    "audio/wav": ".wav", "audio/x-wav": ".wav", "audio/wave": ".wav", "audio/vnd.wave": ".wav", "audio/mpeg": ".mp3",
    "audio/mp3": ".mp3", "audio/flac": ".flac", "audio/x-flac": ".flac", "audio/mp4": ".m4a", "audio/x-m4a": ".m4a",
    "audio/aac": ".aac", "audio/ogg": ".ogg", "audio/opus": ".opus", "audio/webm": ".webm",
}
AUDIO_FORMATS = {"wav": ".wav", "mp3": ".mp3", "flac": ".flac", "m4a": ".m4a", "aac": ".aac", "ogg": ".ogg",
                 "opus": ".opus", "webm": ".webm", "mp4": ".m4a"}
DOWNLOAD_CHUNK_BYTES = 256 * 1024
REDIRECT_STATUSES = {301, 302, 303, 307, 308}


@dataclass(frozen=True)
class MediaLimits:
    """Where media may come from and how big it may be (filled from :class:`ServeSettings`)."""

    max_bytes: int
    media_root: Path | None = None
    allow_remote: bool = False
    remote_timeout_s: float = 20.0
    max_redirects: int = 3


@dataclass
class MediaFile:
    """A media item on disk. ``source`` names it in messages (never a temp path)."""

    path: Path
    kind: str  # "image" | "video" | "audio": what the content part declared
    source: str
    temporary: bool = False

    def cleanup(self) -> None:
        if self.temporary:
            self.path.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------- entry
def materialize(part: MediaPart, limits: MediaLimits, workdir: Path, *,
                resolver: Callable[[str, int], list[str]] | None = None,
                address_allowed: Callable[[str], bool] | None = None) -> MediaFile:
    """Turn one media content part into a file on disk (a temp file for data/remote sources)."""
    kind = KIND_OF_PART[part.type]
    if isinstance(part, AudioPart):
        fmt = part.input_audio.format.lower().lstrip(".")
        if fmt not in AUDIO_FORMATS:
            raise ServeError(400, f"input_audio.format {part.input_audio.format!r} is not supported; use one of "
                             f"{', '.join(sorted(AUDIO_FORMATS))}", param="input_audio.format")
        data = _decode_base64(part.input_audio.data, limits.max_bytes, "input_audio.data")
        return _write_temp(data, AUDIO_FORMATS[fmt], kind, "input_audio", workdir)
    url = (part.image_url if isinstance(part, ImagePart) else part.video_url).url.strip()
    param = f"{part.type}.url"
    scheme = urlsplit(url).scheme.lower()
    if scheme == "data":
        mime, data = parse_data_url(url, limits.max_bytes, param)
        return _write_temp(data, MIME_SUFFIXES.get(mime, DEFAULT_SUFFIX[kind]), kind, f"{kind} data URL", workdir)
    if scheme in ("http", "https"):
        path, mime = fetch_remote(url, limits, workdir, kind, resolver=resolver, address_allowed=address_allowed)
        return MediaFile(path, kind, source=_short(url), temporary=True)
    if scheme in ("", "file"):
        return MediaFile(resolve_local(url, limits.media_root, limits.max_bytes), kind, source=_short(url))
    raise ServeError(400, f"{param}: unsupported URL scheme {scheme!r}; use a data: URL, a path below the media "
                     "root, or http(s) (when enabled)", param=param)


# ------------------------------------------------------------------------------------------- data URLs
def parse_data_url(url: str, max_bytes: int, param: str = "url") -> tuple[str, bytes]:
    """(mime type, bytes) of a ``data:`` URL; size-checked before decoding."""
    header, sep, payload = url.partition(",")
    if not sep:
        raise ServeError(400, f"{param}: malformed data URL (no ',' before the data)", param=param)
    fields = header[len("data:"):].split(";")
    mime = fields[0].strip().lower() or "text/plain"
    if "base64" in (f.strip().lower() for f in fields[1:]):
        data = _decode_base64(payload, max_bytes, param)
    else:
        if len(payload) > 3 * max_bytes:  # each byte is at most 3 characters (%XX)
            raise _too_large(param, max_bytes)
        data = unquote_to_bytes(payload)
    if len(data) > max_bytes:
        raise _too_large(param, max_bytes)
    return mime, data


def _decode_base64(payload: str, max_bytes: int, param: str) -> bytes:
    if len(payload) * 3 // 4 > max_bytes + 3:  # 3: padding slack
        raise _too_large(param, max_bytes)
    compact = "".join(payload.split())  # tolerate line-wrapped base64
    try:
        data = base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise ServeError(400, f"{param}: not valid base64", param=param) from None
    if not data:
        raise ServeError(400, f"{param}: the media data is empty (0 bytes)", param=param)
    if len(data) > max_bytes:
        raise _too_large(param, max_bytes)
    return data


def _too_large(param: str, max_bytes: int) -> ServeError:
    return ServeError(413, f"{param}: media is larger than the limit of {max_bytes / 2**20:g} MB "
                      "(--max-media-mb)", param=param, code="media_too_large")


def _write_temp(data: bytes, suffix: str, kind: str, source: str, workdir: Path) -> MediaFile:
    path = workdir / f"{uuid.uuid4().hex}{suffix}"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return MediaFile(path, kind, source=source, temporary=True)


# ------------------------------------------------------------------------------------------- local paths
def resolve_local(ref: str, media_root: Path | None, max_bytes: int) -> Path:
    """The real path of a local media reference, refused unless it lies below ``media_root``."""
    if media_root is None:
        raise ServeError(403, "local media paths are disabled: start the server with --media-root DIR to allow "
                         "files below DIR, or send the media as a data: URL", code="media_path_forbidden")
    raw = unquote(urlsplit(ref).path) if ref.lower().startswith("file:") else ref
    if "\x00" in raw:
        raise ServeError(400, "media path contains a NUL character", code="invalid_media_path")
    try:
        candidate = Path(raw).expanduser() if raw.startswith("~") else Path(raw)
        if not candidate.is_absolute():
            candidate = media_root / candidate
        root = media_root.resolve()
        resolved = candidate.resolve()  # follows every symlink that exists
        if not resolved.is_relative_to(root):
            raise ServeError(403, f"{_short(ref)}: outside the media root (--media-root); only files below it are "
                             "served", code="media_path_forbidden")
        if not resolved.is_file():
            raise ServeError(404, f"{_short(ref)}: no such file below the media root", code="media_not_found")
        size = resolved.stat().st_size
    except (OSError, RuntimeError) as err:  # e.g. ENAMETOOLONG, a symlink loop: the path itself is unusable
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise ServeError(400, f"{_short(ref)}: not a usable media path ({reason})", code="invalid_media_path") from None
    if size > max_bytes:
        raise _too_large("media", max_bytes)
    return resolved


# ------------------------------------------------------------------------------------------- remote URLs
def is_public_address(ip: str) -> bool:
    """True for globally routable unicast addresses only (IPv4-mapped IPv6 judged as IPv4)."""
    addr = ipaddress.ip_address(ip.split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_global and not addr.is_multicast


def _resolve(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(info[4][0] for info in infos))


def fetch_remote(url: str, limits: MediaLimits, workdir: Path, kind: str = "video", *,
                 resolver: Callable[[str, int], list[str]] | None = None,
                 address_allowed: Callable[[str], bool] | None = None) -> tuple[Path, str]:
    """Download ``url`` to a temp file under the limits; (path, content type). See the module docstring."""
    import httpx

    if not limits.allow_remote:
        raise ServeError(403, "remote media URLs are disabled: start the server with --allow-remote-media, or "
                         "send the media as a data: URL", code="remote_media_disabled")
    resolver = resolver or _resolve
    address_allowed = address_allowed or is_public_address
    deadline = time.monotonic() + limits.remote_timeout_s
    source = _short(url)
    for _hop in range(limits.max_redirects + 1):
        parts = urlsplit(url)
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
            raise ServeError(400, f"{source}: only http(s) URLs with a host name can be fetched")
        host = parts.hostname
        port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
        try:
            addresses = resolver(host, port)
        except (OSError, UnicodeError) as err:
            raise ServeError(400, f"{source}: cannot resolve host {host!r} ({err})", code="remote_media_failed") from None
        refused = [a for a in addresses if not address_allowed(a)]
        if not addresses or refused:
            raise ServeError(403, f"{source}: refusing to fetch from {host} ({', '.join(refused) or 'no address'}): "
                             "loopback, private, link-local and reserved addresses are not allowed",
                             code="remote_media_forbidden")
        ip = addresses[0]
        ip_host = f"[{ip}]" if ":" in ip else ip
        pinned = parts._replace(netloc=f"{ip_host}:{port}").geturl()
        host_header = parts.netloc.rsplit("@", 1)[-1]
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _remote_timeout(source, limits)
        try:
            with httpx.Client(timeout=httpx.Timeout(remaining), follow_redirects=False, trust_env=False) as client:
                request = client.build_request("GET", pinned, headers={"Host": host_header},
                                               extensions={"sni_hostname": host})
                response = client.send(request, stream=True)
                try:
                    if response.status_code in REDIRECT_STATUSES and "location" in response.headers:
                        url = urljoin(url, response.headers["location"])
                        continue
                    if response.status_code != 200:
                        raise ServeError(400, f"{source}: the server answered HTTP {response.status_code}",
                                         code="remote_media_failed")
                    return _save_stream(response, limits, workdir, kind, source, deadline)
                finally:
                    response.close()
        except httpx.TimeoutException:
            raise _remote_timeout(source, limits) from None
        except httpx.HTTPError as err:
            raise ServeError(400, f"{source}: download failed ({type(err).__name__}: {err})",
                             code="remote_media_failed") from None
    raise ServeError(400, f"{source}: more than {limits.max_redirects} redirects", code="remote_media_failed")


def _save_stream(response, limits: MediaLimits, workdir: Path, kind: str, source: str, deadline: float) -> tuple[Path, str]:
    declared = response.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limits.max_bytes:
        raise _too_large("media", limits.max_bytes)
    mime = response.headers.get("content-type", "").split(";")[0].strip().lower()
    suffix = MIME_SUFFIXES.get(mime) or Path(urlsplit(str(response.request.url)).path).suffix.lower() or DEFAULT_SUFFIX[kind]
    if not suffix[1:].isalnum():
        suffix = DEFAULT_SUFFIX[kind]
    path = workdir / f"{uuid.uuid4().hex}{suffix}"
    written = 0
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            for chunk in response.iter_bytes(DOWNLOAD_CHUNK_BYTES):
                written += len(chunk)
                if written > limits.max_bytes:
                    raise _too_large("media", limits.max_bytes)
                if time.monotonic() > deadline:
                    raise _remote_timeout(source, limits)
                f.write(chunk)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    if written == 0:
        path.unlink(missing_ok=True)
        raise ServeError(400, f"{source}: the download is empty (0 bytes)", code="remote_media_failed")
    return path, mime


def _remote_timeout(source: str, limits: MediaLimits) -> ServeError:
    return ServeError(400, f"{source}: download took longer than {limits.remote_timeout_s:g} s", code="remote_media_timeout")


def _short(text: str, limit: int = 120) -> str:
    """A reference for messages: data URLs and very long strings are abbreviated."""
    if text.lower().startswith("data:"):
        return text[: text.find(",") + 1] + "..." if "," in text else "data URL"
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ------------------------------------------------------------------------------------------- header checks
@dataclass(frozen=True)
class ContentLimits:
    """What :func:`check_media` accepts (header checks only: nothing is decoded)."""

    max_bytes: int
    max_pixels: int
    max_duration_s: float
    use_audio: bool
    model_has_audio: bool
    model_has_vision: bool = True  # False: an audio-only model (images refused, videos read from their audio)


def check_media(media: MediaFile, limits: ContentLimits) -> None:
    """Refuse empty, unreadable, oversized, overlong or streamless media before decoding frames."""
    try:
        size = media.path.stat().st_size
    except OSError as err:
        raise ServeError(400, f"{media.source}: cannot read the file ({err.strerror})") from None
    if size == 0:
        raise ServeError(400, f"{media.source}: the file is empty (0 bytes)", code="invalid_media")
    if size > limits.max_bytes:
        raise _too_large("media", limits.max_bytes)
    if media.kind == "image":
        if not limits.model_has_vision:
            raise ServeError(400, "this model has no vision branch: it cannot take images (send input_audio, or a "
                             "video with an audio track)", code="invalid_media")
        _check_image(media, limits)
        return
    from ..media import image_format, probe
    from ..media.errors import MediaError

    found = image_format(media.path)
    if found is not None:  # the content decides, whatever the file or MIME type says
        use = "send it as image_url" if media.kind == "video" else "input_audio takes audio only; send it as image_url"
        raise ServeError(400, f"{media.source}: this is an image ({found}); {use}", code="invalid_media")

    try:
        info = probe(media.path, max_bytes=limits.max_bytes)
    except MediaError as err:
        raise ServeError(400, describe_media_error(err, media), code="invalid_media") from None
    if info.duration > limits.max_duration_s:
        raise ServeError(400, f"{media.source}: lasts {info.duration:.1f} s, over the limit of "
                         f"{limits.max_duration_s:g} s (--max-duration-s)", code="media_too_long")
    if info.has_video and info.width * info.height > limits.max_pixels:
        raise ServeError(400, f"{media.source}: {info.width}x{info.height} frames are larger than the limit of "
                         f"{limits.max_pixels:,} pixels", code="media_too_large")
    audio_usable = info.has_audio and limits.use_audio and limits.model_has_audio
    if media.kind == "audio":
        if not info.has_audio:
            raise ServeError(400, f"{media.source}: no audio stream found", code="invalid_media")
        if not limits.model_has_audio:
            raise ServeError(400, "this model has no audio branch: it cannot take input_audio", code="invalid_media")
        if not limits.use_audio:
            raise ServeError(400, "input_audio was given but audio is switched off (\"audio\": false)", param="audio")
        if info.has_video:
            raise ServeError(400, f"{media.source}: input_audio holds a video stream; send videos as video_url",
                             code="invalid_media")
        return
    if not limits.model_has_vision and not audio_usable:
        why = ("the file has no audio stream" if not info.has_audio
               else "audio is switched off (\"audio\": false)" if not limits.use_audio
               else "this model has no audio branch either")
        raise ServeError(400, f"{media.source}: this model has no vision branch, so it answers a video from its audio "
                         f"track, and {why}", code="invalid_media")
    if not info.has_video and not audio_usable:
        why = "and no audio stream" if not info.has_audio else "and audio is switched off or unsupported by this model"
        raise ServeError(400, f"{media.source}: no video stream {why}", code="invalid_media")


def _check_image(media: MediaFile, limits: ContentLimits) -> None:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(media.path) as image:  # reads the header only
            width, height = image.size
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as err:
        raise ServeError(400, f"{media.source}: not a readable image ({type(err).__name__}); send videos as video_url "
                         "and audio as input_audio", code="invalid_media") from None
    if width * height > limits.max_pixels:
        raise ServeError(400, f"{media.source}: {width}x{height} is larger than the limit of {limits.max_pixels:,} "
                         "pixels", code="media_too_large")


def describe_media_error(err: Exception, media: MediaFile) -> str:
    """A media error's one-line message with any temp-file path replaced by the user's reference."""
    return " ".join(str(err).replace(str(media.path), media.source).split())


def new_workdir() -> Path:
    """A private folder for decoded data URLs and downloads (removed by the app on shutdown)."""
    return Path(tempfile.mkdtemp(prefix="videollama-serve-"))
