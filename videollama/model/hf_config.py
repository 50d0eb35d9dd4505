"""``config.json`` of a Video-LLaMA folder as a transformers config (``model_type: videollama``).

transformers' Auto classes (``AutoTokenizer`` reads a folder's config first) and vLLM read this; our
own loader reads ``VideoLlamaConfig`` directly. ``videollama.model`` registers it with ``AutoConfig``.

vLLM sizes the KV cache, the attention and tensor parallelism from ``hf_config.get_text_config()``;
here that is the folder's own LLM config (``VideoLlamaConfig.llm``, e.g. a ``LlamaConfig``), built the
same way ``VideoLlama`` builds its language model. The ``videollama`` section is kept as the plain dict
``VideoLlamaConfig.from_dict`` reads.
"""

from __future__ import annotations

from typing import Any

from transformers import AutoConfig, PretrainedConfig

from ..config import HF_MODEL_TYPE, VideoLlamaConfig
from .videollama import llm_config


class VideoLlamaHFConfig(PretrainedConfig):
    model_type = HF_MODEL_TYPE
    sub_configs = {"text_config": AutoConfig}

    def __init__(self, videollama: dict[str, Any] | None = None, text_config: PretrainedConfig | dict | None = None,
                 **kwargs):
        self.videollama = dict(videollama or {})
        if isinstance(text_config, dict):
            text_config = llm_config(text_config)
        if text_config is None and self.videollama:
            text_config = llm_config(self.videollama["llm"])
        self.text_config = text_config
        super().__init__(**kwargs)

    @property
    def model(self) -> VideoLlamaConfig:
        """The typed config of the folder (checked as ``VideoLlama`` checks it)."""
        if not self.videollama:
            raise ValueError("config.json has no 'videollama' section: not a videollama model folder")
        return VideoLlamaConfig.from_dict(self.videollama)
