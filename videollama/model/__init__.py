"""The Video-LLaMA model and its parts.

Importing this registers ``VideoLlamaHFConfig`` with transformers' ``AutoConfig`` (``model_type:
videollama``, the top-level key of a folder's ``config.json``), so ``AutoTokenizer`` and vLLM read our
folders without falling back (and warning).
"""

from transformers import AutoConfig

from ..config import HF_MODEL_TYPE
from .hf_config import VideoLlamaHFConfig
from .videollama import AUDIO_BRANCH_TRAINABLE, VISION_BRANCH_TRAINABLE, VideoLlama, count_parameters, load_config

AutoConfig.register(HF_MODEL_TYPE, VideoLlamaHFConfig, exist_ok=True)

__all__ = ["VideoLlama", "VideoLlamaHFConfig", "VISION_BRANCH_TRAINABLE", "AUDIO_BRANCH_TRAINABLE", "count_parameters",
           "load_config"]
