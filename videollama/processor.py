"""Prompt text -> token ids, with each media placeholder expanded to its exact token count.

A prompt holds one ``<ImageHere>`` marker per video/image and one ``<AudioHere>`` marker per audio
track. As in the official ``get_context_emb``, the text between markers is tokenised segment by
segment (only the first gets BOS), and each marker becomes a run of ``num_video_tokens`` (32) or
``num_audio_tokens`` (8) placeholder ids that the model later fills with media features.

The placeholder ids live in the model config. :func:`attach_media_tokens` adds the placeholders to a
tokenizer and records their ids in a config that has none (a new model); a :class:`Processor` only
checks that its tokenizer and config agree, and changes neither.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .config import VideoLlamaConfig
from .errors import UsageError
from .tokenizer import AUDIO_PLACEHOLDER, IMAGE_PLACEHOLDER, add_media_tokens

_MARKER = re.compile(f"({re.escape(IMAGE_PLACEHOLDER)}|{re.escape(AUDIO_PLACEHOLDER)})")


def attach_media_tokens(tokenizer, config: VideoLlamaConfig) -> tuple[int, int]:
    """Add both placeholders to ``tokenizer`` (and a pad token if it has none) and record their ids in
    ``config`` when it has none yet; returns ``(image_id, audio_id)``.

    Raises ``ValueError`` when ``config`` already holds different ids: that tokenizer does not belong to
    that model.
    """
    image_id, audio_id = add_media_tokens(tokenizer)
    if config.image_token_id is None:
        config.image_token_id, config.audio_token_id = image_id, audio_id
    _check_ids(tokenizer, config)
    return image_id, audio_id


def _check_ids(tokenizer, config: VideoLlamaConfig) -> None:
    ids = tuple(tokenizer.convert_tokens_to_ids([IMAGE_PLACEHOLDER, AUDIO_PLACEHOLDER]))
    if (config.image_token_id, config.audio_token_id) == (None, None):
        raise ValueError("the model config has no placeholder ids; call "
                         "videollama.processor.attach_media_tokens(tokenizer, config) first")
    if ids != (config.image_token_id, config.audio_token_id):
        raise ValueError(f"tokenizer maps placeholders to {ids} but the model config expects "
                         f"({config.image_token_id}, {config.audio_token_id})")


@dataclass
class Processor:
    """Tokenises prompts for one model: its tokenizer and config must agree on the placeholder ids."""

    tokenizer: object
    config: VideoLlamaConfig

    def __post_init__(self) -> None:
        _check_ids(self.tokenizer, self.config)

    @property
    def image_token_id(self) -> int:
        return self.config.image_token_id  # type: ignore[return-value]

    @property
    def audio_token_id(self) -> int:
        return self.config.audio_token_id  # type: ignore[return-value]

    def count_markers(self, prompt: str) -> tuple[int, int]:
        return prompt.count(IMAGE_PLACEHOLDER), prompt.count(AUDIO_PLACEHOLDER)

    def tokenize(self, prompt: str, *, add_bos: bool = True, expected: tuple[int, int] | None = None) -> list[int]:
        """Token ids of ``prompt`` with every placeholder marker expanded to its token run.

        ``expected``: (video/image items, audio items) the caller has features for (a long video has one
        item per window); a prompt with other marker counts raises ``ValueError`` naming both."""
        if expected is not None and self.count_markers(prompt) != tuple(expected):
            found = self.count_markers(prompt)
            raise UsageError(f"the prompt holds {found[0]} {IMAGE_PLACEHOLDER} and {found[1]} {AUDIO_PLACEHOLDER} "
                             f"markers but the media give {expected[0]} video and {expected[1]} audio items")
        ids: list[int] = [self.tokenizer.bos_token_id] if add_bos and self.tokenizer.bos_token_id is not None else []
        for piece in _MARKER.split(prompt):
            if piece == IMAGE_PLACEHOLDER:
                ids += [self.image_token_id] * self.config.num_video_tokens
            elif piece == AUDIO_PLACEHOLDER:
                ids += [self.audio_token_id] * self.config.num_audio_tokens
            elif piece:
                ids += self.tokenizer(piece, add_special_tokens=False)["input_ids"]
        return ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)
