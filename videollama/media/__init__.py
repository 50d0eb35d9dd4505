"""Media pipeline: video frames, images and audio as Video-LLaMA expects them (PyAV + torch).

    from videollama.media import load_video, load_image, load_audio, MediaError

    clip = load_video("clip.mp4")            # clip.frames (8, 3, 224, 224), clip.timestamp_message()
    image = load_image("photo.jpg")          # (1, 3, 224, 224)
    audio = load_audio("clip.mp4")           # (8, 1, 128, 204); NoAudioError if there is none

Every bad input raises :class:`MediaError` (a ``ValueError``) with a one-line
``"<path>: <problem>"`` message. See the "Media preprocessing" section of ``docs/architecture.md``
for sampling details and limits.
"""

from .audio import (
    AUDIO_MEAN,
    AUDIO_STD,
    audio_to_clips,
    clip_sample_ranges,
    clip_starts,
    load_audio,
    load_waveform,
)
from .errors import MediaError, NoAudioError, NoVideoError
from .fbank import kaldi_fbank, kaldi_fbank_many
from .image import image_format, load_image
from .transforms import denormalize, normalize, random_resized_crop, resize_squash
from .video import (
    CLIP_MEAN,
    CLIP_STD,
    MAX_FRAMES,
    DecodeStats,
    MediaInfo,
    VideoClip,
    VideoReader,
    load_video,
    probe,
    sample_indices,
)

__all__ = [
    "AUDIO_MEAN",
    "AUDIO_STD",
    "CLIP_MEAN",
    "CLIP_STD",
    "MAX_FRAMES",
    "DecodeStats",
    "MediaError",
    "MediaInfo",
    "NoAudioError",
    "NoVideoError",
    "VideoClip",
    "VideoReader",
    "audio_to_clips",
    "clip_sample_ranges",
    "clip_starts",
    "denormalize",
    "kaldi_fbank",
    "image_format",
    "kaldi_fbank_many",
    "load_audio",
    "load_image",
    "load_video",
    "load_waveform",
    "normalize",
    "probe",
    "random_resized_crop",
    "resize_squash",
    "sample_indices",
]
