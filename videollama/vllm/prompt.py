"""Finish a prompt rendered by the chat template with what only the decoded media can tell.

The chat template (``chat_template.py``) renders our own prompt for the *declared* media kind. Three facts
come from the file itself: a video's frame timestamps (the official sampling sentence), whether it has a
sound track, and, when it is read in windows (more sampled frames than the model's ``max_frames``), each
window's time label. With sound, the video is answered with both branches, exactly as ``Pipeline`` does:
the audio-visual preamble (``templates.AV_MESSAGE``) replaces the video one, and where
``templates.system_for`` gives a video with sound another default system prompt than a silent one,
that one replaces it. A system prompt the request gave is kept. In windows, the preamble is
``templates.windowed_video_message``: each window's ``<ImageHere>`` (and ``<AudioHere>``) after its label.

A video whose frames merge in the engine has labels nobody knows yet: its prompt holds ``ZERO_LABEL`` for each,
and :func:`merged_video_span` marks every digit of them as an embedded position, which the engine fills with
the token embeddings of the real labels' digits. That is the prompt ``Pipeline`` tokenizes exactly when the
tokenizer spells each digit of a label as one token whatever its neighbours, which :func:`label_digit_ids`
checks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch

from ..media.windows import time_label
from ..processor import Processor
from ..templates import VIDEO_MESSAGE, get_template, media_message, system_for, windowed_video_message

ZERO_LABEL = time_label(0, 0)  # a merged video's labels in the prompt, "00:00:00-00:00:00"
LABEL_DIGITS = sum(c.isdigit() for c in ZERO_LABEL)  # 12: the engine embeds the real label's digits there
NUM_DIGITS = 10


@dataclass(frozen=True)
class VideoFacts:
    """What the decoded video adds to the prompt."""

    timestamps: str  # one window: the official sentence, "The video contains 8 frames sampled at ... seconds. "
    has_audio: bool
    windows: tuple[str, ...] = ()  # read in windows: each window's time label, in order
    duration: float = 0.0  # read in windows: seconds, stated by the preamble of a silent video
    merged: bool = False  # the frames merge in the engine: the labels hold zeros, the engine embeds the real digits

    @property
    def num_windows(self) -> int:
        return max(1, len(self.windows))

    @property
    def preamble(self) -> str:
        """The video's first-message preamble, as ``MediaFeatures.preamble`` builds it."""
        if self.windows:
            return windowed_video_message(list(self.windows), audio=self.has_audio, duration=self.duration)
        return media_message(video=True, audio=self.has_audio, timestamps=self.timestamps)


def media_bounds(processor: Processor, ids: list[int]) -> tuple[int, int]:
    """Indices of the first audio or video token and of the last video token in ``ids``."""
    media = {processor.audio_token_id, processor.image_token_id}
    first = next(i for i, token in enumerate(ids) if token in media)
    return first, len(ids) - 1 - ids[::-1].index(processor.image_token_id)


def digit_label(digits: Sequence[int]) -> str:
    """``ZERO_LABEL`` with its LABEL_DIGITS digits replaced, in order."""
    it = iter(digits)
    return "".join(str(next(it)) if c.isdigit() else c for c in ZERO_LABEL)


def _probe(processor: Processor, facts: VideoFacts, digits: Callable[[int], int]) -> list[int]:
    """The preamble of ``facts``, tokenized, with the k-th label digit (counted over its windows; a window's
    label is the same in its sound run and its video run) set to ``digits(k)``."""
    labels = tuple(digit_label([digits(w * LABEL_DIGITS + k) for k in range(LABEL_DIGITS)])
                   for w in range(facts.num_windows))
    return processor.tokenize(replace(facts, windows=labels).preamble, add_bos=False)


def label_digit_ids(processor: Processor) -> list[int] | None:
    """The token id of each digit 0-9 inside a time label, when the tokenizer spells every digit of a label as
    one token of its own whatever its neighbours (LLaMA's does); None otherwise. Checked on the 100 labels
    whose two-digit fields ("HH", "MM", "SS") all read ``ab``, for every pair of digits a and b."""
    facts = VideoFacts("", True, windows=(ZERO_LABEL,), merged=True)
    pairs = [(a, b) for a in range(NUM_DIGITS) for b in range(NUM_DIGITS)]
    probes = [_probe(processor, facts, lambda k, a=a, b=b: b if k % 2 else a) for a, b in pairs]
    if len({len(ids) for ids in probes}) != 1:
        return None
    slots = [i for i, column in enumerate(zip(*probes)) if len(set(column)) > 1]
    if len(slots) != 2 * LABEL_DIGITS:  # the sound's label and the video's
        return None
    table: dict[int, int] = {}
    for ids, pair in zip(probes, pairs):
        for n, i in enumerate(slots):
            if table.setdefault(pair[n % 2], ids[i]) != ids[i]:
                return None
    return [table[d] for d in range(NUM_DIGITS)]


def merged_video_span(processor: Processor, facts: VideoFacts,
                      digit_ids: list[int] | None) -> tuple[list[int], torch.Tensor]:
    """A merged video's item: the token ids from its first label digit to its last video token, and which of
    them the engine embeds (bool mask): the media tokens and every label digit. The engine writes the real
    labels' digit embeddings there, in prompt order: with sound, each window's label then its 8 audio tokens,
    window after window; then each window's label then its 32 video tokens.

    Raises:
        ValueError: the labels of this preamble are not spelled one token per digit (``digit_ids``).
    """
    ids = processor.tokenize(facts.preamble, add_bos=False)  # the zero labels
    probe = _probe(processor, facts, lambda k: k % 9 + 1)  # 1-9: every digit differs from the zeros
    table = digit_ids or [-1] * NUM_DIGITS
    slots = [i for i, (a, b) in enumerate(zip(ids, probe)) if a != b]
    per_run = facts.num_windows * LABEL_DIGITS
    expected = [table[k % per_run % 9 + 1] for k in range((2 if facts.has_audio else 1) * per_run)]
    if len(probe) != len(ids) or [probe[i] for i in slots] != expected or any(ids[i] != table[0] for i in slots):
        raise ValueError("this model's tokenizer does not spell a merged video's time labels one token per digit, "
                         "so the vLLM plugin cannot merge its frames: ask for fewer frames or raise max_windows")
    first, last = media_bounds(processor, ids)
    first = min(first, slots[0])
    media = torch.tensor([processor.audio_token_id, processor.image_token_id])
    is_embed = torch.isin(torch.tensor(ids[first:last + 1]), media)
    is_embed[torch.tensor(slots) - first] = True
    return ids[first:last + 1], is_embed


def _system_block(template_name: str, system: str) -> str:
    """The text a template renders before the first question for ``system`` ("" for vicuna_v0's layout)."""
    marker = "\x00question\x00"
    rendered = get_template(template_name).render(system, [(marker, None)])
    return rendered[: rendered.index(marker)]


def finish_prompt(text: str, video: VideoFacts | None, template_name: str, *, audio_branch: bool) -> str:
    """``text`` (the chat template's output, BOS removed) with the video's facts filled in."""
    if video is None:
        return text
    if VIDEO_MESSAGE not in text:
        raise ValueError("the prompt holds a video but not the video preamble of the chat template "
                         f"({VIDEO_MESSAGE!r}); render it with videollama's chat template")
    if video.has_audio:
        template = get_template(template_name)
        silent, heard = (_system_block(template_name, system_for(template, video=True, image=False, audio=audio,
                                                                 system=None, audio_branch=audio_branch))
                         for audio in (False, True))
        if silent != heard and text.startswith(silent):
            text = heard + text[len(silent):]
    return text.replace(VIDEO_MESSAGE, video.preamble, 1)
