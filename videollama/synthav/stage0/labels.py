"""What the stage-0 read-out heads are trained to tell about a frame: per-patch attributes, the object
kinds it shows, and one object slot per shape.

The heads reading these labels are discarded after stage 0; they shape what the frozen encoders' outputs
hold (docs/synthav.md#diagnosis has the measurements behind each).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..world import COLOURS, SHAPES, SIZES, Scene, WorldConfig
from .world_data import POSITION_BINS, position_bin

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
        attributes[k] = torch.tensor([list(COLOURS).index(obj.colour), list(SIZES).index(obj.size), position_bin(x, world.size),
                                      position_bin(y, world.size)])
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

