"""Finish a prompt rendered by the chat template with what only the decoded media can tell.

The chat template (``chat_template.py``) renders our own prompt for the *declared* media kind. Three facts
come from the file itself: a video's frame timestamps (the official sampling sentence), whether it has a
sound track, and, when it is read in windows (more sampled frames than the model's ``max_frames``), each
window's time label. With sound, the video is answered with both branches, exactly as ``Pipeline`` does:
the audio-visual preamble (``templates.AV_MESSAGE``) replaces the video one, and where
``templates.system_for`` gives a video with sound another default system prompt than a silent one,
that one replaces it. A system prompt the request gave is kept. In windows, the preamble is
``templates.windowed_video_message``: each window's ``<ImageHere>`` (and ``<AudioHere>``) after its label.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..templates import VIDEO_MESSAGE, get_template, media_message, system_for, windowed_video_message


@dataclass(frozen=True)
class VideoFacts:
    """What the decoded video adds to the prompt."""

    timestamps: str  # one window: the official sentence, "The video contains 8 frames sampled at ... seconds. "
    has_audio: bool
    windows: tuple[str, ...] = ()  # read in windows: each window's time label, in order
    duration: float = 0.0  # read in windows: seconds, stated by the preamble of a silent video

    @property
    def num_windows(self) -> int:
        return max(1, len(self.windows))

    @property
    def preamble(self) -> str:
        """The video's first-message preamble, as ``MediaFeatures.preamble`` builds it."""
        if self.windows:
            return windowed_video_message(list(self.windows), audio=self.has_audio, duration=self.duration)
        return media_message(video=True, audio=self.has_audio, timestamps=self.timestamps)


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
