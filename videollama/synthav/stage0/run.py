"""Stage 0's driver: every phase in order on one SynthAV folder, then a frozen model folder.

Writes ``model/`` (tokenizer, LLM, both vision encoders, the audio encoder; all frozen),
``llama_proj.safetensors`` (the Q-Former -> LLM bridge in MiniGPT-4's key names) and ``stage0.json``
(settings, seconds, final losses and counts of every phase).
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ...tokenizer import train_tiny_tokenizer
from ..preset import synthav_config
from ..stopwatch import Stopwatch
from .attributes import pretrain_image_encoder, pretrain_imagebind_vision
from .binding import train_audio_encoder, train_imagebind_vision
from .loop import lm_batches
from .media_cache import decode_media
from .picture_reading import train_image_encoder, train_picture_reading
from .settings import Stage0Result, Stage0Settings
from .world_data import WorldData, frame_description, lm_texts, tokenizer_corpus

PROJECTION_FILE = "llama_proj.safetensors"  # the Q-Former -> LLM bridge, in MiniGPT-4's key names


def run_stage0(data_dir: str | Path, out_dir: str | Path, settings: Stage0Settings = Stage0Settings()) -> Stage0Result:
    """Train every stage-0 part on ``data_dir`` and write a frozen model folder to ``out_dir``.

    Runs on ``settings.threads`` torch threads (default: every core), then restores the caller's count.
    Stage 0 runs alone and without DataLoader workers, so its threads do not fight other processes
    (measured on 2 cores, a stage-0 LLM step alone: 0.97 s with 1 thread, 0.62 s with 2).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(settings.threads or os.cpu_count() or 1)
    try:
        return _run_stage0(data_dir, out_dir, settings)
    finally:
        torch.set_num_threads(threads)


def _run_stage0(data_dir: str | Path, out_dir: str | Path, settings: Stage0Settings) -> Stage0Result:
    from ...model import VideoLlama
    from ...processor import attach_media_tokens

    torch.manual_seed(settings.seed)
    rng = random.Random(settings.seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = Stage0Result(model_dir=str(out))
    lap = Stopwatch(result.seconds).lap

    data = WorldData.load(data_dir)
    image_size = synthav_config(8).vision.image_size
    cache = decode_media(data, settings.frame_clips, image_size)
    descriptions = sorted({frame_description(s, i, data.world) for s, idx in zip(cache.scenes, cache.frame_index)
                           for i in idx})
    result.counts.update(clips=int(cache.frames.shape[0]), frame_descriptions=len(descriptions))
    lap("decode")

    tokenizer = train_tiny_tokenizer(out / "tokenizer", vocab_size=settings.vocab_size,
                                     corpus=tokenizer_corpus(data, descriptions))
    config = synthav_config(vocab_size=tokenizer.vocab_size)  # placeholders lie beyond the LLM vocabulary
    attach_media_tokens(tokenizer, config)
    model = VideoLlama(config)
    docs = lm_texts(data, descriptions, rng)
    result.counts["lm_documents"] = len(docs)
    lap("tokenizer")

    batches = lm_batches(tokenizer, docs, settings.lm_batch)
    result.final_loss["image_attributes"] = pretrain_image_encoder(model, cache, data.world, settings, rng)
    lap("image_attributes")
    result.final_loss["image_encoder"], bridge = train_image_encoder(model, tokenizer, cache, data.world, settings, rng,
                                                                     batches)
    lap("image_encoder")
    result.final_loss["picture_reading"] = train_picture_reading(model, tokenizer, bridge, cache, data.world, settings,
                                                                 rng, batches)
    save_bridge(bridge, out)
    lap("picture_reading")
    result.final_loss["imagebind_attributes"] = pretrain_imagebind_vision(model, cache, data.world, settings, rng)
    lap("imagebind_attributes")
    result.final_loss["imagebind_vision"] = train_imagebind_vision(model, tokenizer, cache, settings, rng)
    lap("imagebind_vision")
    result.final_loss["imagebind_audio"], result.counts["audio_pairs"] = train_audio_encoder(
        model, cache, data.world, settings, rng)
    lap("imagebind_audio")

    model.set_trainable(())  # everything frozen: stage 1 names what it trains
    model.save_pretrained(out / "model", tokenizer=tokenizer)
    result.model_dir = str(out / "model")
    result.seconds["total"] = round(sum(result.seconds.values()), 1)
    (out / "stage0.json").write_text(json.dumps({**asdict(result), "settings": asdict(settings)}, indent=1) + "\n")
    return result


def save_bridge(bridge: nn.Linear, stage0_dir: Path) -> None:
    """Write the Q-Former -> LLM bridge to ``stage0_dir/llama_proj.safetensors`` in MiniGPT-4's key names."""
    save_file({"llama_proj.weight": bridge.weight.contiguous(), "llama_proj.bias": bridge.bias.contiguous()},
              str(stage0_dir / PROJECTION_FILE))


def load_bridge(stage0_dir: Path, model) -> nn.Linear:
    """The bridge :func:`save_bridge` wrote, in ``model``'s dtype."""
    state = load_file(str(Path(stage0_dir) / PROJECTION_FILE))
    weight = state["llama_proj.weight"]  # (D_llm, W)
    bridge = nn.Linear(weight.shape[1], weight.shape[0])
    bridge.load_state_dict({"weight": weight, "bias": state["llama_proj.bias"]})
    return bridge.to(model.dtype)
