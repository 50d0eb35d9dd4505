"""Key tables for the LAVIS files of the frozen vision encoder: ``eva_vit_g.pth`` and BLIP-2's Q-Former.

``eva_vit_g.pth`` is a plain state dict of EVA-CLIP's ViT-g/14 with **40** blocks. Video-LLaMA builds
39 and loads it with ``strict=False``, i.e. it uses the penultimate layer's features; the 40th block
and any final norm/head of EVA-CLIP are ignored (and reported). Mapping onto transformers'
``Blip2VisionModel`` (prefix ``vision_model.``)::

    cls_token                      (1, 1, 1408)       embeddings.class_embedding
    pos_embed                      (1, 257, 1408)     embeddings.position_embedding
    patch_embed.proj.{weight,bias} (1408, 3, 14, 14)  embeddings.patch_embedding.*
    blocks.i.norm1.*                                   encoder.layers.i.layer_norm1.*
    blocks.i.attn.qkv.weight       (4224, 1408)       encoder.layers.i.self_attn.qkv.weight
    blocks.i.attn.{q_bias,v_bias}  (1408,) each       encoder.layers.i.self_attn.qkv.bias = cat(q, 0, v)
    blocks.i.attn.proj.*                               encoder.layers.i.self_attn.projection.*
    blocks.i.norm2.*                                   encoder.layers.i.layer_norm2.*
    blocks.i.mlp.{fc1,fc2}.*       (6144, 1408) ...    encoder.layers.i.mlp.{fc1,fc2}.*

EVA's key projection has no bias: the official forward concatenates ``(q_bias, zeros, v_bias)``
into the qkv bias, which is exactly what we store.

``blip2_pretrained_flant5xxl.pth`` is a LAVIS training checkpoint (``{'model': ...}``) of BLIP-2
with FlanT5-XXL. Video-LLaMA takes three things from it: ``Qformer.bert.*`` (12 layers,
cross-attention every 2nd layer over the 1408-wide ViT tokens) -> ``image_qformer.*`` through the
Q-Former table of ``official.py``; ``query_tokens`` (1, 32, 768) -> ``image_query_tokens``; and
``ln_vision.*`` (1408,) -> ``vision_model.post_layernorm.*``. The T5 and its projection, and BLIP-2's
stage-1 heads, are ignored and reported.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import Tensor

from ..config import VideoLlamaConfig, VisionConfig
from .official import OFFICIAL_QFORMER, OURS_QFORMER, WB, official_qformer_shapes, qformer_key_table, qformer_text_part
from .report import ConversionReport
from .safe_load import LazyTensor
from .tables import FusedKey, Shape, apply_key_table, random_tensors

__all__ = [
    "VISION_PREFIX",
    "EVA_KEYS",
    "EVA_BLOCK_KEYS",
    "eva_key_table",
    "official_eva_shapes",
    "convert_eva_state_dict",
    "blip2_key_table",
    "official_blip2_shapes",
    "convert_lavis_blip2_state_dict",
    "make_official_eva_state_dict",
    "make_official_blip2_state_dict",
    "fuse_qkv_bias",
]

VISION_PREFIX = "vision_model."
IMAGE_CHANNELS = 3
# EVA-CLIP's released ViT-g has one block more than Video-LLaMA uses (penultimate features).
EXTRA_EVA_BLOCKS = 1

EVA_KEYS: dict[str, str] = {
    "cls_token": "embeddings.class_embedding",
    "pos_embed": "embeddings.position_embedding",
    "patch_embed.proj.weight": "embeddings.patch_embedding.weight",
    "patch_embed.proj.bias": "embeddings.patch_embedding.bias",
}
EVA_BLOCK_KEYS: dict[str, str] = {
    **{f"blocks.{{}}.norm1.{p}": f"encoder.layers.{{}}.layer_norm1.{p}" for p in WB},
    "blocks.{}.attn.qkv.weight": "encoder.layers.{}.self_attn.qkv.weight",
    **{f"blocks.{{}}.attn.proj.{p}": f"encoder.layers.{{}}.self_attn.projection.{p}" for p in WB},
    **{f"blocks.{{}}.norm2.{p}": f"encoder.layers.{{}}.layer_norm2.{p}" for p in WB},
    **{f"blocks.{{}}.mlp.fc1.{p}": f"encoder.layers.{{}}.mlp.fc1.{p}" for p in WB},
    **{f"blocks.{{}}.mlp.fc2.{p}": f"encoder.layers.{{}}.mlp.fc2.{p}" for p in WB},
}
EVA_QKV_BIAS = (("blocks.{}.attn.q_bias", "blocks.{}.attn.v_bias"), "encoder.layers.{}.self_attn.qkv.bias")

_EVA_BLOCK = re.compile(r"^blocks\.(\d+)\.")
# EVA-CLIP's final norm / pooling norm / classifier or projection head: unused by Video-LLaMA.
_EVA_HEAD = re.compile(r"^(norm|fc_norm|head)\.")


def fuse_qkv_bias(parts: list[Tensor]) -> Tensor:
    """EVA's attention bias: (q_bias, zeros for the bias-free key, v_bias) -> (3 * D,)."""
    q_bias, v_bias = parts
    return torch.cat([q_bias, torch.zeros_like(q_bias), v_bias])


def eva_key_table(cfg: VisionConfig) -> tuple[dict[str, str], list[FusedKey]]:
    """(one-to-one table, fused qkv biases) for the ``cfg.num_layers`` blocks Video-LLaMA keeps."""
    table = {k: VISION_PREFIX + v for k, v in EVA_KEYS.items()}
    fused = []
    (q_key, v_key), target = EVA_QKV_BIAS
    for i in range(cfg.num_layers):
        table.update({k.format(i): VISION_PREFIX + v.format(i) for k, v in EVA_BLOCK_KEYS.items()})
        fused.append(FusedKey((q_key.format(i), v_key.format(i)), VISION_PREFIX + target.format(i),
                              (3 * cfg.hidden_size,), fuse_qkv_bias))
    return table, fused


def official_eva_shapes(cfg: VisionConfig, blocks: int | None = None) -> dict[str, Shape]:
    """Official key -> shape of ``eva_vit_g.pth`` (``blocks`` defaults to the file's 40 = 39 + 1)."""
    blocks = cfg.num_layers + EXTRA_EVA_BLOCKS if blocks is None else blocks
    d, f, p = cfg.hidden_size, cfg.intermediate_size, cfg.patch_size
    shapes: dict[str, Shape] = {
        "cls_token": (1, 1, d),
        "pos_embed": (1, cfg.num_tokens, d),
        "patch_embed.proj.weight": (d, IMAGE_CHANNELS, p, p),
        "patch_embed.proj.bias": (d,),
    }
    for i in range(blocks):
        b = f"blocks.{i}."
        shapes.update({b + f"norm1.{w}": (d,) for w in WB})
        shapes.update({b + "attn.q_bias": (d,), b + "attn.v_bias": (d,), b + "attn.qkv.weight": (3 * d, d),
                       b + "attn.proj.weight": (d, d), b + "attn.proj.bias": (d,)})
        shapes.update({b + f"norm2.{w}": (d,) for w in WB})
        shapes.update({b + "mlp.fc1.weight": (f, d), b + "mlp.fc1.bias": (f,),
                       b + "mlp.fc2.weight": (d, f), b + "mlp.fc2.bias": (d,)})
    return shapes


def convert_eva_state_dict(
    state: Mapping[str, LazyTensor | Tensor],
    cfg: VisionConfig,
    *,
    source: str = "eva_vit_g.pth",
    allow_missing: bool = False,
) -> tuple[dict[str, LazyTensor], ConversionReport]:
    """EVA ViT-g (LAVIS layout) -> ``vision_model.*`` of our model (all but ``post_layernorm``)."""
    table, fused = eva_key_table(cfg)
    present_blocks = {int(m.group(1)) for k in state if (m := _EVA_BLOCK.match(k))}
    # The shapes of every block present (also the dropped ones), so each is shape-checked or ignored.
    expected = official_eva_shapes(cfg, blocks=max(present_blocks, default=-1) + 1)

    def ignored(key: str) -> bool:
        match = _EVA_BLOCK.match(key)
        return bool(_EVA_HEAD.match(key) or (match and int(match.group(1)) >= cfg.num_layers and key in expected))

    ours, report = apply_key_table(state, table, expected, source=source, ignored=ignored, fused=fused)
    dropped = sorted(i for i in present_blocks if i >= cfg.num_layers)
    if dropped:
        report.notes.append(f"blocks {dropped} ignored: Video-LLaMA uses the first {cfg.num_layers} blocks "
                            "(penultimate-layer features of EVA-CLIP)")
    if not present_blocks:
        report.notes.append("no 'blocks.*' keys: expected LAVIS's eva_vit_g.pth (EVA-CLIP ViT-g/14)")
    report.check(allow_missing=allow_missing)
    return ours, report


# ------------------------------------------------------------------------------ BLIP-2 (LAVIS)
_BLIP2_IGNORED = re.compile(
    r"^(t5_model\.|t5_proj\.|opt_model\.|opt_proj\.|llm_model\.|llm_proj\.|vision_proj\.|text_proj\.|itm_head\.|temp$"
    r"|visual_encoder\.)"
)


def blip2_key_table(config: VideoLlamaConfig) -> dict[str, str]:
    table = qformer_key_table(OFFICIAL_QFORMER["image"], OURS_QFORMER["image"], config.image_qformer)
    table["query_tokens"] = "image_query_tokens"
    table.update({f"ln_vision.{p}": f"{VISION_PREFIX}post_layernorm.{p}" for p in WB})
    return table


def official_blip2_shapes(config: VideoLlamaConfig) -> dict[str, Shape]:
    q = config.image_qformer
    shapes = official_qformer_shapes(OFFICIAL_QFORMER["image"], q)
    shapes["query_tokens"] = (1, q.num_queries, q.hidden_size)
    shapes.update({f"ln_vision.{p}": (config.vision.hidden_size,) for p in WB})
    return shapes


def convert_lavis_blip2_state_dict(
    state: Mapping[str, LazyTensor | Tensor],
    config: VideoLlamaConfig,
    *,
    source: str = "blip2_pretrained_flant5xxl.pth",
    extras: list[str] = (),  # type: ignore[assignment]
    allow_missing: bool = False,
) -> tuple[dict[str, LazyTensor], ConversionReport]:
    """BLIP-2 (LAVIS ``model`` entry) -> ``image_qformer.*``, ``image_query_tokens``, ``vision_model.post_layernorm.*``."""
    text_parts = qformer_text_part(OFFICIAL_QFORMER["image"])

    def ignored(key: str) -> bool:
        return bool(_BLIP2_IGNORED.match(key) or text_parts.match(key))

    ours, report = apply_key_table(state, blip2_key_table(config), official_blip2_shapes(config),
                                   source=source, ignored=ignored)
    report.ignored += [f"<file entry> {name}" for name in extras]
    if any(k.startswith("visual_encoder.") for k in report.ignored):
        report.notes.append("the file's own copy of the ViT (visual_encoder.*) is not used: the ViT comes from --eva-vit")
    report.check(allow_missing=allow_missing)
    return ours, report


# ------------------------------------------------------------------------------ fixtures
def make_official_eva_state_dict(cfg: VisionConfig, seed: int = 0, *, blocks: int | None = None,
                                 device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                                 head: bool = False) -> dict[str, Tensor]:
    """Random ``eva_vit_g.pth`` in the official layout (40 blocks by default; ``head`` adds EVA-CLIP's norm)."""
    shapes = official_eva_shapes(cfg, blocks)
    if head:
        shapes.update({f"norm.{p}": (cfg.hidden_size,) for p in WB})
    return random_tensors(shapes, seed, device=device, dtype=dtype)


def make_official_blip2_state_dict(config: VideoLlamaConfig, seed: int = 0, *, device: str | torch.device = "cpu",
                                   dtype: torch.dtype = torch.float32, t5: bool = True) -> dict[str, Tensor]:
    """Random BLIP-2 ``model`` entry in LAVIS's layout (+ a few T5/projection keys when ``t5``)."""
    shapes = dict(official_blip2_shapes(config))
    shapes["Qformer.bert.embeddings.position_ids"] = (1, 512)
    if t5:
        shapes.update({"t5_proj.weight": (16, config.image_qformer.hidden_size), "t5_proj.bias": (16,),
                       "t5_model.shared.weight": (32, 16), "t5_model.encoder.final_layer_norm.weight": (16,)})
    return random_tensors(shapes, seed, device=device, dtype=dtype)
