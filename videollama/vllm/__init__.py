"""Video-LLaMA on vLLM: an out-of-tree model plugin (``pip install -e ".[vllm]"``, docs/serving.md).

vLLM calls :func:`register` in every process it starts (entry point ``videollama`` in the group
``vllm.general_plugins``). It registers

* ``VideoLlamaHFConfig`` with transformers' ``AutoConfig`` for ``model_type: videollama`` (the
  top-level keys of a folder's ``config.json``; importing ``videollama.model`` does it),
* the model class ``VideoLlamaForConditionalGeneration`` (``model.py``) with vLLM's ``ModelRegistry``,
  by name, so vLLM imports it only when such a folder is served,
* our chat template (``chat_template.py``) as vLLM's fallback for this model type.

Nothing here imports vLLM at package import time; ``videollama`` itself never needs it.
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

from ..config import HF_ARCHITECTURE, HF_MODEL_TYPE, VideoLlamaConfig

MODEL_CLASS = f"videollama.vllm.model:{HF_ARCHITECTURE}"
_registered = False


def register() -> None:
    """The ``vllm.general_plugins`` entry point; safe to call more than once."""
    from vllm import ModelRegistry
    from vllm.transformers_utils.chat_templates.registry import register_chat_template_fallback_path

    from .. import model  # noqa: F401  (registers VideoLlamaHFConfig with AutoConfig)

    global _registered
    if _registered:
        return
    ModelRegistry.register_model(HF_ARCHITECTURE, MODEL_CLASS)
    register_chat_template_fallback_path(HF_MODEL_TYPE, chat_template_path)
    _registered = True


def chat_template_path(model_dir: str) -> Path:
    """Our chat template for the folder (its ``template`` and branches, from config.json), as a file."""
    from .chat_template import chat_template

    config = VideoLlamaConfig.load(Path(model_dir) / "config.json")
    source = chat_template(config.template, audio_branch=config.with_audio)
    digest = hashlib.sha256(source.encode()).hexdigest()[:16]
    path = Path(tempfile.gettempdir()) / f"videollama-chat-template-{digest}.jinja"
    if not path.is_file():
        path.write_text(source)
    return path
