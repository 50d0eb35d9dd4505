"""Still images as one-frame videos, preprocessed like BLIP-2's ``Blip2ImageEvalProcessor``.

Official inference transform: ``Resize((224, 224), bicubic)`` on the PIL image (a squash, no
aspect ratio kept), ``ToTensor`` (/255), CLIP normalisation; the chat code then treats the
image as a 1-frame video. We do the same with Pillow's bicubic resize (what torchvision calls
for PIL input) and return (1, 3, H, W), the layout of :class:`VideoClip.frames`. EXIF
orientation is not applied (the official code does not either).
"""

from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .errors import MediaError, check_media_file
from .transforms import normalize as clip_normalize
from .video import DEFAULT_IMAGE_SIZE

__all__ = ["load_image", "image_format"]

UINT8_MAX = 255.0
STILL_IMAGE_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF")  # what Pillow may sniff a file as


def load_image(path_or_pil: str | os.PathLike[str] | Image.Image, *, image_size: int = DEFAULT_IMAGE_SIZE,
               normalize: bool = True, max_bytes: int | None = None) -> torch.Tensor:
    """Image file or PIL image -> (1, 3, image_size, image_size) float32 (CLIP-normalised, or
    in [0, 1] with ``normalize=False``).

    Raises:
        MediaError: missing, empty, over-``max_bytes`` or undecodable image file.
    """
    if isinstance(path_or_pil, Image.Image):
        image = path_or_pil
    else:
        image = _open(path_or_pil, max_bytes)
    image = image.convert("RGB").resize((image_size, image_size), Image.Resampling.BICUBIC)
    pixels = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy())  # (H, W, 3)
    frames = pixels.permute(2, 0, 1).unsqueeze(0).float() / UINT8_MAX  # (1, 3, H, W) in [0, 1]
    return clip_normalize(frames) if normalize else frames


def image_format(path: str | os.PathLike[str]) -> str | None:
    """The still-image format in the file's header ("PNG", "JPEG", ...), or None: the content decides, not the name.

    Only the header is read. An image too large to open safely is still an image ("oversized")."""
    try:
        with Image.open(path, formats=STILL_IMAGE_FORMATS) as image:
            return image.format
    except Image.DecompressionBombError:
        return "oversized"
    except (UnidentifiedImageError, OSError, ValueError):
        return None


def _open(path: str | os.PathLike[str], max_bytes: int | None) -> Image.Image:
    check_media_file(path, max_bytes)
    try:
        with Image.open(path) as image:
            image.load()  # decode now, so truncated files fail here
            return image.copy()
    except UnidentifiedImageError as err:
        raise MediaError(path, "not an image file Pillow can read") from err
    except Image.DecompressionBombError as err:
        raise MediaError(path, f"image is too large ({err})") from err
    except OSError as err:  # e.g. "image file is truncated"
        raise MediaError(path, f"truncated or corrupt image ({err})") from err
