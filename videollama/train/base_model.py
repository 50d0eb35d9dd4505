"""Where a training run starts from: a model folder, the official files, or a fresh preset; and LoRA.

:func:`build_model` returns ``(model, tokenizer)`` for a run's ``model`` section:

- ``model_dir``: a folder written by ``videollama convert`` / ``export`` / ``save_pretrained``;
- the official files (``llm_path`` + ``vit_ckpt`` / ``qformer_ckpt`` / ``imagebind_ckpt`` / ``ckpt`` /
  ``ckpt_2``): converted once into ``<output_dir>/base-model`` by :mod:`videollama.convert`, then loaded,
  with the trained parts of ``ckpt`` / ``ckpt_2`` and MiniGPT-4's projection laid over them;
- neither: a randomly initialised ``preset`` (tests, SynthAV).

:func:`apply_lora` wraps the language model in peft adapters; :func:`merge_lora_state` folds trained
adapters back into plain weights for export.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from ..model import VideoLlama
from .config import ConfigError, ModelSection, TrainConfig

__all__ = ["BASE_MODEL", "apply_lora", "build_model", "merge_lora_state"]

BASE_MODEL = "base-model"  # the official files converted once, under run.output_dir


def build_model(section: ModelSection, *, with_audio_vision: bool, cache_dir: Path, is_main: bool = True):
    """(model, tokenizer) for a run.

    - ``model_dir``: a folder written by ``videollama convert`` / ``export`` / ``save_pretrained``, with
      ``llama_proj_ckpt`` (if given) laid over its ``video_projection``;
    - official files (``llm_path`` + ``vit_ckpt``/``qformer_ckpt``/``imagebind_ckpt``/``ckpt``/``ckpt_2``):
      converted once into ``cache_dir/base-model`` by ``videollama.convert``, then loaded, with the trained
      parts of model-folder ``ckpt``/``ckpt_2`` and MiniGPT-4's projection laid over
      (:func:`_build_from_official_files`);
    - neither: a randomly initialised ``preset`` with the tokenizer at ``tokenizer_path`` (tests, SynthAV).
    """
    from transformers import AutoTokenizer

    from ..presets import get_preset
    from ..processor import attach_media_tokens

    if section.model_dir:
        model = VideoLlama.from_pretrained(section.model_dir, with_audio=section.with_audio or None)
        tokenizer = AutoTokenizer.from_pretrained(section.tokenizer_path or section.model_dir)
        if section.llama_proj_ckpt:  # asked for explicitly: it replaces the folder's video_projection
            _overlay_llama_proj(model, section.llama_proj_ckpt)
            if is_main:
                print(f"base model: video_projection from {section.llama_proj_ckpt} (MiniGPT-4's projection, as the "
                      "official llama_proj_model)")
    elif section.llm_path and (section.vit_ckpt or section.qformer_ckpt or section.ckpt):
        model, tokenizer = _build_from_official_files(section, with_audio_vision=with_audio_vision,
                                                      folder=cache_dir / BASE_MODEL, is_main=is_main)
    else:
        path = section.tokenizer_path or section.llm_path
        if not path:
            raise ConfigError("model: give model_dir, the official files (llm_path + checkpoints), or a tokenizer_path "
                             "for a randomly initialised preset")
        tokenizer = AutoTokenizer.from_pretrained(path)
        config = get_preset(section.preset)
        config.with_audio = section.with_audio
        config.with_imagebind_vision = section.with_audio and with_audio_vision
        config.llm["vocab_size"] = max(config.llm["vocab_size"], tokenizer.vocab_size)
        attach_media_tokens(tokenizer, config)
        model = VideoLlama(config)
    attach_media_tokens(tokenizer, model.config)  # adds missing placeholders; checks the ids agree
    if section.llm_context is not None:
        _set_llm_context(model, section.llm_context)
    if section.llm_rope_factor is not None:
        _set_rope_factor(model, section.llm_rope_factor)
    return model, tokenizer


def _set_rope_factor(model: VideoLlama, factor: float) -> None:
    """Linear RoPE scaling of ``factor`` in the LLM's live config, its rotary embedding and the exported config."""
    if not factor >= 1:
        raise ConfigError(f"model.llm_rope_factor must be >= 1, got {factor}")
    llm = model.language_model
    rotary = getattr(getattr(llm, "model", None), "rotary_emb", None)
    if rotary is None:
        raise ConfigError("model.llm_rope_factor: the LLM has no rotary embedding (model.rotary_emb); only RoPE LLMs "
                          "(LLaMA and kin) can be scaled")
    theta = (getattr(llm.config, "rope_parameters", None) or {}).get("rope_theta", 10000.0)
    rope = {"rope_type": "linear", "factor": float(factor), "rope_theta": theta}
    llm.config.rope_parameters = dict(rope)
    llm.model.rotary_emb = type(rotary)(config=llm.config).to(rotary.inv_freq.device)
    model.config.llm["rope_parameters"] = dict(rope)


def _set_llm_context(model: VideoLlama, context: int) -> None:
    """The LLM's ``max_position_embeddings`` (what the engine and the server refuse prompts beyond), in the live
    config and in the one the export writes. Only for LLMs without a learned position table (RoPE: LLaMA and kin)."""
    if context < 1:
        raise ConfigError(f"model.llm_context must be >= 1, got {context}")
    tables = [name for name, _ in model.language_model.named_modules()
              if name.rsplit(".", 1)[-1] in ("embed_positions", "wpe", "position_embeddings")]
    if tables:
        raise ConfigError(f"model.llm_context: the LLM has a learned position table ({tables[0]}) of fixed size; "
                          "only RoPE LLMs (LLaMA and kin) can take a longer context")
    model.language_model.config.max_position_embeddings = context
    model.config.llm["max_position_embeddings"] = context


# Parts the frozen encoders are made of: the official files must supply them (no random fill).
_FROZEN_FROM_FILES = {"vision_model": "model.vit_ckpt and model.qformer_ckpt", "image_qformer": "model.qformer_ckpt",
                      "image_query_tokens": "model.qformer_ckpt", "audio_encoder": "model.imagebind_ckpt",
                      "imagebind_vision": "model.imagebind_ckpt", "language_model": "model.llm_path"}
SOURCES_NAME = "train-sources.json"


def _split_ckpt(path: str | None, key: str) -> tuple[str | None, Path | None]:
    """An official ``ckpt``/``ckpt_2`` entry: a branch ``.pth`` (for the converter) or a model folder (overlaid)."""
    if not path:
        return None, None
    p = Path(path)
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise FileNotFoundError(f"model.{key}={path}: a folder but not a model folder (no config.json); give a "
                                    "branch .pth or a previous stage's export/ folder")
        return None, p
    if not p.exists():
        raise FileNotFoundError(f"model.{key}={path}: no such file or folder (the previous stage's export/ or an "
                                "official branch .pth)")
    return str(p), None


def _source_record(paths: dict[str, Any]) -> dict[str, Any]:
    record = {}
    for name, value in paths.items():
        if isinstance(value, (str, Path)) and Path(value).exists():
            stat = Path(value).stat()
            record[name] = [str(Path(value).resolve()), stat.st_size, int(stat.st_mtime)]
        else:
            record[name] = value
    return record


def _build_from_official_files(section: ModelSection, *, with_audio_vision: bool, folder: Path, is_main: bool):
    """The official-files path: convert the frozen parts (and any branch ``.pth``) once into ``folder``, then
    overlay the trained parts from model folders (``ckpt``/``ckpt_2`` = a previous stage's ``export/``) and
    MiniGPT-4's projection (``llama_proj_ckpt``, when no VL checkpoint gives ``video_projection``).

    Parts no source holds are freshly initialised by the converter and named in its report: in the official
    stage 1 the trained parts (video/audio Q-Former, queries, positions, projection) start from scratch. A
    frozen part (EVA, BLIP-2 Q-Former, ImageBind, the LLM) without its file is an error, not a random fill.
    """
    from transformers import AutoTokenizer

    vl_file, vl_folder = _split_ckpt(section.ckpt, "ckpt")
    al_file, al_folder = _split_ckpt(section.ckpt_2, "ckpt_2")
    if (al_file or al_folder) and not section.with_audio:
        raise ConfigError("model.ckpt_2 (the audio-branch checkpoint) needs model.with_audio: true")
    imagebind_vision = bool(section.with_audio and with_audio_vision)
    args = dict(llm_dir=section.llm_path, eva_vit=section.vit_ckpt, blip2=section.qformer_ckpt,
                imagebind=section.imagebind_ckpt if section.with_audio else None, vl_ckpt=vl_file, al_ckpt=al_file,
                branches="both" if section.with_audio else "vl", imagebind_vision=imagebind_vision)
    sources = _source_record({**args, "preset": section.preset})
    if is_main:
        cached = folder / SOURCES_NAME
        current = json.loads(cached.read_text()) if cached.is_file() and (folder / "config.json").is_file() else None
        if current != json.loads(json.dumps(sources)):
            _convert_official(folder, args, section, sources)
    if dist.is_initialized():
        dist.barrier()
    model = VideoLlama.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(section.tokenizer_path or folder)
    from ..convert.build import AL_TRAINED, VL_TRAINED

    said = []
    if vl_folder is not None:
        _overlay_parts(model, vl_folder, VL_TRAINED, "model.ckpt")
        said.append(f"{', '.join(VL_TRAINED)} from {vl_folder}")
    elif section.llama_proj_ckpt and vl_file is None:
        _overlay_llama_proj(model, section.llama_proj_ckpt)
        said.append(f"video_projection from {section.llama_proj_ckpt} (MiniGPT-4's projection, as the official "
                    "llama_proj_model)")
    if al_folder is not None:
        _overlay_parts(model, al_folder, AL_TRAINED, "model.ckpt_2")
        said.append(f"{', '.join(AL_TRAINED)} from {al_folder}")
    if is_main and said:
        print("base model: " + "; ".join(said))
    return model, tokenizer


def _convert_official(folder: Path, args: dict, section: ModelSection, sources: dict) -> None:
    from ..convert.build import AL_TRAINED, VL_TRAINED, convert
    from ..presets import get_preset

    print(f"converting the official files into {folder} (once; reused while the files stay the same)")
    report = convert(folder, dtype="fp32", allow_missing=True, config=get_preset(section.preset), overwrite=True,
                     hash_sources=False, **args)
    filled_parts: dict[str, int] = {}
    for key in report.filled:
        filled_parts[key.split(".")[0]] = filled_parts.get(key.split(".")[0], 0) + 1
    frozen = sorted(p for p in filled_parts if p not in VL_TRAINED + AL_TRAINED)
    if frozen:
        import shutil

        shutil.rmtree(folder, ignore_errors=True)
        need = sorted({_FROZEN_FROM_FILES.get(p, p) for p in frozen})
        raise ConfigError(f"model: the official files do not provide the frozen part(s) {', '.join(frozen)}; "
                         f"give {' and '.join(need)}")
    (folder / SOURCES_NAME).write_text(json.dumps(sources, indent=1) + "\n")
    # One status line per source file (the full report is in the folder's README.md); the converter's
    # "no source" listing is replaced by the line below, since those keys were filled on purpose.
    for rep in report.reports:
        if not rep.source.startswith("the model folder"):
            print(rep.format().splitlines()[0])
    if filled_parts:
        print("freshly initialised (no given file holds them; the official stage 1 trains them from scratch, a "
              "later stage takes them from model.ckpt/ckpt_2): "
              + ", ".join(f"{p} ({n} tensors)" for p, n in filled_parts.items()) + f"; details: {folder}/README.md")


def _overlay_parts(model: VideoLlama, folder: Path, parts: tuple[str, ...], option: str) -> None:
    """Copy the tensors of ``parts`` from a model folder into ``model`` (all of them must be there)."""
    from safetensors import safe_open

    from ..model.checkpoint import weight_files

    wanted = {k: v for k, v in model.state_dict().items() if k.split(".")[0] in parts}
    found: dict[str, torch.Tensor] = {}
    for path in weight_files(folder):
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                if key in wanted:
                    found[key] = f.get_tensor(key)
    missing = sorted(set(wanted) - set(found))
    if missing:
        raise ConfigError(f"{option}={folder}: the model folder lacks {len(missing)} tensors of {', '.join(parts)} "
                         f"(e.g. {missing[0]}); was it trained with that branch?")
    wrong = [f"{k}: {tuple(t.shape)} vs {tuple(wanted[k].shape)}" for k, t in found.items() if t.shape != wanted[k].shape]
    if wrong:
        raise ConfigError(f"{option}={folder}: wrongly shaped tensors for this model: {wrong[:3]}")
    with torch.no_grad():
        for key, tensor in found.items():
            wanted[key].copy_(tensor.to(wanted[key].dtype))


def _overlay_llama_proj(model: VideoLlama, path: str) -> None:
    """MiniGPT-4's ``pretrained_minigpt4.pth`` (``llama_proj.*``) into ``video_projection`` (official VL init)."""
    from ..convert.safe_load import open_state_dict, release_all

    state = open_state_dict(path)
    try:
        keys = {"llama_proj.weight": model.video_projection.weight, "llama_proj.bias": model.video_projection.bias}
        absent = [k for k in keys if k not in state]
        if absent:
            raise ConfigError(f"model.llama_proj_ckpt={path}: no {absent[0]} (give MiniGPT-4's pretrained_minigpt4.pth)")
        with torch.no_grad():
            for key, param in keys.items():
                tensor = state[key].load()
                if tensor.shape != param.shape:
                    raise ConfigError(f"model.llama_proj_ckpt={path}: {key} has shape {tuple(tensor.shape)}, the model "
                                     f"needs {tuple(param.shape)} (a projection for another LLM width?)")
                param.copy_(tensor.to(param.dtype))
    finally:
        release_all(state)


def apply_lora(model: VideoLlama, cfg: TrainConfig) -> None:
    from peft import LoraConfig, get_peft_model

    lora = cfg.optim.lora
    model.language_model = get_peft_model(
        model.language_model,
        LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=list(lora.target_modules)),
    )
    model.trainable_parts = set(model.trainable_parts) | {"language_model"}  # adapters train, base stays frozen


PEFT_PREFIX = "language_model.base_model.model."
_LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<ab>[AB])\.default\.weight$")


def merge_lora_state(state: dict[str, torch.Tensor], *, alpha: float, r: int) -> dict[str, torch.Tensor]:
    """A state dict with peft's LoRA names -> the plain model's names, adapters merged into their weights.

    ``W = W_base + (alpha / r) * B @ A`` for every adapted linear layer (peft's ``merge_and_unload``, done on
    the tensors, so it also works on an FSDP-gathered state dict). Keys without peft names pass through.
    """
    out: dict[str, torch.Tensor] = {}
    adapters: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        if not key.startswith(PEFT_PREFIX):
            out[key] = value
            continue
        rest = key[len(PEFT_PREFIX):]
        match = _LORA_KEY.match(rest)
        if match:
            adapters.setdefault(match["module"], {})[match["ab"]] = value
        elif ".lora_" in rest:
            raise ConfigError(f"cannot merge the LoRA tensor {key}: only linear-layer adapters (lora_A/lora_B) are supported")
        else:
            out["language_model." + rest.replace(".base_layer.", ".")] = value
    scaling = alpha / r
    for module, pair in adapters.items():
        key = f"language_model.{module}.weight"
        if set(pair) != {"A", "B"} or key not in out:
            raise ConfigError(f"LoRA adapter of {module}: incomplete (have {sorted(pair)}) or no base weight {key}")
        base = out[key]
        out[key] = (base.float() + (pair["B"].float() @ pair["A"].float()) * scaling).to(base.dtype)
    return out
