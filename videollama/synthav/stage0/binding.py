"""Stage-0 phases: the ImageBind-like pair, bound through images.

The vision trunk (after its dense pretraining, :mod:`.attributes`) is trained image<->text contrastive
(CLIP loss, learned temperature) against a small text encoder (:class:`TextEncoder`, discarded) on what
each frame shows, with a linear read-out of the object kinds in the frame; then frozen. The audio encoder
is trained audio<->image contrastive against the *frozen* vision encoder (ImageBind's recipe: the image is
the binding modality; the audio encoder's fixed logit scale of 20 is the temperature) on (frame, 2-s audio
window) pairs whose audible sources are all on screen (:func:`audio_image_pairs`). Off-screen sounds
(bell, drum) have no image and are never bound: the audio questions about them measure that limit.
"""

from __future__ import annotations

import math
import random

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..annotate import still_caption
from ..world import WorldConfig
from .labels import PHRASES, presence_labels
from .loop import CAPTION_MAX_TOKENS, caption_batch, train_loop
from .media_cache import FRAMES_PER_CLIP, MediaCache, normalize_frames
from .settings import Stage0Settings

AUDIO_WINDOW_S = 2.0  # ImageBind audio clip length
AUDIO_WINDOWS = 8  # ImageBind clips per video
MIN_OVERLAP_S = 1.0  # a sounding object must be audible this long in a window to pair it
TEXT_ENCODER_WIDTH = 128
INIT_TEMPERATURE = 0.07
IMAGE_CHUNK = 256  # frames per forward pass when embedding every cached frame once


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


def clip_loss(a: Tensor, b: Tensor, scale: Tensor | float) -> Tensor:
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
        images = normalize_frames(torch.stack([cache.frames[c, f] for c, f in picks]))
        captions = [still_caption(cache.scenes[c], cache.frame_index[c][f]) for c, f in picks]
        kinds = torch.stack([presence_labels(cache.scenes[c], cache.frame_index[c][f]) for c, f in picks])  # (B, K)
        ids, mask = caption_batch(tokenizer, captions)
        img, txt = encoder(images), text(ids, mask)  # (B, E) each, unit norm
        # CLIP loss, plus which object kinds are in the frame read off the embedding (our stand-in for
        # the supervised pretraining OpenCLIP's encoder carries into ImageBind): the audio encoder is
        # later bound to these embeddings, so what they tell is all the audio branch can learn.
        contrastive = clip_loss(img, txt, log_scale.exp().clamp(max=100))
        return contrastive + F.binary_cross_entropy_with_logits(presence(img * 10), kinds) * len(PHRASES) / 8

    params = list(encoder.parameters()) + list(text.parameters()) + [log_scale] + list(presence.parameters())
    loss = train_loop("imagebind-vision", settings.bind_vision_steps, step, params, settings.bind_lr, settings)
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
        image_emb = torch.cat([vision(normalize_frames(flat[i: i + IMAGE_CHUNK]))
                               for i in range(0, len(flat), IMAGE_CHUNK)])
    image_emb = image_emb.view(cache.frames.shape[0], FRAMES_PER_CLIP, -1)  # (N, 8, E)

    def step(_: int) -> Tensor:
        batch = rng.sample(pairs, min(settings.audio_batch, len(pairs)))
        mel = torch.stack([cache.audio[c, k] for c, k, _ in batch]).float()  # (B, 1, 128, 204)
        targets = torch.stack([image_emb[c, f] for c, _, f in batch])  # (B, E)
        _, emb = audio(mel)  # (B, E), norm = logit scale (20)
        return clip_loss(emb, targets, 1.0)

    loss = train_loop("imagebind-audio", settings.audio_steps, step, list(audio.parameters()), settings.audio_lr, settings)
    audio.requires_grad_(False).eval()
    return loss, len(pairs)

