"""Key tables for the official Video-LLaMA checkpoints (``VL_*.pth``, ``AL_*.pth`` and the Vicuna era).

A released checkpoint is ``{'model': state, 'optimizer': ..., 'config': ..., 'scaler': ...,
'epoch': ...}`` where ``state`` holds only the trained parameters of one branch, plus every buffer
of the model (LAVIS's ``_save_checkpoint`` drops frozen *parameters* only)::

    VL (vision-language) branch                     ours
    video_query_tokens              (1, 32, 768)    video_query_tokens
    video_frame_position_embedding.weight (32, 768) frame_position_embedding.weight
    video_Qformer.bert.*            2 layers        video_qformer.*            (Q-Former table)
    llama_proj.{weight,bias}        (D_llm, 768)    video_projection.*

    AL (audio-language) branch
    audio_query_tokens              (1, 8, 768)     audio_query_tokens
    audio_position_embedding.weight (8, 1024)       audio_position_embedding.weight
    audio_Qformer.bert.*            2 layers        audio_qformer.*
    audio_llama_proj.{weight,bias}  (D_llm, 768)    audio_projection.*

The Q-Former table (LAVIS's BERT names -> transformers' ``Blip2QFormerModel`` names), per layer ``i``::

    bert.embeddings.LayerNorm.*                     layernorm.*
    bert.encoder.layer.i.attention.self.{query,key,value}.*    encoder.layer.i.attention.attention.*
    bert.encoder.layer.i.attention.output.{dense,LayerNorm}.*  encoder.layer.i.attention.output.*
    bert.encoder.layer.i.crossattention.self.*      encoder.layer.i.crossattention.attention.*
    bert.encoder.layer.i.crossattention.output.*    encoder.layer.i.crossattention.output.*
    bert.encoder.layer.i.intermediate_query.dense.* encoder.layer.i.intermediate_query.dense.*
    bert.encoder.layer.i.output_query.{dense,LayerNorm}.*      encoder.layer.i.output_query.*

Known and ignored (listed in the report): Q-Former ``bert.embeddings.position_ids`` buffers, the LLM's
``rotary_emb.inv_freq`` buffers, ImageBind's buffers (``log_logit_scale``, the text ``mask``), the
query-only Q-Former's unused text parts, and the training entries beside ``model``. A file that also
holds the *other* branch's weights has them reported as ignored (they are taken from that branch's
own option only). Anything else is unexpected and fails the conversion.

Shapes are derived from the official configs (``VideoLlamaConfig`` defaults are the official values),
independently of our modules. ``make_official_branch_state_dict`` fabricates checkpoints in this
layout for tests and benchmarks.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from ..config import QFormerConfig, VideoLlamaConfig
from .report import ConversionReport
from .safe_load import LazyTensor
from .tables import Shape, apply_key_table, random_tensors

__all__ = [
    "BRANCHES",
    "RELEASED_CHECKPOINTS",
    "ReleasedCheckpoint",
    "qformer_key_table",
    "official_qformer_shapes",
    "official_branch_table",
    "official_branch_shapes",
    "convert_official_checkpoint",
    "make_official_branch_state_dict",
    "make_official_checkpoint",
    "released_checkpoint",
]

BRANCHES = ("vl", "al")
WB = ("weight", "bias")
QKV = ("query", "key", "value")
# Official module prefixes of the two branches' Q-Formers, and of the image Q-Former (BLIP-2).
OFFICIAL_QFORMER = {"vl": "video_Qformer", "al": "audio_Qformer", "image": "Qformer"}
OURS_QFORMER = {"vl": "video_qformer", "al": "audio_qformer", "image": "image_qformer"}
# Max sequence positions of BERT's position_ids buffer (kept in every checkpoint, unused).
BERT_MAX_POSITIONS = 512


# ------------------------------------------------------------------------------ the released files
@dataclass(frozen=True)
class ReleasedCheckpoint:
    """A released Video-LLaMA checkpoint file: its branch, the LLM it was trained with, its template."""

    name: str
    branch: str  # "vl" | "al"
    llm: str
    template: str  # our template name
    repo: str  # Hugging Face hub repository that hosts it


def _released() -> dict[str, ReleasedCheckpoint]:
    out: dict[str, ReleasedCheckpoint] = {}
    for size in ("7B", "13B"):
        for stage in ("Pretrained", "Finetuned"):
            for branch in BRANCHES:
                name = f"{branch.upper()}_LLaMA_2_{size}_{stage}.pth"
                out[name] = ReleasedCheckpoint(name, branch, f"llama-2-{size.lower()}-chat-hf", "llama_2",
                                               f"DAMO-NLP-SG/Video-LLaMA-2-{size}-{stage}")
    series = "DAMO-NLP-SG/Video-LLaMA-Series"
    vicuna_era = {
        "pretrain_vicuna7b-v2.pth": ("vl", "vicuna-7b v0"), "finetune-vicuna7b-v2.pth": ("vl", "vicuna-7b v0"),
        "pretrain-vicuna13b.pth": ("vl", "vicuna-13b v0"), "finetune-vicuna13b-v2.pth": ("vl", "vicuna-13b v0"),
        "pretrain-ziya13b-zh.pth": ("vl", "ziya-13b"), "finetune-ziya13b-zh.pth": ("vl", "ziya-13b"),
        "pretrain-billa7b-zh.pth": ("vl", "billa-7b"), "finetune-billa7b-zh.pth": ("vl", "billa-7b"),
        "pretrain_vicuna7b_audiobranch.pth": ("al", "vicuna-7b v0"),
        "finetune_vicuna7b_audiobranch.pth": ("al", "vicuna-7b v0"),
    }
    for name, (branch, llm) in vicuna_era.items():
        out[name] = ReleasedCheckpoint(name, branch, llm, "vicuna_v0", series)
    return out


RELEASED_CHECKPOINTS: dict[str, ReleasedCheckpoint] = _released()


def released_checkpoint(filename: str) -> ReleasedCheckpoint | None:
    """The release a file name belongs to (case-sensitive, as published), or None."""
    return RELEASED_CHECKPOINTS.get(filename)


# ------------------------------------------------------------------------------ the Q-Former table
def qformer_key_table(official: str, ours: str, cfg: QFormerConfig) -> dict[str, str]:
    """LAVIS BERT Q-Former names under ``official`` -> transformers Blip2QFormerModel names under ``ours``."""
    table = {f"{official}.bert.embeddings.LayerNorm.{p}": f"{ours}.layernorm.{p}" for p in WB}
    for i in range(cfg.num_layers):
        src, dst = f"{official}.bert.encoder.layer.{i}.", f"{ours}.encoder.layer.{i}."
        attentions = ["attention"] + (["crossattention"] if i % cfg.cross_attention_every == 0 else [])
        for attn in attentions:
            for proj in QKV:
                table.update({f"{src}{attn}.self.{proj}.{p}": f"{dst}{attn}.attention.{proj}.{p}" for p in WB})
            for sub in ("dense", "LayerNorm"):
                table.update({f"{src}{attn}.output.{sub}.{p}": f"{dst}{attn}.output.{sub}.{p}" for p in WB})
        table.update({f"{src}intermediate_query.dense.{p}": f"{dst}intermediate_query.dense.{p}" for p in WB})
        for sub in ("dense", "LayerNorm"):
            table.update({f"{src}output_query.{sub}.{p}": f"{dst}output_query.{sub}.{p}" for p in WB})
    return table


def official_qformer_shapes(official: str, cfg: QFormerConfig) -> dict[str, Shape]:
    """Official key -> shape of a query-only BERT Q-Former (hidden H, FFN F, memory width E)."""
    h, f, e = cfg.hidden_size, cfg.intermediate_size, cfg.encoder_width
    shapes: dict[str, Shape] = {f"{official}.bert.embeddings.LayerNorm.{p}": (h,) for p in WB}
    for i in range(cfg.num_layers):
        src = f"{official}.bert.encoder.layer.{i}."
        attentions = [("attention", h)] + ([("crossattention", e)] if i % cfg.cross_attention_every == 0 else [])
        for attn, kv_in in attentions:
            shapes[f"{src}{attn}.self.query.weight"] = (h, h)
            shapes[f"{src}{attn}.self.key.weight"] = (h, kv_in)  # cross-attention reads the memory width
            shapes[f"{src}{attn}.self.value.weight"] = (h, kv_in)
            shapes.update({f"{src}{attn}.self.{proj}.bias": (h,) for proj in QKV})
            shapes[f"{src}{attn}.output.dense.weight"] = (h, h)
            shapes.update({f"{src}{attn}.output.dense.bias": (h,), **{f"{src}{attn}.output.LayerNorm.{p}": (h,) for p in WB}})
        shapes[f"{src}intermediate_query.dense.weight"] = (f, h)
        shapes[f"{src}intermediate_query.dense.bias"] = (f,)
        shapes[f"{src}output_query.dense.weight"] = (h, f)
        shapes[f"{src}output_query.dense.bias"] = (h,)
        shapes.update({f"{src}output_query.LayerNorm.{p}": (h,) for p in WB})
    return shapes


def qformer_text_part(official: str) -> re.Pattern:
    """Parts of a LAVIS Q-Former that the query-only model never uses (text embeddings, text FFN, LM head)."""
    p = re.escape(official)
    return re.compile(
        rf"^{p}\.(bert\.embeddings\.(position_ids|word_embeddings\.weight|position_embeddings\.weight)$"
        rf"|bert\.encoder\.layer\.\d+\.(intermediate|output)\.|cls\.)"
    )


# ------------------------------------------------------------------------------ the branch tables
def official_branch_table(branch: str, config: VideoLlamaConfig) -> dict[str, str]:
    """Official key -> our key for one branch's trained parts."""
    _check_branch(branch)
    if branch == "vl":
        table = {
            "video_query_tokens": "video_query_tokens",
            "video_frame_position_embedding.weight": "frame_position_embedding.weight",
            **{f"llama_proj.{p}": f"video_projection.{p}" for p in WB},
        }
        return table | qformer_key_table(OFFICIAL_QFORMER["vl"], OURS_QFORMER["vl"], config.video_qformer)
    table = {
        "audio_query_tokens": "audio_query_tokens",
        "audio_position_embedding.weight": "audio_position_embedding.weight",
        **{f"audio_llama_proj.{p}": f"audio_projection.{p}" for p in WB},
    }
    return table | qformer_key_table(OFFICIAL_QFORMER["al"], OURS_QFORMER["al"], config.audio_qformer)


def official_branch_shapes(branch: str, config: VideoLlamaConfig) -> dict[str, Shape]:
    """Official key -> official shape for one branch (``D_llm`` from the config's LLM)."""
    _check_branch(branch)
    d_llm = config.llm_hidden_size
    if branch == "vl":
        q = config.video_qformer
        shapes = {
            "video_query_tokens": (1, q.num_queries, q.hidden_size),
            # added to the image Q-Former's outputs, so as wide as they are
            "video_frame_position_embedding.weight": (config.max_frames, config.image_qformer.hidden_size),
            "llama_proj.weight": (d_llm, q.hidden_size),
            "llama_proj.bias": (d_llm,),
        }
        return shapes | official_qformer_shapes(OFFICIAL_QFORMER["vl"], q)
    q = config.audio_qformer
    shapes = {
        "audio_query_tokens": (1, q.num_queries, q.hidden_size),
        "audio_position_embedding.weight": (config.max_audio_clips, config.imagebind.embed_dim),
        "audio_llama_proj.weight": (d_llm, q.hidden_size),
        "audio_llama_proj.bias": (d_llm,),
    }
    return shapes | official_qformer_shapes(OFFICIAL_QFORMER["al"], q)


_BRANCH_PARAMS = {
    "vl": re.compile(r"^(video_Qformer\.|video_query_tokens$|video_frame_position_embedding\.|llama_proj\.)"),
    "al": re.compile(r"^(audio_Qformer\.|audio_query_tokens$|audio_position_embedding\.|audio_llama_proj\.)"),
}
# Buffers every Video-LLaMA checkpoint carries, whichever branch it trained.
_KNOWN_BUFFERS = re.compile(
    r"^((Qformer|video_Qformer|audio_Qformer)\.bert\.embeddings\.position_ids$"
    r"|llama_model\..*rotary_emb\.inv_freq$"
    r"|audio_encoder\.modality_(postprocessors\..*log_logit_scale|preprocessors\.\w+\.mask)$)"
)


def convert_official_checkpoint(
    state: Mapping[str, LazyTensor | Tensor],
    branch: str,
    config: VideoLlamaConfig,
    *,
    source: str = "Video-LLaMA checkpoint",
    extras: list[str] = (),  # type: ignore[assignment]
    allow_missing: bool = False,
) -> tuple[dict[str, LazyTensor], ConversionReport]:
    """Rename one branch of an official checkpoint's ``model`` state dict to ours.

    Args:
        state: the checkpoint's ``model`` entry (lazy or real tensors).
        branch: ``"vl"`` or ``"al"``.
        config: gives the widths to expect (the LLM width comes from ``config.llm``).
        extras: the file's other top-level entries (``optimizer``, ``epoch``, ...): reported as ignored.
        allow_missing: do not raise for missing keys (they stay in the report).
    Raises:
        ConversionError: unknown or wrongly shaped keys, or (unless ``allow_missing``) missing ones.
    """
    other = "al" if branch == "vl" else "vl"
    text_parts = qformer_text_part(OFFICIAL_QFORMER[branch])

    def ignored(key: str) -> bool:
        return bool(_KNOWN_BUFFERS.search(key) or text_parts.search(key) or _BRANCH_PARAMS[other].search(key))

    ours, report = apply_key_table(state, official_branch_table(branch, config), official_branch_shapes(branch, config),
                                   source=source, ignored=ignored)
    report.ignored += [f"<file entry> {name}" for name in extras]
    _add_hints(report, branch, other, config)
    report.check(allow_missing=allow_missing)
    return ours, report


def _add_hints(report: ConversionReport, branch: str, other: str, config: VideoLlamaConfig) -> None:
    other_keys = [k for k in report.ignored if _BRANCH_PARAMS[other].search(k) and not _KNOWN_BUFFERS.search(k)]
    if other_keys:
        option = "--al-ckpt" if other == "al" else "--vl-ckpt"
        report.notes.append(f"the file also holds {len(other_keys)} {other.upper()}-branch tensors; they are "
                            f"taken only from {option} (pass this file there too to use them)")
    proj = "llama_proj.weight" if branch == "vl" else "audio_llama_proj.weight"
    for key, found, want in report.shape_mismatch:
        if key == proj and found[1:] == want[1:]:
            report.notes.append(f"the projection is for an LLM of width {found[0]} but --llm has width {want[0]} "
                                "(a 7B checkpoint with a 13B LLM, or the reverse?)")
    frozen = [k for k in report.unexpected if k.startswith(("Qformer.", "ln_vision.", "query_tokens", "visual_encoder."))]
    if frozen:
        report.notes.append(f"{len(frozen)} tensors of the frozen image encoder/Q-Former are in this file (trained "
                            "with freeze_qformer=False?); this converter takes them from --blip2/--eva-vit only")
    if any(k.startswith("llama_model.") for k in report.unexpected):
        report.notes.append("LLM weights inside a branch checkpoint (LoRA or unfrozen LLM?) are not supported; "
                            "the LLM comes from --llm")


def _check_branch(branch: str) -> None:
    if branch not in BRANCHES:
        raise ValueError(f"unknown branch {branch!r}; choose one of {BRANCHES}")


# ------------------------------------------------------------------------------ fixtures
def make_official_branch_state_dict(
    branch: str,
    config: VideoLlamaConfig,
    seed: int = 0,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    buffers: bool = True,
) -> dict[str, Tensor]:
    """Random tensors in an official checkpoint's ``model`` layout (``device='meta'``: shapes only).

    ``buffers`` adds what a real file carries beside the trained parameters: the Q-Formers'
    ``position_ids`` and the LLM's rotary ``inv_freq`` (a couple of layers), all known-and-ignored.
    """
    shapes = dict(official_branch_shapes(branch, config))
    if buffers:
        for prefix in OFFICIAL_QFORMER.values():
            shapes[f"{prefix}.bert.embeddings.position_ids"] = (1, BERT_MAX_POSITIONS)
        heads = int(config.llm.get("num_attention_heads", 1))
        half_head = config.llm_hidden_size // heads // 2
        for layer in range(2):
            shapes[f"llama_model.model.layers.{layer}.self_attn.rotary_emb.inv_freq"] = (half_head,)
    return random_tensors(shapes, seed, device=device, dtype=dtype)


def make_official_checkpoint(model_state: dict[str, Tensor], epoch: int = 2) -> dict:
    """Wrap a ``model`` state dict like LAVIS's ``_save_checkpoint`` (optimizer state, scaler, config, epoch)."""
    params = [k for k in model_state if not k.endswith(("position_ids", "inv_freq"))]
    optimizer = {
        "state": {i: {"step": torch.tensor(10.0), "exp_avg": torch.zeros_like(model_state[k]),
                      "exp_avg_sq": torch.zeros_like(model_state[k])} for i, k in enumerate(params[:4])},
        "param_groups": [{"lr": 3e-5, "betas": (0.9, 0.999), "weight_decay": 0.05, "params": list(range(4))}],
    }
    config = {"model": {"arch": "video_llama", "model_type": "pretrain_llama_v2"}, "run": {"seed": 42}}
    return {"model": model_state, "optimizer": optimizer, "config": config,
            "scaler": {"scale": 65536.0, "growth_factor": 2.0}, "epoch": epoch}
