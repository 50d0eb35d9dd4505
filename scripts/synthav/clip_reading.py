"""An extra stage-0 phase, not in the chain: the LLM alone learns to read clips (frame order) from the frozen
pictures of a finished stage 0.

After stage 0's generative phases the LLM answers temporal questions about 4 ideal frames in order at
chance. Here, with the image Q-Former and the bridge frozen, every cached frame's picture is computed once
(:func:`clip_pictures`), so a chat costs only the LLM's step: ``steps`` x ``batch`` chats, a
``temporal_share`` of them temporal video chats and the rest drawn as the generative phases draw them
(:class:`ClipChats`), at a constant rate. It raises the stage-0 LLM's temporal answers from ideal frames,
not the trained model's, which is why the chain leaves it out (docs/synthav.md#diagnosis has the numbers).

    python -m scripts.synthav.clip_reading --stage0 runs/synthav/seed0/stage0 --data runs/synthav/seed0/data \\
        --out runs/clip/stage0 --steps 400
    videollama synthav train-all --out runs/clip/seed0 --data runs/synthav/seed0/data --stage0 runs/clip/stage0
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from videollama.synthav.annotate import sample_question
from videollama.synthav.preset import synthav_config
from videollama.synthav.stage0 import (CHAT_FORMS, PROJECTION_FILE, VIDEO_FRAMES, ChatSampler, MediaCache,
                                       Stage0Settings, WorldData, decode_media, frame_queries, load_bridge,
                                       normalize_frames, picture_chat, splice_prefix)
from videollama.synthav.stage0.loop import train_loop
from videollama.synthav.stage0.world_data import SYSTEMS
from videollama.synthav.world import WorldConfig

PICTURE_CHUNK = 64  # clips per forward pass when computing the frozen pictures
TEMPORAL_TRIES = 100  # clips tried for a temporal question (a static scene may have none)


@dataclass
class ClipReadingSettings:
    """Size of the clip-reading phase (defaults: the measured runs of docs/synthav.md)."""

    steps: int = 400
    batch: int = 32  # media chats per step
    lr: float = 3e-4
    temporal_share: float = 0.5  # of the chats: temporal video chats; the rest the generative phases' mix
    seed: int = 0
    frame_clips: int = 2000  # WebVid clips whose frames are decoded (stage 0's default)


def clip_pictures(model, bridge: nn.Linear, cache: MediaCache, chunk: int = PICTURE_CHUNK) -> Tensor:
    """The frozen pictures of every cached frame, as the LLM sees them: (N, 8, Q, D_llm), computed once."""
    out = []
    with torch.no_grad():
        for start in range(0, cache.frames.shape[0], chunk):
            frames = cache.frames[start: start + chunk]  # (n, 8, 3, S, S) uint8
            queries = frame_queries(model, normalize_frames(frames.flatten(0, 1)))  # (n * 8, Q, W)
            out.append(bridge(queries).unflatten(0, frames.shape[:2]))  # (n, 8, Q, D_llm)
    return torch.cat(out)


class ClipChats:
    """The chats of :func:`train_clip_reading`: a ``temporal_share`` of temporal video chats, the rest drawn
    as the generative phases draw them (:class:`ChatSampler`), every slot filled from precomputed pictures."""

    def __init__(self, tokenizer, pictures: Tensor, cache: MediaCache, world: WorldConfig, temporal_share: float,
                 rng: random.Random, np_rng: np.random.Generator):
        self.tokenizer, self.pictures, self.cache, self.world = tokenizer, pictures, cache, world
        self.temporal_share, self.rng, self.np_rng = temporal_share, rng, np_rng
        self.sampler = ChatSampler(cache, world, rng, np_rng)
        self.video = next(form for form in CHAT_FORMS if form.name == "video")

    def _clip(self, c: int) -> Tensor:
        return self.pictures[c, list(VIDEO_FRAMES)].flatten(0, 1)  # (4 * Q, D_llm): 4 frames in order

    def draw(self) -> tuple[list[list[int]], int, list[Tensor]]:
        """(pieces, answer length, one picture per slot) of one chat."""
        if self.rng.random() < self.temporal_share:
            for _ in range(TEMPORAL_TRIES):  # most clips have a temporal question; a static scene may not
                c = self.rng.randrange(self.pictures.shape[0])
                item = sample_question(self.cache.scenes[c], self.world, self.np_rng, "temporal")
                if item is not None:
                    system = self.video.system if self.rng.random() < 0.5 else self.rng.choice(SYSTEMS)
                    pieces, answer_len = picture_chat(self.tokenizer, system, self.video.preamble, item.question,
                                                      item.answer)
                    return pieces, answer_len, [self._clip(c)]
        d = self.sampler.draw()
        pieces, answer_len = picture_chat(self.tokenizer, d.system, d.form.preamble, d.question, d.answer)
        return pieces, answer_len, [self.pictures[d.c, d.f] if slot == "frame" else self._clip(d.c)
                                    for slot in d.form.slots]


def train_clip_reading(model, tokenizer, bridge: nn.Linear, cache: MediaCache, world: WorldConfig,
                       settings: ClipReadingSettings) -> float:
    """Train the LLM alone on ``settings.steps`` batches of :class:`ClipChats`; returns the mean of the last losses.

    Its own random streams (seeded from ``settings.seed``) are those the phase used when it ran inside stage 0.
    """
    llm = model.language_model
    rng, np_rng = random.Random(f"clip-reading-{settings.seed}"), np.random.default_rng([settings.seed, 1])
    chats = ClipChats(tokenizer, clip_pictures(model, bridge, cache), cache, world, settings.temporal_share,
                      rng, np_rng)
    embed = llm.get_input_embeddings()
    llm.requires_grad_(True).train()

    def step(_: int) -> Tensor:
        drawn = [chats.draw() for _ in range(settings.batch)]
        inputs, mask, labels = splice_prefix(embed, [(p, n) for p, n, _ in drawn], [slots for _, _, slots in drawn])
        return llm(inputs_embeds=inputs, attention_mask=mask, labels=labels).loss

    loss = train_loop("clip-reading", settings.steps, step, list(llm.parameters()), settings.lr,
                      Stage0Settings(seed=settings.seed), clip_norm=None, cosine=False)
    llm.requires_grad_(False).eval()
    return loss


def run_clip_reading(stage0_dir: str | Path, data_dir: str | Path, out_dir: str | Path,
                     settings: ClipReadingSettings) -> float:
    """Copy the stage-0 folder ``stage0_dir`` to ``out_dir`` with its LLM trained by :func:`train_clip_reading`."""
    from transformers import AutoTokenizer

    from videollama.model import VideoLlama

    stage0_dir, out = Path(stage0_dir), Path(out_dir)
    if not (stage0_dir / "model" / "config.json").is_file() or not (stage0_dir / PROJECTION_FILE).is_file():
        raise FileNotFoundError(f"{stage0_dir}: not a stage-0 folder (needs model/ and {PROJECTION_FILE})")
    if out.exists():
        raise FileExistsError(f"{out}: exists; give a new folder")
    model = VideoLlama.from_pretrained(stage0_dir / "model").eval()
    tokenizer = AutoTokenizer.from_pretrained(str(stage0_dir / "model"))
    bridge = load_bridge(stage0_dir, model)
    data = WorldData.load(data_dir)
    cache = decode_media(data, settings.frame_clips, synthav_config(8).vision.image_size, with_audio=False)
    loss = train_clip_reading(model, tokenizer, bridge, cache, data.world, settings)
    shutil.copytree(stage0_dir, out)
    model.set_trainable(())
    model.save_pretrained(out / "model", tokenizer=tokenizer)
    (out / "clip_reading.json").write_text(json.dumps({"loss": loss, "settings": asdict(settings)}, indent=1) + "\n")
    return loss


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stage0", required=True, help="a finished stage-0 folder (model/ + llama_proj.safetensors)")
    parser.add_argument("--data", required=True, help="the SynthAV folder it was trained on")
    parser.add_argument("--out", required=True, help="new stage-0 folder to write")
    defaults = ClipReadingSettings()
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--seed", type=int, default=defaults.seed, help="the stage-0 seed (its random streams)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    loss = run_clip_reading(args.stage0, args.data, args.out, ClipReadingSettings(steps=args.steps, seed=args.seed))
    print(f"clip reading: final loss {loss:.4f}; wrote {args.out}")


if __name__ == "__main__":
    main()
