"""videollama: Video-LLaMA, an audio-visual language model that chats about videos, images and audio.

Public API (imported lazily, so ``import videollama`` stays cheap)::

    from videollama import Pipeline, VideoLlama, VideoLlamaConfig, GenerationConfig
    pipe = Pipeline.from_pretrained("path/to/model")
    print(pipe.chat("clip.mp4").ask("What is happening?"))

Every error a caller can fix (bad media, a bad config or request, a damaged file) is a
``videollama.VideoLlamaError``; anything else is a bug.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "VideoLlama": "videollama.model",
    "VideoLlamaConfig": "videollama.config",
    "Pipeline": "videollama.inference",
    "ChatSession": "videollama.inference",
    "BatchItem": "videollama.inference",
    "MediaOptions": "videollama.inference",
    "GenerationConfig": "videollama.engine",
    "Engine": "videollama.engine",
    "get_preset": "videollama.presets",
    "VideoLlamaError": "videollama.errors",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'videollama' has no attribute {name!r}")
