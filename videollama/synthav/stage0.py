"""Stage 0: train the parts users normally download, on the SynthAV world, then freeze them.

The real Video-LLaMA starts from downloaded weights: an LLM with its tokenizer, BLIP-2's EVA ViT +
Q-Former, and ImageBind's vision and audio encoders. None can be downloaded here, so this module
trains small stand-ins with the project's own model code on a generated SynthAV folder:

1. **Tokenizer + LLM** (``train_tiny_tokenizer`` + ``LlamaForCausalLM``): the LLM's documents are the
   world's text: captions, frame descriptions and the instruction conversations rendered with the
   ``llama_2`` template, with the system prompts and media preambles used at training and inference
   time (media placeholders removed). Unlike the real LLM, it does not learn this text alone first: it
   starts from random weights in the generative phases of step 2 and learns language and pictures
   together. Measured (docs/synthav.md#diagnosis): an LLM pretrained on the text first never learned to
   read the picture, nor even to answer from a description written out in its context, and after text
   pretraining it did not learn to read even ideal object tokens in 300 steps, which a fresh one did in 150.
2. **Image encoder + image Q-Former** (``Blip2VisionModel`` + ``Blip2QFormerModel``), BLIP-2-like.
   First the ViT is pretrained on its own (EVA arrives pretrained): a *dense* supervised objective,
   every patch token telling whether an object lies under it, its colour, shape and size, and its
   own row and column (:func:`pretrain_attributes`). Then, with the ViT frozen as in BLIP-2, a
   generative pre-training: the Q-Former's query outputs go through a linear ``bridge`` into the
   LLM, which must generate a *frame description* ("a large red circle at column 2 row 5 ...",
   objects left to right; positions because the temporal questions need them) and answer one-turn
   media chats in every form the inference prompts take (:data:`CHAT_FORMS`: an image with a static
   question; 4 frames in order in the video slot with the description, a static or a temporal question;
   a frame showing exactly the clip's sound sources in the audio slot with a question about the sound;
   both), the pictures spliced where the prompt puts the media
   (:func:`train_image_encoder`, then :func:`train_picture_reading`). Unlike BLIP-2 the small LLM trains
   along (from scratch, see 1), and is frozen afterwards. An optional last phase, off in the chain
   (``clip_steps=0``), trains the LLM alone to read clips from the frozen pictures
   (:func:`train_clip_reading`: half temporal video chats, half the usual mix). The first four query outputs are also
   object slots, one per shape (:class:`SlotReadout`). We use no ITC/ITM. The bridge is
   kept (``llama_proj.safetensors``, MiniGPT-4's key names): like MiniGPT-4's ``llama_proj`` in the
   official recipe, it initialises the video projection of VL stage 1.
3. **ImageBind-like pair**: the ImageBind vision trunk gets the same dense pretraining (OpenCLIP's
   encoder arrives pretrained in ImageBind), then is trained image<->text contrastive (CLIP loss,
   learned temperature) against a small text encoder (token embedding + one transformer layer,
   mean-pooled) on the captions of what each frame shows, with a linear read-out of which object
   kinds are in the frame on the embedding; then frozen. The audio encoder is trained audio<->image
   contrastive against the *frozen* vision encoder (ImageBind's recipe: the image is the binding
   modality; the audio encoder's fixed logit scale of 20 is the temperature) on (frame, 2-s audio
   window) pairs where every audible source is an object visible in that frame. Off-screen sounds
   (bell, drum) have no image, so they are never bound: a known limit of binding through images,
   measured by the audio questions about them.

Why the dense pretraining: a linear probe of the frozen features after generative/contrastive
training alone (400/300 steps) read colour and size perfectly but shape and position at chance
(``videollama synthav probe``; docs/synthav.md#diagnosis has each step's measurements).

Frames (8 uniform frames per clip, ``load_video``) and audio (8 two-second 128x204 fbank windows per
clip, ``load_audio``) are decoded once and cached in memory for all three trainings.

    python -m videollama.synthav.stage0 --data DATA --out OUT [--quick]
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
import random
import re
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import Tensor, nn

from ..templates import AUDIO_SENTENCE, AV_MESSAGE, IMAGE_MESSAGE, LLAMA2_DEFAULT_SYSTEM, VIDEO_MESSAGE, VISUAL_SYSTEM
from ..tokenizer import AUDIO_PLACEHOLDER, IMAGE_PLACEHOLDER, train_tiny_tokenizer
from .annotate import (DESCRIBE_VIDEO, WHAT_DO_YOU_HEAR, image_instruction, sample_question, sound_answer, still_caption,
                       video_caption)
from .preset import synthav_config
from .world import COLOURS, SHAPES, SIZES, Scene, WorldConfig

logger = logging.getLogger(__name__)

FRAMES_PER_CLIP = 8  # uniform frames cached per clip (the official 8)
AUDIO_WINDOW_S = 2.0  # ImageBind audio clip length
AUDIO_WINDOWS = 8  # ImageBind clips per video
MIN_OVERLAP_S = 1.0  # a sounding object must be audible this long in a window to pair it
POSITION_BINS = 8  # frame descriptions give column/row in 8 bins
LM_MAX_TOKENS = 256
CAPTION_MAX_TOKENS = 64
IGNORE_INDEX = -100
PROJECTION_FILE = "llama_proj.safetensors"  # the Q-Former -> LLM bridge, in MiniGPT-4's key names
TEXT_ENCODER_WIDTH = 128
INIT_TEMPERATURE = 0.07
TIMESTAMP_EXAMPLE = "The video contains 8 frames sampled at 0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5 seconds. "
TRAIN_SYSTEM = " "  # what the official llama_2 training text uses as the system prompt
SYSTEMS = (TRAIN_SYSTEM, "", VISUAL_SYSTEM, LLAMA2_DEFAULT_SYSTEM)
PREAMBLES = (
    "",
    IMAGE_MESSAGE,
    VIDEO_MESSAGE + TIMESTAMP_EXAMPLE,
    AV_MESSAGE,
    AUDIO_SENTENCE,
    "<Video></Video> " + TIMESTAMP_EXAMPLE,  # the training-data form (instruct datasets)
    "<Image></Image>",
)


@dataclass
class Stage0Settings:
    """Sizes and step counts of the stage-0 trainings (defaults: the full chain)."""

    seed: int = 0
    threads: int = 0  # torch threads while stage 0 trains (0: every core; stage 0 runs alone, with no workers)
    vocab_size: int = 768
    frame_clips: int = 2000  # webvid clips decoded for the frame and audio caches
    lm_batch: int = 24  # text documents per generative step (the LLM's language-modelling loss)
    attribute_steps: int = 1200  # supervised per-patch pretraining of each ViT
    attribute_batch: int = 64
    attribute_lr: float = 1e-3
    vision_steps: int = 700
    vision_batch: int = 24
    qa_batch: int = 12  # media chats per generative step, beside the frame descriptions
    reading_steps: int = 450  # the second generative phase (picture losses + text loss)
    # An optional last phase, off in the chain: the LLM alone reads clips from the frozen pictures. It lifts the
    # stage-0 LLM's temporal answers from ideal frames, but not the trained model's (docs/synthav.md#diagnosis).
    clip_steps: int = 0  # 400 in the measured runs
    clip_batch: int = 32  # media chats per clip-reading step
    clip_lr: float = 3e-4
    temporal_share: float = 0.5  # of the clip-reading chats: temporal video chats; the rest the usual mix
    vision_lr: float = 1e-3
    llm_lr: float = 1e-3  # the LLM, trained from scratch in the generative phases
    bind_vision_steps: int = 500
    bind_batch: int = 64
    bind_lr: float = 1e-3
    audio_steps: int = 300
    audio_batch: int = 64
    audio_lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_fraction: float = 0.05

    @classmethod
    def quick(cls, seed: int = 0) -> "Stage0Settings":
        return cls(seed=seed, vocab_size=600, frame_clips=24, lm_batch=4, attribute_steps=4,
                   attribute_batch=8, vision_steps=4, vision_batch=8, qa_batch=4, reading_steps=4, bind_vision_steps=4,
                   bind_batch=16, audio_steps=4, audio_batch=8)


@dataclass
class Stage0Result:
    model_dir: str
    seconds: dict[str, float] = field(default_factory=dict)
    final_loss: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------ data
@dataclass
class WorldData:
    """What stage 0 reads from a generated SynthAV folder."""

    root: Path
    world: WorldConfig
    scenes: dict[str, Scene]  # media path (relative to root) -> scene
    webvid: list[tuple[str, str]]  # (video path relative to root, caption)
    videochat: list[dict[str, Any]]
    llava: list[dict[str, Any]]
    corpus: list[str]

    @classmethod
    def load(cls, root: str | Path) -> "WorldData":
        root = Path(root)
        meta_path = root / "meta.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"{root}: not a SynthAV folder (no meta.json; run `videollama synthav generate`)")
        meta = json.loads(meta_path.read_text())
        world = WorldConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in meta["world"].items()})
        scenes = {}
        with open(root / "truth.jsonl", encoding="utf-8") as f:
            for line in f:
                rec = json.loads(line)
                scenes[rec["media"]] = Scene.from_dict(rec["scene"])
        webvid = []
        with open(root / meta["paths"]["webvid_csv"], newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                webvid.append((f"{meta['paths']['webvid_videos']}/{row['page_dir']}/{row['videoid']}.mp4", row["name"]))
        videochat = json.loads((root / meta["paths"]["videochat_json"]).read_text())
        llava = json.loads((root / meta["paths"]["llava_json"]).read_text())
        corpus = [line for line in (root / "corpus.txt").read_text(encoding="utf-8").splitlines() if line.strip()]
        return cls(root, world, scenes, webvid, videochat, llava, corpus)


def _bin(value: float, size: int) -> int:
    return int(min(POSITION_BINS - 1, max(0, value / size * POSITION_BINS)))


def frame_description(scene: Scene, frame: int, world: WorldConfig) -> str:
    """What one frame shows, left to right, with coarse positions: 'a large red circle at column 2 row 5.'

    Objects are listed left to right because that order is what one frame shows; the scene's own
    order (of creation) cannot be told from a picture, and with it the LLM learned to read only size
    and count from the image Q-Former (docs/synthav.md#diagnosis).
    """
    placed = sorted(((obj, *obj.centres(world.num_frames)[frame]) for obj in scene.visible_at(frame)),
                    key=lambda item: item[1])
    parts = [f"a {obj.phrase} at column {_bin(x, world.size)} row {_bin(y, world.size)}" for obj, x, y in placed]
    if not parts:
        return "an empty grey background."
    return (parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]) + "."


def _strip_media(text: str) -> str:
    return text.replace(IMAGE_PLACEHOLDER, "").replace(AUDIO_PLACEHOLDER, "").replace("<image>\n", "")


def render_chat(system: str, turns: list[tuple[str, str]], preamble: str) -> str:
    """llama_2 chat text (as the inference template renders it), media placeholders removed."""
    out = ""
    for i, (user, answer) in enumerate(turns):
        if i == 0:
            user = f"<<SYS>>\n{system}\n<</SYS>>\n\n{_strip_media(preamble) + ' ' if preamble else ''}{user}"
        out += ("" if i == 0 else "<s>") + f"[INST] {user} [/INST] {answer} </s>"
    return out


def lm_texts(data: WorldData, frame_descriptions: list[str], rng: random.Random) -> list[str]:
    """The LM's training documents: captions, frame descriptions and rendered conversations."""
    docs = list(data.corpus) + list(frame_descriptions)
    for record in data.videochat:
        turns = [(t["q"], t["a"]) for t in record["QA"]]
        docs.append(render_chat(rng.choice(SYSTEMS), turns, rng.choice(PREAMBLES)))
    for record in data.llava:
        conv = record["conversations"]
        turns = [(_strip_media(conv[i]["value"]), conv[i + 1]["value"]) for i in range(0, len(conv) - 1, 2)]
        docs.append(render_chat(rng.choice(SYSTEMS), turns, rng.choice(PREAMBLES)))
    # Single-question chats: the form every evaluation question takes.
    for record in data.videochat:
        q = rng.choice(record["QA"])
        docs.append(render_chat(rng.choice(SYSTEMS), [(q["q"], q["a"])], rng.choice(PREAMBLES)))
    return docs


def tokenizer_corpus(data: WorldData, frame_descriptions: list[str]) -> str:
    prompts = [s for s in SYSTEMS if s.strip()] + [_strip_media(p) for p in PREAMBLES if p]
    prompts += ["[INST] <<SYS>> <</SYS>> [/INST] </s>"] * 5
    return "\n".join(data.corpus + frame_descriptions[:2000] + prompts * 20)


@dataclass
class MediaCache:
    """Decoded frames and fbank windows of the first ``n`` webvid clips."""

    frames: Tensor  # (N, 8, 3, S, S) uint8
    frame_index: list[list[int]]  # per clip, the source frame numbers of the 8 cached frames
    audio: Tensor | None  # (N, 8, 1, 128, 204) float16, or None when not decoded
    scenes: list[Scene]
    _patch_labels: dict[int, Tensor] = field(default_factory=dict, repr=False)

    def patch_labels(self, world: WorldConfig, grid: int) -> Tensor:
        """(N, 8, grid*grid, 3) :func:`patch_labels` of every cached frame, computed once per grid."""
        if grid not in self._patch_labels:
            self._patch_labels[grid] = torch.stack([torch.stack([patch_labels(scene, i, world, grid) for i in index])
                                                    for scene, index in zip(self.scenes, self.frame_index)])
        return self._patch_labels[grid]


def decode_media(data: WorldData, count: int, image_size: int, with_audio: bool = True) -> MediaCache:
    from ..media.video import load_video

    if with_audio:
        from ..media import load_audio

    count = min(count, len(data.webvid))
    frames, index, audio, scenes = [], [], [], []
    for rel, _ in data.webvid[:count]:
        path = data.root / rel
        clip = load_video(path, FRAMES_PER_CLIP, image_size=image_size, normalize=False)  # (8, 3, S, S) in [0, 1]
        frames.append((clip.frames * 255).round().to(torch.uint8))
        index.append([int(i) for i in clip.indices])
        if with_audio:
            audio.append(load_audio(path).to(torch.float16))  # (8, 1, 128, 204)
        scenes.append(data.scenes[rel])
    return MediaCache(torch.stack(frames), index, torch.stack(audio) if with_audio else None, scenes)


def _normalize(frames_uint8: Tensor) -> Tensor:
    from ..media.transforms import normalize

    return normalize(frames_uint8.float() / 255.0)


# ------------------------------------------------------------------------------------------------ training utils
def _optimizer(groups: list[dict], lr: float, weight_decay: float, steps: int, warmup_fraction: float,
               cosine: bool = True):
    """AdamW (trainable parameters only; a group may set its own "lr") + warmup, then cosine or constant."""
    groups = [{**g, "params": [p for p in g["params"] if p.requires_grad]} for g in groups]
    opt = torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, betas=(0.9, 0.98))
    warmup = max(1, int(steps * warmup_fraction))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if not cosine:
            return 1.0
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def _loop(name: str, steps: int, step_fn, params, lr: float, settings: Stage0Settings, log_every: int = 50,
          clip_norm: float | None = 1.0, cosine: bool = True) -> float:
    """Run ``steps`` optimisation steps of ``step_fn(step) -> loss``; returns the mean loss of the last 20."""
    params = list(params)
    groups = params if params and isinstance(params[0], dict) else [{"params": params}]
    flat = [p for g in groups for p in g["params"]]
    opt, sched = _optimizer(groups, lr, settings.weight_decay, steps, settings.warmup_fraction, cosine)
    recent: list[float] = []
    started = time.perf_counter()
    for step in range(steps):
        loss = step_fn(step)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"stage 0 {name}: loss became {loss.item()} at step {step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(flat, clip_norm)
        opt.step()
        sched.step()
        recent = (recent + [loss.item()])[-20:]
        if step % log_every == 0 or step == steps - 1:
            logger.info("stage0 %s step %d/%d loss %.4f (%.0f s)", name, step + 1, steps, recent[-1],
                        time.perf_counter() - started)
    return float(np.mean(recent)) if recent else float("nan")


def _pad(seqs: list[list[int]], pad: int) -> tuple[Tensor, Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    return ids, mask


# ------------------------------------------------------------------------------------------------ 1. LLM
def lm_batches(tokenizer, docs: list[str], batch_size: int) -> list[list[list[int]]]:
    """Token-id batches of the LM documents, grouped by length (little padding)."""
    encoded = [[tokenizer.bos_token_id] + tokenizer(d, add_special_tokens=False)["input_ids"][: LM_MAX_TOKENS - 2]
               + [tokenizer.eos_token_id] for d in docs]
    encoded.sort(key=len)
    return [encoded[i: i + batch_size] for i in range(0, len(encoded), batch_size)]


def lm_loss(llm, batch: list[list[int]], pad: int) -> Tensor:
    """The LLM's language-modelling loss on one batch of token-id lists (padding ignored)."""
    ids, mask = _pad(batch, pad)
    return llm(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, IGNORE_INDEX)).loss


# ------------------------------------------------------------------------------------------------ 2. vision + Q-Former
ATTRIBUTES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("colour", tuple(COLOURS)), ("shape", SHAPES), ("size", tuple(SIZES)))
"""What the image encoder's patch tokens are pretrained to tell (class 0 of each is background)."""
PHRASES: tuple[str, ...] = tuple(f"{z} {c} {s}" for z in SIZES for c in COLOURS for s in SHAPES)
"""Every object kind; the ImageBind vision embedding is pretrained to tell which are in a frame."""


def patch_labels(scene: Scene, frame: int, world: WorldConfig, grid: int) -> Tensor:
    """(grid*grid, 3) colour/shape/size class (1-based, 0 = background) of the object over each patch centre.

    A patch belongs to the nearest visible object whose bounding circle holds the patch centre;
    patches are in row-major order, as the ViT's patch embedding flattens them.
    """
    labels = torch.zeros(grid * grid, len(ATTRIBUTES), dtype=torch.long)
    objects = scene.visible_at(frame)
    if not objects:
        return labels
    centre = (np.arange(grid) + 0.5) * world.size / grid
    px, py = np.meshgrid(centre, centre)  # (grid, grid): x along columns, y along rows
    distance = np.stack([np.hypot(px - x, py - y) for x, y in (o.centres(world.num_frames)[frame] for o in objects)])
    inside = distance <= np.array([o.bound(world) for o in objects])[:, None, None]  # (O, grid, grid)
    nearest = np.where(inside, distance, np.inf).argmin(0).reshape(-1)  # (grid*grid,)
    covered = inside.any(0).reshape(-1)
    for i, obj in enumerate(objects):
        rows = torch.from_numpy(np.flatnonzero(covered & (nearest == i)))
        for k, (attr, values) in enumerate(ATTRIBUTES):
            labels[rows, k] = values.index(getattr(obj, attr)) + 1
    return labels


def presence_labels(scene: Scene, frame: int) -> Tensor:
    """(len(PHRASES),) 1.0 for each object kind visible in ``frame``."""
    target = torch.zeros(len(PHRASES))
    for obj in scene.visible_at(frame):
        target[PHRASES.index(obj.phrase)] = 1.0
    return target


SLOT_ATTRIBUTES: tuple[tuple[str, int], ...] = (("colour", len(COLOURS)), ("size", len(SIZES)),
                                                ("column", POSITION_BINS), ("row", POSITION_BINS))
"""What a shape slot tells about its object, and each attribute's number of classes."""


def slot_targets(scene: Scene, frame: int, world: WorldConfig) -> tuple[Tensor, Tensor]:
    """Per shape (the slots): (S,) 1.0 where an object of that shape is visible in ``frame``, and (S, 4) its
    colour, size, column and row classes (:data:`SLOT_ATTRIBUTES`; 0 where absent).

    Shapes are distinct within a scene, so each shape names at most one object: a slot per shape holds one
    object with its attributes bound together.
    """
    present = torch.zeros(len(SHAPES))
    attributes = torch.zeros(len(SHAPES), len(SLOT_ATTRIBUTES), dtype=torch.long)
    for obj in scene.visible_at(frame):
        x, y = obj.centres(world.num_frames)[frame]
        k = SHAPES.index(obj.shape)
        present[k] = 1.0
        attributes[k] = torch.tensor([list(COLOURS).index(obj.colour), list(SIZES).index(obj.size), _bin(x, world.size),
                                      _bin(y, world.size)])
    return present, attributes


class SlotReadout(nn.Module):
    """Linear read-out of the first ``len(SHAPES)`` query outputs as object slots, one per shape.

    Query k must tell whether an object of shape k is in the frame and, if so, its colour, size, column
    and row (:func:`slot_targets`). Discarded after stage 0; what stays is a Q-Former whose outputs hold
    one object per token with its attributes bound, which a small LLM reads in one attention hop
    (docs/synthav.md#diagnosis has the measurements that led here).
    """

    def __init__(self, width: int):
        super().__init__()
        self.classes = [n for _, n in SLOT_ATTRIBUTES]
        self.heads = nn.ModuleList(nn.Linear(width, 1 + sum(self.classes)) for _ in SHAPES)

    def loss(self, query_out: Tensor, present: Tensor, attributes: Tensor) -> Tensor:
        """query_out (B, Q, W); present (B, S); attributes (B, S, A): presence BCE + attribute CE where present."""
        read = torch.stack([head(query_out[:, k]) for k, head in enumerate(self.heads)], 1)  # (B, S, 1 + sum(classes))
        loss = F.binary_cross_entropy_with_logits(read[..., 0], present)
        mask = present > 0
        logits = read[..., 1:][mask].split(self.classes, dim=-1)  # per attribute (N_present, classes)
        for a, attribute_logits in enumerate(logits):
            loss = loss + F.cross_entropy(attribute_logits, attributes[..., a][mask])
        return loss


def pretrain_attributes(name: str, encoder: nn.Module, patch_tokens, width: int, cache: MediaCache,
                        world: WorldConfig, settings: Stage0Settings, rng: random.Random, grid: int) -> float:
    """Supervised dense pretraining of a ViT: each patch token tells whether an object is under it and,
    if so, its colour, shape and size, and every patch token tells its own row and column (linear
    heads, discarded afterwards).

    The attribute losses count object patches only (most patches are background), so the shape, the
    slowest attribute to learn, gets the gradient. The row/column heads keep the position embedding's
    information in the output tokens: without them no feature downstream told an object's column
    better than chance (docs/synthav.md#diagnosis). Our stand-in for the pretraining EVA's ViT and
    OpenCLIP's ViT bring into BLIP-2 and ImageBind. ``patch_tokens(images) -> (B, grid*grid, width)``.
    """
    encoder.requires_grad_(True).train()
    labels = cache.patch_labels(world, grid)  # (N, 8, P, 3)
    heads = nn.ModuleList(nn.Linear(width, len(values)) for _, values in ATTRIBUTES)
    objectness = nn.Linear(width, 1)
    where = nn.Linear(width, 2 * grid)  # the patch's own row and column
    patch_rc = torch.stack(torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij"), -1).flatten(0, 1)  # (P, 2)
    n_clips = cache.frames.shape[0]

    def step(_: int) -> Tensor:
        picks = [(rng.randrange(n_clips), rng.randrange(FRAMES_PER_CLIP)) for _ in range(settings.attribute_batch)]
        images = _normalize(torch.stack([cache.frames[c, f] for c, f in picks]))  # (B, 3, S, S)
        target = torch.stack([labels[c, f] for c, f in picks]).flatten(0, 1)  # (B*P, 3), 0 = background
        tokens = patch_tokens(images).flatten(0, 1)  # (B*P, W)
        on = target[:, 0] > 0
        loss = F.binary_cross_entropy_with_logits(objectness(tokens)[:, 0], on.float())
        rc = patch_rc.repeat(len(picks), 1)  # (B*P, 2) row, column
        rc_logits = where(tokens).view(-1, 2, grid)  # (B*P, 2, grid)
        loss = loss + F.cross_entropy(rc_logits.flatten(0, 1), rc.flatten())
        if on.any():
            loss = loss + sum(F.cross_entropy(head(tokens[on]), target[on, k] - 1) for k, head in enumerate(heads))
        return loss

    params = [*encoder.parameters(), *heads.parameters(), *objectness.parameters(), *where.parameters()]
    loss = _loop(name, settings.attribute_steps, step, params, settings.attribute_lr, settings)
    encoder.requires_grad_(False).eval()
    return loss


def pretrain_image_encoder(model, cache: MediaCache, world: WorldConfig, settings: Stage0Settings,
                           rng: random.Random) -> float:
    """:func:`pretrain_attributes` for BLIP-2's ViT (``vision_model``); frozen afterwards, as in BLIP-2."""
    cfg = model.config.vision
    vit = model.vision_model

    def patch_tokens(images: Tensor) -> Tensor:
        return vit(pixel_values=images).last_hidden_state[:, 1:]  # (B, P, W): CLS dropped

    return pretrain_attributes("image-attributes", vit, patch_tokens, cfg.hidden_size, cache, world, settings, rng,
                               cfg.image_size // cfg.patch_size)


def pretrain_imagebind_vision(model, cache: MediaCache, world: WorldConfig, settings: Stage0Settings,
                              rng: random.Random) -> float:
    """:func:`pretrain_attributes` for the ImageBind-like vision encoder's trunk (before its contrastive stage)."""
    cfg = model.config.imagebind
    encoder = model.imagebind_vision

    def patch_tokens(images: Tensor) -> Tensor:
        return encoder.tokens(images)[:, 1:]  # (B, P, W): CLS dropped

    return pretrain_attributes("imagebind-attributes", encoder, patch_tokens, cfg.vision_width, cache, world,
                               settings, rng, cfg.image_size // cfg.patch_size)


def _caption_batch(tokenizer, captions: list[str]) -> tuple[Tensor, Tensor]:
    seqs = [[tokenizer.bos_token_id] + tokenizer(c, add_special_tokens=False)["input_ids"][:CAPTION_MAX_TOKENS]
            + [tokenizer.eos_token_id] for c in captions]
    return _pad(seqs, tokenizer.pad_token_id or 0)


PICTURE_PREAMBLES = (IMAGE_MESSAGE, VIDEO_MESSAGE + TIMESTAMP_EXAMPLE)
"""Where a one-picture chat shows its picture: as the inference prompts put an image or a video."""
VIDEO_FRAMES = (0, 2, 5, 7)
"""Cached frames (of 8 uniform ones) a video-form chat shows, in order: 4 x 8 queries = the 32 video tokens."""
_SLOT = re.compile(f"{re.escape(IMAGE_PLACEHOLDER)}|{re.escape(AUDIO_PLACEHOLDER)}")


@dataclass(frozen=True)
class ChatForm:
    """How a stage-0 media chat looks: the inference prompt's upload message and what fills its slots.

    ``slots`` gives, per placeholder of ``preamble`` in order, what fills it: ``"frame"`` (one frame's
    query outputs) or ``"clip"`` (those of :data:`VIDEO_FRAMES`, in order); ``system`` is the system
    prompt inference uses with these media (``templates.system_for``).
    """

    name: str
    preamble: str
    slots: tuple[str, ...]
    system: str
    weight: float


CHAT_FORMS: tuple[ChatForm, ...] = (
    ChatForm("image", IMAGE_MESSAGE, ("frame",), VISUAL_SYSTEM, 0.4),
    ChatForm("video", VIDEO_MESSAGE + TIMESTAMP_EXAMPLE, ("clip",), VISUAL_SYSTEM, 0.35),
    ChatForm("audio", AUDIO_SENTENCE, ("frame",), LLAMA2_DEFAULT_SYSTEM, 0.125),
    ChatForm("audio_video", AV_MESSAGE, ("frame", "clip"), "", 0.125),  # the sound's slot comes first
)
"""The media chats of the generative phases, one form per inference prompt. The small LLM stands in for
a chat LLM that answers whatever is asked about whatever fills the media slots; with image chats alone it
answered every question with media in the prompt with a static word ("Is there a star sound?" -> "one";
docs/synthav.md#diagnosis). The audio slot holds a frame's picture: stage 0 never shows the LLM audio.
Each chat is answerable from its slots (:meth:`PictureLosses.question`): with questions its media cannot
answer, the LLM learned to answer from the question alone."""


def picture_chat(tokenizer, system: str, preamble: str, question: str, answer: str) -> tuple[list[list[int]], int]:
    """Token ids of a one-turn llama_2 chat around media: (the text pieces around the slots, answer length).

    ``preamble`` is an upload message with one or two placeholders; the media's soft tokens go
    between the pieces, where the inference prompt puts them. The answer (with EOS) ends the last piece.
    """
    texts = _SLOT.split(preamble)
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    pieces = [[tokenizer.bos_token_id] + encode(f"[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{texts[0]}")]
    pieces += [encode(text) for text in texts[1:-1]]
    answer_ids = encode(f" {answer}") + [tokenizer.eos_token_id]
    pieces.append(encode(f"{texts[-1]}{question} [/INST]") + answer_ids)
    return pieces, len(answer_ids)


def splice_prefix(embed: nn.Embedding, parts: list[tuple[list[list[int]], int]], pictures: list[list[Tensor]],
                  ) -> tuple[Tensor, Tensor, Tensor]:
    """Batch of media chats: (inputs_embeds (B, L, D), attention_mask (B, L), labels (B, L)).

    ``parts`` holds :func:`picture_chat`'s (pieces, answer length) per row and ``pictures`` per row the
    (Q_k, D) soft tokens to splice between consecutive pieces; only the answer tokens carry labels.
    Right-padded.
    """
    rows, labels = [], []
    for (pieces, answer_len), slots in zip(parts, pictures):
        if len(slots) != len(pieces) - 1:
            raise ValueError(f"a chat with {len(pieces) - 1} media slots got {len(slots)} pictures")
        row = [embed(torch.tensor(pieces[0]))]
        for picture, piece in zip(slots, pieces[1:]):
            row += [picture, embed(torch.tensor(piece))]
        rows.append(torch.cat(row))  # (L_i, D)
        label = torch.full((len(rows[-1]),), IGNORE_INDEX, dtype=torch.long)
        label[-answer_len:] = torch.tensor(pieces[-1][-answer_len:])
        labels.append(label)
    lengths = torch.tensor([len(r) for r in rows])
    mask = (torch.arange(int(lengths.max()))[None] < lengths[:, None]).long()  # (B, L)
    inputs = nn.utils.rnn.pad_sequence(rows, batch_first=True)  # (B, L, D)
    return inputs, mask, nn.utils.rnn.pad_sequence(labels, batch_first=True, padding_value=IGNORE_INDEX)


def frame_queries(model, images: Tensor) -> Tensor:
    """The image Q-Former's query outputs (N, Q, W) for normalised frames (N, 3, S, S); the ViT stays frozen."""
    with torch.no_grad():
        tokens = model.vision_model(pixel_values=images).last_hidden_state  # (N, P + 1, W)
    queries = model.image_query_tokens.expand(images.shape[0], -1, -1)
    return model.image_qformer(query_embeds=queries, encoder_hidden_states=tokens).last_hidden_state


def sound_frames(cache: MediaCache) -> list[tuple[int, int]]:
    """(clip, cached frame) pairs whose frame shows exactly the clip's sound sources.

    The clip has no off-screen sound and at least one sounding object, and the frame shows every sounding
    object and no silent one: a picture that answers the clip's audio questions ("Is there a star sound?"
    is "is a star shown"), the stand-in for the sound in stage 0's audio-slot chats.
    """
    pairs = []
    for c, scene in enumerate(cache.scenes):
        sounding = {id(o) for o in scene.objects if o.sounding}
        if scene.offscreen or not sounding:
            continue
        pairs += [(c, f) for f, frame in enumerate(cache.frame_index[c])
                  if {id(o) for o in scene.visible_at(frame)} == sounding]
    return pairs


@dataclass
class MediaChat:
    """One chat of a generative step: its token pieces, answer length and the (clip, frame) of each slot."""

    pieces: list[list[int]]
    answer_len: int
    slots: list[list[tuple[int, int]]]


@dataclass
class ChatDraw:
    """One sampled media chat, before tokenisation: its form, clip ``c``, cached frame ``f``, text and system."""

    form: ChatForm
    c: int
    f: int
    question: str
    answer: str
    system: str


class ChatSampler:
    """Draws the media chats of stage 0 (:data:`CHAT_FORMS`), each answerable from what fills its slots.

    :class:`PictureLosses` tokenises each draw and fills its slots with the pictures.
    """

    def __init__(self, cache: MediaCache, world: WorldConfig, rng: random.Random, np_rng: np.random.Generator):
        self.cache, self.world, self.rng, self.np_rng = cache, world, rng, np_rng
        self.sound_frames = sound_frames(cache)
        if not self.sound_frames:
            logger.warning("no cached frame shows exactly its clip's sound sources; audio-slot chats use any frame")

    def question(self, form: ChatForm, c: int, f: int) -> tuple[str, str]:
        """A question of the form's kind about clip ``c`` (frame ``f`` for an image) and its answer.

        Every question is answerable from what fills the chat's slots: a still answers static questions,
        4 frames in order the description, static and temporal ones (not what is heard), and the audio
        slot's frame shows exactly the clip's sound sources (:func:`sound_frames`).
        """
        scene, world, np_rng = self.cache.scenes[c], self.world, self.np_rng
        if form.name == "image":  # the still's description or a static question about it
            conversation = image_instruction(scene, world, np_rng, self.cache.frame_index[c][f])
            k = self.rng.randrange(len(conversation) // 2)
            return conversation[2 * k]["value"].replace("<image>\n", ""), conversation[2 * k + 1]["value"]
        if form.name == "video":  # what the frames show: the description, a static or a temporal question
            family = self.rng.choice(("description", "static", "temporal"))
            item = None if family == "description" else sample_question(scene, world, np_rng, family)
            return (DESCRIBE_VIDEO, video_caption(scene)) if item is None else (item.question, item.answer)
        family = "audio" if form.name == "audio" else "audio_visual"
        item = sample_question(scene, world, np_rng, family)
        if item is None or (form.name == "audio" and self.rng.random() < 0.25):
            return WHAT_DO_YOU_HEAR, sound_answer(scene)
        return item.question, item.answer

    def draw(self) -> ChatDraw:
        form = self.rng.choices(CHAT_FORMS, weights=[f.weight for f in CHAT_FORMS])[0]
        if "audio" in form.name and self.sound_frames:  # the audio slot's frame shows what is heard
            c, f = self.rng.choice(self.sound_frames)
        else:
            c, f = self.rng.randrange(self.cache.frames.shape[0]), self.rng.randrange(FRAMES_PER_CLIP)
        question, answer = self.question(form, c, f)
        system = form.system if self.rng.random() < 0.5 else self.rng.choice(SYSTEMS)  # inference's or training's
        return ChatDraw(form, c, f, question, answer, system)


class PictureLosses:
    """One step's LM losses of the generative phases: frame descriptions after the picture (BLIP-2's
    captioning form) and one-turn media chats (:data:`CHAT_FORMS`) with the pictures spliced in where the
    inference prompt puts the media.
    """

    def __init__(self, model, tokenizer, bridge: nn.Linear, cache: MediaCache, world: WorldConfig,
                 settings: Stage0Settings, rng: random.Random):
        self.model, self.tokenizer, self.bridge, self.cache, self.world = model, tokenizer, bridge, cache, world
        self.settings, self.rng = settings, rng
        self.sampler = ChatSampler(cache, world, rng, np.random.default_rng(settings.seed))
        self.embed = model.language_model.get_input_embeddings()

    def chat(self) -> MediaChat:
        draw = self.sampler.draw()
        pieces, answer_len = picture_chat(self.tokenizer, draw.system, draw.form.preamble, draw.question, draw.answer)
        c, f = draw.c, draw.f
        slots = [[(c, f)] if slot == "frame" else [(c, i) for i in VIDEO_FRAMES] for slot in draw.form.slots]
        return MediaChat(pieces, answer_len, slots)

    def step(self) -> tuple[list[tuple[int, int]], Tensor, Tensor, Tensor]:
        """(caption picks, their query outputs (B, Q, W), caption loss, chat loss) of a fresh random batch."""
        model, settings, cache, rng = self.model, self.settings, self.cache, self.rng
        n_clips = cache.frames.shape[0]
        picks = [(rng.randrange(n_clips), rng.randrange(FRAMES_PER_CLIP)) for _ in range(settings.vision_batch)]
        chats = [self.chat() for _ in range(settings.qa_batch)]
        frames = picks + [cf for chat in chats for slot in chat.slots for cf in slot]
        images = _normalize(torch.stack([cache.frames[c, f] for c, f in frames]))  # (B + F_chat, 3, S, S)
        query_out = frame_queries(model, images)  # (B + F_chat, Q, W)
        pictures = self.bridge(query_out)  # (B + F_chat, Q, D_llm)
        llm = model.language_model
        qa_loss = torch.zeros(())
        if chats:
            per_slot = iter(pictures[len(picks):].split([len(slot) for chat in chats for slot in chat.slots]))
            slot_pictures = [[next(per_slot).flatten(0, 1) for _ in chat.slots] for chat in chats]  # (n_frames * Q, D_llm) each
            # Two length buckets (the long default system prompt would pad every row to its length),
            # their mean losses weighted by answer tokens: the mean over the whole batch's answer tokens.
            order = sorted(range(len(chats)), key=lambda i: sum(map(len, chats[i].pieces)))
            answers = sum(ch.answer_len for ch in chats)
            for bucket in (order[: len(order) // 2], order[len(order) // 2:]):
                if not bucket:
                    continue
                qa_inputs, qa_mask, qa_labels = splice_prefix(
                    self.embed, [(chats[i].pieces, chats[i].answer_len) for i in bucket], [slot_pictures[i] for i in bucket])
                weight = sum(chats[i].answer_len for i in bucket) / answers
                qa_loss = qa_loss + weight * llm(inputs_embeds=qa_inputs, attention_mask=qa_mask, labels=qa_labels).loss
        query_out, pictures = query_out[: len(picks)], pictures[: len(picks)]
        captions = [frame_description(cache.scenes[c], cache.frame_index[c][f], self.world) for c, f in picks]
        prefix = pictures  # (B, Q, D_llm): the caption's picture goes first, as in BLIP-2
        ids, mask = _caption_batch(self.tokenizer, captions)
        inputs = torch.cat([prefix, self.embed(ids)], dim=1)  # (B, Q + L, D_llm)
        attention = torch.cat([torch.ones(prefix.shape[:2], dtype=torch.long), mask], dim=1)
        labels = torch.cat([torch.full(prefix.shape[:2], IGNORE_INDEX), ids.masked_fill(mask == 0, IGNORE_INDEX)], 1)
        labels[:, prefix.shape[1]] = IGNORE_INDEX  # BOS is given, not predicted
        caption_loss = llm(inputs_embeds=inputs, attention_mask=attention, labels=labels).loss
        return picks, query_out, caption_loss, qa_loss


def _train_generative_parts(model, bridge: nn.Linear, trainable: bool) -> None:
    """(Un)freeze what both generative phases train: the image Q-Former, its query tokens, the bridge, the LLM."""
    for module in (model.image_qformer, model.language_model):
        module.requires_grad_(trainable).train(trainable)
    model.image_query_tokens.requires_grad_(trainable)
    bridge.requires_grad_(trainable)


def train_image_encoder(model, tokenizer, cache: MediaCache, world: WorldConfig, settings: Stage0Settings,
                        rng: random.Random, lm_batches: list[list[list[int]]]) -> tuple[float, nn.Linear]:
    """BLIP-2-like generative pre-training of the image Q-Former through the LLM, the ViT frozen.

    Unlike BLIP-2, the stage-0 LLM is trained here too, from random weights (at ``llm_lr``, with its
    language-modelling loss on ``lm_batches`` alongside, which is where it learns its language): a
    4-layer LLM pretrained on text alone did not learn to read soft prefix tokens, frozen or trained
    along (docs/synthav.md#diagnosis), where the 7B LLMs of the real recipe do. The LLM is frozen again
    afterwards, as in stages 1-2.
    Beside the frame descriptions, each step has ``qa_batch`` one-turn media chats (:data:`CHAT_FORMS`)
    with the pictures spliced in where the inference prompt puts the media, so the LLM learns to answer
    whatever is asked from the soft tokens: what the 7B chat LLMs bring to the real recipe, and
    MiniGPT-4's image instruction tuning.
    The first four query outputs must also be object slots, one per shape, each telling its object's
    colour, size and position (:class:`SlotReadout`; discarded afterwards): at random init the queries
    attend to all 50 tokens alike, so only "mass" features (size, count) reach the LLM; the read-out's
    direct gradient makes them attend to the objects, one object per token.

    Returns the last loss and the trained Q-Former -> LLM projection (``bridge``): MiniGPT-4's
    ``llama_proj`` in the real recipe, which initialises the video projection of VL stage 1.
    """
    llm = model.language_model
    bridge = nn.Linear(model.config.image_qformer.hidden_size, model.config.llm_hidden_size)
    model.vision_model.requires_grad_(False).eval()  # BLIP-2 trains its Q-Former on a frozen image encoder
    _train_generative_parts(model, bridge, True)
    readout = SlotReadout(model.config.image_qformer.hidden_size)  # queries 0-3: one object slot per shape
    params = list(model.image_qformer.parameters()) + [model.image_query_tokens] + list(bridge.parameters())
    params += list(readout.parameters())
    groups = [{"params": params, "lr": settings.vision_lr}, {"params": list(llm.parameters()), "lr": settings.llm_lr}]
    pad = tokenizer.pad_token_id or 0
    picture_losses = PictureLosses(model, tokenizer, bridge, cache, world, settings, rng)

    def step(_: int) -> Tensor:
        picks, query_out, caption_loss, qa_loss = picture_losses.step()
        present, attributes = zip(*(slot_targets(cache.scenes[c], cache.frame_index[c][f], world) for c, f in picks))
        readout_loss = readout.loss(query_out, torch.stack(present), torch.stack(attributes))
        text_loss = lm_loss(llm, rng.choice(lm_batches), pad)
        return caption_loss + qa_loss + text_loss + readout_loss

    loss = _loop("image-encoder", settings.vision_steps, step, groups, settings.vision_lr, settings)
    _train_generative_parts(model, bridge, False)
    return loss, bridge


def train_picture_reading(model, tokenizer, bridge: nn.Linear, cache: MediaCache, world: WorldConfig,
                          settings: Stage0Settings, rng: random.Random, lm_batches: list[list[list[int]]]) -> float:
    """Second generative phase: the picture losses and the LLM's own text loss, no read-out, at a constant rate.

    Measured (docs/synthav.md#diagnosis): after :func:`train_image_encoder` the LLM reads size, count
    and position from the picture but not colour or shape, and 1,000 more steps of that phase with
    its read-out loss, gradient clipping and cosine decay did not change that; 1,000 steps of the
    picture losses alone, unclipped at a constant rate, began to. Without its text loss the LLM
    forgets its language (text loss 1.05 -> 3.15), so that stays. Trains the Q-Former, its query
    tokens, the bridge (in place) and the LLM, as the first phase does.
    """
    llm = model.language_model
    _train_generative_parts(model, bridge, True)
    params = list(model.image_qformer.parameters()) + [model.image_query_tokens] + list(bridge.parameters())
    groups = [{"params": params, "lr": settings.vision_lr}, {"params": list(llm.parameters()), "lr": settings.llm_lr}]
    picture_losses = PictureLosses(model, tokenizer, bridge, cache, world, settings, rng)
    pad = tokenizer.pad_token_id or 0

    def step(_: int) -> Tensor:
        _, _, caption_loss, qa_loss = picture_losses.step()
        text_loss = lm_loss(llm, rng.choice(lm_batches), pad)
        return caption_loss + qa_loss + text_loss

    loss = _loop("picture-reading", settings.reading_steps, step, groups, settings.vision_lr, settings,
                 clip_norm=None, cosine=False)
    _train_generative_parts(model, bridge, False)
    return loss


def clip_pictures(model, bridge: nn.Linear, cache: MediaCache, chunk: int = 64) -> Tensor:
    """The frozen pictures of every cached frame, as the LLM sees them: (N, 8, Q, D_llm), computed once."""
    out = []
    with torch.no_grad():
        for start in range(0, cache.frames.shape[0], chunk):
            frames = cache.frames[start: start + chunk]  # (n, 8, 3, S, S) uint8
            queries = frame_queries(model, _normalize(frames.flatten(0, 1)))  # (n * 8, Q, W)
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
            for _ in range(100):  # most clips have a temporal question; a static scene may not
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
                       settings: Stage0Settings) -> float:
    """Optional last stage-0 phase (``clip_steps`` > 0): the LLM alone learns to read clips (frame order) from
    the frozen pictures.

    After the two generative phases the LLM answers temporal questions at chance even from 4 ideal frames
    in order, and the same with the frames reversed: it saw about 1,600 temporal chats, where a fresh LLM
    given ideal object tokens needs some 13,000 (docs/synthav.md#where-the-audio-and-temporal-claims-break-stop-14).
    With the image Q-Former and bridge frozen, their pictures are computed once, so a chat costs only the
    LLM's step: ``clip_steps`` x ``clip_batch`` chats, ``temporal_share`` of them temporal and the rest the
    generative phases' mix (without it the LLM forgets how to answer from the audio slot), constant rate.
    Its own random streams (seeded from ``settings.seed``) keep the earlier phases' draws unchanged.
    Measured over three seeds: the stage-0 LLM's temporal answers from ideal frames rose from chance to
    0.40-0.49 (chance again with the frames reversed), but the trained model's did not move, so the chain
    leaves it off until the vision branch passes the order on.
    """
    llm = model.language_model
    rng, np_rng = random.Random(f"clip-reading-{settings.seed}"), np.random.default_rng([settings.seed, 1])
    chats = ClipChats(tokenizer, clip_pictures(model, bridge, cache), cache, world, settings.temporal_share,
                      rng, np_rng)
    embed = llm.get_input_embeddings()
    llm.requires_grad_(True).train()

    def step(_: int) -> Tensor:
        drawn = [chats.draw() for _ in range(settings.clip_batch)]
        inputs, mask, labels = splice_prefix(embed, [(p, n) for p, n, _ in drawn], [slots for _, _, slots in drawn])
        return llm(inputs_embeds=inputs, attention_mask=mask, labels=labels).loss

    loss = _loop("clip-reading", settings.clip_steps, step, list(llm.parameters()), settings.clip_lr, settings,
                 clip_norm=None, cosine=False)
    llm.requires_grad_(False).eval()
    return loss


# ------------------------------------------------------------------------------------------------ 3. ImageBind-like pair
class TextEncoder(nn.Module):
    """Small text tower for the image<->text contrastive stage (discarded afterwards)."""

    def __init__(self, vocab_size: int, embed_dim: int, width: int = TEXT_ENCODER_WIDTH):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, width)
        self.pos = nn.Parameter(torch.randn(1, CAPTION_MAX_TOKENS + 2, width) * 0.02)
        self.layer = nn.TransformerEncoderLayer(width, nhead=4, dim_feedforward=2 * width, batch_first=True,
                                                dropout=0.0)
        self.head = nn.Linear(width, embed_dim)

    def forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        x = self.embed(ids) + self.pos[:, : ids.shape[1]]  # (B, L, W)
        x = self.layer(x, src_key_padding_mask=mask == 0)
        pooled = (x * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)  # (B, W)
        return F.normalize(self.head(pooled), dim=-1)


def _clip_loss(a: Tensor, b: Tensor, scale: Tensor | float) -> Tensor:
    logits = scale * a @ b.t()  # (B, B)
    target = torch.arange(a.shape[0])
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2


def train_imagebind_vision(model, tokenizer, cache: MediaCache, settings: Stage0Settings, rng: random.Random) -> float:
    encoder = model.imagebind_vision.requires_grad_(True).train()
    text = TextEncoder(len(tokenizer), model.config.imagebind.embed_dim)
    log_scale = nn.Parameter(torch.tensor(math.log(1 / INIT_TEMPERATURE)))
    n_clips = cache.frames.shape[0]

    presence = nn.Linear(model.config.imagebind.embed_dim, len(PHRASES))

    def step(_: int) -> Tensor:
        picks = [(rng.randrange(n_clips), rng.randrange(FRAMES_PER_CLIP)) for _ in range(settings.bind_batch)]
        images = _normalize(torch.stack([cache.frames[c, f] for c, f in picks]))
        captions = [still_caption(cache.scenes[c], cache.frame_index[c][f]) for c, f in picks]
        kinds = torch.stack([presence_labels(cache.scenes[c], cache.frame_index[c][f]) for c, f in picks])  # (B, K)
        ids, mask = _caption_batch(tokenizer, captions)
        img, txt = encoder(images), text(ids, mask)  # (B, E) each, unit norm
        # CLIP loss, plus which object kinds are in the frame read off the embedding (our stand-in for
        # the supervised pretraining OpenCLIP's encoder carries into ImageBind): the audio encoder is
        # later bound to these embeddings, so what they tell is all the audio branch can learn.
        contrastive = _clip_loss(img, txt, log_scale.exp().clamp(max=100))
        return contrastive + F.binary_cross_entropy_with_logits(presence(img * 10), kinds) * len(PHRASES) / 8

    params = list(encoder.parameters()) + list(text.parameters()) + [log_scale] + list(presence.parameters())
    loss = _loop("imagebind-vision", settings.bind_vision_steps, step, params, settings.bind_lr, settings)
    encoder.requires_grad_(False).eval()
    return loss


def audio_image_pairs(cache: MediaCache, world: WorldConfig) -> list[tuple[int, int, int]]:
    """(clip, audio window, cached frame) triples where every audible source is on screen in that frame."""
    duration = world.seconds
    step_s = max(duration - AUDIO_WINDOW_S, 0.0) / (AUDIO_WINDOWS - 1)
    pairs = []
    for c, scene in enumerate(cache.scenes):
        times = [i / world.fps for i in cache.frame_index[c]]
        for k in range(AUDIO_WINDOWS):
            start, end = k * step_s, k * step_s + AUDIO_WINDOW_S
            f = int(np.argmin([abs(t - (start + end) / 2) for t in times]))
            frame = cache.frame_index[c][f]

            def overlap(on: int, off: int) -> float:
                return max(0.0, min(end, off / world.fps) - max(start, on / world.fps))

            if any(overlap(s.on_frame, s.off_frame) > 0 for s in scene.offscreen):
                continue
            audible = [o for o in scene.objects if o.sounding and overlap(o.on_frame, o.off_frame) > 0]
            if not audible or any(not (o.on_frame <= frame < o.off_frame) for o in audible):
                continue
            if max(overlap(o.on_frame, o.off_frame) for o in audible) < MIN_OVERLAP_S:
                continue
            pairs.append((c, k, f))
    return pairs


def train_audio_encoder(model, cache: MediaCache, world: WorldConfig, settings: Stage0Settings,
                        rng: random.Random) -> tuple[float, int]:
    if cache.audio is None:
        raise ValueError("stage 0 audio training needs the decoded audio cache")
    pairs = audio_image_pairs(cache, world)
    if len(pairs) < 2:
        raise ValueError(f"only {len(pairs)} (frame, audio) pairs with the sound source on screen; generate more clips")
    vision = model.imagebind_vision.requires_grad_(False).eval()
    audio = model.audio_encoder.requires_grad_(True).train()
    # Image embeddings of every cached frame, once (the vision encoder is frozen).
    with torch.no_grad():
        flat = cache.frames.flatten(0, 1)  # (N*8, 3, S, S)
        image_emb = torch.cat([vision(_normalize(flat[i: i + 256])) for i in range(0, len(flat), 256)])
    image_emb = image_emb.view(cache.frames.shape[0], FRAMES_PER_CLIP, -1)  # (N, 8, E)

    def step(_: int) -> Tensor:
        batch = rng.sample(pairs, min(settings.audio_batch, len(pairs)))
        mel = torch.stack([cache.audio[c, k] for c, k, _ in batch]).float()  # (B, 1, 128, 204)
        targets = torch.stack([image_emb[c, f] for c, _, f in batch])  # (B, E)
        _, emb = audio(mel)  # (B, E), norm = logit scale (20)
        return _clip_loss(emb, targets, 1.0)

    loss = _loop("imagebind-audio", settings.audio_steps, step, list(audio.parameters()), settings.audio_lr, settings)
    audio.requires_grad_(False).eval()
    return loss, len(pairs)


# ------------------------------------------------------------------------------------------------ driver
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
    from ..model import VideoLlama
    from ..processor import Processor

    torch.manual_seed(settings.seed)
    rng = random.Random(settings.seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = Stage0Result(model_dir=str(out))
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        result.seconds[name] = round(now - clock, 1)
        clock = now

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
    Processor(tokenizer, config)  # records the placeholder ids in the config
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
    save_file({"llama_proj.weight": bridge.weight.contiguous(), "llama_proj.bias": bridge.bias.contiguous()},
              str(out / PROJECTION_FILE))
    lap("picture_reading")
    result.final_loss["imagebind_attributes"] = pretrain_imagebind_vision(model, cache, data.world, settings, rng)
    lap("imagebind_attributes")
    result.final_loss["imagebind_vision"] = train_imagebind_vision(model, tokenizer, cache, settings, rng)
    lap("imagebind_vision")
    result.final_loss["imagebind_audio"], result.counts["audio_pairs"] = train_audio_encoder(
        model, cache, data.world, settings, rng)
    lap("imagebind_audio")
    if settings.clip_steps:
        result.final_loss["clip_reading"] = train_clip_reading(model, tokenizer, bridge, cache, data.world, settings)
        lap("clip_reading")

    model.set_trainable(())  # everything frozen: stage 1 names what it trains
    model.save_pretrained(out / "model", tokenizer=tokenizer)
    result.model_dir = str(out / "model")
    result.seconds["total"] = round(sum(result.seconds.values()), 1)
    (out / "stage0.json").write_text(json.dumps({**asdict(result), "settings": asdict(settings)}, indent=1) + "\n")
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="a SynthAV folder written by `videollama synthav generate`")
    parser.add_argument("--out", required=True, help="output folder (model/ + stage0.json)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="a few steps of everything (CI)")
    parser.add_argument("--clip-steps", type=int, default=None,
                        help="steps of the optional clip-reading phase (default 0: off)")
    args = parser.parse_args(argv)
    if args.clip_steps is not None and args.clip_steps < 0:
        parser.error(f"--clip-steps must be >= 0, got {args.clip_steps}")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    settings = Stage0Settings.quick(args.seed) if args.quick else Stage0Settings(seed=args.seed)
    if args.clip_steps is not None:
        settings = replace(settings, clip_steps=args.clip_steps)
    result = run_stage0(args.data, args.out, settings)
    print(json.dumps(asdict(result), indent=1))


if __name__ == "__main__":
    main()
