"""Assemble one self-contained model folder from the released Video-LLaMA files.

    convert("videollama2-7b", llm_dir="llama-2-7b-chat-hf",
            vl_ckpt="VL_LLaMA_2_7B_Finetuned.pth", al_ckpt="AL_LLaMA_2_7B_Finetuned.pth",
            eva_vit="eva_vit_g.pth", blip2="blip2_pretrained_flant5xxl.pth",
            imagebind="imagebind_huge.pth", dtype="bf16")

Steps (each source goes through its explicit key table; nothing is loaded with ``strict=False``):

1. check the inputs: every file exists and each checkpoint looks like what its slot takes
   (a VL file given as the AL checkpoint fails here, naming the right option);
2. read the LLM's config and tokenizer (placeholders added, embedding not resized) and build our model
   on the 'meta' device: that gives every key and shape the folder must hold;
3. map every source (lazily: headers and memory maps, no data read) and collect one report per source;
   unknown or wrongly shaped keys fail, missing keys fail unless ``allow_missing`` (then they are filled
   with a fresh random init, as the official ``strict=False`` loading leaves them, and listed); a tensor
   of the wrong dtype class (bool or integer where the model holds floats) fails, naming the key;
4. stream the tensors, cast to ``dtype``, into safetensors shards, dropping memory maps as it goes;
   a tensor with a NaN or an infinity, in the source or after the cast (float64 1e300 is inf in bf16),
   fails, naming the key;
5. write ``config.json``, the tokenizer files and a ``README.md`` card naming every source with its
   SHA-256, into a temporary folder that is renamed into place only when everything succeeded.

The folder loads with ``VideoLlama.from_pretrained(out_dir)`` and ``videollama chat --model out_dir``.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from ..config import VideoLlamaConfig
from ..model.loading import KEEP_FP32  # tensors kept in float32 whatever the dtype
from .card import CARD_NAME, SourceFile, model_card, source_files, summarise_keys
from .hf_blip2 import convert_hf_blip2_folder, read_hf_blip2_folder
from .imagebind import AUDIO_PREFIX, VISION_PREFIX, convert_imagebind_state_dict
from .lavis import convert_eva_state_dict, convert_lavis_blip2_state_dict
from .llm import LLM_PREFIX, convert_llm_weights, load_llm_tokenizer, read_llm_folder
from .official import convert_official_checkpoint, released_checkpoint
from .report import ConversionError, ConversionReport
from .safe_load import LazyTensor, PthStateDict, expect_checkpoint, open_state_dict, release_all
from .writer import WrittenShards, parse_size, write_shards

__all__ = ["DTYPES", "BRANCH_CHOICES", "BuildReport", "SourceFile", "Sources", "convert", "choose_template"]

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
BRANCH_CHOICES = ("both", "vl", "al")
DEFAULT_DTYPE = "bf16"  # the official code runs the LLM in bf16
DEFAULT_MAX_SHARD = "5GB"
# Std of the official N(0, 0.02) init of query tokens, used for --allow-missing fills without a better init.
FILL_STD = 0.02
FILL_SEED = 0

# Top-level parts of our model, by the option that supplies them.
VL_TRAINED = ("video_qformer", "video_query_tokens", "frame_position_embedding", "video_projection")
AL_TRAINED = ("audio_qformer", "audio_query_tokens", "audio_position_embedding", "audio_projection")
VISION_FROZEN = ("vision_model", "image_qformer", "image_query_tokens")
PART_SOURCES = {
    **{p: "--vl-ckpt" for p in VL_TRAINED}, **{p: "--al-ckpt" for p in AL_TRAINED},
    **{p: "--eva-vit and --blip2 (or --hf-blip2)" for p in VISION_FROZEN},
    "audio_encoder": "--imagebind", "imagebind_vision": "--imagebind", "language_model": "--llm",
}


@dataclass
class BuildReport:
    """Everything a conversion did: per-source reports, filled keys, what was written where."""

    out_dir: Path
    config: VideoLlamaConfig
    reports: list[ConversionReport] = field(default_factory=list)
    sources: list[SourceFile] = field(default_factory=list)
    filled: list[str] = field(default_factory=list)  # keys no source had (allow_missing): fresh init
    notes: list[str] = field(default_factory=list)
    written: WrittenShards | None = None

    def ok(self) -> bool:
        return all(r.ok() for r in self.reports) and not self.filled

    def format(self) -> str:
        lines = [r.format() for r in self.reports]
        if self.filled:
            lines.append(f"filled with a fresh random init ({len(self.filled)} tensors no source provided): "
                         + ", ".join(summarise_keys(self.filled)))
        lines += [f"note: {n}" for n in self.notes]
        if self.written is not None:
            lines.append(f"wrote {self.out_dir}: {self.written.tensors} tensors, {self.written.total_bytes / 1e9:.2f} GB "
                         f"in {len(self.written.files)} file(s)")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()


@dataclass(frozen=True)
class Sources:
    """The released files a conversion reads, one field per slot (``None``: not given).

    :data:`OPTIONS` names each slot's command-line option, used in messages and the model card only.
    """

    llm_dir: Path
    vl_ckpt: Path | None = None
    al_ckpt: Path | None = None
    eva_vit: Path | None = None
    blip2: Path | None = None
    hf_blip2: Path | None = None
    imagebind: Path | None = None

    OPTIONS: ClassVar[dict[str, str]] = {
        "llm_dir": "--llm", "vl_ckpt": "--vl-ckpt", "al_ckpt": "--al-ckpt", "eva_vit": "--eva-vit",
        "blip2": "--blip2", "hf_blip2": "--hf-blip2", "imagebind": "--imagebind",
    }

    def __post_init__(self) -> None:
        for name in self.OPTIONS:  # str paths become Path
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                object.__setattr__(self, name, Path(value))

    def checkpoints(self) -> list[tuple[str, Path]]:
        """(slot, path) of every given file besides the LLM folder, in field order."""
        return [(name, getattr(self, name)) for name in self.OPTIONS
                if name != "llm_dir" and getattr(self, name) is not None]

    def without(self, slots: set[str]) -> "Sources":
        return dataclasses.replace(self, **{slot: None for slot in slots})

    def supplies(self, part: str) -> bool:
        """Whether the file that supplies a top-level part of our model was given."""
        if part in VL_TRAINED:
            return self.vl_ckpt is not None
        if part in AL_TRAINED:
            return self.al_ckpt is not None
        if part == "vision_model":
            return self.eva_vit is not None or self.hf_blip2 is not None
        if part in ("image_qformer", "image_query_tokens"):
            return self.blip2 is not None or self.hf_blip2 is not None
        if part in ("audio_encoder", "imagebind_vision"):
            return self.imagebind is not None
        return part == "language_model"


@dataclass
class _Mapped:
    """Every source mapped to our keys (lazy tensors), their reports, and what holds their files open."""

    tensors: dict[str, LazyTensor] = field(default_factory=dict)
    reports: list[ConversionReport] = field(default_factory=list)
    releasers: list[object] = field(default_factory=list)

    def take(self, result: Callable[[], tuple[dict[str, LazyTensor], ConversionReport]]) -> None:
        """Add one source's tensors and report; a source whose keys do not fit adds only its report."""
        try:
            ours, rep = result()
        except ConversionError as err:
            if err.report is None:
                raise
            self.reports.append(err.report)
            return
        self.reports.append(rep)
        duplicates = sorted(set(ours) & set(self.tensors))
        if duplicates:
            raise ConversionError(f"two sources provide the same tensors, e.g. {duplicates[:3]}")
        self.tensors.update(ours)

    def open(self, path: Path, kind: str) -> PthStateDict:
        state = _open_checkpoint(path, kind)
        self.releasers.append(state)
        return state


def convert(
    out_dir: str | Path,
    *,
    llm_dir: str | Path,
    vl_ckpt: str | Path | None = None,
    al_ckpt: str | Path | None = None,
    eva_vit: str | Path | None = None,
    blip2: str | Path | None = None,
    hf_blip2: str | Path | None = None,
    imagebind: str | Path | None = None,
    dtype: str = DEFAULT_DTYPE,
    branches: str = "both",
    allow_missing: bool = False,
    template: str | None = None,
    imagebind_vision: bool = False,
    config: VideoLlamaConfig | None = None,
    max_shard_size: str | int = DEFAULT_MAX_SHARD,
    overwrite: bool = False,
    hash_sources: bool = True,
    log: Callable[[str], None] | None = None,
) -> BuildReport:
    """Convert the released files into a model folder at ``out_dir``; see the module docstring.

    Args:
        llm_dir: Hugging Face LLaMA-2-chat / Vicuna folder (weights, config.json, tokenizer).
        vl_ckpt / al_ckpt: the Video-LLaMA branch checkpoints (``VL_*.pth`` / ``AL_*.pth``).
        eva_vit / blip2: LAVIS ``eva_vit_g.pth`` and ``blip2_pretrained_flant5xxl.pth``;
            or ``hf_blip2``: a Hugging Face ``Salesforce/blip2-*`` folder instead of both.
        imagebind: ``imagebind_huge.pth`` (audio encoder; its vision encoder with ``imagebind_vision``).
        dtype: "bf16" (official LLM dtype), "fp16" (the released LLM's own) or "fp32".
        branches: "both", "vl" (no audio) or "al" (audio only).
        allow_missing: go on when keys are missing (filled with a fresh init and listed in the report
            and the card). Unknown or wrongly shaped keys always fail.
        template: conversation template; default from the checkpoint names, else from the LLM.
        imagebind_vision: also store ImageBind's vision encoder (needed only to train the AL branch).
        config: base model config (widths of the frozen encoders); default: the official one.
        max_shard_size: largest safetensors shard ("5GB", "500MB", bytes).
        overwrite: replace an existing non-empty ``out_dir``.
        hash_sources: record each source file's SHA-256 in the card.
        log: receives progress lines.
    Returns:
        The :class:`BuildReport` (also for ``allow_missing`` conversions that filled keys).
    Raises:
        ConversionError: the report, when keys are unknown, wrongly shaped or missing.
        WrongCheckpointError: a checkpoint was given in the wrong slot.
        FileNotFoundError / CheckpointReadError / UnsafeCheckpointError / ValueError: bad inputs.
    """
    say = log or (lambda message: None)
    out_dir = Path(out_dir)
    sources = Sources(Path(llm_dir), vl_ckpt, al_ckpt, eva_vit, blip2, hf_blip2, imagebind)
    _check_request(out_dir, sources, dtype, branches, overwrite)
    with_vision, with_audio = branches != "al", branches != "vl"
    notes: list[str] = []

    # 1. inputs: drop those the chosen branches do not use, require the rest (unless allow_missing).
    sources = _drop_unused(sources, with_vision, with_audio, branches, notes)
    _require_inputs(sources, with_vision, with_audio, allow_missing, branches)

    # 2. the LLM, the config, the expected keys.
    say(f"reading the language model folder {llm_dir}")
    llm = read_llm_folder(llm_dir)
    tokenizer, image_id, audio_id = load_llm_tokenizer(llm_dir)
    template, reason = choose_template(template, sources.vl_ckpt, sources.al_ckpt, llm.config)
    notes.append(f"template {template!r} ({reason})")
    cfg = _model_config(config, llm.config, with_vision=with_vision, with_audio=with_audio,
                        imagebind_vision=imagebind_vision and with_audio, template=template,
                        token_ids=(image_id, audio_id))
    notes.append(f"placeholders <ImageHere>={image_id}, <AudioHere>={audio_id}; LLM vocabulary "
                 f"{int(llm.config.get('vocab_size', 0))} (embedding not resized, as in the official code)")
    meta_model = _meta_model(cfg)
    meta_state = meta_model.state_dict()
    expected = {k: tuple(v.shape) for k, v in meta_state.items()}

    # 3. map every source; fail on unknown, misshaped, wrongly typed or (without allow_missing) missing keys.
    mapped = _map_sources(sources, llm, cfg, expected, with_audio)
    report = BuildReport(out_dir=out_dir, config=cfg, reports=mapped.reports, notes=notes)
    tied = {LLM_PREFIX + "lm_head.weight"} if cfg.llm.get("tie_word_embeddings") else set()
    absent = _check_complete(report, mapped, sources, expected, tied, allow_missing)
    _check_dtype_classes(mapped.tensors, {k: v.dtype for k, v in meta_state.items()})
    if absent:
        report.filled = absent
        say(f"--allow-missing: {len(absent)} tensors get a fresh random init")
        for key, value in _fresh_values(meta_model, absent).items():
            mapped.tensors[key] = LazyTensor.of(value, f"fresh init:{key}")
    del meta_model

    # 4-5. hash, write, describe; then move into place.
    report.sources = source_files(sources, llm, hash_sources, say)
    _write_folder(out_dir, report, mapped, expected, tokenizer, dtype=dtype, branches=branches,
                  max_shard_size=max_shard_size, say=say)
    return report


# ------------------------------------------------------------------------------------ steps
def _check_request(out_dir: Path, sources: Sources, dtype: str, branches: str, overwrite: bool) -> None:
    if dtype not in DTYPES:
        raise ConversionError(f"unknown dtype {dtype!r}; choose one of {sorted(DTYPES)}")
    if branches not in BRANCH_CHOICES:
        raise ConversionError(f"unknown branches {branches!r}; choose one of {BRANCH_CHOICES}")
    if sources.hf_blip2 is not None and (sources.eva_vit is not None or sources.blip2 is not None):
        raise ConversionError("--hf-blip2 replaces both --eva-vit and --blip2; give one or the other")
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"{out_dir}: exists and is not empty (choose another --out, or --overwrite)")


def _drop_unused(sources: Sources, with_vision: bool, with_audio: bool, branches: str, notes: list[str]) -> Sources:
    """``sources`` without the files the chosen branches leave out (each noted); every kept file must exist."""
    unused = set() if with_audio else {"al_ckpt", "imagebind"}
    if not with_vision:
        unused |= {"vl_ckpt", "eva_vit", "blip2", "hf_blip2"}
    for slot in sorted(unused, key=lambda name: Sources.OPTIONS[name]):
        if getattr(sources, slot) is not None:
            notes.append(f"{Sources.OPTIONS[slot]} {getattr(sources, slot)} not used: branches={branches!r} leaves "
                         "that part out")
    sources = sources.without(unused)
    for slot, path in sources.checkpoints():
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such file (given as {Sources.OPTIONS[slot]})")
    return sources


def _map_sources(sources: Sources, llm, cfg: VideoLlamaConfig, expected: dict[str, tuple[int, ...]],
                 with_audio: bool) -> _Mapped:
    """Map every given source to our keys through its key table (lazily: no tensor data is read)."""
    mapped = _Mapped(releasers=[llm.weights.tensors])
    mapped.take(lambda: convert_llm_weights(llm, {k: s for k, s in expected.items() if k.startswith(LLM_PREFIX)},
                                            allow_missing=True))
    for slot, branch in (("vl_ckpt", "vl"), ("al_ckpt", "al")):
        path = getattr(sources, slot)
        if path is not None:
            state = mapped.open(path, branch)
            mapped.take(lambda state=state, branch=branch, path=path: convert_official_checkpoint(
                state, branch, cfg, source=str(path), extras=state.extras, allow_missing=True))
    if sources.eva_vit is not None:
        state = mapped.open(sources.eva_vit, "eva")
        mapped.take(lambda: convert_eva_state_dict(state, cfg.vision, source=str(sources.eva_vit), allow_missing=True))
    if sources.blip2 is not None:
        blip2 = mapped.open(sources.blip2, "blip2")
        mapped.take(lambda: convert_lavis_blip2_state_dict(blip2, cfg, source=str(sources.blip2), extras=blip2.extras,
                                                           allow_missing=True))
    if sources.hf_blip2 is not None:
        folder = read_hf_blip2_folder(sources.hf_blip2)
        if not len(folder.tensors):
            raise ConversionError(f"{sources.hf_blip2}: no vision_model.*, qformer.* or query_tokens tensors: "
                             "not a BLIP-2 folder (--hf-blip2 takes a Salesforce/blip2-* folder)")
        mapped.releasers.append(folder.tensors)
        mapped.take(lambda: convert_hf_blip2_folder(folder, cfg, expected, source=str(sources.hf_blip2),
                                                    allow_missing=True))
    if sources.imagebind is not None:
        imagebind = mapped.open(sources.imagebind, "imagebind")
        mapped.take(lambda: _imagebind(imagebind, cfg, with_audio, str(sources.imagebind)))
    extra = sorted(set(mapped.tensors) - set(expected))
    if extra:
        raise ValueError(f"internal: converted tensors the model does not have: {extra[:5]}")
    return mapped


def _check_complete(report: BuildReport, mapped: _Mapped, sources: Sources, expected: dict[str, tuple[int, ...]],
                    tied: set[str], allow_missing: bool) -> list[str]:
    """The keys still without a source (to fill); raises ``ConversionError`` with the failing reports when a
    key is unknown or misshaped, or missing without ``allow_missing``."""
    # A given file lacked them (its report lists them) or no file was given.
    absent = [k for k in expected if k not in mapped.tensors and k not in tied]
    global_report = ConversionReport(source="the model folder (tensors that no given source provides)")
    no_source = [k for k in absent if not sources.supplies(k.split(".")[0])]
    explained = any(r.missing for r in report.reports)
    global_report.missing = no_source if (no_source or explained) else absent
    global_report.notes += [f"{part}.* comes from {PART_SOURCES.get(part, '?')}"
                            for part in sorted({k.split(".")[0] for k in global_report.missing})]
    global_report.shape_mismatch = [(k, tuple(v.shape), expected[k]) for k, v in mapped.tensors.items()
                                    if tuple(v.shape) != expected[k]]
    if not global_report.ok():
        report.reports.append(global_report)
    failing = [r for r in report.reports if not r.ok()] or [global_report]
    if any(r.unexpected or r.shape_mismatch for r in failing) or (absent and not allow_missing):
        release_all(*mapped.releasers)
        raise ConversionError("\n".join(r.format() for r in failing), failing[0])
    return absent


def _write_folder(out_dir: Path, report: BuildReport, mapped: _Mapped, expected: dict[str, tuple[int, ...]], tokenizer,
                  *, dtype: str, branches: str, max_shard_size: str | int, say: Callable[[str], None]) -> None:
    """Stream the tensors in ``expected``'s order into shards, with config, tokenizer and card, in a staging
    folder renamed to ``out_dir`` only when all of it is written."""
    ordered = {k: mapped.tensors[k] for k in expected if k in mapped.tensors}
    target = DTYPES[dtype]

    def dtype_for(key: str, source_dtype: torch.dtype) -> torch.dtype:
        if not source_dtype.is_floating_point:
            return source_dtype
        return torch.float32 if key in KEEP_FP32 else target

    staging = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        say(f"writing {len(ordered)} tensors as {dtype} into {out_dir}")
        report.written = write_shards(staging, ordered, dtype_for=dtype_for, max_shard_bytes=parse_size(max_shard_size),
                                      release=lambda: release_all(*mapped.releasers), progress=say)
        report.config.save(staging / "config.json")
        tokenizer.save_pretrained(str(staging))
        report.written.files = [out_dir / p.name for p in report.written.files]
        (staging / CARD_NAME).write_text(model_card(report, dtype=dtype, branches=branches))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        release_all(*mapped.releasers)


# ------------------------------------------------------------------------------------ helpers
def _dtype_class(dtype: torch.dtype) -> str:
    if dtype == torch.bool:
        return "bool"
    if dtype.is_complex:
        return "complex"
    return "floating-point" if dtype.is_floating_point else "integer"


def _check_dtype_classes(tensors: dict[str, LazyTensor], model_dtypes: dict[str, torch.dtype]) -> None:
    """Every source tensor is of the model's dtype class (floating point for weights): a bool or integer
    tensor of the right shape is a wrong or damaged file, never something to store or cast."""
    for key, lazy in tensors.items():
        want, have = _dtype_class(model_dtypes[key]), _dtype_class(lazy.dtype)
        if want != have:
            raise ConversionError(f"{key}: {have} values ({lazy.dtype}) in {lazy.origin}, the model needs {want} "
                             f"({model_dtypes[key]}); a wrong or damaged checkpoint")


def _require_inputs(sources: Sources, with_vision: bool, with_audio: bool, allow_missing: bool, branches: str) -> None:
    needed: list[str] = []
    if with_vision:
        if sources.vl_ckpt is None:
            needed.append("--vl-ckpt (the VL_*.pth branch checkpoint)")
        if sources.hf_blip2 is None and (sources.eva_vit is None or sources.blip2 is None):
            needed.append("--eva-vit and --blip2 (LAVIS files), or --hf-blip2 (a Salesforce/blip2-* folder)")
    if with_audio:
        if sources.al_ckpt is None:
            needed.append("--al-ckpt (the AL_*.pth branch checkpoint)")
        if sources.imagebind is None:
            needed.append("--imagebind (imagebind_huge.pth)")
    if needed and not allow_missing:
        raise ConversionError(f"branches={branches!r} needs " + "; ".join(needed)
                         + " (or --allow-missing to fill them with a random init, or fewer --branches)")


def _open_checkpoint(path, kind: str) -> PthStateDict:
    """A lazy state dict of a checkpoint file (its 'model' entry if it has one), checked to be a ``kind``."""
    state = open_state_dict(path)
    expect_checkpoint(list(state), kind, path)
    if not hasattr(state, "extras"):
        state.extras = []  # a safetensors file has no training entries
    return state  # type: ignore[return-value]


def _imagebind(state, cfg: VideoLlamaConfig, with_audio: bool, source: str):
    ours, rep = convert_imagebind_state_dict(state, audio=with_audio, vision=cfg.with_imagebind_vision,
                                             cfg=cfg.imagebind, source=source, allow_missing=True)
    renamed = {}
    for key, value in ours.items():
        if key.startswith(AUDIO_PREFIX):
            renamed["audio_encoder." + key[len(AUDIO_PREFIX):]] = value
        elif key.startswith(VISION_PREFIX):
            renamed["imagebind_vision." + key[len(VISION_PREFIX):]] = value
    return renamed, rep


def choose_template(template: str | None, vl_ckpt, al_ckpt, llm_config: dict) -> tuple[str, str]:
    """The conversation template and why: explicit, from the checkpoint's release, or from the LLM."""
    from ..templates import TEMPLATES

    if template is not None:
        if template not in TEMPLATES:
            raise ConversionError(f"unknown template {template!r}; choose one of {sorted(TEMPLATES)}")
        return template, "given"
    for path in (vl_ckpt, al_ckpt):
        release = released_checkpoint(Path(path).name) if path is not None else None
        if release is not None:
            return release.template, f"{release.name} was trained with {release.llm}"
    # LLaMA-2 has a 4096-token context; LLaMA-1/Vicuna v0 2048.
    if int(llm_config.get("max_position_embeddings", 0)) >= 4096:
        return "llama_2", "the LLM has a 4096-token context (LLaMA-2); pass --template vicuna_v0 if it is Vicuna"
    return "vicuna_v0", "the LLM has a 2048-token context (LLaMA-1/Vicuna); pass --template llama_2 if it is LLaMA-2"


def _model_config(base: VideoLlamaConfig | None, llm: dict, *, with_vision: bool, with_audio: bool,
                  imagebind_vision: bool, template: str, token_ids: tuple[int, int]) -> VideoLlamaConfig:
    cfg = copy.deepcopy(base) if base is not None else VideoLlamaConfig()
    cfg.llm = dict(llm)
    cfg.with_imagebind_vision = imagebind_vision
    cfg.template = template
    cfg.image_token_id, cfg.audio_token_id = token_ids
    # replace() runs the config's checks again (at least one branch).
    return dataclasses.replace(cfg, with_vision=with_vision, with_audio=with_audio)


def _meta_model(cfg: VideoLlamaConfig) -> nn.Module:
    from accelerate import init_empty_weights

    from ..model import VideoLlama

    with init_empty_weights(include_buffers=False):
        return VideoLlama(cfg)


def _fresh_values(meta_model: nn.Module, keys: list[str]) -> dict[str, torch.Tensor]:
    """Values a freshly built model would hold for ``keys`` (the parts are materialised one at a time)."""
    torch.manual_seed(FILL_SEED)
    parts: dict[str, list[str]] = {}
    for key in keys:
        parts.setdefault(key.split(".")[0], []).append(key)
    values: dict[str, torch.Tensor] = {}
    for part, part_keys in parts.items():
        if part == "language_model":
            raise ConversionError("--allow-missing cannot make up language-model weights: the --llm folder lacks "
                             f"{len(part_keys)} tensors (e.g. {part_keys[0]})")
        obj = getattr(meta_model, part)
        if isinstance(obj, nn.Parameter):  # query tokens: the official N(0, 0.02) init
            values[part] = torch.randn(obj.shape) * FILL_STD
            continue
        module = copy.deepcopy(obj)
        for sub in module.modules():
            for name, param in list(sub.named_parameters(recurse=False)):
                if param.device.type == "meta":
                    sub._parameters[name] = nn.Parameter(torch.randn(param.shape) * FILL_STD, requires_grad=False)
        # Children first, so a parent's own init (ImageBind's _reset_parameters) has the last word;
        # torch modules' reset_parameters (nn.MultiheadAttention: _reset_parameters) cover the rest.
        for sub in reversed(list(module.modules())):
            reset = getattr(sub, "_reset_parameters", None) or getattr(sub, "reset_parameters", None)
            if callable(reset):
                reset()
        state = module.state_dict()
        for key in part_keys:
            values[key] = state[key[len(part) + 1:]].detach().clone()
    return values
