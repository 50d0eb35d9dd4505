"""Model folders: ``config.json`` + safetensors shards + tokenizer files, loaded without copies.

Loading builds the model with parameters on the meta device (no memory, no random init), then
assigns tensors straight from the memory-mapped safetensors files, so peak memory stays close to the
model's size. Every key is checked: missing, unexpected or wrongly shaped tensors raise with a list.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..config import VideoLlamaConfig
from ..errors import VideoLlamaError

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"


class ModelFolderError(VideoLlamaError, ValueError):
    """A model folder does not match the model built from its config."""


def save_model_folder(model, directory: str | Path, *, tokenizer=None, max_shard_size: str = "2GB") -> None:
    from huggingface_hub import split_torch_state_dict_into_shards

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.config.save(directory / CONFIG_NAME)
    state = _dedupe_shared(model.state_dict())
    split = split_torch_state_dict_into_shards(state, filename_pattern="model{suffix}.safetensors", max_shard_size=max_shard_size)
    for filename, keys in split.filename_to_tensors.items():
        save_file({k: state[k].contiguous() for k in keys}, str(directory / filename), metadata={"format": "pt"})
    if split.is_sharded:
        index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in state.values())},
                 "weight_map": split.tensor_to_filename}
        (directory / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
    if tokenizer is not None:
        tokenizer.save_pretrained(str(directory))


def _dedupe_shared(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the second name of tensors that share storage (tied embeddings); re-tied on load."""
    seen: dict[tuple, str] = {}
    out = {}
    for key, tensor in state.items():
        ident = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if tensor.device.type != "meta" and ident in seen:
            continue
        seen[ident] = key
        out[key] = tensor
    return out


def weight_files(directory: Path) -> list[Path]:
    index = directory / INDEX_NAME
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [directory / n for n in names]
    single = directory / WEIGHTS_NAME
    if single.is_file():
        return [single]
    raise FileNotFoundError(f"{directory}: no {WEIGHTS_NAME} or {INDEX_NAME}")


def load_model_folder(cls, directory: str | Path, *, device="cpu", dtype=None, with_audio=None, with_vision=None):
    from accelerate import init_empty_weights

    directory = Path(directory)
    config_path = directory / CONFIG_NAME
    if not config_path.is_file():
        raise FileNotFoundError(f"{directory}: not a videollama model folder (no {CONFIG_NAME})")
    config = without_branches(VideoLlamaConfig.load(config_path), with_audio=with_audio, with_vision=with_vision)
    with init_empty_weights(include_buffers=False):
        model = cls(config)
    expected = {k: v for k, v in model.state_dict().items()}
    # dtype None: floating tensors keep the dtype they were saved in (a bf16 folder stays bf16 on a GPU),
    # except on the CPU, where half-precision kernels are slow or missing, so they load as float32.
    load_dtype = dtype if dtype is not None else (torch.float32 if torch.device(device).type == "cpu" else None)
    loaded: set[str] = set()
    unexpected, mismatched = [], []
    for path in weight_files(directory):
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            for key in f.keys():
                if key not in expected:
                    if left_out(config, key):
                        continue  # e.g. an audio-free load of a model folder that has the audio branch
                    unexpected.append(key)
                    continue
                tensor = f.get_tensor(key)
                if tuple(tensor.shape) != tuple(expected[key].shape):
                    mismatched.append(f"{key}: file {tuple(tensor.shape)} vs model {tuple(expected[key].shape)}")
                    loaded.add(key)  # present, reported as a shape mismatch rather than missing
                    continue
                target_dtype = (load_dtype or tensor.dtype) if tensor.is_floating_point() else tensor.dtype
                _assign(model, key, tensor.to(target_dtype))
                loaded.add(key)
    tied = _tied_keys(model)
    missing = [k for k in expected if k not in loaded and k not in tied]
    if missing or unexpected or mismatched:
        lines = [f"{directory}: weights do not match the model built from config.json"]
        for title, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mismatched)):
            if items:
                lines.append(f"  {title} ({len(items)}): " + ", ".join(items[:20]) + (" ..." if len(items) > 20 else ""))
        raise ModelFolderError("\n".join(lines))
    if tied:
        model.language_model.tie_weights()
    model.to(device)
    if dtype is not None:
        model.to(dtype)
    model.eval()
    return model


_AUDIO_PARTS = {"audio_encoder", "audio_position_embedding", "audio_qformer", "audio_query_tokens",
                "audio_projection", "imagebind_vision"}
# ImageBind's vision encoder belongs to the audio branch (it trains it); these are the vision-language branch.
_VISION_PARTS = {"vision_model", "image_qformer", "image_query_tokens", "frame_position_embedding", "video_qformer",
                 "video_query_tokens", "video_projection"}


def without_branches(config: VideoLlamaConfig, *, with_audio=None, with_vision=None) -> VideoLlamaConfig:
    """``config`` with the branches switched off that the loader was asked to leave out (``False``; ``None``
    keeps the folder's choice; ``True`` cannot add a branch the folder lacks). Checked again: one must remain."""
    changes = {}
    if with_audio is False:
        changes["with_audio"] = False
    if with_vision is False:
        changes["with_vision"] = False
    return dataclasses.replace(config, **changes) if changes else config


def left_out(config: VideoLlamaConfig, key: str) -> bool:
    """Whether a tensor in a folder belongs to a branch this (load's) config leaves out."""
    part = key.split(".")[0]
    return (not config.with_audio and part in _AUDIO_PARTS) or (not config.with_vision and part in _VISION_PARTS)


def _tied_keys(model) -> set[str]:
    lm = model.language_model
    if not getattr(lm.config, "tie_word_embeddings", False):
        return set()
    out_emb = lm.get_output_embeddings()
    if out_emb is None:
        return set()
    for name, param in model.named_parameters(remove_duplicate=False):
        if param is out_emb.weight:
            return {name}
    return set()


def _assign(model, key: str, tensor: torch.Tensor) -> None:
    module_name, _, attr = key.rpartition(".")
    module = model.get_submodule(module_name) if module_name else model
    old = getattr(module, attr)
    if isinstance(old, torch.nn.Parameter):
        setattr(module, attr, torch.nn.Parameter(tensor, requires_grad=old.requires_grad))
    else:
        module._buffers[attr] = tensor
