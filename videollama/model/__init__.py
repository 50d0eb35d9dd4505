"""The Video-LLaMA model and its parts."""

from .videollama import AUDIO_BRANCH_TRAINABLE, VISION_BRANCH_TRAINABLE, VideoLlama, count_parameters, load_config

__all__ = ["VideoLlama", "VISION_BRANCH_TRAINABLE", "AUDIO_BRANCH_TRAINABLE", "count_parameters", "load_config"]
