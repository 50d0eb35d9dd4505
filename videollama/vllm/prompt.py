"""Finish a prompt rendered by the chat template with what only the decoded media can tell.

The chat template (``chat_template.py``) renders our own prompt for the *declared* media kind. Two facts
come from the file itself: a video's frame timestamps (the official sampling sentence) and whether it
has a sound track. With sound, the video is answered with both branches, exactly as ``Pipeline`` does:
the audio-visual preamble (``templates.AV_MESSAGE``) replaces the video one, and where
``templates.system_for`` gives a video with sound another default system prompt than a silent one,
that one replaces it. A system prompt the request gave is kept.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..templates import AV_MESSAGE, VIDEO_MESSAGE, get_template, system_for


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


def finish_prompt(text: str, video: VideoFacts | None, template_name: str, *, audio_branch: bool) -> str:
    """``text`` (the chat template's output, BOS removed) with the video's facts filled in."""
    if video is None:
        return text
    if VIDEO_MESSAGE not in text:
        raise ValueError("the prompt holds a video but not the video preamble of the chat template "
                         f"({VIDEO_MESSAGE!r}); render it with videollama's chat template")
    if not video.has_audio:
        return text.replace(VIDEO_MESSAGE, VIDEO_MESSAGE + video.timestamps, 1)
    template = get_template(template_name)
    silent, heard = (_system_block(template_name, system_for(template, video=True, image=False, audio=audio,
                                                             system=None, audio_branch=audio_branch))
                     for audio in (False, True))
    if silent != heard and text.startswith(silent):
        text = heard + text[len(silent):]
    return text.replace(VIDEO_MESSAGE, AV_MESSAGE, 1)
