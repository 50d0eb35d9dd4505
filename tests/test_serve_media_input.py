"""Media sources for the API: data URLs, paths confined to --media-root, remote URLs with address checks,
and header checks that refuse hostile media before decoding. No model needed."""

from __future__ import annotations

import base64
import http.server
import os
import threading
import time

import pytest
from PIL import Image

from media_fixtures import make_numbered_video, make_tone_audio
from videollama.serve.media_input import (
    ContentLimits, MediaFile, MediaLimits, check_media, fetch_remote, is_public_address, materialize, parse_data_url,
    resolve_local,
)
from videollama.serve.schemas import AudioPart, ImagePart, ServeError, VideoPart

MB = 1024 * 1024


def status_of(fn, *args, **kwargs) -> tuple[int, str]:
    with pytest.raises(ServeError) as err:
        fn(*args, **kwargs)
    return err.value.status, err.value.message


# ------------------------------------------------------------------------------------------ data URLs
def test_data_url_round_trip_and_limits(tmp_path):
    payload = b"\x00\x01binary\xff" * 10
    url = "data:video/mp4;base64," + base64.b64encode(payload).decode()
    assert parse_data_url(url, MB) == ("video/mp4", payload)
    wrapped = "data:video/mp4;base64," + "\n".join(base64.encodebytes(payload).decode().split())
    assert parse_data_url(wrapped, MB)[1] == payload
    assert status_of(parse_data_url, "data:video/mp4;base64,@@@notbase64", MB)[0] == 400
    assert "empty" in status_of(parse_data_url, "data:video/mp4;base64,", MB)[1]
    assert status_of(parse_data_url, "data:video/mp4;base64" + "AAAA", MB)[0] == 400  # no comma
    big = "data:video/mp4;base64," + base64.b64encode(b"x" * (MB + 10)).decode()
    code, message = status_of(parse_data_url, big, MB)
    assert code == 413 and "--max-media-mb" in message


def test_materialize_writes_private_temp_files_with_the_right_suffix(tmp_path):
    limits = MediaLimits(max_bytes=MB)
    png = ImagePart(type="image_url", image_url={"url": "data:image/png;base64," + base64.b64encode(b"PNGDATA").decode()})
    media = materialize(png, limits, tmp_path)
    assert media.path.suffix == ".png" and media.path.read_bytes() == b"PNGDATA" and media.kind == "image"
    assert media.path.stat().st_mode & 0o777 == 0o600
    assert "data URL" in media.source and str(tmp_path) not in media.source
    media.cleanup()
    assert not media.path.exists()
    audio = AudioPart(type="input_audio", input_audio={"data": base64.b64encode(b"RIFF").decode(), "format": "wav"})
    assert materialize(audio, limits, tmp_path).path.suffix == ".wav"
    bad_format = AudioPart(type="input_audio", input_audio={"data": "AAAA", "format": "exe"})
    assert "format" in status_of(materialize, bad_format, limits, tmp_path)[1]
    video_as_image = ImagePart(type="image_url", image_url={"url": "data:video/mp4;base64,AAAA"})
    assert materialize(video_as_image, limits, tmp_path).path.suffix == ".mp4"  # refused by content: check_media
    ftp = VideoPart(type="video_url", video_url={"url": "ftp://example.com/a.mp4"})
    assert "unsupported URL scheme" in status_of(materialize, ftp, limits, tmp_path)[1]


# ------------------------------------------------------------------------------------------ local paths
@pytest.fixture
def media_tree(tmp_path):
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "clip.mp4").write_bytes(b"inside")
    (tmp_path / "secret.mp4").write_bytes(b"outside")
    os.symlink(tmp_path / "secret.mp4", root / "escape.mp4")
    os.symlink(root / "sub" / "clip.mp4", root / "alias.mp4")
    os.symlink(tmp_path, root / "updir")
    return root


def test_local_paths_are_confined_to_the_media_root(media_tree):
    root = media_tree
    inside = (root / "sub" / "clip.mp4").resolve()
    assert resolve_local("sub/clip.mp4", root, MB) == inside
    assert resolve_local(str(root / "sub" / "clip.mp4"), root, MB) == inside
    assert resolve_local(f"file://{root}/sub/clip.mp4", root, MB) == inside
    assert resolve_local("alias.mp4", root, MB) == inside  # a symlink that stays inside is fine
    for hostile in ("../secret.mp4", "sub/../../secret.mp4", "escape.mp4", "updir/secret.mp4",
                    str(root.parent / "secret.mp4"), "/etc/passwd", f"file://{root.parent}/secret.mp4"):
        code, message = status_of(resolve_local, hostile, root, MB)
        assert code == 403 and "outside the media root" in message, hostile
    assert status_of(resolve_local, "sub/missing.mp4", root, MB)[0] == 404
    assert status_of(resolve_local, "sub", root, MB)[0] == 404  # a folder is not a file
    assert status_of(resolve_local, "sub/clip.mp4", root, 3)[0] == 413
    code, message = status_of(resolve_local, "sub/clip.mp4", None, MB)
    assert code == 403 and "--media-root" in message


# ------------------------------------------------------------------------------------------ remote URLs
@pytest.mark.parametrize("ip, public", [
    ("127.0.0.1", False), ("10.1.2.3", False), ("172.16.0.9", False), ("192.168.1.1", False),
    ("169.254.169.254", False), ("100.64.0.1", False), ("0.0.0.0", False), ("224.0.0.1", False),
    ("255.255.255.255", False), ("::1", False), ("fe80::1", False), ("fc00::1", False), ("::ffff:127.0.0.1", False),
    ("::ffff:10.0.0.1", False), ("8.8.8.8", True), ("1.1.1.1", True), ("2606:4700:4700::1111", True),
])
def test_public_address_check(ip, public):
    assert is_public_address(ip) is public


class _Handler(http.server.BaseHTTPRequestHandler):
    body = b"\x00" * 2048

    def do_GET(self):  # noqa: N802 (http.server naming)
        if self.path == "/clip.mp4":
            self._send(200, self.body, "video/mp4")
        elif self.path == "/big":
            self._send(200, b"\x00" * (2 * MB), "video/mp4")
        elif self.path == "/to-private":
            self.send_response(302)
            self.send_header("Location", "http://10.0.0.1/clip.mp4")
            self.end_headers()
        elif self.path == "/slow":
            self.send_response(200)
            self.send_header("Content-Type", "video/mp4")
            self.end_headers()
            for _ in range(40):
                self.wfile.write(b"\x00" * 16)
                self.wfile.flush()
                time.sleep(0.05)
        else:
            self._send(404, b"nope", "text/plain")

    def _send(self, status, body, mime):
        self.send_response(status)
        self.send_header("Content-Type", mime)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def http_origin():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    thread.join(5)


def test_remote_media_is_refused_unless_enabled_and_public(tmp_path, http_origin):
    off = MediaLimits(max_bytes=MB)
    code, message = status_of(fetch_remote, f"{http_origin}/clip.mp4", off, tmp_path)
    assert code == 403 and "--allow-remote-media" in message
    on = MediaLimits(max_bytes=MB, allow_remote=True, remote_timeout_s=5)
    for url in (f"{http_origin}/clip.mp4", "http://localhost/clip.mp4", "http://[::1]/x.mp4",
                "http://169.254.169.254/latest/meta-data", "http://10.0.0.1/x.mp4"):
        code, message = status_of(fetch_remote, url, on, tmp_path)
        assert code == 403 and "not allowed" in message, url
    assert list(tmp_path.iterdir()) == []  # nothing was downloaded


def test_remote_download_limits(tmp_path, http_origin):
    """With the address policy relaxed to allow only this test's loopback origin, exercise the download path."""
    on = MediaLimits(max_bytes=MB, allow_remote=True, remote_timeout_s=1.0)
    only_loopback = {"address_allowed": lambda ip: ip == "127.0.0.1"}
    path, mime = fetch_remote(f"{http_origin}/clip.mp4", on, tmp_path, **only_loopback)
    assert path.read_bytes() == _Handler.body and mime == "video/mp4" and path.suffix == ".mp4"
    assert status_of(fetch_remote, f"{http_origin}/big", on, tmp_path, **only_loopback)[0] == 413
    code, message = status_of(fetch_remote, f"{http_origin}/to-private", on, tmp_path, **only_loopback)
    assert code == 403 and "10.0.0.1" in message  # the redirect target is checked too
    assert "HTTP 404" in status_of(fetch_remote, f"{http_origin}/missing", on, tmp_path, **only_loopback)[1]
    started = time.monotonic()
    assert "longer than" in status_of(fetch_remote, f"{http_origin}/slow", on, tmp_path, **only_loopback)[1]
    assert time.monotonic() - started < 3.0
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # partial downloads are removed


# ------------------------------------------------------------------------------------------ header checks
def limits(**overrides) -> ContentLimits:
    values = dict(max_bytes=16 * MB, max_pixels=1920 * 1080, max_duration_s=60.0, use_audio=True, model_has_audio=True)
    return ContentLimits(**{**values, **overrides})


def test_check_media_refuses_hostile_files_before_decoding(tmp_path):
    video = make_numbered_video(tmp_path / "v.mp4", 16, fps=8, size=(160, 128), with_audio=True)
    silent = make_numbered_video(tmp_path / "silent.mp4", 8, fps=8, size=(64, 64))
    tone = make_tone_audio(tmp_path / "t.wav", 1.0)
    long_video = make_numbered_video(tmp_path / "long.mp4", 12, fps=0.25, size=(64, 64))  # 48 s
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(os.urandom(4096))
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    picture = tmp_path / "still.mp4"  # a PNG under a video's name: the content decides
    Image.new("RGB", (32, 24), (200, 30, 30)).save(picture, format="PNG")

    check_media(MediaFile(video, "video", "v.mp4"), limits())
    check_media(MediaFile(picture, "image", "still.mp4"), limits())  # an image named .mp4 is an image
    check_media(MediaFile(tone, "audio", "t.wav"), limits())
    check_media(MediaFile(tone, "video", "t.wav"), limits())  # audio-only through video_url: answered from audio
    cases = [
        (MediaFile(empty, "video", "empty.mp4"), limits(), "empty"),
        (MediaFile(junk, "video", "junk.mp4"), limits(), "junk.mp4"),
        (MediaFile(text, "image", "notes.png"), limits(), "not a readable image"),
        (MediaFile(video, "video", "v.mp4"), limits(max_pixels=100 * 100), "160x128"),
        (MediaFile(long_video, "video", "long.mp4"), limits(max_duration_s=30), "over the limit of 30 s"),
        (MediaFile(tone, "video", "t.wav"), limits(use_audio=False), "no video stream"),
        (MediaFile(tone, "audio", "t.wav"), limits(use_audio=False), "audio is switched off"),
        (MediaFile(tone, "audio", "t.wav"), limits(model_has_audio=False), "no audio branch"),
        (MediaFile(silent, "audio", "silent.mp4"), limits(), "no audio stream"),
        (MediaFile(video, "audio", "v.mp4"), limits(), "send videos as video_url"),
        (MediaFile(video, "image", "v.mp4"), limits(), "send videos as video_url"),
        (MediaFile(picture, "video", "still.mp4"), limits(), "this is an image (PNG); send it as image_url"),
        (MediaFile(picture, "audio", "still.mp4"), limits(), "send it as image_url"),
        (MediaFile(video, "video", "v.mp4"), limits(max_bytes=100), "larger than the limit"),
    ]
    for media, lim, expected in cases:
        code, message = status_of(check_media, media, lim)
        assert 400 <= code < 500 and expected in message, (media.source, message)
        assert str(tmp_path) not in message  # messages name the user's reference, not server paths
