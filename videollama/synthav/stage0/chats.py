"""The media chats of stage 0's generative phases: one form per inference prompt, each answerable from
what fills its media slots.

:data:`CHAT_FORMS` lists the forms (an image with a static question; 4 frames in order in the video slot
with the description, a static or a temporal question; a frame showing exactly the clip's sound sources
in the audio slot; both). :class:`ChatSampler` draws them, :func:`picture_chat` tokenises one around its
slots and :func:`splice_prefix` batches them with the pictures spliced in where the prompt puts the media.
"""

from __future__ import annotations

import logging
import random
import re
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from ...templates import AUDIO_SENTENCE, AV_MESSAGE, IMAGE_MESSAGE, LLAMA2_DEFAULT_SYSTEM, VIDEO_MESSAGE, VISUAL_SYSTEM
from ...tokenizer import AUDIO_PLACEHOLDER, IMAGE_PLACEHOLDER
from ..annotate import DESCRIBE_VIDEO, WHAT_DO_YOU_HEAR, image_instruction, sample_question, sound_answer, video_caption
from ..world import WorldConfig
from .loop import IGNORE_INDEX
from .media_cache import FRAMES_PER_CLIP, MediaCache
from .world_data import SYSTEMS, TIMESTAMP_EXAMPLE

logger = logging.getLogger(__name__)

PICTURE_PREAMBLES = (IMAGE_MESSAGE, VIDEO_MESSAGE + TIMESTAMP_EXAMPLE)
"""Where a one-picture chat shows its picture: as the inference prompts put an image or a video."""
VIDEO_FRAMES = (0, 2, 5, 7)
"""Cached frames (of 8 uniform ones) a video-form chat shows, in order: 4 x 8 queries = the 32 video tokens."""
_SLOT = re.compile(f"{re.escape(IMAGE_PLACEHOLDER)}|{re.escape(AUDIO_PLACEHOLDER)}")


@dataclass(frozen=True)
class ChatForm:
    """How a stage-0 media chat looks: the inference prompt's upload message and what fills its slots.

    ``slots`` gives, per placeholder of ``preamble`` in order, what fills it: ``"frame"`` (one frame's
    query outputs) or ``"clip"`` (those of :data:`VIDEO_FRAMES`, in order); ``system`` is the system
    prompt inference uses with these media (``templates.system_for``).
    """

    name: str
    preamble: str
    slots: tuple[str, ...]
    system: str
    weight: float


CHAT_FORMS: tuple[ChatForm, ...] = (
    ChatForm("image", IMAGE_MESSAGE, ("frame",), VISUAL_SYSTEM, 0.4),
    # The SynthAV model has both branches, so a silent video gets demo_audiovideo.py's system text, "".
    ChatForm("video", VIDEO_MESSAGE + TIMESTAMP_EXAMPLE, ("clip",), "", 0.35),
    ChatForm("audio", AUDIO_SENTENCE, ("frame",), LLAMA2_DEFAULT_SYSTEM, 0.125),
    ChatForm("audio_video", AV_MESSAGE, ("frame", "clip"), "", 0.125),  # the sound's slot comes first
)
"""The media chats of the generative phases, one form per inference prompt: the small LLM stands in for a
chat LLM that answers whatever is asked about whatever fills the media slots. The audio slot holds a
frame's picture (stage 0 never shows the LLM audio). Each chat is answerable from its slots
(:meth:`ChatSampler.question`), so the LLM answers from the media, not from the question alone
(docs/synthav.md#diagnosis)."""


def picture_chat(tokenizer, system: str, preamble: str, question: str, answer: str) -> tuple[list[list[int]], int]:
    """Token ids of a one-turn llama_2 chat around media: (the text pieces around the slots, answer length).

    ``preamble`` is an upload message with one or two placeholders; the media's soft tokens go
    between the pieces, where the inference prompt puts them. The answer (with EOS) ends the last piece.
    """
    texts = _SLOT.split(preamble)
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    pieces = [[tokenizer.bos_token_id] + encode(f"[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{texts[0]}")]
    pieces += [encode(text) for text in texts[1:-1]]
    answer_ids = encode(f" {answer}") + [tokenizer.eos_token_id]
    pieces.append(encode(f"{texts[-1]}{question} [/INST]") + answer_ids)
    return pieces, len(answer_ids)


def splice_prefix(embed: nn.Embedding, parts: list[tuple[list[list[int]], int]], pictures: list[list[Tensor]],
                  ) -> tuple[Tensor, Tensor, Tensor]:
    """Batch of media chats: (inputs_embeds (B, L, D), attention_mask (B, L), labels (B, L)).

    ``parts`` holds :func:`picture_chat`'s (pieces, answer length) per row and ``pictures`` per row the
    (Q_k, D) soft tokens to splice between consecutive pieces; only the answer tokens carry labels.
    Right-padded.
    """
    rows, labels = [], []
    for (pieces, answer_len), slots in zip(parts, pictures):
        if len(slots) != len(pieces) - 1:
            raise ValueError(f"a chat with {len(pieces) - 1} media slots got {len(slots)} pictures")
        row = [embed(torch.tensor(pieces[0]))]
        for picture, piece in zip(slots, pieces[1:]):
            row += [picture, embed(torch.tensor(piece))]
        rows.append(torch.cat(row))  # (L_i, D)
        label = torch.full((len(rows[-1]),), IGNORE_INDEX, dtype=torch.long)
        label[-answer_len:] = torch.tensor(pieces[-1][-answer_len:])
        labels.append(label)
    lengths = torch.tensor([len(r) for r in rows])
    mask = (torch.arange(int(lengths.max()))[None] < lengths[:, None]).long()  # (B, L)
    inputs = nn.utils.rnn.pad_sequence(rows, batch_first=True)  # (B, L, D)
    return inputs, mask, nn.utils.rnn.pad_sequence(labels, batch_first=True, padding_value=IGNORE_INDEX)


def sound_frames(cache: MediaCache) -> list[tuple[int, int]]:
    """(clip, cached frame) pairs whose frame shows exactly the clip's sound sources.

    The clip has no off-screen sound and at least one sounding object, and the frame shows every sounding
    object and no silent one: a picture that answers the clip's audio questions ("Is there a star sound?"
    is "is a star shown"), the stand-in for the sound in stage 0's audio-slot chats.
    """
    pairs = []
    for c, scene in enumerate(cache.scenes):
        sounding = {id(o) for o in scene.objects if o.sounding}
        if scene.offscreen or not sounding:
            continue
        pairs += [(c, f) for f, frame in enumerate(cache.frame_index[c])
                  if {id(o) for o in scene.visible_at(frame)} == sounding]
    return pairs


@dataclass
class ChatDraw:
    """One sampled media chat, before tokenisation: its form, clip ``c``, cached frame ``f``, text and system."""

    form: ChatForm
    c: int
    f: int
    question: str
    answer: str
    system: str


class ChatSampler:
    """Draws the media chats of stage 0 (:data:`CHAT_FORMS`), each answerable from what fills its slots.

    :class:`PictureLosses` tokenises each draw and fills its slots with the pictures.
    """

    def __init__(self, cache: MediaCache, world: WorldConfig, rng: random.Random, np_rng: np.random.Generator):
        self.cache, self.world, self.rng, self.np_rng = cache, world, rng, np_rng
        self.sound_frames = sound_frames(cache)
        if not self.sound_frames:
            logger.warning("no cached frame shows exactly its clip's sound sources; audio-slot chats use any frame")

    def question(self, form: ChatForm, c: int, f: int) -> tuple[str, str]:
        """A question of the form's kind about clip ``c`` (frame ``f`` for an image) and its answer.

        Every question is answerable from what fills the chat's slots: a still answers static questions,
        4 frames in order the description, static and temporal ones (not what is heard), and the audio
        slot's frame shows exactly the clip's sound sources (:func:`sound_frames`).
        """
        scene, world, np_rng = self.cache.scenes[c], self.world, self.np_rng
        if form.name == "image":  # the still's description or a static question about it
            conversation = image_instruction(scene, world, np_rng, self.cache.frame_index[c][f])
            k = self.rng.randrange(len(conversation) // 2)
            return conversation[2 * k]["value"].replace("<image>\n", ""), conversation[2 * k + 1]["value"]
        if form.name == "video":  # what the frames show: the description, a static or a temporal question
            family = self.rng.choice(("description", "static", "temporal"))
            item = None if family == "description" else sample_question(scene, world, np_rng, family)
            return (DESCRIBE_VIDEO, video_caption(scene)) if item is None else (item.question, item.answer)
        family = "audio" if form.name == "audio" else "audio_visual"
        item = sample_question(scene, world, np_rng, family)
        if item is None or (form.name == "audio" and self.rng.random() < 0.25):
            return WHAT_DO_YOU_HEAR, sound_answer(scene)
        return item.question, item.answer

    def draw(self) -> ChatDraw:
        form = self.rng.choices(CHAT_FORMS, weights=[f.weight for f in CHAT_FORMS])[0]
        if "audio" in form.name and self.sound_frames:  # the audio slot's frame shows what is heard
            c, f = self.rng.choice(self.sound_frames)
        else:
            c, f = self.rng.randrange(self.cache.frames.shape[0]), self.rng.randrange(FRAMES_PER_CLIP)
        question, answer = self.question(form, c, f)
        system = form.system if self.rng.random() < 0.5 else self.rng.choice(SYSTEMS)  # inference's or training's
        return ChatDraw(form, c, f, question, answer, system)
