"""Convert the official ImageBind-Huge state dict (``imagebind_huge.pth``) to our two encoders.

The official file is a plain state dict of ``ImageBindModel`` (facebookresearch/ImageBind,
``imagebind/models/imagebind_model.py``) with six modalities under four groups::

    modality_preprocessors.<m>.*   patch stem, CLS token, positional embedding
    modality_trunks.<m>.*          the transformer blocks (and vision's ln_pre)
    modality_heads.<m>.*           LayerNorm -> select CLS -> Linear
    modality_postprocessors.<m>.*  L2-normalise (and for audio a fixed logit scale buffer)

Video-LLaMA uses only ``audio`` (at inference) and ``vision`` (to train the audio branch). The
explicit tables below map their official names to the state-dict names of
:class:`~videollama.model.imagebind.ImageBindAudioEncoder` (prefixed ``audio.``) and
:class:`~videollama.model.imagebind.ImageBindVisionEncoder` (prefixed ``vision.``); ``{}`` is the
block index. Keys of the other modalities (text, depth, thermal, imu) are reported as ignored.
Unknown, missing and wrongly shaped keys raise :class:`ConversionError` with the full report.

Tensors are renamed, never copied or cast, so converting a memory-mapped or 'meta' state dict
costs no extra memory. ``make_official_imagebind_state_dict`` fabricates files in the official
layout for tests and benchmarks (full size on the 'meta' device is instant).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

import torch
from torch import Tensor

from ..config import ImageBindConfig
from .report import ConversionError, ConversionReport

__all__ = [
    "AUDIO_PREFIX",
    "VISION_PREFIX",
    "AUDIO_KEYS",
    "AUDIO_BLOCK_KEYS",
    "VISION_KEYS",
    "VISION_BLOCK_KEYS",
    "ConversionError",
    "ConversionReport",
    "convert_imagebind_state_dict",
    "imagebind_key_table",
    "official_imagebind_shapes",
    "make_official_imagebind_state_dict",
]

AUDIO_PREFIX = "audio."
VISION_PREFIX = "vision."
OFFICIAL_GROUPS = ("modality_preprocessors", "modality_trunks", "modality_heads", "modality_postprocessors")
# Modalities of ImageBind that Video-LLaMA does not use: always ignored (and reported).
UNUSED_MODALITIES = ("text", "depth", "thermal", "imu")

# ---------------------------------------------------------------------------------------------
# Key tables: official name -> our name (inside ImageBindAudioEncoder / ImageBindVisionEncoder).

AUDIO_KEYS: dict[str, str] = {
    # PatchEmbedGeneric with a single conv: its ``proj`` *is* the Conv2d (no Sequential index).
    "modality_preprocessors.audio.rgbt_stem.proj.weight": "stem.weight",
    "modality_preprocessors.audio.rgbt_stem.norm_layer.weight": "stem_norm.weight",
    "modality_preprocessors.audio.rgbt_stem.norm_layer.bias": "stem_norm.bias",
    "modality_preprocessors.audio.cls_token": "cls_token",
    "modality_preprocessors.audio.pos_embedding_helper.pos_embed": "pos_embed",
    # heads: Sequential(LayerNorm, SelectElement(0), Linear)
    "modality_heads.audio.0.weight": "head_norm.weight",
    "modality_heads.audio.0.bias": "head_norm.bias",
    "modality_heads.audio.2.weight": "head.weight",
    # postprocessors: Sequential(Normalize, LearnableLogitScaling(20, learnable=False)): a buffer
    "modality_postprocessors.audio.1.log_logit_scale": "log_logit_scale",
}

AUDIO_BLOCK_KEYS: dict[str, str] = {
    "modality_trunks.audio.blocks.{}.norm_1.weight": "blocks.{}.norm1.weight",
    "modality_trunks.audio.blocks.{}.norm_1.bias": "blocks.{}.norm1.bias",
    "modality_trunks.audio.blocks.{}.attn.in_proj_weight": "blocks.{}.attn.in_proj_weight",
    "modality_trunks.audio.blocks.{}.attn.in_proj_bias": "blocks.{}.attn.in_proj_bias",
    "modality_trunks.audio.blocks.{}.attn.bias_k": "blocks.{}.attn.bias_k",
    "modality_trunks.audio.blocks.{}.attn.bias_v": "blocks.{}.attn.bias_v",
    "modality_trunks.audio.blocks.{}.attn.out_proj.weight": "blocks.{}.attn.out_proj.weight",
    "modality_trunks.audio.blocks.{}.attn.out_proj.bias": "blocks.{}.attn.out_proj.bias",
    "modality_trunks.audio.blocks.{}.norm_2.weight": "blocks.{}.norm2.weight",
    "modality_trunks.audio.blocks.{}.norm_2.bias": "blocks.{}.norm2.bias",
    "modality_trunks.audio.blocks.{}.mlp.fc1.weight": "blocks.{}.mlp.fc1.weight",
    "modality_trunks.audio.blocks.{}.mlp.fc1.bias": "blocks.{}.mlp.fc1.bias",
    "modality_trunks.audio.blocks.{}.mlp.fc2.weight": "blocks.{}.mlp.fc2.weight",
    "modality_trunks.audio.blocks.{}.mlp.fc2.bias": "blocks.{}.mlp.fc2.bias",
}

VISION_KEYS: dict[str, str] = {
    # PatchEmbedGeneric with Sequential(PadIm2Video, Conv3d): the conv is ``proj.1``.
    "modality_preprocessors.vision.rgbt_stem.proj.1.weight": "stem.weight",
    "modality_preprocessors.vision.cls_token": "cls_token",
    "modality_preprocessors.vision.pos_embedding_helper.pos_embed": "pos_embed",
    # trunk's pre_transformer_layer: Sequential(LayerNorm ("ln_pre"), EinOpsRearrange)
    "modality_trunks.vision.pre_transformer_layer.0.weight": "pre_norm.weight",
    "modality_trunks.vision.pre_transformer_layer.0.bias": "pre_norm.bias",
    "modality_heads.vision.0.weight": "head_norm.weight",
    "modality_heads.vision.0.bias": "head_norm.bias",
    "modality_heads.vision.2.weight": "head.weight",
    # modality_postprocessors.vision is a parameter-free Normalize: no keys.
}

VISION_BLOCK_KEYS: dict[str, str] = {
    "modality_trunks.vision.blocks.{}.norm_1.weight": "blocks.{}.norm1.weight",
    "modality_trunks.vision.blocks.{}.norm_1.bias": "blocks.{}.norm1.bias",
    "modality_trunks.vision.blocks.{}.attn.in_proj_weight": "blocks.{}.attn.in_proj_weight",
    "modality_trunks.vision.blocks.{}.attn.in_proj_bias": "blocks.{}.attn.in_proj_bias",
    "modality_trunks.vision.blocks.{}.attn.out_proj.weight": "blocks.{}.attn.out_proj.weight",
    "modality_trunks.vision.blocks.{}.attn.out_proj.bias": "blocks.{}.attn.out_proj.bias",
    "modality_trunks.vision.blocks.{}.norm_2.weight": "blocks.{}.norm2.weight",
    "modality_trunks.vision.blocks.{}.norm_2.bias": "blocks.{}.norm2.bias",
    "modality_trunks.vision.blocks.{}.mlp.fc1.weight": "blocks.{}.mlp.fc1.weight",
    "modality_trunks.vision.blocks.{}.mlp.fc1.bias": "blocks.{}.mlp.fc1.bias",
    "modality_trunks.vision.blocks.{}.mlp.fc2.weight": "blocks.{}.mlp.fc2.weight",
    "modality_trunks.vision.blocks.{}.mlp.fc2.bias": "blocks.{}.mlp.fc2.bias",
}

_BLOCK_INDEX = re.compile(r"\.blocks\.(\d+)\.")


def imagebind_key_table(cfg: ImageBindConfig, *, audio: bool = True, vision: bool = True) -> dict[str, str]:
    """The full official -> ours table at the config's depths, ours prefixed ``audio.`` / ``vision.``."""
    table: dict[str, str] = {}
    parts = []
    if audio:
        parts.append((AUDIO_PREFIX, AUDIO_KEYS, AUDIO_BLOCK_KEYS, cfg.audio_layers))
    if vision:
        parts.append((VISION_PREFIX, VISION_KEYS, VISION_BLOCK_KEYS, cfg.vision_layers))
    for prefix, keys, block_keys, layers in parts:
        table.update({official: prefix + ours for official, ours in keys.items()})
        for i in range(layers):
            table.update({official.format(i): prefix + ours.format(i) for official, ours in block_keys.items()})
    return table


def official_imagebind_shapes(cfg: ImageBindConfig, *, audio: bool = True, vision: bool = True
                              ) -> dict[str, tuple[int, ...]]:
    """Official key -> shape at the config's widths (the ``imagebind_huge.pth`` manifest at full size).

    Derived from the official constructors, independently of our modules: the audio conv runs
    over (mel_bins, frames) = (128, 204) with kernel 16, stride 10 -> 12 x 19 patches; the vision
    conv has kernel = stride = (2, 14, 14) over a 2-frame 224 x 224 clip -> 1 x 16 x 16 patches.
    """
    shapes: dict[str, tuple[int, ...]] = {}

    def block_shapes(modality: str, layers: int, width: int, bias_kv: bool) -> None:
        hidden = int(cfg.mlp_ratio * width)
        for i in range(layers):
            p = f"modality_trunks.{modality}.blocks.{i}."
            shapes.update({
                p + "norm_1.weight": (width,), p + "norm_1.bias": (width,),
                p + "attn.in_proj_weight": (3 * width, width), p + "attn.in_proj_bias": (3 * width,),
            })
            if bias_kv:
                shapes.update({p + "attn.bias_k": (1, 1, width), p + "attn.bias_v": (1, 1, width)})
            shapes.update({
                p + "attn.out_proj.weight": (width, width), p + "attn.out_proj.bias": (width,),
                p + "norm_2.weight": (width,), p + "norm_2.bias": (width,),
                p + "mlp.fc1.weight": (hidden, width), p + "mlp.fc1.bias": (hidden,),
                p + "mlp.fc2.weight": (width, hidden), p + "mlp.fc2.bias": (width,),
            })

    if audio:
        w = cfg.audio_width
        rows = math.floor((cfg.audio_mel_bins - cfg.audio_kernel) / cfg.audio_stride) + 1
        cols = math.floor((cfg.audio_frames - cfg.audio_kernel) / cfg.audio_stride) + 1
        shapes.update({
            "modality_preprocessors.audio.rgbt_stem.proj.weight": (w, 1, cfg.audio_kernel, cfg.audio_kernel),
            "modality_preprocessors.audio.rgbt_stem.norm_layer.weight": (w,),
            "modality_preprocessors.audio.rgbt_stem.norm_layer.bias": (w,),
            "modality_preprocessors.audio.cls_token": (1, 1, w),
            "modality_preprocessors.audio.pos_embedding_helper.pos_embed": (1, 1 + rows * cols, w),
        })
        block_shapes("audio", cfg.audio_layers, w, bias_kv=True)
        shapes.update({
            "modality_heads.audio.0.weight": (w,),
            "modality_heads.audio.0.bias": (w,),
            "modality_heads.audio.2.weight": (cfg.embed_dim, w),
            "modality_postprocessors.audio.1.log_logit_scale": (),
        })
    if vision:
        w = cfg.vision_width
        side = cfg.image_size // cfg.patch_size
        shapes.update({
            "modality_preprocessors.vision.rgbt_stem.proj.1.weight":
                (w, 3, cfg.vision_time_kernel, cfg.patch_size, cfg.patch_size),
            "modality_preprocessors.vision.cls_token": (1, 1, w),
            "modality_preprocessors.vision.pos_embedding_helper.pos_embed": (1, 1 + side * side, w),
            "modality_trunks.vision.pre_transformer_layer.0.weight": (w,),
            "modality_trunks.vision.pre_transformer_layer.0.bias": (w,),
        })
        block_shapes("vision", cfg.vision_layers, w, bias_kv=False)
        shapes.update({
            "modality_heads.vision.0.weight": (w,),
            "modality_heads.vision.0.bias": (w,),
            "modality_heads.vision.2.weight": (cfg.embed_dim, w),
        })
    return shapes


def _modality_of(key: str) -> str | None:
    parts = key.split(".")
    return parts[1] if len(parts) > 2 and parts[0] in OFFICIAL_GROUPS else None


def convert_imagebind_state_dict(
    official: Mapping[str, Tensor],
    *,
    audio: bool = True,
    vision: bool = True,
    cfg: ImageBindConfig | None = None,
    allow_missing: bool = False,
    source: str = "ImageBind state dict",
) -> tuple[dict[str, Tensor], ConversionReport]:
    """Rename an official (prefix-free) ImageBind state dict to ours.

    Args:
        official: ``torch.load("imagebind_huge.pth", weights_only=True)`` or any mapping with the
            same keys (tensors may be memory-mapped or on 'meta').
        audio / vision: which encoders to convert; the other one's keys are then reported as ignored.
        cfg: the widths and depths to expect (default: ImageBind-Huge).
        allow_missing: return what was found even if expected keys are missing (still reported);
            unknown or wrongly shaped keys always raise.
        source: how to name the input in the report (e.g. the file path).
    Returns:
        ``(ours, report)``: ``ours`` maps ``audio.<name>`` / ``vision.<name>`` to the *same* tensor
        objects (no copy, no cast).
    Raises:
        ConversionError: with the report text, if keys are unknown, wrongly shaped or (unless
            ``allow_missing``) missing.
    """
    if not (audio or vision):
        raise ValueError("convert_imagebind_state_dict: nothing to convert (audio=False and vision=False)")
    cfg = cfg or ImageBindConfig()
    table = imagebind_key_table(cfg, audio=audio, vision=vision)
    expected = official_imagebind_shapes(cfg, audio=audio, vision=vision)
    skipped_modalities = set(UNUSED_MODALITIES) | ({"audio"} if not audio else set()) | ({"vision"} if not vision else set())

    report = ConversionReport(source=source)
    ours: dict[str, Tensor] = {}
    for key, tensor in official.items():
        target = table.get(key)
        if target is None:
            if _modality_of(key) in skipped_modalities:
                report.ignored.append(key)
            else:
                report.unexpected.append(key)
            continue
        if tuple(tensor.shape) != expected[key]:
            report.shape_mismatch.append((key, tuple(tensor.shape), expected[key]))
            continue
        ours[target] = tensor
    report.missing = [key for key in table if key not in official]
    report.converted = len(ours)
    _add_hints(report, table, cfg)
    report.check(allow_missing=allow_missing)
    return ours, report


def _add_hints(report: ConversionReport, table: Mapping[str, str], cfg: ImageBindConfig) -> None:
    """Explain the two most likely causes of a failure: the wrong file, or the wrong config."""
    if report.converted == 0 and not report.shape_mismatch and (report.unexpected or report.missing):
        report.notes.append(
            "no ImageBind key was found: expected a plain imagebind_huge.pth state dict with keys like "
            "'modality_trunks.audio.blocks.0.attn.in_proj_weight' (not a Video-LLaMA, BLIP-2 or EVA checkpoint)"
        )
    extra_blocks = sorted({
        f"{_modality_of(key)} block {match.group(1)}"
        for key in report.unexpected
        if (match := _BLOCK_INDEX.search(key)) and _modality_of(key) in ("audio", "vision")
    })
    if extra_blocks:
        report.notes.append(
            f"the checkpoint has blocks beyond the config (audio_layers={cfg.audio_layers}, "
            f"vision_layers={cfg.vision_layers}): {', '.join(extra_blocks[:8])}"
            + (" ..." if len(extra_blocks) > 8 else "")
        )
    if len(report.shape_mismatch) > len(table) // 2:
        report.notes.append("every shape differs: the checkpoint and the config have different widths")


# ---------------------------------------------------------------------------------------------
# Test/benchmark helper: random tensors in the official layout.

# Placeholder keys for the modalities Video-LLaMA does not use (small shapes: they are ignored).
_UNUSED_MODALITY_SAMPLES: dict[str, tuple[int, ...]] = {
    "modality_preprocessors.text.token_embedding.weight": (16, 8),
    "modality_preprocessors.text.pos_embed": (1, 4, 8),
    "modality_preprocessors.text.mask": (4, 4),
    "modality_trunks.text.blocks.0.attn.in_proj_weight": (24, 8),
    "modality_heads.text.proj.0.weight": (8,),
    "modality_postprocessors.text.1.log_logit_scale": (),
    "modality_preprocessors.depth.rgbt_stem.proj.weight": (8, 1, 4, 4),
    "modality_trunks.depth.blocks.0.attn.bias_k": (1, 1, 8),
    "modality_postprocessors.depth.1.log_logit_scale": (),
    "modality_preprocessors.thermal.cls_token": (1, 1, 8),
    "modality_heads.thermal.2.weight": (4, 8),
    "modality_preprocessors.imu.imu_stem.proj.weight": (8, 48),
    "modality_trunks.imu.blocks.0.mlp.fc1.weight": (32, 8),
    "modality_heads.imu.3.weight": (4, 8),
}


def make_official_imagebind_state_dict(
    cfg: ImageBindConfig,
    seed: int = 0,
    audio: bool = True,
    vision: bool = True,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    other_modalities: bool = False,
) -> dict[str, Tensor]:
    """Random tensors under the official keys and shapes (``device='meta'`` for full-size manifests).

    Values are scaled so a forward pass is well behaved: LayerNorm weights ~ 1 + N(0, 0.1), biases
    ~ N(0, 0.02), matrices and convs ~ N(0, 1/fan_in), CLS/pos-embed/bias_k/bias_v ~ N(0, 1) (so the
    learned key/value slots matter), and the audio logit scale is exactly log(cfg.audio_logit_scale).
    ``other_modalities`` adds a few small placeholder keys of text/depth/thermal/imu, which a
    conversion must report as ignored.
    """
    shapes = official_imagebind_shapes(cfg, audio=audio, vision=vision)
    if other_modalities:
        shapes.update(_UNUSED_MODALITY_SAMPLES)
    if torch.device(device).type == "meta":
        return {key: torch.empty(shape, dtype=dtype, device="meta") for key, shape in shapes.items()}
    generator = torch.Generator().manual_seed(seed)
    state: dict[str, Tensor] = {}
    for key, shape in shapes.items():
        noise = torch.randn(shape, generator=generator, dtype=torch.float64)
        if key.endswith("log_logit_scale"):
            value = torch.tensor(math.log(cfg.audio_logit_scale), dtype=torch.float64)
        elif key.endswith(".bias"):
            value = 0.02 * noise
        elif len(shape) == 1:  # LayerNorm weights
            value = 1.0 + 0.1 * noise
        elif len(shape) == 3:  # cls_token, pos_embed, bias_k, bias_v
            value = noise
        else:  # linear (out, in) and conv (out, in, *kernel) weights
            value = noise / math.sqrt(math.prod(shape[1:]))
        state[key] = value.to(device=device, dtype=dtype)
    return state
