"""The language model: a Hugging Face LLaMA-2-chat / Vicuna folder, copied under ``language_model.``.

Video-LLaMA keeps the LLM frozen and unchanged, so its weights are renamed only: ``model.*`` and
``lm_head.*`` become ``language_model.model.*`` / ``language_model.lm_head.*``. The files are read
lazily (safetensors by header, ``pytorch_model-*.bin`` shards memory-mapped through
``torch.load(weights_only=True)``), so copying a 13B model never holds more than a tensor or two.
Older exports carry ``rotary_emb.inv_freq`` buffers; they are recomputed by transformers and
ignored (reported).

The tokenizer gets the official placeholder handling: ``<ImageHere>`` and ``<AudioHere>`` are added as
special tokens (ids 32000 and 32001 for LLaMA) and the embedding matrix is **not** resized; the model
swaps those ids out before the embedding lookup. The LLM's ``config.json`` is stored in the model
folder's ``config.json`` (``VideoLlamaConfig.llm``) so the folder is self-contained.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .report import ConversionReport
from .safe_load import CheckpointReadError, HfFolderWeights, LazyTensor, open_hf_folder
from .tables import Shape, apply_key_table

__all__ = ["LLM_PREFIX", "LlmFolder", "read_llm_folder", "llm_config_dict", "load_llm_tokenizer", "convert_llm_weights"]

LLM_PREFIX = "language_model."
_IGNORED = re.compile(r"rotary_emb\.inv_freq$")
# Bookkeeping fields of a transformers config that do not describe the model.
_CONFIG_NOISE = ("_name_or_path", "transformers_version", "id2label", "label2id", "_commit_hash")
CONFIG_FILE = "config.json"


@dataclass
class LlmFolder:
    path: Path
    config: dict  # the LLM's transformers config, as stored in VideoLlamaConfig.llm
    weights: HfFolderWeights


def read_llm_folder(path: str | Path) -> LlmFolder:
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such folder (--llm takes a Hugging Face LLaMA/Vicuna folder)")
    return LlmFolder(path, llm_config_dict(path), open_hf_folder(path))


def llm_config_dict(path: str | Path) -> dict:
    """The LLM's config as a plain dict (``model_type`` included), read with transformers' AutoConfig."""
    from transformers import AutoConfig

    path = Path(path)
    if not (path / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{path}: no {CONFIG_FILE} (--llm takes a Hugging Face LLaMA/Vicuna folder)")
    try:
        config = AutoConfig.from_pretrained(str(path))
    except Exception as err:  # transformers raises ValueError/KeyError/OSError for unusable configs
        raise CheckpointReadError(f"{path / CONFIG_FILE}: not a usable transformers config: {err}") from None
    data = config.to_dict()
    for key in _CONFIG_NOISE:
        data.pop(key, None)
    if "hidden_size" not in data:
        raise CheckpointReadError(f"{path / CONFIG_FILE}: no hidden_size; is this a causal language model?")
    return data


def load_llm_tokenizer(path: str | Path):
    """The folder's tokenizer with the media placeholders added; returns (tokenizer, image_id, audio_id)."""
    from transformers import AutoTokenizer

    from ..tokenizer import add_media_tokens

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    except Exception as err:  # missing files, sentencepiece/protobuf problems, ...
        raise CheckpointReadError(f"{path}: cannot load its tokenizer: {type(err).__name__}: {err}") from None
    if tokenizer.bos_token_id is None:
        raise CheckpointReadError(f"{path}: the tokenizer has no BOS token; a LLaMA/Vicuna tokenizer is expected")
    image_id, audio_id = add_media_tokens(tokenizer)
    return tokenizer, image_id, audio_id


def convert_llm_weights(
    llm: LlmFolder,
    our_shapes: dict[str, Shape],
    *,
    allow_missing: bool = False,
) -> tuple[dict[str, LazyTensor], ConversionReport]:
    """Rename the LLM's tensors to ``language_model.*``; ``our_shapes`` is our model's LLM key -> shape."""
    table = {key[len(LLM_PREFIX):]: key for key in our_shapes if key.startswith(LLM_PREFIX)}
    expected = {hf: tuple(our_shapes[ours]) for hf, ours in table.items()}
    ours, report = apply_key_table(llm.weights.tensors, table, expected, source=str(llm.path),
                                   ignored=lambda key: bool(_IGNORED.search(key)))
    for key, found, want in report.shape_mismatch:
        if key.endswith("embed_tokens.weight"):
            report.notes.append(f"the embedding has {found[0]} rows but config.json says vocab_size {want[0]}")
    report.check(allow_missing=allow_missing)
    return ours, report
