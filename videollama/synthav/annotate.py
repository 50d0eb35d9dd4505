"""Text about a SynthAV scene: captions, instruction turns and checkable QA items.

Everything here is derived from the scene's truth (``world.Scene``), with one fixed phrasing per
question type so that a tiny language model can learn the world's language quickly. Answers are
short and checkable (one word, or "<shape> appears|disappears"), and every question type has a
closed answer set (``choices``), so chance = 1 / len(choices) is known per item.

Question families (``FAMILIES``):

- ``static``: colour, shape, count, size of objects visible in *every* frame, so one frame suffices;
- ``temporal``: direction of motion, order of appearance, what happens after an object appears;
- ``audio``: what is making the sound / is there a given sound (flagged ``hide_video``: meant to
  be asked from the soundtrack alone; includes off-screen bells and drums);
- ``audio_visual``: which visible object makes a sound, which is silent, does the <colour> object
  make a sound: neither sight nor sound alone answers these (some objects are silent).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .world import COLOURS, DIRECTIONS, SHAPES, SOUND_SOURCES, Scene, SceneObject, WorldConfig

FAMILIES: tuple[str, ...] = ("static", "temporal", "audio", "audio_visual")
NUMBER_WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five")
YES_NO: tuple[str, ...] = ("yes", "no")
EVENT_KINDS: tuple[str, ...] = ("appears", "disappears")
EVENT_ANSWERS: tuple[str, ...] = tuple(f"{s} {k}" for s in SHAPES for k in EVENT_KINDS)

COUNT_ONE_KEEP = 0.3
"""Clip count questions whose answer is "one" are kept with this probability: single-object clips
are the only ones where every object stays all clip long so often, and would dominate otherwise."""

DESCRIBE_VIDEO = "Describe what happens in the video."
DESCRIBE_IMAGE = "Describe the image."
WHAT_DO_YOU_HEAR = "What do you hear?"
NOTHING = "nothing"
SILENCE = "silence."


@dataclass(frozen=True)
class QAItem:
    """One question with its short answer and closed answer set."""

    qtype: str
    family: str
    question: str
    answer: str
    choices: tuple[str, ...]
    hide_video: bool = False

    def __post_init__(self) -> None:
        if self.answer not in self.choices:  # a bug in a template, never bad user input
            raise AssertionError(f"{self.qtype}: answer {self.answer!r} not in choices {self.choices}")

    @property
    def chance(self) -> float:
        return 1.0 / len(self.choices)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["choices"] = list(self.choices)
        return out


# A template gets the scene, the world config, a generator and the frame of a still (None: clip).
Builder = Callable[[Scene, WorldConfig, np.random.Generator, "int | None"], "QAItem | None"]


@dataclass(frozen=True)
class QuestionType:
    name: str
    family: str
    build: Builder
    still_ok: bool = False
    """Also asked about single images (static questions only)."""


def _pick(rng: np.random.Generator, items: list[Any]) -> Any:
    return items[int(rng.integers(len(items)))]


def _static_objects(scene: Scene, frame: int | None) -> list[SceneObject]:
    """Objects that every frame under consideration shows (one frame for a still)."""
    return scene.visible_at(frame) if frame is not None else scene.always_visible()


def _yes_no(rng: np.random.Generator, yes: list[Any], no: list[Any]) -> tuple[Any, str] | None:
    """Balanced yes/no: a coin picks the answer, then a subject with that answer.

    Asked only when both answers are possible, so whether the question exists does not depend on
    its answer (otherwise picking one question per family would skew P(yes) away from 1/2).
    """
    if not yes or not no:
        return None
    want_yes = bool(rng.random() < 0.5)
    return _pick(rng, yes if want_yes else no), ("yes" if want_yes else "no")


# ------------------------------------------------------------------------------------ static


def q_colour(scene: Scene, config: WorldConfig, rng: np.random.Generator, frame: int | None) -> QAItem | None:
    objs = _static_objects(scene, frame)
    if not objs:
        return None
    o = _pick(rng, objs)
    return QAItem("colour", "static", f"What colour is the {o.shape}?", o.colour, tuple(COLOURS))


def q_shape(scene: Scene, config: WorldConfig, rng: np.random.Generator, frame: int | None) -> QAItem | None:
    objs = _static_objects(scene, frame)
    if not objs:
        return None
    o = _pick(rng, objs)
    return QAItem("shape", "static", f"What shape is the {o.colour} object?", o.shape, SHAPES)


def q_count(scene: Scene, config: WorldConfig, rng: np.random.Generator, frame: int | None) -> QAItem | None:
    objs = _static_objects(scene, frame)
    if not objs or frame is None and len(objs) != len(scene.objects):
        return None  # objects come and go: the count is not a one-frame question
    if len(objs) == 1 and rng.random() >= COUNT_ONE_KEEP:
        return None
    choices = NUMBER_WORDS[1 : config.max_objects + 1]
    return QAItem("count", "static", "How many objects are there?", NUMBER_WORDS[len(objs)], choices)


def q_size(scene: Scene, config: WorldConfig, rng: np.random.Generator, frame: int | None) -> QAItem | None:
    objs = _static_objects(scene, frame)
    if not objs:
        return None
    o = _pick(rng, objs)
    return QAItem("size", "static", f"Is the {o.name} small or large?", o.size, ("small", "large"))


# ---------------------------------------------------------------------------------- temporal


def q_direction(scene: Scene, config: WorldConfig, rng: np.random.Generator, frame: int | None) -> QAItem | None:
    o = _pick(rng, list(scene.objects))
    return QAItem("direction", "temporal", f"Which way does the {o.name} move?", o.direction, tuple(DIRECTIONS))


def q_order(scene: Scene, config: WorldConfig, rng: np.random.Generator, frame: int | None) -> QAItem | None:
    objs = scene.objects
    pairs = [(a, b) for i, a in enumerate(objs) for b in objs[i + 1 :] if a.on_frame != b.on_frame]
    if not pairs:
        return None
    a, b = _pick(rng, pairs)
    if rng.random() < 0.5:  # the answer must not be given away by its position in the question
        a, b = b, a
    first = a if a.on_frame < b.on_frame else b
    return QAItem(
        "order", "temporal", f"Which appears first, the {a.shape} or the {b.shape}?", first.shape, (a.shape, b.shape)
    )


def q_after(scene: Scene, config: WorldConfig, rng: np.random.Generator, frame: int | None) -> QAItem | None:
    events = scene.events()
    candidates = [e for e in events if e.kind == "appears" and any(n.frame > e.frame for n in events)]
    if not candidates:
        return None
    e = _pick(rng, candidates)
    nxt = next(n for n in events if n.frame > e.frame)  # event frames are distinct within a clip
    subject = scene.objects[e.index]
    answer = f"{scene.objects[nxt.index].shape} {nxt.kind}"
    return QAItem("after", "temporal", f"What happens after the {subject.name} appears?", answer, EVENT_ANSWERS)


# ------------------------------------------------------------------------------------- audio


def q_source(scene: Scene, config: WorldConfig, rng: np.random.Generator, frame: int | None) -> QAItem | None:
    sources = scene.sound_sources()
    if len(sources) != 1:
        return None
    return QAItem("source", "audio", "What is making the sound?", sources[0], SOUND_SOURCES, hide_video=True)


def q_hear(scene: Scene, config: WorldConfig, rng: np.random.Generator, frame: int | None) -> QAItem | None:
    present = set(scene.sound_sources())
    picked = _yes_no(rng, [s for s in SOUND_SOURCES if s in present], [s for s in SOUND_SOURCES if s not in present])
    if picked is None:
        return None
    source, answer = picked
    return QAItem("hear", "audio", f"Is there a {source} sound?", answer, YES_NO, hide_video=True)


# ------------------------------------------------------------------------------ audio-visual


def q_sounding_colour(scene: Scene, config: WorldConfig, rng: np.random.Generator, frame: int | None) -> QAItem | None:
    sounding = [o for o in scene.objects if o.sounding]
    if len(scene.objects) < 2 or len(sounding) != 1:
        return None
    question = "What colour is the object that makes a sound?"
    return QAItem("sounding_colour", "audio_visual", question, sounding[0].colour, tuple(COLOURS))


def q_silent_colour(scene: Scene, config: WorldConfig, rng: np.random.Generator, frame: int | None) -> QAItem | None:
    silent = [o for o in scene.objects if not o.sounding]
    if len(scene.objects) < 2 or len(silent) != 1:
        return None
    return QAItem("silent_colour", "audio_visual", "What colour is the silent object?", silent[0].colour, tuple(COLOURS))


def q_is_sounding(scene: Scene, config: WorldConfig, rng: np.random.Generator, frame: int | None) -> QAItem | None:
    if len(scene.objects) < 2:
        return None  # with one object, hearing any shape sound already answers it
    picked = _yes_no(rng, [o for o in scene.objects if o.sounding], [o for o in scene.objects if not o.sounding])
    if picked is None:
        return None
    o, answer = picked
    return QAItem("is_sounding", "audio_visual", f"Does the {o.colour} object make a sound?", answer, YES_NO)


QUESTION_TYPES: tuple[QuestionType, ...] = (
    QuestionType("colour", "static", q_colour, still_ok=True),
    QuestionType("shape", "static", q_shape, still_ok=True),
    QuestionType("count", "static", q_count, still_ok=True),
    QuestionType("size", "static", q_size, still_ok=True),
    QuestionType("direction", "temporal", q_direction),
    QuestionType("order", "temporal", q_order),
    QuestionType("after", "temporal", q_after),
    QuestionType("source", "audio", q_source),
    QuestionType("hear", "audio", q_hear),
    QuestionType("sounding_colour", "audio_visual", q_sounding_colour),
    QuestionType("silent_colour", "audio_visual", q_silent_colour),
    QuestionType("is_sounding", "audio_visual", q_is_sounding),
)


def applicable(
    scene: Scene, config: WorldConfig, rng: np.random.Generator, *, family: str | None = None, frame: int | None = None
) -> list[QAItem]:
    """One item per applicable question type (of ``family`` if given; static only for a still)."""
    if family is not None and family not in FAMILIES:
        raise ValueError(f"unknown question family {family!r}; expected one of {FAMILIES}")
    items = []
    for qt in QUESTION_TYPES:
        if (family is None or qt.family == family) and (frame is None or qt.still_ok):
            item = qt.build(scene, config, rng, frame)
            if item is not None:
                items.append(item)
    return items


def sample_question(scene: Scene, config: WorldConfig, rng: np.random.Generator, family: str) -> QAItem | None:
    """A uniformly chosen applicable question of ``family`` (None if none applies)."""
    items = applicable(scene, config, rng, family=family)
    return _pick(rng, items) if items else None


# ---------------------------------------------------------------------------------- captions


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def video_caption(scene: Scene) -> str:
    """What is *seen*, one sentence per object in order of appearance (WebVid captions are visual).

    E.g. "a large red circle moves left. then a small blue star appears, moves up and disappears."
    """
    sentences = []
    prev_on = 0
    for o in sorted(scene.objects, key=lambda o: o.on_frame):  # stable: index order on ties
        enters, leaves = o.on_frame > 0, o.off_frame < scene.num_frames
        verbs = (["appears"] if enters else []) + [f"moves {o.direction}"] + (["disappears"] if leaves else [])
        lead = "then " if o.on_frame > prev_on else ""
        sentences.append(f"{lead}a {o.phrase} {_join(verbs)}.")
        prev_on = o.on_frame
    return " ".join(sentences)


def still_caption(scene: Scene, frame: int) -> str:
    """'a large red circle and a small blue star.' (the objects visible in ``frame``)."""
    objs = scene.visible_at(frame)
    if not objs:
        return "an empty grey background."
    return _join([f"a {o.phrase}" for o in objs]) + "."


def audio_caption(scene: Scene) -> str:
    """What is *heard*, in order of onset (an audio caption, WavCaps-style).

    E.g. "a circle sound, then a bell sound." or "silence." when nothing sounds.
    """
    sources = scene.sound_sources()
    return ", then ".join(f"a {s} sound" for s in sources) + "." if sources else SILENCE


def sound_answer(scene: Scene) -> str:
    """Answer to "What do you hear?": the audible sources in order of onset, or "nothing"."""
    sources = scene.sound_sources()
    return _join([f"a {s}" for s in sources]) if sources else NOTHING


# ------------------------------------------------------------------------------- instructions


def video_instruction(scene: Scene, config: WorldConfig, rng: np.random.Generator) -> list[dict[str, str]]:
    """VideoChat-style QA turns: the description, what is heard, one question per family; shuffled."""
    turns = [{"q": DESCRIBE_VIDEO, "a": video_caption(scene)}, {"q": WHAT_DO_YOU_HEAR, "a": sound_answer(scene)}]
    for family in FAMILIES:
        item = sample_question(scene, config, rng, family)
        if item is not None:
            turns.append({"q": item.question, "a": item.answer})
    order = rng.permutation(len(turns))
    return [turns[int(i)] for i in order]


def audio_instruction(scene: Scene, config: WorldConfig, rng: np.random.Generator) -> list[dict[str, str]]:
    """QA turns about the soundtrack alone: what is heard + every applicable audio question; shuffled."""
    turns = [{"q": WHAT_DO_YOU_HEAR, "a": sound_answer(scene)}]
    turns += [{"q": item.question, "a": item.answer} for item in applicable(scene, config, rng, family="audio")]
    return [turns[int(i)] for i in rng.permutation(len(turns))]


def image_instruction(scene: Scene, config: WorldConfig, rng: np.random.Generator, frame: int) -> list[dict[str, str]]:
    """LLaVA-style conversation about one still: description + two static questions, shuffled.

    The first human turn starts with "<image>\\n", as in LLaVA-Instruct-150K.
    """
    pairs = [(DESCRIBE_IMAGE, still_caption(scene, frame))]
    items = applicable(scene, config, rng, family="static", frame=frame)
    for i in rng.permutation(len(items))[:2]:
        pairs.append((items[int(i)].question, items[int(i)].answer))
    pairs = [pairs[int(i)] for i in rng.permutation(len(pairs))]
    conversation = []
    for k, (q, a) in enumerate(pairs):
        conversation.append({"from": "human", "value": ("<image>\n" + q) if k == 0 else q})
        conversation.append({"from": "gpt", "value": a})
    return conversation
