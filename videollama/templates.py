"""Conversation templates for inference, byte-compatible with the official Video-LLaMA demo.

A template turns (system, [(user, assistant | None), ...]) into the prompt string. Media sit in the
first user message as single placeholder markers; the processor expands them to token runs.

- ``vicuna_v0``: ``"###Human: {q}###Assistant: {a}###Human: {q2}###Assistant:"`` (system "",
  separator "###"); generation stops at "###".
- ``llama_2``: ``"[INST] <<SYS>>\\n{system}\\n<</SYS>>\\n\\n{q} [/INST] {a} </s><s>[INST] {q2} [/INST]"``;
  generation stops at the tokenizer's EOS.

New templates register with :func:`register_template` (a renderer function and stop strings).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .errors import UsageError
from .tokenizer import AUDIO_PLACEHOLDER, IMAGE_PLACEHOLDER

# Official upload messages (conversation_video.py). 16 spaces separate the AV sentences.
IMAGE_MESSAGE = f"<Image>{IMAGE_PLACEHOLDER}</Image> "
VIDEO_MESSAGE = f"<Video>{IMAGE_PLACEHOLDER}</Video> "
AUDIO_SENTENCE = f"Close your eyes, open your ears and you imagine only based on the sound that: {AUDIO_PLACEHOLDER}. "
AV_MESSAGE = (
    AUDIO_SENTENCE
    + " " * 16
    + f"Close your ears, open your eyes and you see that <Video>{IMAGE_PLACEHOLDER}</Video>.  "
    + " " * 16
    + "Now answer my question based on what you have just seen and heard."
)
VISUAL_SYSTEM = (
    "You are able to understand the visual content that the user provides. "
    "Follow the instructions carefully and explain your answers in detail."
)
LLAMA2_DEFAULT_SYSTEM = (
    "You are a helpful language and vision assistant. You are able to understand the visual content that "
    "the user provides, and assist the user with a variety of tasks using natural language."
)


Turns = list[tuple[str, "str | None"]]


def render_vicuna_v0(system: str, turns: Turns) -> str:
    out = system + "###"
    for user, assistant in turns:
        out += f"Human: {user}###Assistant:"
        if assistant is not None:
            out += f" {assistant}###"
    return out


def render_llama_2(system: str, turns: Turns) -> str:
    out = ""
    for i, (user, assistant) in enumerate(turns):
        if i == 0:
            user = f"<<SYS>>\n{system}\n<</SYS>>\n\n{user}"
        out += ("" if i == 0 else "<s>") + f"[INST] {user} [/INST]"
        if assistant is not None:
            out += f" {assistant} </s>"
    return out


@dataclass(frozen=True)
class Template:
    """How a conversation becomes a prompt, and where the model's answer ends.

    ``renderer(system, turns)`` builds the prompt; ``stop_strings`` end generation (besides the
    tokenizer's EOS when ``stop_at_eos``); ``answer_after``, when set, keeps only the text after its
    last occurrence (the official vicuna post-processing).
    """

    name: str
    default_system: str
    stop_strings: tuple[str, ...]
    stop_at_eos: bool
    renderer: Callable[[str, Turns], str]
    answer_after: str | None = None

    def render(self, system: str, turns: Turns) -> str:
        """Prompt for ``turns`` = [(user, assistant), ..., (user, None)] (the last answer pending)."""
        return self.renderer(system, turns)

    def clean_answer(self, text: str) -> str:
        """Cut the generated text at the first stop string and strip it (official post-processing)."""
        for stop in self.stop_strings:
            text = text.split(stop)[0]
        if self.answer_after:
            text = text.split(self.answer_after)[-1]
        return text.strip()


TEMPLATES: dict[str, Template] = {}


def register_template(template: Template) -> Template:
    """Make ``template`` available by name (``--template NAME``, ``VideoLlamaConfig.template``)."""
    TEMPLATES[template.name] = template
    return template


register_template(Template("vicuna_v0", default_system="", stop_strings=("###",), stop_at_eos=True,
                           renderer=render_vicuna_v0, answer_after="Assistant:"))
register_template(Template("llama_2", default_system=LLAMA2_DEFAULT_SYSTEM, stop_strings=("</s>",), stop_at_eos=True,
                           renderer=render_llama_2))


def get_template(name: str) -> Template:
    try:
        return TEMPLATES[name]
    except KeyError:
        raise UsageError(f"unknown template {name!r}; choose one of {sorted(TEMPLATES)}") from None


def media_message(*, video: bool = False, image: bool = False, audio: bool = False, timestamps: str = "") -> str:
    """The official first-message preamble for the given media (``timestamps``: the sampling sentence)."""
    if image and (video or audio):
        raise ValueError("an image cannot be combined with other media in one message")
    if image:
        return IMAGE_MESSAGE
    if video and audio:
        return AV_MESSAGE
    if video:
        return VIDEO_MESSAGE + timestamps
    if audio:
        return AUDIO_SENTENCE
    return ""


def windowed_video_message(labels: list[str], *, audio: bool, duration: float) -> str:
    """The first-message preamble of a video read in windows (ours; the official demo has none).

    The official messages, with each window's ``<ImageHere>`` (and ``<AudioHere>``) run after its
    time label, e.g. ``<Video>00:00:00-00:00:32 <ImageHere> 00:00:32-00:01:04 <ImageHere></Video>``.
    A video without sound also gets a sentence saying how the windows are labelled, in place of the
    official sampling sentence.
    """
    video = "<Video>" + " ".join(f"{label} {IMAGE_PLACEHOLDER}" for label in labels) + "</Video>"
    if not audio:
        return (f"{video} The video lasts {duration:.1f} seconds and is shown in {len(labels)} windows, each after "
                "its time range (hours:minutes:seconds). ")
    sounds = " ".join(f"{label} {AUDIO_PLACEHOLDER}" for label in labels)
    # AV_MESSAGE with the runs in place of its single video and audio markers
    return AV_MESSAGE.replace(f"<Video>{IMAGE_PLACEHOLDER}</Video>", video, 1).replace(AUDIO_PLACEHOLDER, sounds, 1)


def join_question(preamble: str, question: str) -> str:
    """Official ``ask()``: the question joins the media message with one space (``' '.join``)."""
    return f"{preamble} {question}" if preamble else question


def system_for(template: Template, *, video: bool, image: bool, audio: bool, system: str | None,
               audio_branch: bool) -> str:
    """System prompt the official demos use for these media, whatever the template (overridable).

    ``audio_branch`` says which demo a model folder corresponds to: a folder without an audio
    branch is served by ``demo_video.py``, one with it by ``demo_audiovideo.py``. Both demos set
    the system text after choosing the conversation, so vicuna prompts get it too
    (``"{system}###Human: ..."``):

    * image: :data:`VISUAL_SYSTEM` in both demos;
    * video (with or without its sound): ``demo_audiovideo.py`` sets ``""``; ``demo_video.py``
      sets :data:`VISUAL_SYSTEM`;
    * audio alone and text alone (no official demo has them): the template's default system.
    """
    if system is not None:
        return system
    if image:
        return VISUAL_SYSTEM
    if video:
        return "" if audio_branch else VISUAL_SYSTEM
    return template.default_system
