"""Fixtures for the conversion tests: the released files' layouts, at tiny widths, written to disk.

``write_release(root)`` writes what a user downloads, shrunk: a Hugging Face LLaMA folder (weights,
legacy-style config.json, sentencepiece tokenizer *without* the media placeholders), the VL and AL
branch checkpoints as LAVIS saves them (``{'model', 'optimizer', 'config', 'scaler', 'epoch'}``, with
the buffers a real file carries), ``eva_vit_g.pth`` (one block more than the model uses, plus EVA-CLIP's
final norm), ``blip2_pretrained_flant5xxl.pth`` (with T5 keys) and ``imagebind_huge.pth`` (with the
other modalities). Key names are the official ones; widths come from ``videollama.presets.tiny``.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from videollama.config import VideoLlamaConfig
from videollama.convert.imagebind import make_official_imagebind_state_dict
from videollama.convert.lavis import make_official_blip2_state_dict, make_official_eva_state_dict
from videollama.convert.official import make_official_branch_state_dict, make_official_checkpoint
from videollama.presets import tiny

# What a LLaMA-2 folder's tokenizer_config.json says (transformers 4.3x era).
LLAMA2_TOKENIZER_CONFIG = {
    "add_bos_token": True, "add_eos_token": False, "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
    "pad_token": None, "clean_up_tokenization_spaces": False, "legacy": False, "model_max_length": 1000000000000000019884624838656,
    "tokenizer_class": "LlamaTokenizer", "sp_model_kwargs": {},
}


@dataclass
class Release:
    config: VideoLlamaConfig  # the tiny architecture the files are made for (llm filled in)
    llm: Path
    vl: Path
    al: Path
    eva: Path
    blip2: Path
    imagebind: Path
    states: dict  # name -> the official state dicts written (for hand-built reference models)


def write_llm_folder(folder: Path, tokenizer_dir: Path, llm_config: dict, seed: int = 0, *, bin_format: bool = False,
                     inv_freq: bool = True) -> dict[str, torch.Tensor]:
    """A Hugging Face LLaMA folder as released: weights, config.json, tokenizer.model + tokenizer_config.json."""
    from transformers import LlamaConfig, LlamaForCausalLM

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**{k: v for k, v in llm_config.items() if k != "model_type"}))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    if bin_format:
        extra = dict(state)
        if inv_freq:  # 2023 exports carry the rotary buffers
            half = llm_config["hidden_size"] // llm_config["num_attention_heads"] // 2
            for i in range(llm_config["num_hidden_layers"]):
                extra[f"model.layers.{i}.self_attn.rotary_emb.inv_freq"] = torch.ones(half)
        keys = sorted(extra)
        first, second = keys[: len(keys) // 2], keys[len(keys) // 2:]
        torch.save({k: extra[k] for k in first}, folder / "pytorch_model-00001-of-00002.bin")
        torch.save({k: extra[k] for k in second}, folder / "pytorch_model-00002-of-00002.bin")
        weight_map = {k: "pytorch_model-00001-of-00002.bin" for k in first} | {k: "pytorch_model-00002-of-00002.bin" for k in second}
        (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
        model.config.save_pretrained(str(folder))
    else:
        model.save_pretrained(str(folder))
    shutil.copy(tokenizer_dir / "tokenizer.model", folder / "tokenizer.model")
    (folder / "tokenizer_config.json").write_text(json.dumps(LLAMA2_TOKENIZER_CONFIG))
    return state


def write_release(root: Path, tokenizer_dir: Path, *, vocab_size: int, seed: int = 0) -> Release:
    """Every released file at tiny widths (see the module docstring)."""
    root.mkdir(parents=True, exist_ok=True)
    config = tiny(vocab_size=vocab_size)
    llm_state = write_llm_folder(root / "llama-2-tiny-chat-hf", tokenizer_dir, config.llm, seed)
    states = {"llm": llm_state}
    states["vl"] = make_official_branch_state_dict("vl", config, seed + 1)
    states["al"] = make_official_branch_state_dict("al", config, seed + 2)
    states["eva"] = make_official_eva_state_dict(config.vision, seed + 3, head=True)
    states["blip2"] = make_official_blip2_state_dict(config, seed + 4)
    states["imagebind"] = make_official_imagebind_state_dict(config.imagebind, seed + 5, other_modalities=True)
    paths = {
        "vl": root / "VL_LLaMA_2_7B_Finetuned.pth", "al": root / "AL_LLaMA_2_7B_Finetuned.pth",
        "eva": root / "eva_vit_g.pth", "blip2": root / "blip2_pretrained_flant5xxl.pth",
        "imagebind": root / "imagebind_huge.pth",
    }
    torch.save(make_official_checkpoint(states["vl"]), paths["vl"])
    torch.save(make_official_checkpoint(states["al"]), paths["al"])
    torch.save(states["eva"], paths["eva"])
    torch.save({"model": states["blip2"]}, paths["blip2"])
    torch.save(states["imagebind"], paths["imagebind"])
    return Release(config=config, llm=root / "llama-2-tiny-chat-hf", states=states, **paths)


def write_tiny_release(tmp_path_factory) -> Release:
    """A tiny sentencepiece tokenizer and every released file on it, in fresh pytest temp folders."""
    from transformers import AutoTokenizer

    from videollama.tokenizer import train_tiny_tokenizer

    tokenizer_dir = tmp_path_factory.mktemp("spm")
    train_tiny_tokenizer(tokenizer_dir)
    vocab = AutoTokenizer.from_pretrained(str(tokenizer_dir)).vocab_size
    return write_release(tmp_path_factory.mktemp("release"), tokenizer_dir, vocab_size=vocab)


def release_args(release: Release) -> dict:
    """Keyword arguments of ``convert`` for every file of a release."""
    return dict(llm_dir=release.llm, vl_ckpt=release.vl, al_ckpt=release.al, eva_vit=release.eva,
                blip2=release.blip2, imagebind=release.imagebind)
