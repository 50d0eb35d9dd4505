"""Chat and batch inference over the generation engine.

``Pipeline`` bundles a model, its tokenizer, processor and template. It turns a media file into
features once (cached by content hash in a bounded LRU), builds the official prompts, and runs the
token-level :class:`~videollama.engine.Engine`. ``ChatSession`` is a multi-turn conversation about one
media file; ``Pipeline.answer_batch`` answers many (media, question) pairs with batched decoding.
Videos sampled beyond the model's 32 frames are read in time-labelled windows
(:mod:`videollama.long_video`; ``MediaOptions(fps=..., max_windows=...)``).

    >>> pipe = Pipeline.from_pretrained("path/to/model")           # doctest: +SKIP
    >>> chat = pipe.chat("clip.mp4")                                # doctest: +SKIP
    >>> print(chat.ask("What is happening?"))                       # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .engine import Engine, GenerationConfig, GenerationError, Request, RowFailure
from .errors import UsageError
from .long_video import Timeline, encode_video_file, encode_window_audio, fit_windows, window_positions
from .media import MediaError, NoAudioError, image_format, load_audio, load_image, probe
from .media.audio_span import whole_file_audio
from .media.errors import check_media_file
from .media.video import DEFAULT_NUM_FRAMES
from .media.windows import DEFAULT_FPS_MAX_FRAMES, VideoSampling
from .model import VideoLlama
from .processor import Processor, attach_media_tokens
from .templates import Template, get_template, join_question, media_message, system_for, windowed_video_message

NO_VISION_NOTICE = "this model has no vision branch: answering from the audio track only"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}



@dataclass(frozen=True)
class MediaOptions:
    """How a media file is read. Part of the feature-cache key.

    Frames of a video: ``num_frames`` (a count, default 8; any count up to 100,000) or ``fps`` (a rate,
    capped at ``max_frames``), not both. More than the model's 32 frames are read in windows
    (:mod:`videollama.long_video`); ``max_windows`` caps the windows by merging similar frames (None: as
    many windows as fit half the LLM's context); ``window_frames`` shortens the windows (None: the model's
    own, its ``max_frames`` unless it was trained on shorter ones; finer time labels, more prompt tokens).
    Invalid values raise ``ValueError``.
    """

    num_frames: int | None = None  # None: DEFAULT_NUM_FRAMES (8) unless fps is given
    use_audio: bool = True
    resize: str = "squash"  # or "keep_aspect"
    frame_lookup: str = "index"  # official; "time": the frame on screen at i / fps (differs on VFR video)
    max_bytes: int | None = None
    max_duration: float | None = None
    fps: float | None = None
    max_frames: int = DEFAULT_FPS_MAX_FRAMES  # cap of fps sampling
    max_windows: int | None = None
    window_frames: int | None = None  # frames per window (None: the model's own, resolve_window_frames)

    def __post_init__(self) -> None:
        if self.num_frames is not None and self.fps is not None:
            raise UsageError(f"give either a frame count ({self.num_frames}) or fps ({self.fps}), not both")
        if self.num_frames is None and self.fps is None:
            object.__setattr__(self, "num_frames", DEFAULT_NUM_FRAMES)
        self.sampling  # validates the numbers

    @property
    def sampling(self) -> VideoSampling:
        return VideoSampling(frames=self.num_frames, fps=self.fps, max_frames=self.max_frames,
                             max_windows=self.max_windows, window_frames=self.window_frames)


@dataclass
class MediaFeatures:
    """A media file encoded for the LLM: soft tokens plus what the prompt needs to say about it."""

    kind: str  # "video" | "image" | "audio"
    video: torch.Tensor | None = None  # (W, 32, D): one row per window (W = 1 for an image or up to 32 frames)
    audio: torch.Tensor | None = None  # (W, 8, D): one row per window of a video (1 for an audio file)
    timestamps: str = ""  # the official sampling sentence, for videos read in one window
    notice: str | None = None  # e.g. "no audio track found: answering from the frames only" (or the reverse)
    timeline: Timeline | None = None  # videos: the windows' time ranges and the sampled frame times
    windowed: bool = False  # a video read beyond max_frames: one row of video tokens per window, time-labelled

    @property
    def windows(self) -> int:
        """Rows of video tokens (one per window; 1 for an image or a short video, 0 without video)."""
        return 0 if self.video is None else self.video.shape[0]

    @property
    def preamble(self) -> str:
        if self.windowed:
            return windowed_video_message([w.label for w in self.timeline.windows], audio=self.audio is not None,
                                          duration=self.timeline.duration)
        return media_message(
            video=self.kind == "video", image=self.kind == "image", audio=self.audio is not None,
            timestamps=self.timestamps,
        )


@dataclass
class BatchItem:
    media: str | Path | None
    question: str
    options: MediaOptions = field(default_factory=MediaOptions)


class Pipeline:
    def __init__(self, model: VideoLlama, tokenizer, *, template: str | None = None, cache_size: int = 64):
        self.model = model.eval()
        self.tokenizer = tokenizer
        attach_media_tokens(tokenizer, model.config)  # checks the ids agree (records them if the config has none)
        self.processor = Processor(tokenizer, model.config)
        self.template: Template = get_template(template or model.config.template)
        self.engine = Engine(model, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id or 0)
        self._cache: OrderedDict[tuple, MediaFeatures] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()
        self.description = ""  # set by the loader, e.g. "tiny random model (untrained)"

    @classmethod
    def from_pretrained(cls, directory: str | Path, *, device: str = "cpu", dtype: torch.dtype | None = None,
                        template: str | None = None, with_audio: bool | None = None,
                        with_vision: bool | None = None, device_map: str | dict | None = None,
                        quantization: str | None = None, cache_size: int = 64) -> "Pipeline":
        """Load a model folder and its tokenizer.

        ``device_map`` (``"auto"``) and ``quantization`` (``"8bit"``/``"4bit"``) go to
        :func:`videollama.model.loading.load_for_inference` (CUDA only; without CUDA it raises
        ``LoadingError`` at once); without them the model loads with ``VideoLlama.from_pretrained``.
        ``with_audio=False`` / ``with_vision=False`` load the folder without that branch.
        """
        from transformers import AutoTokenizer

        if device_map is None and quantization is None:
            model = VideoLlama.from_pretrained(directory, device=device, dtype=dtype, with_audio=with_audio,
                                               with_vision=with_vision)
        else:
            from .model.loading import load_for_inference

            model = load_for_inference(directory, device=device, dtype=dtype, device_map=device_map,
                                       quantization=quantization, with_audio=with_audio, with_vision=with_vision)
        tokenizer = AutoTokenizer.from_pretrained(str(directory))
        pipe = cls(model, tokenizer, template=template, cache_size=cache_size)
        pipe.description = str(directory)
        return pipe

    # ------------------------------------------------------------------ media
    @property
    def image_size(self) -> int:
        return self.model.config.vision.image_size

    def encode_media(self, path: str | Path, options: MediaOptions = MediaOptions()) -> MediaFeatures:
        """Read and encode a video, image or audio file (cached by file content + options)."""
        path = Path(path)
        key = (_file_digest(path), options)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        features = self._encode_uncached(path, options)
        with self._lock:
            self._cache[key] = features
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return features

    @torch.inference_mode()
    def _encode_uncached(self, path: Path, options: MediaOptions) -> MediaFeatures:
        device, dtype = self.model.device, self.model.dtype
        with_vision = self.model.config.with_vision
        if path.suffix.lower() in IMAGE_SUFFIXES or image_format(path) is not None:  # an image named clip.mp4 too
            if not with_vision:
                raise UsageError(f"{path}: this model has no vision branch (with_vision=False), so it cannot read "
                                 "images; give it an audio file or a video with an audio track")
            pixels = load_image(path, image_size=self.image_size)  # (1, 3, H, W): a one-frame video
            return MediaFeatures("image", video=self.model.encode_video(pixels[None].to(device, dtype)))
        info = probe(path, max_bytes=options.max_bytes)
        if options.max_duration is not None and info.duration > options.max_duration:
            raise MediaError(path, f"{info.duration:.1f} s is longer than the limit of {options.max_duration:.0f} s")
        want_audio = options.use_audio and self.model.config.with_audio
        if not info.has_video:
            if not want_audio:
                raise MediaError(path, "no video stream, and audio is switched off or not supported by this model")
            audio = load_audio(path, max_bytes=options.max_bytes)[None]  # (1, 8, 1, 128, 204)
            return MediaFeatures("audio", audio=self.model.encode_audio(audio.to(device, dtype)))
        if not with_vision:  # an audio-only model answers a video from its sound track, as if it were an audio file
            if not want_audio:
                raise MediaError(path, "this model has no vision branch (with_vision=False) and audio is switched off: "
                                       "nothing in this video can be read")
            if not info.has_audio:
                raise MediaError(path, "no audio track, and this model has no vision branch (with_vision=False) to "
                                       "read the frames")
            audio = load_audio(path, max_bytes=options.max_bytes)[None]
            return MediaFeatures("audio", audio=self.model.encode_audio(audio.to(device, dtype)),
                                 notice=NO_VISION_NOTICE)
        return self._encode_video(path, options, audio_expected=want_audio and info.has_audio)

    def _encode_video(self, path: Path, options: MediaOptions, *, audio_expected: bool) -> MediaFeatures:
        """A video's frames (one row of tokens per window) and its sound (per window too) when used.
        ``audio_expected``: the window budget leaves room for audio tokens."""
        sampling = self._fit_windows(options.sampling, audio_expected)
        encoded = encode_video_file(self.model, path, sampling, image_size=self.image_size, resize=options.resize,
                                    frame_lookup=options.frame_lookup, max_bytes=options.max_bytes,
                                    max_duration=options.max_duration)
        timeline = encoded.timeline
        notices = []
        if timeline.merged_frames and options.max_windows is None:
            sampled = len(timeline.frame_times)
            notices.append(f"{sampled} sampled frames merged into {sampled - timeline.merged_frames} "
                           f"({encoded.video.shape[0]} windows) to fit the model's context of "
                           f"{self.engine.max_positions} tokens; max_windows (--max-windows) sets the budget")
        features = MediaFeatures("video", video=encoded.video, timeline=timeline, windowed=encoded.windowed,
                                 timestamps="" if encoded.clip is None else encoded.clip.timestamp_message())
        if options.use_audio and self.model.config.with_audio:
            try:
                if encoded.windowed:
                    features.audio = encode_window_audio(self.model, path, timeline.windows, max_bytes=options.max_bytes)
                else:
                    audio = whole_file_audio(path, max_bytes=options.max_bytes)[None]  # (1, 8, 1, 128, 204)
                    features.audio = self.model.encode_audio(audio.to(self.model.device, self.model.dtype))
            except NoAudioError:
                notices.append("no audio track found: answering from the frames only")
        features.notice = "; ".join(notices) or None
        return features

    def window_tokens(self, with_audio: bool) -> int:
        """Prompt positions one window of a long video takes: its video (and audio) tokens and time labels."""
        return window_positions(self.tokenizer, self.model.config, with_audio)

    def _fit_windows(self, sampling: VideoSampling, with_audio: bool) -> VideoSampling:
        """``sampling`` with a window budget: as given, else as many windows as fit half the LLM's context
        (:func:`~videollama.long_video.fit_windows`)."""
        if sampling.max_windows is not None:
            return sampling
        return fit_windows(sampling, self.engine.max_positions, self.window_tokens(with_audio))

    # ------------------------------------------------------------------ prompts
    def prompt_text(self, media: MediaFeatures | None, turns: list[tuple[str, str | None]],
                    system: str | None = None) -> str:
        """The prompt string of a conversation, as the official demos build it: the media preamble
        opens the first user message, the system text follows :func:`~videollama.templates.system_for`."""
        if not turns:
            raise UsageError("a conversation needs at least one user message")
        first_user, first_answer = turns[0]
        if media is not None:
            turns = [(join_question(media.preamble, first_user), first_answer)] + list(turns[1:])
        kinds = {"video": media is not None and media.kind == "video", "image": media is not None and media.kind == "image",
                 "audio": media is not None and media.audio is not None}
        return self.template.render(
            system_for(self.template, system=system, audio_branch=self.model.config.with_audio, **kinds), turns)

    def prompt_ids(self, media: MediaFeatures | None, turns: list[tuple[str, str | None]],
                   system: str | None = None) -> list[int]:
        """Token ids for a conversation (:meth:`prompt_text`, placeholders expanded).

        Raises ValueError when the prompt's markers do not match the media's rows of features (one
        ``<ImageHere>`` per video window or image, one ``<AudioHere>`` per audio row)."""
        prompt = self.prompt_text(media, turns, system)
        video_rows = 0 if media is None else media.windows
        audio_rows = 0 if media is None or media.audio is None else media.audio.shape[0]
        return self.processor.tokenize(prompt, expected=(video_rows, audio_rows))

    def request(self, media: MediaFeatures | None, turns, gen: GenerationConfig, system: str | None = None, *,
                fit_to_context: bool = False) -> Request:
        """The engine request of a conversation. ``fit_to_context``: cut ``gen.max_new_tokens`` to the room the
        LLM's context leaves after the prompt (a prompt that fills the context still raises ``ValueError``)."""
        ids = self.prompt_ids(media, turns, system)
        context = self.engine.max_positions
        if fit_to_context and context is not None:
            room = context - len(ids)
            if room < 1:
                raise UsageError(f"the prompt has {len(ids)} tokens (media included); the model's context is {context}")
            gen = dataclasses.replace(gen, max_new_tokens=min(gen.max_new_tokens, room))
        return Request(
            input_ids=ids,
            video_features=None if media is None else media.video,
            audio_features=None if media is None else media.audio,
            generation=gen,
            stop=self._stop_check(),
        )

    def _stop_check(self):
        stops = self.template.stop_strings
        tokenizer = self.tokenizer

        def stop(generated: list[int]) -> bool:
            tail = tokenizer.decode(generated[-8:], skip_special_tokens=False)
            return any(s in tail for s in stops)

        return stop

    def _visible_text(self, ids: list[int]) -> tuple[str, bool]:
        """Answer text so far, cut at a stop string; (text, stopped). A possible stop-string start is held back."""
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        for stop in self.template.stop_strings:
            if stop in text:
                return text[: text.index(stop)].lstrip(), True
        held = _longest_stop_prefix(text, self.template.stop_strings)
        return text[: len(text) - len(held)].lstrip(), False

    def decode_answer(self, ids: list[int]) -> str:
        return self.template.clean_answer(self.tokenizer.decode(ids, skip_special_tokens=True))

    # ------------------------------------------------------------------ chat and batch
    def chat(self, media: str | Path | None = None, *, options: MediaOptions = MediaOptions(),
             system: str | None = None) -> "ChatSession":
        features = self.encode_media(media, options) if media is not None else None
        return ChatSession(self, features, system=system)

    def stream(self, request: Request) -> Iterator[str]:
        """Yield text pieces of one request's answer as tokens arrive (stop strings are never shown)."""
        ids: list[int] = []
        shown = ""
        for step in self.engine.generate([request]):
            if isinstance(step[0], RowFailure):
                raise step[0].error
            if step[0] is None:
                break
            ids.append(step[0])
            visible, stopped = self._visible_text(ids)
            if visible.startswith(shown) and len(visible) > len(shown):
                yield visible[len(shown):]
                shown = visible
            if stopped:
                break
        final = self.decode_answer(ids)
        if final.startswith(shown) and len(final) > len(shown):
            yield final[len(shown):]

    def answer_batch(self, items: list[BatchItem], gen: GenerationConfig = GenerationConfig(do_sample=False),
                     batch_size: int = 8) -> list[str]:
        """Answer many (media, question) pairs; rows of a batch decode together (left-padded).

        One bad item never costs the others their answers: an item whose media cannot be read, whose
        prompt does not fit or whose generation fails is left out, every other item gets the answer it
        gets alone, and :class:`BatchAnswerError` is raised at the end with all of them (a single item's
        error is raised as it is)."""
        answers: list[str | None] = [None] * len(items)
        errors: dict[int, Exception] = {}
        for start in range(0, len(items), batch_size):
            requests: dict[int, Request] = {}
            for index in range(start, min(start + batch_size, len(items))):
                item = items[index]
                try:
                    media = self.encode_media(item.media, item.options) if item.media is not None else None
                    requests[index] = self.request(media, [(item.question, None)], gen)
                except Exception as err:  # noqa: BLE001 - reported with the item's index below
                    errors[index] = err
            ids: dict[int, list[int]] = {index: [] for index in requests}
            for step in self.engine.generate(list(requests.values())):
                for index, value in zip(requests, step):
                    if isinstance(value, RowFailure):
                        errors[index] = value.error
                    elif value is not None:
                        ids[index].append(value)
            for index, tokens in ids.items():
                if index not in errors:
                    answers[index] = self.decode_answer(tokens)
        if errors and len(items) == 1:
            raise errors[0]
        if errors:
            raise BatchAnswerError(errors, answers)
        return answers


class BatchAnswerError(GenerationError):
    """Items of :meth:`Pipeline.answer_batch` failed; ``answers`` holds the others' answers (None where failed)."""

    noun = "item"

    @property
    def answers(self) -> list[str | None]:
        return self.outputs


class ChatSession:
    """A multi-turn conversation about one media file; the media are encoded once."""

    def __init__(self, pipeline: Pipeline, media: MediaFeatures | None, *, system: str | None = None):
        self.pipeline = pipeline
        self.media = media
        self.system = system
        self.turns: list[tuple[str, str]] = []

    @property
    def notice(self) -> str | None:
        return None if self.media is None else self.media.notice

    def stream(self, question: str, gen: GenerationConfig | None = None, *, fit_to_context: bool = False) -> Iterator[str]:
        """Stream the answer; ``fit_to_context`` as :meth:`Pipeline.request`."""
        request = self.pipeline.request(self.media, [*self.turns, (question, None)], gen or GenerationConfig(), self.system,
                                        fit_to_context=fit_to_context)
        pieces: list[str] = []
        for piece in self.pipeline.stream(request):
            pieces.append(piece)
            yield piece
        self.turns.append((question, "".join(pieces).strip()))

    def ask(self, question: str, gen: GenerationConfig | None = None) -> str:
        for _ in self.stream(question, gen):
            pass
        return self.turns[-1][1]

    def reset(self) -> None:
        self.turns.clear()


def _longest_stop_prefix(text: str, stops: tuple[str, ...]) -> str:
    """The longest suffix of ``text`` that could be the start of a stop string (held back while streaming)."""
    best = ""
    for stop in stops:
        for n in range(min(len(stop), len(text)), 0, -1):
            if text.endswith(stop[:n]):
                best = max(best, stop[:n], key=len)
                break
    return best


def _file_digest(path: Path, chunk: int = 1 << 20) -> str:
    check_media_file(path)  # missing, a directory, a FIFO (whose read would block), empty: one line saying which
    h = hashlib.blake2b(digest_size=16)
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


__all__ = ["Pipeline", "ChatSession", "MediaFeatures", "MediaOptions", "BatchItem", "BatchAnswerError",
           "GenerationConfig"]
