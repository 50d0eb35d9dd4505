"""Frames and audio windows of the world's clips, decoded once and held in memory for every stage-0 phase.

Each clip gives 8 uniform frames (``load_video``, the official 8) and 8 two-second 128x204 fbank windows
(``load_audio``, ImageBind's clips per video).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..world import Scene, WorldConfig
from .labels import patch_labels
from .world_data import WorldData

FRAMES_PER_CLIP = 8  # uniform frames cached per clip (the official 8)


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
    """Decode the first ``count`` WebVid clips of ``data``: frames at ``image_size``, and audio unless told not to."""
    from ...media.video import load_video

    if with_audio:
        from ...media import load_audio

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


def normalize_frames(frames_uint8: Tensor) -> Tensor:
    """uint8 frames (..., 3, S, S) -> the float, mean/std-normalised pixels the encoders take."""
    from ...media.transforms import normalize

    return normalize(frames_uint8.float() / 255.0)

