"""Where models come from when the user names none, and how a model argument is resolved.

``--model`` accepts a model folder, or a preset name (``tiny``) which builds a randomly initialised
model, saved once in the cache folder (``$VIDEOLLAMA_CACHE``, default ``~/.cache/videollama``) so later
runs load the same weights. The default is the shipped SynthAV model when the package has one,
otherwise the tiny random model (and callers say so plainly).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

SHIPPED_MODEL = Path(__file__).parent / "assets" / "synthav-model"
TINY_SEED = 0


@dataclass
class ResolvedModel:
    path: Path
    description: str
    trained: bool


def cache_dir() -> Path:
    return Path(os.environ.get("VIDEOLLAMA_CACHE", Path.home() / ".cache" / "videollama"))


def resolve_model(spec: str | Path | None) -> ResolvedModel:
    """A model folder for ``spec``: None (the default), a folder, or the preset ``tiny``."""
    if spec is None:
        if (SHIPPED_MODEL / "config.json").is_file():
            return ResolvedModel(SHIPPED_MODEL, "SynthAV default model (shipped)", trained=True)
        spec = "tiny"
    if str(spec) == "tiny":
        return ResolvedModel(tiny_random_model(), "tiny randomly initialised model (UNTRAINED: answers are noise)",
                             trained=False)
    path = Path(spec)
    if not path.is_dir():
        raise FileNotFoundError(f"{spec}: no such model folder (give a folder written by `videollama convert` "
                                "or `videollama export`, or the preset 'tiny')")
    return ResolvedModel(path, str(path), trained=True)


def tiny_random_model() -> Path:
    """Build (once) and return the folder of the deterministic tiny random model."""
    from .model import VideoLlama
    from .presets import tiny
    from .processor import attach_media_tokens
    from .tokenizer import train_tiny_tokenizer

    target = cache_dir() / "tiny-random"
    if (target / "config.json").is_file():
        return target
    tmp = target.with_name(f"tiny-random.tmp{os.getpid()}")
    tokenizer = train_tiny_tokenizer(tmp)
    config = tiny(vocab_size=tokenizer.vocab_size)
    attach_media_tokens(tokenizer, config)
    torch.manual_seed(TINY_SEED)
    VideoLlama(config).save_pretrained(tmp, tokenizer=tokenizer)
    try:
        os.replace(tmp, target)
    except OSError:  # another process won the race; use its copy
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return target
