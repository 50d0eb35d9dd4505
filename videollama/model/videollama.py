"""Video-LLaMA: frozen image/audio encoders + trainable Q-Formers feeding soft tokens to a frozen LLM.

Vision-language branch (per video of T frames)::

    frames (B, T, 3, 224, 224)
      -> EVA ViT-g/14, 39 blocks + ln_vision      (B*T, 257, 1408)   frozen  [Blip2VisionModel]
      -> BLIP-2 Q-Former, 32 queries              (B*T, 32, 768)     frozen  [Blip2QFormerModel]
      -> + frame-position embedding of frame t    (B, T*32, 768)
      -> Video Q-Former, 32 queries               (B, 32, 768)       trained [Blip2QFormerModel]
      -> linear projection                        (B, 32, D_llm)     trained

Audio-language branch (per audio track cut into S two-second clips)::

    log-mel (B, S, 1, 128, 204)
      -> ImageBind audio encoder                  (B*S, 1024)        frozen
      -> + audio position embedding of clip s     (B, S, 1024)
      -> Audio Q-Former, 8 queries                (B, 8, 768)        trained
      -> linear projection                        (B, 8, D_llm)      trained

Either branch can be left out (``with_vision=False``: an audio-language model; ``with_audio=False``: a
vision-language model); the LLM is always there.

The audio branch is trained without audio: frames go through ImageBind's *vision* encoder into the
same audio Q-Former (``encode_visual_for_audio_branch``); ImageBind's shared embedding space lets the
trained branch read real audio at inference.

Media features replace placeholder tokens: the processor expands each video/image into
``num_video_tokens`` ``<ImageHere>`` ids and each audio track into ``num_audio_tokens``
``<AudioHere>`` ids; ``embed_inputs`` checks the counts and scatters the features in order.
The placeholder ids may lie outside the LLM's vocabulary (the official checkpoints do not resize the
embedding matrix), so they are swapped for the pad id before the embedding lookup.

The Q-Formers are transformers' ``Blip2QFormerModel`` with ``use_qformer_text_input=False``, which is
exactly the official query-only Q-Former (the text feed-forward is not built).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    Blip2QFormerConfig,
    Blip2QFormerModel,
    Blip2VisionConfig,
    Blip2VisionModel,
)

from ..config import ModelConfigError, QFormerConfig, VideoLlamaConfig, VisionConfig
from ..errors import UsageError
from .imagebind import ImageBindAudioEncoder, ImageBindVisionEncoder

WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
CONFIG_NAME = "config.json"

# Top-level parts of the model, by name. Training configs name the parts they train (no int flags).
VISION_BRANCH_TRAINABLE = ("video_qformer", "video_query_tokens", "frame_position_embedding", "video_projection")
AUDIO_BRANCH_TRAINABLE = ("audio_qformer", "audio_query_tokens", "audio_position_embedding", "audio_projection")


def vision_model_config(cfg: VisionConfig) -> Blip2VisionConfig:
    return Blip2VisionConfig(
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        image_size=cfg.image_size,
        patch_size=cfg.patch_size,
        hidden_act="gelu",
        layer_norm_eps=cfg.layer_norm_eps,
        attention_dropout=0.0,
        qkv_bias=True,
        # transformers' default (1e-10) makes a freshly built encoder ignore its input; pretrained
        # weights replace the init anyway, but random/tiny models (tests, SynthAV) need a real one.
        initializer_range=0.02,
    )


def qformer_config(cfg: QFormerConfig) -> Blip2QFormerConfig:
    return Blip2QFormerConfig(
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        intermediate_size=cfg.intermediate_size,
        hidden_act="gelu",
        hidden_dropout_prob=cfg.dropout,
        attention_probs_dropout_prob=cfg.dropout,
        layer_norm_eps=cfg.layer_norm_eps,
        cross_attention_frequency=cfg.cross_attention_every,
        encoder_hidden_size=cfg.encoder_width,
        use_qformer_text_input=False,
        initializer_range=cfg.init_std,
    )


def llm_config(llm: dict):
    """A transformers config from the plain dict stored in ``VideoLlamaConfig.llm``."""
    if "model_type" not in llm:
        raise ModelConfigError("VideoLlamaConfig.llm needs a 'model_type' (e.g. 'llama')")
    fields = {k: v for k, v in llm.items() if k != "model_type"}
    return AutoConfig.for_model(llm["model_type"], **fields)


def _query_tokens(num: int, width: int) -> nn.Parameter:
    return nn.Parameter(torch.randn(1, num, width) * 0.02)  # official init: N(0, 0.02)


class VideoLlama(nn.Module):
    """The full Video-LLaMA model. Build with a config; load with :meth:`from_pretrained`."""

    def __init__(self, config: VideoLlamaConfig, *, with_language_model: bool = True):
        """``with_language_model=False`` builds the media encoders only: the vLLM plugin
        (``videollama/vllm/``) runs them in front of vLLM's own implementation of the LLM."""
        super().__init__()
        self.config = config
        c = config
        # Vision-language branch.
        if c.with_vision:
            self.vision_model = Blip2VisionModel(vision_model_config(c.vision))
            self.vision_model.post_layernorm.eps = c.vision.ln_vision_eps  # post_layernorm is BLIP-2's ln_vision
            self.image_qformer = Blip2QFormerModel(qformer_config(c.image_qformer))
            self.image_query_tokens = _query_tokens(c.image_qformer.num_queries, c.image_qformer.hidden_size)
            self.frame_position_embedding = nn.Embedding(c.max_frames, c.image_qformer.hidden_size)
            self.video_qformer = Blip2QFormerModel(qformer_config(c.video_qformer))
            self.video_query_tokens = _query_tokens(c.video_qformer.num_queries, c.video_qformer.hidden_size)
            self.video_projection = nn.Linear(c.video_qformer.hidden_size, c.llm_hidden_size)
        # Audio-language branch.
        if c.with_audio:
            self.audio_encoder = ImageBindAudioEncoder(c.imagebind)
            self.audio_position_embedding = nn.Embedding(c.max_audio_clips, c.imagebind.embed_dim)
            self.audio_qformer = Blip2QFormerModel(qformer_config(c.audio_qformer))
            self.audio_query_tokens = _query_tokens(c.audio_qformer.num_queries, c.audio_qformer.hidden_size)
            self.audio_projection = nn.Linear(c.audio_qformer.hidden_size, c.llm_hidden_size)
        if c.with_audio and c.with_imagebind_vision:
            self.imagebind_vision = ImageBindVisionEncoder(c.imagebind)
        # Language model (any transformers causal LM).
        if with_language_model:
            self.language_model = AutoModelForCausalLM.from_config(llm_config(c.llm))
        self.set_trainable(())

    # ------------------------------------------------------------------ parts and trainability
    @property
    def part_names(self) -> list[str]:
        return [name for name, _ in self.named_children()] + [
            name for name, _ in self.named_parameters(recurse=False)
        ]

    def set_trainable(self, parts: Iterable[str]) -> None:
        """Train exactly the named top-level parts; freeze (and keep in eval mode) everything else."""
        parts = set(parts)
        unknown = parts - set(self.part_names)
        if unknown:
            raise UsageError(f"unknown trainable parts {sorted(unknown)}; the model has {self.part_names}")
        self.trainable_parts = parts
        for name in self.part_names:
            getattr(self, name).requires_grad_(name in parts)
        self.train(self.training)

    def train(self, mode: bool = True) -> "VideoLlama":
        """Like ``nn.Module.train``, but frozen parts stay in eval mode (no dropout/drop-path)."""
        super().train(mode)
        for name, module in self.named_children():
            if name not in getattr(self, "trainable_parts", ()):
                module.eval()
        return self

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.state_dict().items() if k.split(".")[0] in self.trainable_parts}

    # ------------------------------------------------------------------ encoders
    def encode_video(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Frames (B, T, 3, H, W) -> video soft tokens (B, num_video_tokens, D_llm). An image is T=1."""
        self._check_frame_count(pixel_values.shape[1])  # before the ViT runs
        return self.encode_frame_features(self.encode_frames(pixel_values))

    def encode_frames(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Frames (B, T, 3, H, W) -> image-Q-Former features (B, T, Q, 768), before frame positions.

        The frozen half of :meth:`encode_video`; long videos run it window by window and may merge
        similar frames' features (:mod:`videollama.frame_merge`) before :meth:`encode_frame_features`.
        """
        self._require_vision()
        batch = pixel_values.shape[0]
        frames = rearrange(pixel_values, "b t c h w -> (b t) c h w")
        with self._frozen_context("vision_model"):
            frame_tokens = self.vision_model(pixel_values=frames.to(self._dtype_of(self.vision_model))).last_hidden_state
        # frame_tokens: (B*T, 257, 1408) after ln_vision
        with self._frozen_context("image_qformer", "image_query_tokens"):
            queries = self.image_query_tokens.expand(frame_tokens.shape[0], -1, -1)
            frame_queries = self.image_qformer(query_embeds=queries, encoder_hidden_states=frame_tokens).last_hidden_state
        return rearrange(frame_queries, "(b t) q d -> b t q d", b=batch)  # (B, T, Q, 768)

    def encode_frame_features(self, frame_queries: torch.Tensor) -> torch.Tensor:
        """Image-Q-Former features (B, T, Q, 768) -> video soft tokens (B, num_video_tokens, D_llm):
        frame t gets position row t (T <= max_frames), then the video Q-Former and the projection."""
        self._require_vision()
        batch, num_frames = frame_queries.shape[:2]
        self._check_frame_count(num_frames)
        if self.config.use_frame_position:
            positions = self.frame_position_embedding(torch.arange(num_frames, device=frame_queries.device))  # (T, 768)
            frame_queries = frame_queries + positions[None, :, None, :].to(frame_queries.dtype)
        memory = rearrange(frame_queries, "b t q d -> b (t q) d")
        video_queries = self.video_query_tokens.expand(batch, -1, -1)
        video = self.video_qformer(query_embeds=video_queries, encoder_hidden_states=memory).last_hidden_state
        return self.video_projection(video.to(self.video_projection.weight.dtype))  # (B, 32, D_llm)

    def encode_audio(self, audio_values: torch.Tensor) -> torch.Tensor:
        """Log-mel clips (B, S, 1, 128, 204) -> audio soft tokens (B, num_audio_tokens, D_llm)."""
        self._require_audio()
        batch, num_clips = audio_values.shape[:2]
        clips = rearrange(audio_values, "b s c m f -> (b s) c m f")
        with self._frozen_context("audio_encoder"):
            _, embeddings = self.audio_encoder(clips.to(self._dtype_of(self.audio_encoder)))  # (B*S, 1024)
        return self._audio_qformer(rearrange(embeddings, "(b s) d -> b s d", b=batch))

    def encode_visual_for_audio_branch(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Frames (B, T, 3, H, W) through ImageBind's vision encoder into the audio Q-Former.

        This is how the audio branch is trained on visual data only (T <= max_audio_clips).
        """
        self._require_audio()
        if not hasattr(self, "imagebind_vision"):
            raise UsageError("this model was built without ImageBind's vision encoder (with_imagebind_vision=False)")
        batch = pixel_values.shape[0]
        frames = rearrange(pixel_values, "b t c h w -> (b t) c h w")
        with self._frozen_context("imagebind_vision"):
            embeddings = self.imagebind_vision(frames.to(self._dtype_of(self.imagebind_vision)))  # (B*T, 1024)
        return self._audio_qformer(rearrange(embeddings, "(b t) d -> b t d", b=batch))

    def _audio_qformer(self, clip_embeddings: torch.Tensor) -> torch.Tensor:
        """(B, S, 1024) clip embeddings -> (B, num_audio_tokens, D_llm)."""
        batch, num_clips = clip_embeddings.shape[:2]
        if num_clips > self.config.max_audio_clips:
            raise UsageError(f"{num_clips} audio clips given; the audio position table holds {self.config.max_audio_clips}")
        positions = self.audio_position_embedding(torch.arange(num_clips, device=clip_embeddings.device))
        clip_embeddings = clip_embeddings.to(positions.dtype)
        if self.config.audio_branch_input_norm is not None:  # the same norm for sound and frames
            clip_embeddings = F.normalize(clip_embeddings, dim=-1) * self.config.audio_branch_input_norm
        memory = clip_embeddings + positions[None]  # (B, S, 1024)
        queries = self.audio_query_tokens.expand(batch, -1, -1)
        audio = self.audio_qformer(query_embeds=queries, encoder_hidden_states=memory).last_hidden_state
        return self.audio_projection(audio.to(self.audio_projection.weight.dtype))  # (B, 8, D_llm)

    # ------------------------------------------------------------------ LLM inputs
    def embed_inputs(
        self,
        input_ids: torch.Tensor,
        video_features: torch.Tensor | None = None,
        audio_features: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Token ids (B, L) with placeholders -> LLM input embeddings (B, L, D_llm).

        ``video_features`` (N_v, Q_v, D) and ``audio_features`` (N_a, Q_a, D) fill the ``<ImageHere>``
        and ``<AudioHere>`` positions in reading order (sample by sample, left to right).
        """
        embed = self.language_model.get_input_embeddings()
        masks = []
        for name, token_id, features in (
            (self.config.image_placeholder, self.config.image_token_id, video_features),
            (self.config.audio_placeholder, self.config.audio_token_id, audio_features),
        ):
            mask = input_ids == token_id if token_id is not None else torch.zeros_like(input_ids, dtype=torch.bool)
            found = int(mask.sum())
            given = 0 if features is None else features.shape[0] * features.shape[1]
            if found != given:
                detail = "no features" if features is None else f"{features.shape[0]} items x {features.shape[1]} tokens"
                raise UsageError(f"input_ids hold {found} {name} tokens but the media features fill {given} ({detail})")
            if features is not None and found:
                _check_runs(mask, features.shape[1], name)
            masks.append((mask, features))
        any_media = masks[0][0] | masks[1][0]
        pad_id = self.language_model.config.pad_token_id or 0
        embeds = embed(input_ids.masked_fill(any_media, pad_id))
        for mask, features in masks:
            if features is not None and features.numel():
                embeds = embeds.masked_scatter(mask.unsqueeze(-1), features.to(embeds.dtype))
        return embeds

    def encode_media(
        self,
        pixel_values: torch.Tensor | Sequence[torch.Tensor] | None = None,
        audio_values: torch.Tensor | Sequence[torch.Tensor] | None = None,
        visual_audio_values: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Encode a batch's media. Lists of (T_i, 3, H, W) videos of different lengths are allowed."""
        video = _encode_grouped(self.encode_video, pixel_values)
        audio = _encode_grouped(self.encode_audio, audio_values)
        if visual_audio_values is not None:
            if audio is not None:
                raise UsageError("give either audio_values or visual_audio_values, not both")
            audio = _encode_grouped(self.encode_visual_for_audio_branch, visual_audio_values)
        return video, audio

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        pixel_values: torch.Tensor | Sequence[torch.Tensor] | None = None,
        audio_values: torch.Tensor | Sequence[torch.Tensor] | None = None,
        visual_audio_values: torch.Tensor | None = None,
        **llm_kwargs,
    ):
        """Teacher-forced pass; returns the LLM's ``CausalLMOutputWithPast`` (``loss`` if labels given)."""
        video, audio = self.encode_media(pixel_values, audio_values, visual_audio_values)
        inputs_embeds = self.embed_inputs(input_ids, video, audio)
        return self.language_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, labels=labels, **llm_kwargs)

    # ------------------------------------------------------------------ helpers
    def _require_vision(self) -> None:
        if not self.config.with_vision:
            raise UsageError("this model has no vision branch (with_vision=False)")

    def _check_frame_count(self, num_frames: int) -> None:
        if num_frames > self.config.max_frames:
            raise UsageError(f"{num_frames} frames given; the frame-position table holds {self.config.max_frames} "
                             "(longer videos: videollama.long_video reads them in windows)")

    def _require_audio(self) -> None:
        if not self.config.with_audio:
            raise UsageError("this model has no audio branch (with_audio=False)")

    def _frozen_context(self, *names: str):
        """no_grad when every named part is frozen: saves activation memory in the frozen encoders."""
        return nullcontext() if any(n in self.trainable_parts for n in names) else torch.no_grad()

    @staticmethod
    def _dtype_of(module: nn.Module) -> torch.dtype:
        return next(module.parameters()).dtype

    @property
    def _projection(self) -> nn.Linear:
        """The projection into the LLM of the first branch built (it sits on the media device)."""
        return self.video_projection if self.config.with_vision else self.audio_projection

    @property
    def device(self) -> torch.device:
        return self._projection.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self._projection.weight.dtype

    # ------------------------------------------------------------------ save / load
    def save_pretrained(self, directory: str | Path, tokenizer=None, max_shard_size: str = "2GB") -> None:
        """Write ``config.json`` + safetensors shards (+ the tokenizer) into a self-contained folder."""
        from .checkpoint import save_model_folder

        save_model_folder(self, directory, tokenizer=tokenizer, max_shard_size=max_shard_size)

    @classmethod
    def from_pretrained(
        cls,
        directory: str | Path,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        with_audio: bool | None = None,
        with_vision: bool | None = None,
    ) -> "VideoLlama":
        """Load a model folder written by :meth:`save_pretrained` or ``videollama convert``.

        ``with_audio=False`` / ``with_vision=False`` leave that branch out even when the folder holds it
        (its tensors are skipped); ``None`` keeps what ``config.json`` says.
        """
        from .checkpoint import load_model_folder

        return load_model_folder(cls, directory, device=device, dtype=dtype, with_audio=with_audio,
                                 with_vision=with_vision)


def _check_runs(mask: torch.Tensor, tokens_per_item: int, name: str) -> None:
    """Every run of placeholder positions in (B, L) ``mask`` must be whole items of ``tokens_per_item``
    (a long video's windows are adjacent items, so a run may hold several). Raises ValueError otherwise."""
    edges = torch.diff(mask.to(torch.int8), dim=1, prepend=mask.new_zeros(mask.shape[0], 1, dtype=torch.int8),
                       append=mask.new_zeros(mask.shape[0], 1, dtype=torch.int8))  # (B, L + 1): +1 run start, -1 end
    starts = (edges == 1).nonzero()[:, 1]
    ends = (edges == -1).nonzero()[:, 1]
    lengths = (ends - starts).tolist()
    bad = [n for n in lengths if n % tokens_per_item]
    if bad:
        raise UsageError(f"a run of {bad[0]} {name} tokens is not a whole number of media items of {tokens_per_item} "
                         "tokens each (placeholders expanded by hand?)")


def _encode_grouped(encode, values) -> torch.Tensor | None:
    """Run ``encode`` on a tensor, or on a list of per-item tensors grouped by shape (order kept)."""
    if values is None:
        return None
    if isinstance(values, torch.Tensor):
        return encode(values) if values.shape[0] else None
    if len(values) == 0:
        return None
    outputs: list[torch.Tensor | None] = [None] * len(values)
    groups: dict[tuple, list[int]] = {}
    for i, v in enumerate(values):
        groups.setdefault(tuple(v.shape), []).append(i)
    for indices in groups.values():
        encoded = encode(torch.stack([values[i] for i in indices]))
        for row, i in enumerate(indices):
            outputs[i] = encoded[row]
    return torch.stack(outputs)  # type: ignore[arg-type]


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Parameter counts per top-level part (works on the meta device)."""
    counts = {name: sum(p.numel() for p in child.parameters()) for name, child in model.named_children()}
    for name, p in model.named_parameters(recurse=False):
        counts[name] = p.numel()
    return counts


def load_config(directory: str | Path) -> VideoLlamaConfig:
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{directory}: not a videollama model folder (no {CONFIG_NAME})")
    return VideoLlamaConfig.load(path)


__all__ = [
    "VideoLlama",
    "VISION_BRANCH_TRAINABLE",
    "AUDIO_BRANCH_TRAINABLE",
    "count_parameters",
    "load_config",
]
