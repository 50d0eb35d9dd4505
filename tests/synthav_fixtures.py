"""Helpers for tests that read the quick SynthAV chain's stage 0 (``quick_chain`` in conftest.py)."""

from __future__ import annotations

from pathlib import Path

SYNTHAV_IMAGE_SIZE = 112


def load_quick_stage0(out: Path, clips: int):
    """``(world data, media cache of the first clips (no audio), stage-0 tokenizer, stage-0 model)``."""
    from transformers import AutoTokenizer

    from videollama.model import VideoLlama
    from videollama.synthav.stage0 import WorldData, decode_media

    data = WorldData.load(out / "data")
    cache = decode_media(data, clips, SYNTHAV_IMAGE_SIZE, with_audio=False)
    tokenizer = AutoTokenizer.from_pretrained(out / "stage0" / "model")
    return data, cache, tokenizer, VideoLlama.from_pretrained(out / "stage0" / "model")
