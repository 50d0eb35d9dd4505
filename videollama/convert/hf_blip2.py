"""Take the frozen vision encoder from a Hugging Face BLIP-2 folder (``Salesforce/blip2-*``).

A Hugging Face BLIP-2 folder holds the same three frozen parts as LAVIS's files, already in
transformers' names, next to an OPT or (Flan-)T5 language model of up to 11B parameters::

    vision_model.*   (39 EVA blocks; post_layernorm = BLIP-2's ln_vision)  -> vision_model.*
    qformer.*        (Blip2QFormerModel)                                      -> image_qformer.*
    query_tokens     (1, 32, 768)                                             -> image_query_tokens
    language_model.*, language_projection.*                                   never read

Only those three groups are read, through the folder's index: shards that hold none of them (the
language model's) are never opened. Our modules *are* ``Blip2VisionModel``/``Blip2QFormerModel``, so
the table is a prefix change; it is still explicit and shape-checked. Two historical variants are
accepted: a fused ``self_attn.qkv.bias`` (what transformers writes) or separate ``q_bias``/``v_bias``
(fused like LAVIS's). Video-LLaMA used ``blip2_pretrained_flant5xxl.pth``, whose Hugging Face
counterpart is ``Salesforce/blip2-flan-t5-xxl``.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..config import VideoLlamaConfig
from .lavis import VISION_PREFIX, fuse_qkv_bias
from .official import OURS_QFORMER
from .report import ConversionReport
from .safe_load import HfFolderWeights, LazyTensor, open_hf_folder
from .tables import FusedKey, Shape, apply_key_table

__all__ = ["HF_GROUPS", "hf_blip2_key_table", "hf_blip2_shapes", "read_hf_blip2_folder", "convert_hf_blip2_folder"]

HF_QFORMER_PREFIX = "qformer."
HF_QUERY_TOKENS = "query_tokens"
# The only groups of a BLIP-2 folder Video-LLaMA needs.
HF_GROUPS = (VISION_PREFIX, HF_QFORMER_PREFIX, HF_QUERY_TOKENS)
# Text-side parts of a Q-Former built with text input (unused by the query-only Q-Former).
_HF_QFORMER_TEXT = re.compile(r"^qformer\.(embeddings\.|encoder\.layer\.\d+\.(intermediate|output)\.)")
_HF_QKV_BIAS = re.compile(r"^vision_model\.encoder\.layers\.(\d+)\.self_attn\.qkv\.bias$")


def _is_needed(key: str) -> bool:
    return key.startswith((VISION_PREFIX, HF_QFORMER_PREFIX)) or key == HF_QUERY_TOKENS


def hf_blip2_key_table(our_shapes: dict[str, Shape]) -> dict[str, str]:
    """HF BLIP-2 key -> our key, for our frozen vision-side keys (given with their shapes)."""
    table: dict[str, str] = {}
    for key in our_shapes:
        if key.startswith(VISION_PREFIX):
            table[key] = key
        elif key.startswith(OURS_QFORMER["image"] + "."):
            table[HF_QFORMER_PREFIX + key[len(OURS_QFORMER["image"]) + 1:]] = key
        elif key == "image_query_tokens":
            table[HF_QUERY_TOKENS] = key
    return table


def hf_blip2_shapes(our_shapes: dict[str, Shape]) -> dict[str, Shape]:
    table = hf_blip2_key_table(our_shapes)
    return {hf: tuple(our_shapes[ours]) for hf, ours in table.items()}


def read_hf_blip2_folder(folder: str | Path) -> HfFolderWeights:
    """Lazy view of the vision encoder, Q-Former and query tokens of a BLIP-2 folder (nothing else opened)."""
    return open_hf_folder(folder, _is_needed)


def convert_hf_blip2_folder(
    weights: HfFolderWeights,
    config: VideoLlamaConfig,
    our_shapes: dict[str, Shape],
    *,
    source: str = "Hugging Face BLIP-2 folder",
    allow_missing: bool = False,
) -> tuple[dict[str, LazyTensor], ConversionReport]:
    """Map a BLIP-2 folder's vision side onto ``vision_model.*``, ``image_qformer.*``, ``image_query_tokens``.

    ``our_shapes`` is our model's key -> shape for those parts (from a meta-device model).
    """
    state = weights.tensors
    wanted = {k: s for k, s in our_shapes.items()
              if k.startswith((VISION_PREFIX, OURS_QFORMER["image"] + ".")) or k == "image_query_tokens"}
    table = hf_blip2_key_table(wanted)
    expected = hf_blip2_shapes(wanted)
    fused: list[FusedKey] = []
    if not any(_HF_QKV_BIAS.match(k) for k in state) and any(k.endswith("self_attn.q_bias") for k in state):
        # An older layout with separate q/v biases: fuse them like LAVIS's EVA.
        for key in [k for k in table if _HF_QKV_BIAS.match(k)]:
            base = key[: -len("qkv.bias")]
            table.pop(key)
            d = expected[key][0] // 3
            expected[base + "q_bias"] = expected[base + "v_bias"] = (d,)
            fused.append(FusedKey((base + "q_bias", base + "v_bias"), key, (3 * d,), fuse_qkv_bias))
    ours, report = apply_key_table(state, table, expected, source=source, ignored=lambda k: bool(_HF_QFORMER_TEXT.match(k)),
                                   fused=fused)
    groups: dict[str, int] = {}
    for key in weights.unread:
        group = key.split(".")[0]
        groups[group] = groups.get(group, 0) + 1
    report.ignored += [f"<not read> {key}" for key in weights.unread]
    if groups:
        report.notes.append("not read (not needed): " + ", ".join(f"{g}.* ({n} tensors)" for g, n in sorted(groups.items())))
    layers = {int(m.group(1)) for k in state if (m := re.match(r"^vision_model\.encoder\.layers\.(\d+)\.", k))}
    if layers and max(layers) + 1 != config.vision.num_layers:
        report.notes.append(f"the folder's vision model has {max(layers) + 1} layers; Video-LLaMA uses {config.vision.num_layers}")
    report.check(allow_missing=allow_missing)
    return ours, report

