"""Typed configuration for every Video-LLaMA component.

One dataclass per component, composed into :class:`VideoLlamaConfig`. Presets (``presets.py``)
only fill in numbers. Every default below is the official Video-LLaMA value
(see ``docs/architecture.md``); the tiny preset shrinks widths for tests.

The config round-trips through ``config.json`` (``to_dict`` / ``from_dict``) so a model folder is
self-describing. Keys added later (``with_vision``) take their defaults when an older folder lacks them.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import VideoLlamaError
from .typed import from_dict


class ModelConfigError(VideoLlamaError, ValueError):
    """A model config that cannot describe a model: unknown keys, wrong types, inconsistent widths."""


# How a model folder names itself to Hugging Face-style loaders (vLLM reads these two keys of config.json).
HF_MODEL_TYPE = "videollama"
HF_ARCHITECTURE = "VideoLlamaForConditionalGeneration"


@dataclass
class VisionConfig:
    """EVA ViT-g/14 frame encoder (frozen). 39 of EVA-CLIP's 40 blocks: penultimate features."""

    hidden_size: int = 1408
    intermediate_size: int = 6144  # mlp_ratio 4.3637
    num_layers: int = 39
    num_heads: int = 16
    image_size: int = 224
    patch_size: int = 14
    layer_norm_eps: float = 1e-6  # ln_vision uses 1e-5, see VideoLlama
    # ln_vision (BLIP-2) is a plain nn.LayerNorm with the torch default eps.
    ln_vision_eps: float = 1e-5

    @property
    def num_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2 + 1  # 256 patches + CLS = 257


@dataclass
class QFormerConfig:
    """A query-only BERT Q-Former (BLIP-2 style): learned queries cross-attend to a memory."""

    num_layers: int = 12
    hidden_size: int = 768
    num_heads: int = 12
    intermediate_size: int = 3072
    encoder_width: int = 1408  # width of the memory the queries cross-attend to
    cross_attention_every: int = 2  # 2: layers 0,2,4,...; 1: every layer
    num_queries: int = 32
    layer_norm_eps: float = 1e-12
    dropout: float = 0.1  # hidden and attention-probability dropout (BERT-base)
    # Std of the Linear weights at init (BERT's initializer_range). 0.02 is tuned for width 768; at small
    # widths it lets almost nothing of the memory through a fresh Q-Former (docs/synthav.md#diagnosis).
    init_std: float = 0.02


@dataclass
class ImageBindConfig:
    """ImageBind-Huge audio encoder and the vision encoder the audio branch is trained through."""

    embed_dim: int = 1024  # shared embedding space
    # audio trunk
    audio_width: int = 768
    audio_layers: int = 12
    audio_heads: int = 12
    audio_kernel: int = 16
    audio_stride: int = 10
    audio_mel_bins: int = 128
    audio_frames: int = 204  # target_length of the fbank
    audio_drop_path: float = 0.1
    audio_logit_scale: float = 20.0
    # vision trunk (ViT-H/14 with a 2-frame tubelet)
    vision_width: int = 1280
    vision_layers: int = 32
    vision_heads: int = 16
    image_size: int = 224
    patch_size: int = 14
    vision_time_kernel: int = 2
    mlp_ratio: float = 4.0
    layer_norm_eps: float = 1e-6


@dataclass
class VideoLlamaConfig:
    """The whole model: vision-language branch, audio-language branch and the LLM."""

    vision: VisionConfig = field(default_factory=VisionConfig)
    image_qformer: QFormerConfig = field(default_factory=QFormerConfig)
    video_qformer: QFormerConfig = field(
        default_factory=lambda: QFormerConfig(num_layers=2, encoder_width=768, cross_attention_every=1, num_queries=32)
    )
    max_frames: int = 32  # rows of the frame-position embedding: the hard frame limit
    # Frames per window of a long video read without a window length of its own (None: max_frames). A training
    # run whose long videos were read in shorter windows records their length here, so inference reads the same way.
    window_frames: int | None = None
    use_frame_position: bool = True  # False only for the ablation without temporal position
    imagebind: ImageBindConfig = field(default_factory=ImageBindConfig)
    audio_qformer: QFormerConfig = field(
        default_factory=lambda: QFormerConfig(num_layers=2, encoder_width=1024, cross_attention_every=1, num_queries=8)
    )
    max_audio_clips: int = 8
    # Norm of the clip embeddings entering the audio Q-Former. None keeps the encoders' own: ImageBind's
    # audio embeddings have norm 20 and its vision embeddings norm 1, so the official audio branch is
    # trained (on frames) at norm 1 and run (on sound) at norm 20. A number rescales both to it.
    audio_branch_input_norm: float | None = None
    with_vision: bool = True  # build the vision-language branch (EVA ViT-g, BLIP-2 and video Q-Formers)
    with_audio: bool = True  # build the audio-language branch
    with_imagebind_vision: bool = False  # build ImageBind's vision trunk (needed to train the audio branch)
    # A Hugging Face causal-LM config (``config.to_dict()``); ``model_type`` picks the class.
    llm: dict[str, Any] = field(default_factory=dict)
    template: str = "llama_2"  # default conversation template, see templates.py
    image_placeholder: str = "<ImageHere>"
    audio_placeholder: str = "<AudioHere>"
    # Token ids of the placeholders in the tokenizer (set when a tokenizer is attached). They may lie
    # beyond the LLM's vocabulary: the model swaps them out before the embedding lookup.
    image_token_id: int | None = None
    audio_token_id: int | None = None

    @property
    def llm_hidden_size(self) -> int:
        return int(self.llm["hidden_size"])

    @property
    def num_video_tokens(self) -> int:
        return self.video_qformer.num_queries

    @property
    def num_audio_tokens(self) -> int:
        return self.audio_qformer.num_queries

    def __post_init__(self) -> None:
        # Accept nested dicts (from JSON) as well as dataclasses.
        for name, cls in _NESTED.items():
            value = getattr(self, name)
            if isinstance(value, dict):
                setattr(self, name, _from_dict(cls, value))
        if self.image_qformer.encoder_width != self.vision.hidden_size:
            raise ModelConfigError(
                f"image_qformer.encoder_width ({self.image_qformer.encoder_width}) must equal "
                f"vision.hidden_size ({self.vision.hidden_size})"
            )
        if self.video_qformer.encoder_width != self.image_qformer.hidden_size:
            raise ModelConfigError("video_qformer.encoder_width must equal image_qformer.hidden_size")
        if self.audio_qformer.encoder_width != self.imagebind.embed_dim:
            raise ModelConfigError("audio_qformer.encoder_width must equal imagebind.embed_dim")
        if self.window_frames is not None and not 1 <= self.window_frames <= self.max_frames:
            raise ModelConfigError(f"window_frames must be between 1 and max_frames ({self.max_frames}), "
                                   f"got {self.window_frames}")
        if not self.with_vision and not self.with_audio:
            raise ModelConfigError("with_vision and with_audio are both False: a model needs at least one branch")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "VideoLlamaConfig":
        return _from_dict(cls, data)

    def save(self, path: str | Path) -> None:
        """Write ``config.json``. The top-level ``model_type`` / ``architectures`` keys name the model to
        Hugging Face-style loaders (vLLM with our plugin, ``videollama/vllm/``); ``load`` reads only the
        ``videollama`` section."""
        document = {"model_type": HF_MODEL_TYPE, "architectures": [HF_ARCHITECTURE], "videollama": self.to_dict()}
        Path(path).write_text(json.dumps(document, indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "VideoLlamaConfig":
        try:
            data = json.loads(Path(path).read_text())
        except json.JSONDecodeError as err:
            raise ModelConfigError(f"{path}: not valid JSON ({err})") from None
        if not isinstance(data, dict) or "videollama" not in data:
            raise ModelConfigError(f"{path} is not a videollama config.json (no 'videollama' section)")
        try:
            return cls.from_dict(data["videollama"])
        except ModelConfigError as err:
            raise ModelConfigError(f"{path}: {err}") from None


_NESTED: dict[str, type] = {
    "vision": VisionConfig,
    "image_qformer": QFormerConfig,
    "video_qformer": QFormerConfig,
    "imagebind": ImageBindConfig,
    "audio_qformer": QFormerConfig,
}


def _from_dict(cls: type, data: dict[str, Any]):
    """Build a config dataclass from a dict, refusing unknown keys and values of the wrong type (a typo
    or a hand-edited ``"num_layers": "2"`` must not pass silently)."""
    return from_dict(cls, data, error=ModelConfigError)
