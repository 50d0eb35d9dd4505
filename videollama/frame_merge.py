"""A bounded memory of frame features that merges the most similar adjacent frames (MovieChat-style).

MovieChat (Song et al., CVPR 2024) reads long videos with Video-LLaMA's released weights, without
training, by merging adjacent frames whose image-Q-Former features are most alike. Here the
budget is ``capacity`` frames (``max_windows`` windows x ``max_frames`` frames): frames are added
in time order, window by window as they are decoded, and whenever the memory holds more than
``capacity`` frames the adjacent pair with the highest cosine similarity (over the flattened
(Q, 768) features) is replaced by its count-weighted mean, until it fits again. The memory never
holds more than ``capacity`` + one window of features, whatever the video's length; a merged frame
keeps the time of its first and last source frame and the count it stands for.

Greedy merging is order-dependent only through ties; a static scene collapses into a few frames
and a busy one keeps many, which is the point: the budget goes where the video changes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["FrameMemory", "MergedFrame"]


@dataclass
class MergedFrame:
    """One slot of the memory: the mean features of ``count`` consecutive sampled frames."""

    features: torch.Tensor  # (Q, D) image-Q-Former output
    first_time: float  # seconds: the first source frame
    last_time: float  # seconds: the last source frame
    count: int = 1
    thumbnail: object = None  # the first source frame's thumbnail (for the timeline), or None


class FrameMemory:
    """At most ``capacity`` :class:`MergedFrame` s, in time order."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.frames: list[MergedFrame] = []
        self._similarity: list[float] = []  # _similarity[i]: frames[i] vs frames[i + 1]
        self.merges = 0

    def __len__(self) -> int:
        return len(self.frames)

    def add(self, frame: MergedFrame) -> None:
        """Append a frame (later than every frame held), then merge until within capacity."""
        if self.frames and frame.first_time < self.frames[-1].last_time:
            raise ValueError(f"frames must arrive in time order ({frame.first_time} s after "
                             f"{self.frames[-1].last_time} s)")
        if self.frames:
            self._similarity.append(_cosine(self.frames[-1].features, frame.features))
        self.frames.append(frame)
        while len(self.frames) > self.capacity:
            self._merge_most_similar()

    def _merge_most_similar(self) -> None:
        i = max(range(len(self._similarity)), key=self._similarity.__getitem__)  # first of equal maxima
        left, right = self.frames[i], self.frames[i + 1]
        total = left.count + right.count
        features = (left.features * left.count + right.features * right.count) / total
        self.frames[i:i + 2] = [MergedFrame(features, left.first_time, right.last_time, total, left.thumbnail)]
        del self._similarity[i]
        if i > 0:
            self._similarity[i - 1] = _cosine(self.frames[i - 1].features, features)
        if i < len(self._similarity):
            self._similarity[i] = _cosine(features, self.frames[i + 1].features)
        self.merges += 1


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a.flatten().float(), b.flatten().float(), dim=0))
