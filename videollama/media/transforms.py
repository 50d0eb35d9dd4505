"""Frame transforms in plain torch: CLIP normalisation, square resize, training crop.

These replace the official torchvision/ALPRO video transforms (no torchvision at runtime):

* eval (``alpro_video_eval``): frames already squashed to 224 at decode -> /255 -> CLIP
  normalise = :func:`normalize` (``load_video`` does both);
* train (``alpro_video_train``): ``RandomResizedCropVideo(224, scale=(0.5, 1.0),
  ratio=(3/4, 4/3), bicubic)`` -> uint8 -> /255 -> normalise = :func:`random_resized_crop`
  then :func:`normalize`. One crop box is drawn per video and applied to every frame.

Pixel conventions: uint8 frames are in [0, 255]; float frames are in [0, 1]. Resizing is
``torch.nn.functional.interpolate(mode="bicubic", align_corners=False)`` (what ALPRO's
functional video ops call, without antialiasing); results are clamped back to the input range
(ALPRO casts to uint8 after cropping, which also bounds bicubic overshoot; we clamp and round
instead of letting the cast wrap around).

Example::

    clip = load_video("a.mp4", normalize=False)             # (T, 3, 224, 224) in [0, 1]
    frames = normalize(random_resized_crop(clip.frames, generator=g))
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .video import CLIP_MEAN, CLIP_STD

__all__ = ["denormalize", "normalize", "random_resized_crop", "resize_squash"]

UINT8_MAX = 255.0
_CROP_ATTEMPTS = 10  # torchvision RandomResizedCrop: tries before falling back to a centre crop


def _check_frames(frames: torch.Tensor) -> None:
    if frames.dim() != 4 or frames.shape[1] != 3:
        raise ValueError(f"expected frames of shape (T, 3, H, W), got {tuple(frames.shape)}")


def normalize(frames: torch.Tensor) -> torch.Tensor:
    """CLIP-normalise (T, 3, H, W) frames: uint8 [0, 255] or float [0, 1] -> float32."""
    _check_frames(frames)
    x = frames.float() / UINT8_MAX if frames.dtype == torch.uint8 else frames.float()
    mean = torch.tensor(CLIP_MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def denormalize(frames: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`normalize`: float frames back in [0, 1] (for viewing and tests)."""
    _check_frames(frames)
    mean = torch.tensor(CLIP_MEAN, dtype=frames.dtype, device=frames.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=frames.dtype, device=frames.device).view(1, 3, 1, 1)
    return frames * std + mean


def _bicubic(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bicubic resize keeping the dtype and value range of ``frames`` (T, 3, H, W)."""
    if frames.dtype == torch.uint8:
        out = F.interpolate(frames.float(), size=(height, width), mode="bicubic", align_corners=False)
        return out.round_().clamp_(0, UINT8_MAX).to(torch.uint8)
    out = F.interpolate(frames, size=(height, width), mode="bicubic", align_corners=False)
    return out.clamp_(0.0, 1.0)


def resize_squash(frames: torch.Tensor, size: int) -> torch.Tensor:
    """Stretch (T, 3, H, W) frames to (T, 3, size, size), ignoring the aspect ratio."""
    _check_frames(frames)
    return _bicubic(frames, size, size)


def _crop_box(height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float],
              generator: torch.Generator | None) -> tuple[int, int, int, int]:
    """(top, left, h, w) drawn like torchvision's RandomResizedCrop.get_params."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))

    def uniform(low: float, high: float) -> float:
        return low + (high - low) * torch.rand((), generator=generator).item()

    for _ in range(_CROP_ATTEMPTS):
        target_area = area * uniform(*scale)
        aspect = math.exp(uniform(*log_ratio))
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (), generator=generator))
            left = int(torch.randint(0, width - w + 1, (), generator=generator))
            return top, left, h, w
    # fallback: the largest centred crop whose aspect ratio is within `ratio`
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        h, w = height, round(height * max(ratio))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def random_resized_crop(
    frames: torch.Tensor,
    size: int = 224,
    scale: tuple[float, float] = (0.5, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Crop one random box (area fraction in ``scale``, aspect in ``ratio``) from every frame of
    a (T, 3, H, W) video and resize it bicubically to (T, 3, size, size). Keeps the dtype."""
    _check_frames(frames)
    top, left, h, w = _crop_box(frames.shape[2], frames.shape[3], scale, ratio, generator)
    return _bicubic(frames[:, :, top:top + h, left:left + w], size, size)
