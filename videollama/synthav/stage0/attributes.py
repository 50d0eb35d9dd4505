"""Stage-0 phase: dense supervised pretraining of a ViT, the stand-in for the pretraining EVA's ViT and
OpenCLIP's ViT bring into BLIP-2 and ImageBind.

Every patch token tells whether an object lies under it and, if so, its colour, shape and size, and its
own row and column (linear heads, discarded afterwards). Run on BLIP-2's ViT before the generative
phases and on the ImageBind-like vision trunk before its contrastive phase; both are frozen afterwards.
Why (docs/synthav.md#diagnosis): without it, a linear probe of the frozen features reads shape and
position at chance.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..world import WorldConfig
from .labels import ATTRIBUTES
from .loop import train_loop
from .media_cache import FRAMES_PER_CLIP, MediaCache, normalize_frames
from .settings import Stage0Settings


def pretrain_attributes(name: str, encoder: nn.Module, patch_tokens: Callable[[Tensor], Tensor], width: int,
                        cache: MediaCache, world: WorldConfig, settings: Stage0Settings, rng: random.Random,
                        grid: int) -> float:
    """Supervised dense pretraining of a ViT; returns the mean of the last losses and freezes the encoder.

    Each patch token tells whether an object is under it and, if so, its colour, shape and size (losses
    over object patches only, so the shape, the slowest attribute to learn, gets the gradient), and every
    patch token tells its own row and column, which keeps the position embedding's information in the
    output tokens. ``patch_tokens(images) -> (B, grid*grid, width)``; the heads are discarded afterwards.
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
        images = normalize_frames(torch.stack([cache.frames[c, f] for c, f in picks]))  # (B, 3, S, S)
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
    loss = train_loop(name, settings.attribute_steps, step, params, settings.attribute_lr, settings)
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

