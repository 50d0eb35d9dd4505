"""vLLM's multimodal processing for Video-LLaMA: processing info, dummy inputs, and the processor.

vLLM renders the chat template (``chat_template.py``) and tokenizes the result with the HF tokenizer in
one piece. Our ``Processor`` tokenizes the text between media markers piece by piece (as the official
``get_context_emb``), which gives other ids at the seams. To answer with exactly ``Pipeline``'s tokens,
:meth:`VideoLlamaMultiModalProcessor.apply` decodes vLLM's prompt back to text (lossless for these
tokenizers), fills in the video's facts (``prompt.finish_prompt``) and tokenizes it with our
``Processor``: 32 ``<ImageHere>`` per video window or image, 8 ``<AudioHere>`` per window's sound track,
audio before video. The prompt updates then only *locate* each item's embeddings: a video spans from its
first ``<AudioHere>`` (with sound) or ``<ImageHere>`` to its last ``<ImageHere>`` (the text between, such
as the windows' time labels, is not embedded), so the model returns every window's 8 audio embeddings
and then every window's 32 video embeddings as one item, in the order the placeholders are filled. A
video's update also carries its facts (``VideoPlaceholders``): vLLM's processor cache keeps updates with
each item, while the item's tensors may be held by the engine only.

How a video is sampled comes from ``mm_processor_kwargs``, with ``MediaOptions``' meaning and checks:
``num_frames`` (a count, default 8, up to 100,000) or ``fps`` (a rate) capped by ``max_frames``
(default 10,800), ``max_windows`` and ``window_frames``. Up to the model's ``max_frames`` (32) sampled frames
(or ``window_frames``): one clip, the official prompt, as before. Beyond: windows of at most that many
frames, each its own 32 tokens after its
time label (``docs/long-video.md``), with the window budget ``Pipeline`` uses (``max_windows``, by
default what fits half the LLM's context). Frames that must be *merged* to fit that budget are merged in the
engine, which reads the file itself (``media.MergedVideo``): merging decides the windows' time labels from the
encoders' features, and vLLM tokenizes the prompt before any encoder runs. So the prompt holds zero labels
(``00:00:00-00:00:00``) and every digit of them is an embedded position too: the engine returns the token
embeddings of the real labels' digits there (``prompt.merged_video_span``). That needs a tokenizer that
spells each digit of a label as one token whatever its neighbours (LLaMA's does; checked by
``prompt.label_digit_ids``), else merging is refused (400). A bad value is a 400 naming
its field; ``null`` counts as not given.
Server-wide defaults (``--mm-processor-kwargs '{"num_frames": 16}'``) apply under the request's values; a
request that gives a count or a rate replaces the server's default of either.

One media item per prompt, as ``videollama serve``: a second item is refused (vLLM answers 400).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from functools import cached_property

import torch
from transformers import BatchFeature
from vllm.config.multimodal import MultiModalDummyOptions
from vllm.inputs import MultiModalDataDict, MultiModalInput, mm_input
from vllm.multimodal.inputs import MultiModalFieldConfig, MultiModalKwargsItems
from vllm.multimodal.parse import MultiModalDataItems, MultiModalDataParser, VideoProcessorItems
from vllm.multimodal.processing import (
    BaseDummyInputsBuilder,
    BaseMultiModalProcessor,
    BaseProcessingInfo,
    PromptReplacement,
    PromptUpdate,
    PromptUpdateDetails,
)
from vllm.multimodal.processing.inputs import ProcessorInputs
from vllm.multimodal.processing.processor import MultiModalPromptUpdates, TimingContext

from ..config import VideoLlamaConfig
from ..inference import MediaOptions
from ..long_video import window_positions
from ..media.audio import CLIP_SECONDS, NUM_CLIPS, NUM_MEL_BINS, SAMPLE_RATE, TARGET_FRAMES
from ..media.video import timestamp_message
from ..media.windows import VideoSampling, resolve_window_frames, time_label
from ..model.hf_config import VideoLlamaHFConfig
from ..processor import Processor
from ..templates import AUDIO_SENTENCE, IMAGE_MESSAGE, VIDEO_MESSAGE
from ..tokenizer import AUDIO_PLACEHOLDER, IMAGE_PLACEHOLDER
from .media import SincResampler, VideoReading, decode_audio, decode_image, decode_video, merge_from_row, merge_row
from .prompt import NUM_DIGITS, VideoFacts, finish_prompt, label_digit_ids, media_bounds, merged_video_span

SAMPLING_KWARGS = ("num_frames", "fps", "max_frames", "max_windows", "window_frames")  # MediaOptions' names
MAX_MEDIA_ITEMS = 1  # one video, image or audio clip per conversation, as our own server
# Dummy inputs for vLLM's memory profiling: a video of max_frames frames, all sampled (one window: windows
# are encoded one after another, so one window's activations are the encoders' peak), and an audio clip
# long enough to fill every 2 s clip.
DUMMY_AUDIO_SECONDS = NUM_CLIPS * CLIP_SECONDS


@dataclass
class VideoPlaceholders(PromptUpdateDetails):
    """A video's placeholder run, with what its decoded file adds to the prompt. vLLM's processor cache keeps
    prompt updates with each item (its tensors may live in the engine's cache only), so the facts go here."""

    facts: VideoFacts | None = None


class EncodedVideoItems(VideoProcessorItems):
    """Video items that keep vLLM's ``MediaWithBytes`` wrapper: our decoder reads the original bytes.
    (vLLM's own items unwrap to the frames it decoded, also when the processor cache re-parses them.)"""

    def get(self, index: int):
        return self.data[index]


class VideoLlamaDataParser(MultiModalDataParser):
    """vLLM's parser with our resampler for audio parts and video items that keep their bytes."""

    def __init__(self, **kwargs) -> None:
        super().__init__(target_sr=SAMPLE_RATE, target_channels=1, **kwargs)
        self.audio_resampler = SincResampler()

    def _parse_video_data(self, data):
        items = super()._parse_video_data(data)
        if isinstance(items, VideoProcessorItems):
            return EncodedVideoItems(items.data, metadata=items.metadata)
        return items


class VideoLlamaProcessingInfo(BaseProcessingInfo):
    def get_hf_config(self) -> VideoLlamaHFConfig:
        return self.ctx.get_hf_config(VideoLlamaHFConfig)

    @cached_property
    def model_config(self) -> VideoLlamaConfig:
        return self.get_hf_config().model

    @cached_property
    def processor(self) -> Processor:
        """Our own prompt tokenizer, on vLLM's tokenizer (the folder's)."""
        return Processor(self.get_tokenizer(), self.model_config)

    def get_supported_mm_limits(self) -> Mapping[str, int | None]:
        limits: dict[str, int | None] = {}
        if self.model_config.with_vision:
            limits.update(image=MAX_MEDIA_ITEMS, video=MAX_MEDIA_ITEMS)
        if self.model_config.with_audio:
            limits["audio"] = MAX_MEDIA_ITEMS
        return limits

    def get_supported_mm_processor_kwargs(self) -> dict[str, set[str]]:
        return {}  # no Hugging Face processor: our processor reads SAMPLING_KWARGS itself

    def get_data_parser(self) -> MultiModalDataParser:
        return VideoLlamaDataParser(expected_hidden_size=self._get_expected_hidden_size())

    def get_mm_max_tokens_per_item(self, seq_len: int, mm_counts: Mapping[str, int]) -> Mapping[str, int]:
        """An image 32, an audio clip 8; a video read in windows may fill the whole context (vLLM sizes its
        encoder cache and encoder budget by these, so a long video's embeddings always fit)."""
        spans = {"image": len(self.image_span()), "video": seq_len, "audio": len(self.audio_span())}
        return {modality: spans[modality] for modality in self.get_supported_mm_limits()}

    # ---------------------------------------------------------------- where each item's embeddings go
    def image_span(self) -> list[int]:
        return [self.processor.image_token_id] * self.model_config.num_video_tokens

    def audio_span(self) -> list[int]:
        return [self.processor.audio_token_id] * self.model_config.num_audio_tokens

    def video_span(self, facts: VideoFacts) -> list[int]:
        """Token ids of a video's item: everything from the first audio or video token to the last video
        token of its preamble (tokenized as ``Processor`` does): 32 video tokens for a silent clip; with
        sound, or in windows, the text between (sentences, time labels) too."""
        ids = self.processor.tokenize(facts.preamble, add_bos=False)
        first, last = media_bounds(self.processor, ids)
        return ids[first:last + 1]

    @cached_property
    def label_digit_ids(self) -> list[int] | None:
        """The token ids of the digits 0-9 in a time label, or None: the plugin cannot merge frames
        (:func:`~videollama.vllm.prompt.label_digit_ids`)."""
        return label_digit_ids(self.processor)

    # ---------------------------------------------------------------- how a video is read
    def video_sampling(self, mm_kwargs: Mapping[str, object]) -> VideoSampling:
        """``mm_processor_kwargs`` -> ``MediaOptions(num_frames=, fps=, max_frames=, max_windows=, window_frames=)
        .sampling``;
        a value of the wrong type or range is a ``ValueError`` naming its field (vLLM answers 400)."""
        given = {name: mm_kwargs[name] for name in SAMPLING_KWARGS if mm_kwargs.get(name) is not None}
        for name, value in given.items():
            number = (int, float) if name == "fps" else int
            if isinstance(value, bool) or not isinstance(value, number):
                kind = "a number" if name == "fps" else "an integer"
                raise ValueError(f"mm_processor_kwargs.{name} must be {kind}, got {value!r}")
            try:
                MediaOptions(**{name: value})
            except ValueError as err:
                raise ValueError(f"mm_processor_kwargs.{name}: {err}") from None
        try:
            return MediaOptions(**given).sampling
        except ValueError as err:  # num_frames and fps together
            raise ValueError(f"mm_processor_kwargs: {err}") from None

    def sampling_kwargs(self, request: Mapping[str, object]) -> dict[str, object]:
        """The server's ``--mm-processor-kwargs`` under the request's (vLLM merges them only for Hugging Face
        processors); a count or a rate the request gives replaces the server's default of either."""
        merged = self.ctx.get_merged_mm_kwargs(request)
        for given, other in (("num_frames", "fps"), ("fps", "num_frames")):
            if request.get(given) is not None and other not in request:
                merged.pop(other, None)
        return merged

    def video_reading(self, mm_kwargs: Mapping[str, object]) -> VideoReading:
        config = self.model_config
        sampling = self.video_sampling(self.sampling_kwargs(mm_kwargs))
        try:
            window_frames = resolve_window_frames(sampling.window_frames, config.max_frames, config.window_frames)
        except ValueError as err:
            raise ValueError(f"mm_processor_kwargs.window_frames: {err}") from None
        return VideoReading(sampling, image_size=config.vision.image_size,
                            window_frames=window_frames, with_audio=config.with_audio,
                            context=getattr(self.get_hf_config().get_text_config(), "max_position_embeddings", None),
                            max_model_len=self.ctx.model_config.max_model_len, window_positions=self.window_positions,
                            can_merge=self.label_digit_ids is not None)

    def window_positions(self, with_audio: bool) -> int:
        """Prompt positions of one window (``Pipeline.window_tokens``)."""
        return window_positions(self.get_tokenizer(), self.model_config, with_audio)


class VideoLlamaDummyInputsBuilder(BaseDummyInputsBuilder[VideoLlamaProcessingInfo]):
    def get_dummy_text(self, mm_counts: Mapping[str, int]) -> str:
        markers = {"image": IMAGE_MESSAGE, "video": VIDEO_MESSAGE, "audio": AUDIO_SENTENCE}
        return "".join(markers[m] * n for m, n in mm_counts.items())

    def get_dummy_mm_data(self, seq_len: int, mm_counts: Mapping[str, int],
                          mm_options: MultiModalDummyOptions) -> MultiModalDataDict:
        config = self.info.model_config
        size = config.vision.image_size
        return {
            "image": self._get_dummy_images(width=size, height=size, num_images=mm_counts.get("image", 0),
                                            overrides=mm_options.get("image")),
            "video": self._get_dummy_videos(width=size, height=size, num_frames=config.max_frames,
                                            num_videos=mm_counts.get("video", 0), overrides=mm_options.get("video")),
            "audio": self._get_dummy_audios(length=int(DUMMY_AUDIO_SECONDS * SAMPLE_RATE),
                                            num_audios=mm_counts.get("audio", 0), overrides=mm_options.get("audio")),
        }


class VideoLlamaMultiModalProcessor(BaseMultiModalProcessor[VideoLlamaProcessingInfo]):
    def get_dummy_inputs(self, seq_len: int, mm_counts: Mapping[str, int],
                         mm_options: MultiModalDummyOptions) -> ProcessorInputs:
        """vLLM's dummy prompt and items, the video read as one window of ``max_frames`` frames (the encoders'
        peak: windows are encoded one after another) whatever the server's default kwargs say."""
        inputs = super().get_dummy_inputs(seq_len, mm_counts, mm_options)
        max_frames = self.info.model_config.max_frames
        one_window = {"num_frames": max_frames, "fps": None, "window_frames": max_frames}
        return replace(inputs, hf_processor_mm_kwargs=one_window)

    def _apply_hf_processor_main(self, mm_items: MultiModalDataItems,
                                 hf_kwargs: Mapping[str, object]) -> BatchFeature:
        """Decode every item with our media code (there is no Hugging Face processor)."""
        config = self.info.model_config
        out: dict[str, torch.Tensor] = {}
        if "image" in mm_items:
            images = mm_items["image"].data
            out["image_pixel_values"] = torch.stack([decode_image(item, image_size=config.vision.image_size)
                                                     for item in images])  # (N, 1, 3, S, S)
        if "video" in mm_items:  # one item (MAX_MEDIA_ITEMS), so its variable sizes stack
            reading = self.info.video_reading(hf_kwargs)
            videos = [decode_video(item, reading) for item in mm_items["video"].data]
            out["video_pixel_values"] = torch.stack([v.frames for v in videos])  # (N, F, 3, S, S) uint8
            out["video_window_frames"] = torch.tensor([v.window_frames for v in videos])  # (N, W)
            out["video_window_times"] = torch.tensor([[(w.start, w.end) for w in v.windows] for v in videos],
                                                     dtype=torch.float64)  # (N, W, 2): labels
            out["video_message_seconds"] = torch.tensor([v.message_seconds for v in videos],
                                                        dtype=torch.float64)  # (N, T); (N, 0) in windows
            out["video_duration"] = torch.tensor([v.duration for v in videos], dtype=torch.float64)  # (N,)
            silent = torch.zeros(0, NUM_CLIPS, 1, NUM_MEL_BINS, TARGET_FRAMES)  # no sound track: no windows of clips
            out["video_audio_values"] = torch.stack([silent if v.audio is None else v.audio
                                                     for v in videos])  # (N, W or 0, 8, 1, 128, 204)
            # frames that merge: the file's bytes and how to read it, for the engine; (N, 0) and NaN otherwise
            out["video_file"] = torch.stack([torch.frombuffer(bytearray(v.merged.data), dtype=torch.uint8)
                                             if v.merged else torch.empty(0, dtype=torch.uint8) for v in videos])
            out["video_merge"] = torch.stack([merge_row(v.merged) for v in videos])  # (N, MERGE_FIELDS)
            digit_ids = self.info.label_digit_ids if any(v.merged for v in videos) else None
            out["video_label_digit_ids"] = torch.tensor([digit_ids or [-1] * NUM_DIGITS] * len(videos))  # (N, 10)
        if "audio" in mm_items:
            out["audio_values"] = torch.stack([decode_audio(item) for item in mm_items["audio"].data])
        return BatchFeature(out)

    def _get_mm_fields_config(self, hf_inputs: BatchFeature,
                              hf_processor_mm_kwargs: Mapping[str, object]) -> Mapping[str, MultiModalFieldConfig]:
        return dict(
            image_pixel_values=MultiModalFieldConfig.batched("image"),
            video_pixel_values=MultiModalFieldConfig.batched("video"),
            video_window_frames=MultiModalFieldConfig.batched("video"),
            video_window_times=MultiModalFieldConfig.batched("video"),
            video_message_seconds=MultiModalFieldConfig.batched("video"),
            video_duration=MultiModalFieldConfig.batched("video"),
            video_audio_values=MultiModalFieldConfig.batched("video"),
            # read on the CPU by the engine (a file's bytes need not visit the GPU)
            video_file=MultiModalFieldConfig.batched("video", keep_on_cpu=True),
            video_merge=MultiModalFieldConfig.batched("video", keep_on_cpu=True),
            video_label_digit_ids=MultiModalFieldConfig.batched("video", keep_on_cpu=True),
            audio_values=MultiModalFieldConfig.batched("audio"),
        )

    def _get_prompt_updates(self, mm_items: MultiModalDataItems, hf_processor_mm_kwargs: Mapping[str, object],
                            out_mm_kwargs: MultiModalKwargsItems) -> Sequence[PromptUpdate]:
        info = self.info
        ids = [info.processor.image_token_id, info.processor.audio_token_id]

        def video(item_idx: int) -> VideoPlaceholders:
            facts = video_facts(out_mm_kwargs["video"][item_idx])
            if facts.merged:
                full, mask = merged_video_span(info.processor, facts, info.label_digit_ids)
                return VideoPlaceholders(full=full, is_embed=lambda _: mask, facts=facts)
            span = PromptUpdateDetails.select_token_ids(info.video_span(facts), ids)
            return VideoPlaceholders(full=span.full, is_embed=span.is_embed, facts=facts)

        return [
            PromptReplacement("image", [ids[0]], PromptUpdateDetails.select_token_id(info.image_span(), ids[0])),
            PromptReplacement("video", [ids[0]], video),
            PromptReplacement("audio", [ids[1]], PromptUpdateDetails.select_token_id(info.audio_span(), ids[1])),
        ]

    def get_dummy_mm_inputs(self, mm_counts: Mapping[str, int], **kwargs) -> MultiModalInput:
        """vLLM warms the processor up with one item of every modality in one prompt, which this model refuses
        (one item per prompt): build each modality's dummy prompt alone and return the one with the most
        embedded positions."""
        wanted = [modality for modality, count in mm_counts.items() if count]
        if len(wanted) <= MAX_MEDIA_ITEMS:
            return super().get_dummy_mm_inputs(mm_counts, **kwargs)
        dummies = []
        for modality in wanted:
            dummies.append(super().get_dummy_mm_inputs({modality: 1}, **kwargs))
        return max(dummies, key=lambda d: sum(p.length for ranges in d["mm_placeholders"].values() for p in ranges))

    def apply(self, inputs: ProcessorInputs, timing_ctx: TimingContext) -> MultiModalInput:
        """Our prompt tokens (see the module docstring) and where each item's embeddings go."""
        counts = inputs.mm_data_items.get_all_counts()
        if sum(counts.values()) > MAX_MEDIA_ITEMS:
            given = ", ".join(f"{n} {m}" for m, n in counts.items() if n)
            raise ValueError(f"this model takes one media item (a video, an image or an audio clip) per "
                             f"conversation; got {given}")
        result = self._cached_apply_hf_processor(inputs, timing_ctx)
        with timing_ctx.record("apply_prompt_updates"):
            prompt_ids = self._our_prompt_ids(inputs.prompt, counts, result.prompt_updates)
            placeholders = self._find_mm_placeholders(prompt_ids, result.prompt_updates)
            self._validate_mm_placeholders(placeholders, counts)
        return mm_input(
            prompt_token_ids=prompt_ids,
            mm_kwargs=result.kwargs,
            mm_hashes=result.hashes,
            mm_placeholders={m: [p.to_range() for p in items] for m, items in placeholders.items()},
        )

    def _our_prompt_ids(self, prompt: str | list[int], counts: Mapping[str, int],
                        prompt_updates: MultiModalPromptUpdates) -> list[int]:
        tokenizer = self.info.get_tokenizer()
        text = prompt if isinstance(prompt, str) else tokenizer.decode(prompt)
        bos = tokenizer.bos_token or ""
        text = text[len(bos):] if bos and text.startswith(bos) else text
        video = prompt_updates["video"][0][0].content.facts if counts.get("video") else None
        config = self.info.model_config
        text = finish_prompt(text, video, config.template, audio_branch=config.with_audio)
        windows = 0 if video is None else video.num_windows  # one marker per window (and per window's sound)
        heard = windows if video is not None and video.has_audio else 0
        expected = {IMAGE_PLACEHOLDER: counts.get("image", 0) + windows,
                    AUDIO_PLACEHOLDER: counts.get("audio", 0) + heard}
        for marker, count in expected.items():
            if text.count(marker) != count:
                raise ValueError(f"the prompt holds {text.count(marker)} {marker} markers for {count} media "
                                 "items; use videollama's chat template (vLLM's default for this model)")
        return self.info.processor.tokenize(text)


def video_facts(item) -> VideoFacts:
    """What a processed video item adds to the prompt: its sampling sentence (one window) or its windows'
    time labels and duration, and whether it is heard."""
    times = item["video_window_times"].data.tolist()  # [[start, end], ...]; merged: zeros, filled in the engine
    merged = merge_from_row(item["video_merge"].data)
    heard = item["video_audio_values"].data.shape[0] > 0 or (merged is not None and merged[1])
    if len(times) > 1 or merged is not None:
        return VideoFacts("", heard, windows=tuple(time_label(start, end) for start, end in times),
                          duration=float(item["video_duration"].data), merged=merged is not None)
    return VideoFacts(timestamp_message(item["video_message_seconds"].data.tolist()), heard)
