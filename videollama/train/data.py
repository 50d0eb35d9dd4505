"""Training datasets for the official data formats (map-style, one dict per sample).

Formats (reference section 4):

=====================  ===========================================================================
``webvid``              every ``*.csv`` in ``annotations`` with columns ``videoid,name,page_dir``;
                        video ``media_root/page_dir/videoid.mp4``; caption ``blip_caption(name)``;
                        ``headtail`` frame sampling; caption mode.
``cc_sbu_align``        ``annotations/filter_cap.json`` = ``{"annotations": [{"image_id", "caption"}]}``,
                        image ``media_root/{image_id}.jpg`` (default ``annotations/image``); caption
                        used as is; caption mode (LLaVA-CC595k, MiniGPT-4's 3.5k align set).
``llava_instruct``      JSON list of ``{"image", "conversations": [{"from", "value"}]}``; image
                        ``media_root/COCO_train2014_{image}``; ``<image>`` -> ``<Image>`` +
                        placeholder x N + ``</Image>``; conversation mode.
``videochat_instruct``  JSON list of ``{"video", "QA": [{"q", "a"}]}``; video ``media_root/{video}``;
                        the first q is prefixed with ``<Video>`` + placeholder x N + ``</Video> `` +
                        the timestamp sentence (dropped when ``data_type`` contains "cn"). With
                        ``window_fps`` a long video becomes several windows (below).
``webdataset``          tar shards with ``<key>.mp4|jpg`` + ``<key>.txt|json`` members (json:
                        ``caption``/``text``/``name``); caption mode with ``blip_caption`` (its reader:
                        :mod:`videollama.train.webdataset`).
=====================  ===========================================================================

Audio-text formats (``audiocaps``, ``clotho``, ``wavcaps``, ``audio_instruct``: real audio for the
audio branch) are read by :mod:`videollama.train.audio_data`.

N and the placeholder token depend on the branch: 32 x ``<ImageHere>`` for the vision branch,
8 x ``<AudioHere>`` for the audio branch. The official code wrote ``<ImageHere>`` x 8 for the audio
branch too (its model had one placeholder id and a ``train_flag``); our model fills ``<AudioHere>``
with audio-branch features, so the audio branch's training text uses ``<AudioHere>``.

**Long videos** (``window_fps``, ours): the video is sampled at ``window_fps`` frames per second
(:class:`~videollama.media.windows.VideoSampling`, capped at ``max_windows x window_frames`` frames
spread uniformly) and cut into windows of at most ``window_frames`` (the model's ``max_frames``) by
:func:`~videollama.media.windows.split_windows`, exactly as :mod:`videollama.long_video` reads it at
inference. The first question opens with inference's windowed preamble
(:func:`~videollama.templates.windowed_video_message`: each window's time label, then its
placeholders; with ``with_audio`` the audio-visual sentence with each window's 8 ``<AudioHere>``)
joined as inference joins it (:func:`~videollama.templates.join_question`). The sample's ``frames``
is then a list of per-window tensors ``(T_w, 3, S, S)`` (one crop for the whole video) and
``av_audio`` holds ``(W, 8, 1, 128, 204)``; a video that fits one window gives the short-clip sample.

**Audio-visual samples** (``with_audio``, ours): a short clip's 8 log-mel clips of 2 s
(:func:`~videollama.media.load_audio`, as inference reads them) go under ``av_audio`` ``(1, 8, 1, 128,
204)``, and the first question opens with inference's audio+video message
(:func:`~videollama.templates.media_message`). Its frames are read by the vision branch and its sound
by the audio branch on either branch's run, so an audio-branch stage can teach the LLM to use both
(the paper never trains the two together). A clip without sound is a bad record (skipped).

Train transforms: one random resized crop (scale 0.5-1, ratio 3/4-4/3, bicubic) per video or
image, then CLIP normalisation. Video frames are squashed to 224 at decode and cropped after
(``alpro_video_train``); images are cropped at full resolution (``blip2_image_train``). Resizing
is torch's bicubic without antialiasing, where the official image path used PIL's (antialiased)
bicubic: downscaled image crops are slightly sharper/more aliased than the official ones.

**Bad records never stop a run.** A record that cannot be used (missing file, corrupt media,
malformed JSON record, missing keys, no media placeholder, placeholders cut by truncation) is
skipped: the dataset returns the next good record (``index + 1``, wrapping) deterministically,
counts the failure and keeps the first few reasons (``dataset.skipped``). Each sample also carries
a ``skip_report`` so the trainer can total skips across DataLoader worker processes. When more
than ``max_bad_fraction`` of the records tried so far have failed (after a minimum number of
tries), :class:`DatasetError` stops the run with a message naming the dataset. (The official
loaders retried a *random* index up to 10 times, printed a line and otherwise crashed; the
``skip_report`` numbers have no official counterpart.)

    datasets = build_datasets(load_train_config("configs/visionbranch_stage1_pretrain.yaml"), tokenizer)
    sample = datasets[0][0]   # {"input_ids", "labels", "frames", "dataset", "index", "skip_report"}
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from videollama.media.errors import MediaError

from ..errors import UsageError, VideoLlamaError
from ..media.windows import (
    DEFAULT_FPS_MAX_FRAMES,
    VideoSampling,
    resolve_window_frames,
    split_windows,
    window_spans,
)
from ..templates import join_question, media_message, windowed_video_message
from ..tokenizer import AUDIO_PLACEHOLDER, IMAGE_PLACEHOLDER
from .config import AUDIO_DATASET_TYPES, ConfigError
from .text import (
    AV_AUDIO_KEY,
    EncodedText,
    Turn,
    blip_caption,
    encode_caption,
    encode_conversation,
    media_block,
)

__all__ = [
    "DatasetError",
    "RecordError",
    "SkipStats",
    "TextOptions",
    "TrainDataset",
    "WebVidDataset",
    "CCSBUAlignDataset",
    "LlavaInstructDataset",
    "VideoChatInstructDataset",
    "WindowedVideo",
    "build_datasets",
    "one_exchange",
    "text_options",
    "merge_skip_reports",
]

logger = logging.getLogger(__name__)

MAX_KEPT_REASONS = 5  # first failure reasons kept per dataset
MIN_TRIES_BEFORE_FRACTION_CHECK = 16  # do not judge a dataset on its first few records
UINT8_MAX = 255.0
CROP_SCALE = (0.5, 1.0)  # alpro_video_train / blip2_image_train RandomResizedCrop scale
WEBVID_COLUMNS = ("videoid", "name", "page_dir")
LLAVA_IMAGE_TOKEN = "<image>"
LLAVA_IMAGE_PREFIX = "COCO_train2014_"
DEFAULT_WINDOW_FRAMES = 32  # VideoLlamaConfig.max_frames: frames per window unless the model says otherwise
DEFAULT_VIDEO_TOKENS = 32  # VideoLlamaConfig.num_video_tokens
DEFAULT_AUDIO_TOKENS = 8  # VideoLlamaConfig.num_audio_tokens


class DatasetError(VideoLlamaError, RuntimeError):
    """A whole dataset is unusable (unreadable annotations, or too many bad records)."""


class RecordError(VideoLlamaError, ValueError):
    """One record cannot be used; the message says why (one line)."""


# Errors that say the program or environment is broken, not the record: never skipped.
_NOT_RECORD_ERRORS = (DatasetError, ImportError, NameError, NotImplementedError, MemoryError, RecursionError)


@dataclass
class SkipStats:
    """Records tried and skipped, with the first few reasons."""

    attempted: int = 0
    failed: int = 0
    reasons: list[str] = field(default_factory=list)

    def add_failure(self, reason: str) -> None:
        self.failed += 1
        if len(self.reasons) < MAX_KEPT_REASONS:
            self.reasons.append(reason)

    def merge(self, attempted: int, reasons: Sequence[str]) -> None:
        self.attempted += attempted
        for reason in reasons:
            self.add_failure(reason)

    @property
    def fraction(self) -> float:
        return self.failed / self.attempted if self.attempted else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"attempted": self.attempted, "failed": self.failed, "fraction": round(self.fraction, 6),
                "first_reasons": list(self.reasons)}


def merge_skip_reports(totals: dict[str, SkipStats], reports: Sequence[dict[str, Any]]) -> dict[str, SkipStats]:
    """Add a batch's ``skip_reports`` (from :func:`videollama.train.text.collate`) to ``totals``."""
    for report in reports:
        totals.setdefault(report["dataset"], SkipStats()).merge(report["attempted"], report["reasons"])
    return totals


@dataclass
class TextOptions:
    """How a dataset turns its text into tokens (shared by all datasets of a run)."""

    tokenizer: Any
    media_token: str  # placeholder string: <ImageHere> (vision branch) or <AudioHere> (audio)
    num_media_tokens: int  # N placeholders per sample (32 / 8)
    end_sym: str = "\n"
    max_txt_len: int = 32
    prompts: tuple[str, ...] = ()  # templated caption prompts, each with one <ImageHere> marker
    template: str = "llama_2"  # conversation template
    conversation_max_len: int = 512

    @property
    def media_token_id(self) -> int:
        token_id = self.tokenizer.convert_tokens_to_ids(self.media_token)
        if token_id is None or token_id == self.tokenizer.unk_token_id:
            raise DatasetError(f"the tokenizer has no {self.media_token} token (use videollama.tokenizer.add_media_tokens)")
        return int(token_id)


# ---------------------------------------------------------------------------------------------- base
class TrainDataset(Dataset):
    """Base class: record list, skip-and-continue logic, seeded augmentation.

    Subclasses implement ``_load(index, generator) -> dict`` returning ``input_ids``, ``labels``
    and the media under ``media_field`` (``frames`` ``(T, 3, H, W)`` here; the audio readers of
    :mod:`videollama.train.audio_data` give ``audio``), raising on any problem, and ``_describe(index)``.
    """

    media_field = "frames"

    def __init__(
        self,
        name: str,
        text: TextOptions,
        *,
        image_size: int = 224,
        max_bad_fraction: float = 0.5,
        seed: int = 0,
    ) -> None:
        self.name = name
        self.text = text
        self.image_size = image_size
        self.max_bad_fraction = max_bad_fraction
        self.seed = seed
        self.skipped = SkipStats()
        self.records: Sequence[Any] = []
        self._media_token_id = text.media_token_id

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        from .mixing import _seed_of

        return self.get(int(index), seed=_seed_of(self.seed, index))

    def get(self, index: int, seed: int) -> dict[str, Any]:
        """Sample ``index`` (or the next readable record), augmented with ``seed``."""
        if not self.records:
            raise DatasetError(f"dataset {self.name!r} has no records")
        reasons: list[str] = []
        current = index % len(self.records)
        for _ in range(len(self.records)):
            self.skipped.attempted += 1
            try:
                sample = self._load(current, torch.Generator().manual_seed(seed))
            except _NOT_RECORD_ERRORS:
                raise
            except Exception as err:  # one bad record must not stop the run: count, report, move on
                reason = f"record {current} ({self._describe(current)}): {_one_line(err)}"
                reasons.append(reason)
                self.skipped.add_failure(reason)
                logger.debug("%s: skipping %s", self.name, reason)
                self._check_health()
                current = (current + 1) % len(self.records)
                continue
            sample.update(
                dataset=self.name,
                index=current,
                skip_report={"dataset": self.name, "attempted": len(reasons) + 1, "reasons": reasons},
            )
            return sample
        raise DatasetError(
            f"dataset {self.name!r}: none of its {len(self.records)} records could be read; "
            f"first reasons: {' | '.join(self.skipped.reasons)}"
        )

    def _check_health(self) -> None:
        s = self.skipped
        if s.attempted >= MIN_TRIES_BEFORE_FRACTION_CHECK and s.fraction > self.max_bad_fraction:
            raise DatasetError(
                f"dataset {self.name!r}: {s.failed} of {s.attempted} records tried failed "
                f"(more than {self.max_bad_fraction:.0%}); first reasons: {' | '.join(s.reasons)}"
            )

    # To implement ------------------------------------------------------------------------------
    def _load(self, index: int, generator: torch.Generator) -> dict[str, Any]:
        raise NotImplementedError

    def _describe(self, index: int) -> str:
        return str(self.records[index])[:120]

    # Shared helpers --------------------------------------------------------------------------
    def _video(self, path: str | os.PathLike, num_frames: int, sampling: str, generator: torch.Generator):
        """Decode, crop and normalise a video -> (frames (T, 3, S, S), timestamp message)."""
        from videollama.media.transforms import normalize, random_resized_crop
        from videollama.media.video import load_video

        clip = load_video(path, num_frames, image_size=self.image_size, sampling=sampling,
                          generator=generator, normalize=False)
        frames = random_resized_crop(clip.frames, size=self.image_size, scale=CROP_SCALE, generator=generator)
        return normalize(frames), clip.timestamp_message()

    def _image(self, path: str | os.PathLike, generator: torch.Generator) -> torch.Tensor:
        """Read an image at full resolution, crop, resize and normalise -> (1, 3, S, S)."""
        from videollama.media.transforms import normalize, random_resized_crop

        pixels = _read_image(path)  # (1, 3, H, W) in [0, 1]
        frames = random_resized_crop(pixels, size=self.image_size, scale=CROP_SCALE, generator=generator)
        return normalize(frames)

    def _caption_sample(self, caption: str, media: torch.Tensor, generator: torch.Generator) -> dict[str, Any]:
        if not caption:
            raise RecordError("empty caption")
        t = self.text
        prompt = None
        if t.prompts:
            prompt = t.prompts[int(torch.randint(len(t.prompts), (1,), generator=generator))]
        encoded = encode_caption(t.tokenizer, caption, media_token_id=self._media_token_id,
                                 num_media_tokens=t.num_media_tokens, end_sym=t.end_sym,
                                 max_txt_len=t.max_txt_len, prompt=prompt)
        return self._sample(encoded, media)

    def _conversation_sample(self, turns: list[Turn], media: torch.Tensor | list[torch.Tensor], *,
                             runs: Sequence[tuple[str, int, int]] | None = None) -> dict[str, Any]:
        """``runs``: the placeholder runs the text must hold, ``(marker, token id, tokens expected)``;
        default one item's ``num_media_tokens`` of the dataset's media token."""
        t = self.text
        encoded = encode_conversation(t.tokenizer, turns, t.template, t.conversation_max_len)
        for marker, token_id, expected in runs or [(t.media_token, self._media_token_id, t.num_media_tokens)]:
            found = int((encoded.input_ids == token_id).sum())
            if found != expected:
                raise RecordError(f"{found} {marker} tokens after tokenisation, expected {expected} "
                                  "(missing media tag, several media, or cut by the length limit)")
        return self._sample(encoded, media)

    def _sample(self, encoded: EncodedText, media: torch.Tensor | list[torch.Tensor]) -> dict[str, Any]:
        return {"input_ids": encoded.input_ids, "labels": encoded.labels, self.media_field: media}


def _one_line(err: BaseException) -> str:
    """One-line reason; our own errors read well alone, others get their type name."""
    text = " ".join(str(err).split())
    if isinstance(err, (RecordError, MediaError)) and text:
        return text
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _read_image(path: str | os.PathLike) -> torch.Tensor:
    """Full-resolution RGB image as (1, 3, H, W) float32 in [0, 1]; problems raise MediaError.

    Training crops the original image like ``blip2_image_train`` (RandomResizedCrop on the PIL
    image), so it does not use ``load_image``, which squashes to 224 first (the eval transform).
    """
    try:
        with Image.open(path) as image:
            rgb = np.asarray(image.convert("RGB"), dtype=np.uint8).copy()  # (H, W, 3)
    except FileNotFoundError:
        raise MediaError(path, "no such file") from None
    except UnidentifiedImageError:
        raise MediaError(path, "not an image file Pillow can read") from None
    except (OSError, Image.DecompressionBombError) as err:
        raise MediaError(path, f"truncated or corrupt image ({err})") from None
    return torch.from_numpy(rgb).permute(2, 0, 1).unsqueeze(0).float() / UINT8_MAX  # (1, 3, H, W)


def _read_json(path: Path, dataset: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except OSError as err:
        raise DatasetError(f"dataset {dataset!r}: cannot read {path} ({err.strerror or err})") from None
    except json.JSONDecodeError as err:
        raise DatasetError(f"dataset {dataset!r}: {path} is not valid JSON ({err})") from None


def _read_json_list(path: Path, dataset: str) -> list:
    """An annotation file holding a JSON list of records (instruction datasets)."""
    data = _read_json(path, dataset)
    if not isinstance(data, list):
        raise DatasetError(f"dataset {dataset!r}: {path} must hold a JSON list of records")
    return data


def _require(record: Any, key: str, kind: type | tuple[type, ...] = str) -> Any:
    if not isinstance(record, dict):
        raise RecordError(f"record is a {type(record).__name__}, not an object")
    if key not in record:
        raise RecordError(f"missing key {key!r}")
    value = record[key]
    if not isinstance(value, kind):
        raise RecordError(f"key {key!r} has type {type(value).__name__}")
    return value


def _draw_one(items: Sequence, generator: torch.Generator):
    """One of ``items``, drawn uniformly with ``generator`` (``turns: one``)."""
    return items[int(torch.randint(len(items), (1,), generator=generator))]


def one_exchange(turns: list[Turn], generator: torch.Generator) -> list[Turn]:
    """One question-answer pair of a chat (``turns: one``): a human message and the answer right after it,
    drawn uniformly with ``generator``. Raises RecordError when the chat has no such pair."""
    starts = [i for i in range(len(turns) - 1) if turns[i].role == "human" and turns[i + 1].role == "gpt"]
    if not starts:
        raise RecordError("no human message followed by an answer")
    i = _draw_one(starts, generator)
    return turns[i : i + 2]


# ---------------------------------------------------------------------------------------------- formats
class WebVidDataset(TrainDataset):
    """WebVid-2M/10M CSV annotations + videos (caption mode, official ``headtail`` sampling)."""

    def __init__(self, name: str, text: TextOptions, *, annotations: str, media_root: str,
                 num_frames: int = 8, sampling: str = "headtail", **kwargs) -> None:
        super().__init__(name, text, **kwargs)
        self.media_root = Path(media_root)
        self.num_frames, self.sampling = num_frames, sampling
        folder = Path(annotations)
        if not folder.is_dir():
            raise DatasetError(f"dataset {name!r}: annotation folder {folder} does not exist")
        files = sorted(folder.glob("*.csv"))  # the official loader reads only *.csv
        if not files:
            raise DatasetError(f"dataset {name!r}: no *.csv files in {folder}")
        rows: list[tuple[str, str, str]] = []
        for file in files:
            try:
                with open(file, newline="", encoding="utf-8") as f:
                    reader = csv.DictReader(f)
                    missing = [c for c in WEBVID_COLUMNS if c not in (reader.fieldnames or [])]
                    if missing:
                        raise DatasetError(f"dataset {name!r}: {file} lacks the column(s) {missing}")
                    # Keep raw cells (None for short rows): problems surface per record, later.
                    rows.extend((r["videoid"], r["name"], r["page_dir"]) for r in reader)
            except (OSError, UnicodeDecodeError, csv.Error) as err:
                raise DatasetError(f"dataset {name!r}: cannot read {file} ({_one_line(err)})") from None
        self.records = rows

    def _describe(self, index: int) -> str:
        videoid, _, page_dir = self.records[index]
        return f"{page_dir}/{videoid}.mp4"

    def _load(self, index: int, generator: torch.Generator) -> dict[str, Any]:
        videoid, caption, page_dir = self.records[index]
        if not videoid or page_dir is None or caption is None:
            raise RecordError("empty videoid/page_dir/name cell")
        frames, _ = self._video(self.media_root / page_dir / f"{videoid}.mp4", self.num_frames, self.sampling, generator)
        if frames.shape[0] != self.num_frames:  # the official loader rejects short videos too
            raise RecordError(f"video has {frames.shape[0]} frames, need {self.num_frames}")
        return self._caption_sample(blip_caption(caption.strip()), frames, generator)


class CCSBUAlignDataset(TrainDataset):
    """``filter_cap.json`` + ``image/{image_id}.jpg`` (caption mode; captions used verbatim)."""

    def __init__(self, name: str, text: TextOptions, *, annotations: str, media_root: str = "", **kwargs) -> None:
        super().__init__(name, text, **kwargs)
        storage = Path(annotations)
        data = _read_json(storage / "filter_cap.json", name)
        if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
            raise DatasetError(f"dataset {name!r}: {storage / 'filter_cap.json'} has no 'annotations' list")
        self.records = data["annotations"]
        self.media_root = Path(media_root) if media_root else storage / "image"

    def _load(self, index: int, generator: torch.Generator) -> dict[str, Any]:
        record = self.records[index]
        image_id = _require(record, "image_id", (str, int))
        caption = _require(record, "caption")
        frames = self._image(self.media_root / f"{image_id}.jpg", generator)
        return self._caption_sample(caption, frames, generator)


class LlavaInstructDataset(TrainDataset):
    """LLaVA-Instruct-150K conversations over COCO images (conversation mode)."""

    def __init__(self, name: str, text: TextOptions, *, annotations: str, media_root: str, **kwargs) -> None:
        super().__init__(name, text, **kwargs)
        self.records = _read_json_list(Path(annotations), name)
        self.media_root = Path(media_root)

    def _load(self, index: int, generator: torch.Generator) -> dict[str, Any]:
        record = self.records[index]
        image = _require(record, "image")
        conversations = _require(record, "conversations", list)
        block = media_block("image", self.text.media_token, self.text.num_media_tokens)
        turns = []
        for message in conversations:
            role, value = _require(message, "from"), _require(message, "value")
            turns.append(Turn(role, value.replace(LLAVA_IMAGE_TOKEN, block)))
        frames = self._image(self.media_root / f"{LLAVA_IMAGE_PREFIX}{image}", generator)
        return self._conversation_sample(turns, frames)


@dataclass(frozen=True)
class WindowedVideo:
    """A long video as a training sample reads it: frames per window, time labels, sound per window."""

    windows: list[torch.Tensor]  # each (T_w, 3, S, S), CLIP-normalised
    labels: list[str]  # the windows' time labels, as inference writes them
    duration: float  # seconds
    audio: torch.Tensor | None = None  # (W, 8, 1, 128, 204) log-mel clips, or None


class VideoChatInstructDataset(TrainDataset):
    """VideoChat-instruct-11K: ``{"video", "QA": [{"q", "a"}]}`` (conversation mode, uniform frames).

    ``window_fps`` (long videos): sampled at that rate, a video longer than one window of
    ``window_frames`` becomes several windows with inference's time-labelled prompt (module docstring).
    ``with_audio`` (audio-visual samples): the clip's sound too, with inference's audio-visual prompt;
    the frames then go through the vision branch and the sound through the audio branch, whichever
    branch the run trains (``video_tokens`` / ``audio_tokens``: the model's tokens per item).
    """

    def __init__(self, name: str, text: TextOptions, *, annotations: str, media_root: str,
                 num_frames: int = 8, sampling: str = "uniform", data_type: str = "video",
                 window_fps: float | None = None, max_windows: int | None = None, with_audio: bool = False,
                 window_frames: int = DEFAULT_WINDOW_FRAMES, video_tokens: int | None = None,
                 audio_tokens: int = DEFAULT_AUDIO_TOKENS, turns: str = "all", **kwargs) -> None:
        super().__init__(name, text, **kwargs)
        self.records = _read_json_list(Path(annotations), name)
        self.media_root = Path(media_root)
        self.num_frames, self.sampling, self.data_type = num_frames, sampling, data_type
        self.one_turn = turns == "one"
        self.window_frames, self.with_audio = window_frames, with_audio
        self.video_tokens = text.num_media_tokens if video_tokens is None else video_tokens
        self.audio_tokens = audio_tokens
        self.window_sampling = None if window_fps is None else VideoSampling(
            frames=None, fps=window_fps,
            max_frames=DEFAULT_FPS_MAX_FRAMES if max_windows is None else max_windows * window_frames)
        self._image_token_id = _placeholder_id(text.tokenizer, IMAGE_PLACEHOLDER, name)
        self._audio_token_id = _placeholder_id(text.tokenizer, AUDIO_PLACEHOLDER, name) if with_audio else None

    def _describe(self, index: int) -> str:
        record = self.records[index]
        return str(record.get("video")) if isinstance(record, dict) else super()._describe(index)

    def _load(self, index: int, generator: torch.Generator) -> dict[str, Any]:
        record = self.records[index]
        video = _require(record, "video")
        qa = _require(record, "QA", list)
        if not qa:
            raise RecordError("empty QA list")
        pairs = [(_require(item, "q"), _require(item, "a")) for item in qa]
        if self.one_turn:
            pairs = [_draw_one(pairs, generator)]
        path = self.media_root / video
        windowed = None if self.window_sampling is None else self._windows(path, generator)
        if windowed is not None:
            preamble = windowed_video_message(windowed.labels, audio=windowed.audio is not None,
                                              duration=windowed.duration)
            return self._media_sample(pairs, preamble, windowed.windows, windowed.audio)
        frames, message = self._video(path, self.num_frames, self.sampling, generator)
        if self.with_audio:  # inference's audio+video prompt has no sampling sentence
            from videollama.media.audio import load_audio

            audio = load_audio(path)[None]  # (1, 8, 1, 128, 204): one item, as a window
            return self._media_sample(pairs, media_message(video=True, audio=True), frames, audio)
        if "cn" in self.data_type:
            message = ""
        block = media_block("video", self.text.media_token, self.text.num_media_tokens)
        turns = []
        for i, (question, answer) in enumerate(pairs):
            if i == 0:
                question = f"{block} {message}{question}"
            turns += [Turn("human", question), Turn("gpt", answer)]
        return self._conversation_sample(turns, frames)

    def _windows(self, path: Path, generator: torch.Generator) -> WindowedVideo | None:
        """The video's windows at ``window_fps`` (None: it fits one window, so the short-clip sample is used).

        Positions, windows, timestamps and labels come from the same functions as
        :func:`videollama.long_video.encode_video_file`; one random crop covers the whole video."""
        from videollama.long_video import window_audio_clips
        from videollama.media.transforms import normalize, random_resized_crop
        from videollama.media.video import VideoReader

        with VideoReader(path, image_size=self.image_size, normalize=False) as reader:
            positions = self.window_sampling.frame_positions(reader.num_frames, reader.fps)
            chunks = split_windows(positions, self.window_frames)
            if len(chunks) == 1:
                return None
            clip = reader.read(positions)
            duration = reader.duration
        frames = normalize(random_resized_crop(clip.frames, size=self.image_size, scale=CROP_SCALE,
                                               generator=generator))  # (N, 3, S, S), one crop for every frame
        sizes = [len(chunk) for chunk in chunks]
        windows = list(torch.split(frames, sizes))  # W x (T_w, 3, S, S)
        times, start = [], 0
        for size in sizes:
            times.append(clip.timestamps[start:start + size])
            start += size
        spans = window_spans([t[0] for t in times], times, duration)
        audio = window_audio_clips(path, spans) if self.with_audio else None  # (W, 8, 1, 128, 204)
        return WindowedVideo(windows, [span.label for span in spans], duration, audio)

    def _media_sample(self, pairs: list[tuple[str, str]], preamble: str, frames: torch.Tensor | list[torch.Tensor],
                      audio: torch.Tensor | None) -> dict[str, Any]:
        """Inference's preamble (each marker expanded to its token run) opening the conversation.

        ``frames``: one clip ``(T, 3, S, S)`` or a long video's windows; ``audio``: ``(W, 8, 1, 128, 204)``,
        one row per clip or window, or None. The sample's token runs are counted against both."""
        preamble = preamble.replace(IMAGE_PLACEHOLDER, IMAGE_PLACEHOLDER * self.video_tokens)
        preamble = preamble.replace(AUDIO_PLACEHOLDER, AUDIO_PLACEHOLDER * self.audio_tokens)
        turns = []
        for i, (question, answer) in enumerate(pairs):
            turns += [Turn("human", join_question(preamble, question) if i == 0 else question), Turn("gpt", answer)]
        items = len(frames) if isinstance(frames, list) else 1
        runs = [(IMAGE_PLACEHOLDER, self._image_token_id, items * self.video_tokens)]
        if audio is not None:
            runs.append((AUDIO_PLACEHOLDER, self._audio_token_id, items * self.audio_tokens))
        sample = self._conversation_sample(turns, frames, runs=runs)
        if audio is not None:
            sample[AV_AUDIO_KEY] = audio
        return sample


def _placeholder_id(tokenizer, marker: str, dataset: str) -> int:
    token_id = tokenizer.convert_tokens_to_ids(marker)
    if token_id is None or token_id == tokenizer.unk_token_id:
        raise DatasetError(f"dataset {dataset!r}: the tokenizer has no {marker} token")
    return int(token_id)


# ---------------------------------------------------------------------------------------------- building
def text_options(cfg, tokenizer, dataset: str) -> TextOptions:
    """TextOptions for ``dataset`` of a :class:`~videollama.train.config.TrainConfig`."""
    data = cfg.data
    spec_prompts = data.datasets[dataset].prompts
    chosen = data.prompts if spec_prompts is None else spec_prompts
    prompts = tuple(data.prompt_template.format(p) if data.prompt_template else p for p in chosen)
    return TextOptions(
        tokenizer=tokenizer,
        media_token=cfg.media_placeholder,
        num_media_tokens=cfg.num_placeholders(dataset),
        end_sym=data.end_sym,
        max_txt_len=cfg.optim.max_txt_len,
        prompts=prompts,
        template=cfg.template(dataset),
        conversation_max_len=data.conversation_max_len,
    )


def _window_frames(name: str, spec, model_max_frames: int, model_default: int | None) -> int:
    """A dataset's frames per window: its ``window_frames`` (at most the model's ``max_frames``), else the model's
    (its ``window_frames``, else ``max_frames``: as inference reads the model)."""
    try:
        return resolve_window_frames(spec.window_frames, model_max_frames, model_default)
    except UsageError as err:
        raise ConfigError(f"data.datasets.{name}: {err}") from None


def build_datasets(cfg, tokenizer, *, window_frames: int = DEFAULT_WINDOW_FRAMES, video_tokens: int = DEFAULT_VIDEO_TOKENS,
                   audio_tokens: int = DEFAULT_AUDIO_TOKENS, default_window_frames: int | None = None) -> list[TrainDataset]:
    """One dataset per entry of ``cfg.data.datasets`` (in YAML order).

    ``window_frames`` / ``video_tokens`` / ``audio_tokens``: the model's ``max_frames``,
    ``num_video_tokens`` and ``num_audio_tokens``, which size long videos' windows (``window_fps``; a
    dataset's own ``window_frames``, else the model's ``default_window_frames``, may shorten them) and
    audio-visual samples (``with_audio``) as inference sizes them."""
    built: list[TrainDataset] = []
    for index, (name, spec) in enumerate(cfg.data.datasets.items()):
        common = dict(image_size=cfg.data.image_size, max_bad_fraction=spec.max_bad_fraction,
                      seed=cfg.run.seed + index)
        text = text_options(cfg, tokenizer, name)
        if spec.type == "webvid":
            ds = WebVidDataset(name, text, annotations=spec.annotations, media_root=spec.media_root,
                               num_frames=spec.num_frames, sampling=spec.sampling, **common)
        elif spec.type == "cc_sbu_align":
            ds = CCSBUAlignDataset(name, text, annotations=spec.annotations, media_root=spec.media_root, **common)
        elif spec.type == "llava_instruct":
            ds = LlavaInstructDataset(name, text, annotations=spec.annotations, media_root=spec.media_root, **common)
        elif spec.type == "videochat_instruct":
            ds = VideoChatInstructDataset(name, text, annotations=spec.annotations, media_root=spec.media_root,
                                          num_frames=spec.num_frames, sampling=spec.sampling,
                                          data_type=spec.data_type, window_fps=spec.window_fps,
                                          max_windows=spec.max_windows, with_audio=spec.with_audio,
                                          window_frames=_window_frames(name, spec, window_frames,
                                                                       default_window_frames),
                                          video_tokens=video_tokens,
                                          audio_tokens=audio_tokens,
                                          turns=spec.turns, **common)
        elif spec.type == "webdataset":
            from .webdataset import WebDatasetShards  # imported here: that module builds on this one

            ds = WebDatasetShards(name, text, shards=spec.shards, num_frames=spec.num_frames,
                                  sampling=spec.sampling, **common)
        elif spec.type in AUDIO_DATASET_TYPES:
            from .audio_data import AUDIO_DATASET_CLASSES

            extra = {"captions": spec.captions} if spec.type == "clotho" else {}
            extra |= {"turns": spec.turns} if spec.type == "audio_instruct" else {}
            ds = AUDIO_DATASET_CLASSES[spec.type](name, text, annotations=spec.annotations,
                                                  media_root=spec.media_root, **extra, **common)
        else:  # config validation makes this unreachable
            raise DatasetError(f"dataset {name!r}: unknown type {spec.type!r}")
        built.append(ds)
    return built

