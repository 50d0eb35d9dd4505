"""vLLM's media items -> the tensors our encoders take, decoded by ``videollama.media``.

vLLM fetches ``video_url`` / ``image_url`` parts (data URLs, http(s), or ``file://`` below
``--allowed-local-media-path``) and hands them on with their original bytes. A video is decoded from
those bytes by our own code, both streams from the same file, so frames, timestamps and fbank equal
what ``Pipeline`` computes bit for bit (vLLM's own frame decoding is not used). An image is decoded by
Pillow from its bytes, as ``load_image`` does. An audio part arrives as vLLM's decoded waveform, mixed
to mono, and is resampled to 16 kHz by our sinc resampler (torchaudio's, as ``load_audio``); our clip
cutting and fbank then run on it.

Decoded frames without bytes (vLLM's offline API, or the dummy inputs vLLM profiles with) are resized
and normalised by our transforms; their timestamps come from vLLM's metadata (``frames_indices`` /
``fps``).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..media import (
    MediaError,
    NoAudioError,
    audio_to_clips,
    load_audio,
    load_image,
    load_video,
    normalize,
    resize_squash,
    sample_indices,
)
from ..media.audio import SAMPLE_RATE
from ..media.resample import resample

UINT8_MAX = 255.0
VIDEO_ITEM = "video_url"  # how an error names the video (vLLM keeps no file name)


@dataclass(frozen=True)
class DecodedVideo:
    frames: torch.Tensor  # (T, 3, S, S), CLIP-normalised
    audio: torch.Tensor | None  # (8, 1, 128, 204) log-mel clips, or None without a sound track
    message_seconds: list[float]  # the times the prompt states (``VideoClip.message_seconds``)


def _original_bytes(item) -> bytes | None:
    return getattr(item, "original_bytes", None)


def decode_video(item, num_frames: int, *, image_size: int, max_frames: int, with_audio: bool) -> DecodedVideo:
    """A vLLM video item -> frames (+ fbank when it has a sound track and the model hears)."""
    data = _original_bytes(item)
    if data is not None:
        with tempfile.TemporaryDirectory(prefix="videollama-vllm-") as workdir:
            path = Path(workdir) / "video"
            path.write_bytes(data)
            try:
                clip = load_video(path, num_frames, image_size=image_size, max_frames=max_frames)
                audio = None
                if with_audio:
                    try:
                        audio = load_audio(path)
                    except NoAudioError:
                        audio = None
            except MediaError as err:  # name the request's item, never the server's temporary file
                raise MediaError(VIDEO_ITEM, err.problem) from None
        return DecodedVideo(clip.frames, audio, clip.message_seconds)
    frames, metadata = item if isinstance(item, tuple) else (item, None)
    return _decoded_frames(np.asarray(frames), metadata, num_frames, image_size=image_size, max_frames=max_frames)


def _decoded_frames(frames: np.ndarray, metadata: dict | None, num_frames: int, *, image_size: int,
                    max_frames: int) -> DecodedVideo:
    """Frames already decoded by vLLM (T, H, W, 3) uint8 -> our uniform sample, resized and normalised."""
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"a decoded video must be (frames, height, width, 3) RGB, got shape {frames.shape}")
    if not 1 <= num_frames <= max_frames:
        raise ValueError(f"num_frames must be between 1 and {max_frames}, got {num_frames}")
    picks = sample_indices(len(frames), num_frames)
    pixels = torch.from_numpy(frames[picks]).permute(0, 3, 1, 2).float() / UINT8_MAX
    fps = float((metadata or {}).get("fps") or 1.0)
    source_indices = (metadata or {}).get("frames_indices") or list(range(len(frames)))
    seconds = [source_indices[i] / fps for i in picks]  # index / fps, as the official message
    return DecodedVideo(normalize(resize_squash(pixels, image_size)), None, seconds)


def decode_image(item, *, image_size: int) -> torch.Tensor:
    """A vLLM image item (PIL, from its bytes when known) -> (1, 3, S, S)."""
    data = _original_bytes(item)
    image = Image.open(BytesIO(data)) if data is not None else getattr(item, "media", item)
    if not isinstance(image, Image.Image):
        raise ValueError(f"an image must be a PIL image or an encoded image file, got {type(image).__name__}")
    return load_image(image, image_size=image_size)


def decode_audio(waveform: np.ndarray) -> torch.Tensor:
    """A mono 16 kHz waveform from vLLM's parser (resampled by :class:`SincResampler`) -> (8, 1, 128, 204)."""
    samples = torch.as_tensor(np.asarray(waveform, dtype=np.float32))
    if samples.ndim != 1:
        raise ValueError(f"an audio waveform must be mono (samples,), got shape {tuple(samples.shape)}")
    return audio_to_clips(samples[None], SAMPLE_RATE)


class SincResampler:
    """vLLM's resampler interface over ours (torchaudio's sinc resampling, as ``load_audio`` uses)."""

    def resample(self, audio: np.ndarray, *, orig_sr: float) -> np.ndarray:
        if orig_sr != int(orig_sr):
            raise ValueError(f"audio sample rate must be a whole number of Hz, got {orig_sr}")
        samples = torch.as_tensor(np.asarray(audio, dtype=np.float32))
        return resample(samples, int(orig_sr), SAMPLE_RATE).numpy()
