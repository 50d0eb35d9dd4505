"""Finish a prompt rendered by the chat template with what only the decoded media can tell.

The chat template (``chat_template.py``) renders our own prompt for the *declared* media kind. Two facts
come from the file itself: a video's frame timestamps (the official sampling sentence) and whether it
has a sound track. With sound, the video is answered with both branches, exactly as ``Pipeline`` does:
the audio-visual preamble (``templates.AV_MESSAGE``) replaces the video one, and the default visual
system prompt becomes the empty one the official AV demo uses (``templates.system_for``). A system
prompt the request gave is kept.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..templates import AV_MESSAGE, VIDEO_MESSAGE, VISUAL_SYSTEM, get_template


@dataclass(frozen=True)
class VideoFacts:
    """What the decoded video adds to the prompt."""

    timestamps: str  # the official sentence, "The video contains 8 frames sampled at ... seconds. "
    has_audio: bool


def _system_block(template_name: str, system: str) -> str:
    """The text a template renders before the first question for ``system`` ("" for vicuna_v0's layout)."""
    marker = "\x00question\x00"
    rendered = get_template(template_name).render(system, [(marker, None)])
    return rendered[: rendered.index(marker)]


def finish_prompt(text: str, video: VideoFacts | None, template_name: str) -> str:
    """``text`` (the chat template's output, BOS removed) with the video's facts filled in."""
    if video is None:
        return text
    if VIDEO_MESSAGE not in text:
        raise ValueError("the prompt holds a video but not the video preamble of the chat template "
                         f"({VIDEO_MESSAGE!r}); render it with videollama's chat template")
    if not video.has_audio:
        return text.replace(VIDEO_MESSAGE, VIDEO_MESSAGE + video.timestamps, 1)
    visual, silent = _system_block(template_name, VISUAL_SYSTEM), _system_block(template_name, "")
    if visual != silent and text.startswith(visual):
        text = silent + text[len(visual):]
    return text.replace(VIDEO_MESSAGE, AV_MESSAGE, 1)
