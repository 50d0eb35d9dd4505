"""Long SynthAV clips: scenes one after another, and questions that need reading across windows.

A long clip is a run of ordinary SynthAV scenes (``world.sample_scene``), each ``min_scene_seconds``
to ``max_scene_seconds`` long (whole seconds, 4-8 by default) with its own objects and sounds,
concatenated until the clip lasts at least a length drawn from [``min_seconds``, ``max_seconds``]
(1-2 minutes for a cheap run; the issue's 1-10 minutes are the same code with other numbers). The
renderer draws every scene as usual (``render.render_frames`` / ``render_audio``) and the frames and
soundtracks are joined into one H.264 + AAC mp4 at the world's 8 fps.

Question types (:data:`LONG_TYPES`), each with a closed answer set and its chance, except ``first_time``:

==============  ============================================================  =====================
``screen_at``   "What shape is on screen at 00:01:04?" (one object on screen   shapes: 1/4
                for the second before and after)
``sound_at``    "What is making the sound at 00:00:37?" (one source sounding   sound sources: 1/6
                for the second before and after)
``order``       "Which appears first, the red circle or the blue star?"        the two: 1/2
                (first appearances at least ``ORDER_GAP_S`` apart)
``count``       "How many times does the red circle appear?" (scenes showing   one ... five: 1/5
                it; consecutive scenes count twice)
``first_time``  "When does the red circle first appear? Answer in seconds."    a number of seconds
==============  ============================================================  =====================

``first_time`` is right when the reply's number lies within ``tolerance`` seconds of the truth, where
``tolerance`` is half a window of the evaluation's reading (:func:`when_tolerance`: an interval one
window wide around the truth). Its chance is that of a uniform guess in [0, duration]: the share of
the clip that interval covers (about 1 / number of windows). The time-located types are
``screen_at``, ``sound_at`` and ``first_time``.

``generate_long(out_dir, clips, seed)`` writes (paths relative to ``out_dir``; nothing else there is
touched, so it can share a SynthAV folder)::

    long/long_instruct.json, long/videos/<id>.mp4    training clips, VideoChat shape {"video", "QA"}
    qa/long_test.json, qa/long_videos/<id>.mp4       held-out clips and questions (their own seed stream)
    long/truth.jsonl, long/meta.json                 every clip's scene timeline; settings and counts

Every clip draws its timeline from ``numpy.random.default_rng([seed, stream, index, 0])`` and its
questions from ``[..., 1]``: the output is the same for any ``workers``.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UsageError
from ..media.windows import clock
from .annotate import NUMBER_WORDS
from .generate import ID_BASE, STREAMS
from .render import render_audio, render_frames, write_mp4
from .world import SHAPES, SOUND_SOURCES, Scene, WorldConfig, sample_scene

LONG_TYPES: tuple[str, ...] = ("screen_at", "sound_at", "order", "count", "first_time")
TIME_LOCATED: tuple[str, ...] = ("screen_at", "sound_at", "first_time")
AT_MARGIN_S = 1.0  # screen_at / sound_at: the answer holds this long before and after the asked second
ORDER_GAP_S = 8.0  # order: the two first appearances are at least this far apart
COUNT_CHOICES: tuple[str, ...] = NUMBER_WORDS[1:6]  # count: one ... five
WHEN_SUFFIX = "Answer in seconds."
SCENE_SUBSTREAM, TEXT_SUBSTREAM = 0, 1
LONG_OUTPUTS = ("long", "qa/long_test.json", "qa/long_videos")
WORLD = WorldConfig()  # the shipped world: 8 fps, 112x112, 16 kHz


@dataclass(frozen=True)
class LongSettings:
    """How long clips are cut, and how the evaluation reads them (which sizes ``first_time``'s tolerance)."""

    min_seconds: float = 60.0
    max_seconds: float = 120.0
    min_scene_seconds: int = 4
    max_scene_seconds: int = 8
    fps: float = 1.0  # the evaluation's (and training's) window_fps
    window_frames: int = 32  # the model's max_frames
    max_windows: int = 4  # frames past max_windows * window_frames are spread uniformly

    def __post_init__(self) -> None:
        if not 0 < self.min_seconds <= self.max_seconds:
            raise UsageError(f"need 0 < min_seconds <= max_seconds, got {self.min_seconds} and {self.max_seconds}")
        if not 4 <= self.min_scene_seconds <= self.max_scene_seconds:
            raise UsageError("need 4 <= min_scene_seconds <= max_scene_seconds (a SynthAV scene lasts at least 4 s), "
                             f"got {self.min_scene_seconds} and {self.max_scene_seconds}")
        if self.fps <= 0 or self.window_frames < 1 or self.max_windows < 1:
            raise UsageError(f"need fps > 0, window_frames >= 1 and max_windows >= 1, got {self.fps}, "
                             f"{self.window_frames}, {self.max_windows}")


DEFAULT_LONG = LongSettings()


@dataclass(frozen=True)
class LongClip:
    """A long clip's truth: its scenes in order and when each starts (seconds)."""

    scenes: tuple[Scene, ...]
    starts: tuple[float, ...]
    fps: int = 8

    @property
    def durations(self) -> list[float]:
        return [scene.num_frames / self.fps for scene in self.scenes]

    @property
    def duration(self) -> float:
        return self.starts[-1] + self.durations[-1]

    def appearances(self) -> dict[str, list[tuple[float, float]]]:
        """Object name ('red circle') -> the [start, end) seconds of every scene that shows it, in order."""
        out: dict[str, list[tuple[float, float]]] = {}
        for start, scene in zip(self.starts, self.scenes):
            for obj in scene.objects:
                out.setdefault(obj.name, []).append((start + obj.on_frame / self.fps, start + obj.off_frame / self.fps))
        return out

    def sounds(self) -> list[tuple[str, float, float]]:
        """(source, start, end) seconds of every sound: sounding objects while on screen, off-screen sounds."""
        out = []
        for start, scene in zip(self.starts, self.scenes):
            out += [(o.shape, start + o.on_frame / self.fps, start + o.off_frame / self.fps)
                    for o in scene.objects if o.sounding]
            out += [(s.source, start + s.on_frame / self.fps, start + s.off_frame / self.fps) for s in scene.offscreen]
        return out

    def on_screen(self, t0: float, t1: float) -> set[str]:
        """Shapes visible at some moment of [t0, t1]."""
        return {name.split()[-1] for name, spans in self.appearances().items() for a, b in spans if a <= t1 and b > t0}

    def sounding(self, t0: float, t1: float) -> set[str]:
        """Sources audible at some moment of [t0, t1]."""
        return {source for source, a, b in self.sounds() if a <= t1 and b > t0}

    def covered(self, t0: float, t1: float, shape: str) -> bool:
        """True when some object of ``shape`` is on screen for the whole of [t0, t1]."""
        return any(a <= t0 and b > t1 for name, spans in self.appearances().items() if name.split()[-1] == shape
                   for a, b in spans)

    def heard_throughout(self, t0: float, t1: float, source: str) -> bool:
        return any(a <= t0 and b > t1 for s, a, b in self.sounds() if s == source)

    def to_dict(self) -> dict[str, Any]:
        return {"fps": self.fps, "starts": list(self.starts), "scenes": [s.to_dict() for s in self.scenes]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LongClip:
        return cls(tuple(Scene.from_dict(s) for s in data["scenes"]), tuple(data["starts"]), int(data["fps"]))


@dataclass(frozen=True)
class LongItem:
    """One long-video question: closed ``choices`` (empty for ``first_time``: a number of seconds)."""

    qtype: str
    question: str
    answer: str
    choices: tuple[str, ...]
    chance: float
    truth_seconds: float | None = None  # first_time: the true time
    tolerance: float | None = None  # first_time: right within this many seconds

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["choices"] = list(self.choices)
        return out


# ------------------------------------------------------------------------------------------------ clips
def sample_long_clip(rng: np.random.Generator, settings: LongSettings, world: WorldConfig = WORLD) -> LongClip:
    """Scenes of whole-second lengths in [min, max]_scene_seconds until the clip reaches a drawn length."""
    target = float(rng.uniform(settings.min_seconds, settings.max_seconds))
    scenes, starts, total = [], [], 0.0
    while total < target:
        seconds = int(rng.integers(settings.min_scene_seconds, settings.max_scene_seconds + 1))
        scenes.append(sample_scene(rng, WorldConfig(fps=world.fps, seconds=seconds, size=world.size,
                                                    sample_rate=world.sample_rate)))
        starts.append(total)
        total += seconds
    return LongClip(tuple(scenes), tuple(starts), world.fps)


def render_long_clip(clip: LongClip, path: str | Path, world: WorldConfig = WORLD) -> int:
    """Render every scene with the SynthAV renderer, join frames and soundtracks, write one mp4; returns its bytes."""
    frames, audio = [], []
    for scene, seconds in zip(clip.scenes, clip.durations):
        config = WorldConfig(fps=clip.fps, seconds=seconds, size=world.size, sample_rate=world.sample_rate)
        frames.append(render_frames(scene, config))  # (T_k, H, W, 3)
        audio.append(render_audio(scene, config))  # (N_k,)
    write_mp4(path, np.concatenate(frames), np.concatenate(audio), world)  # write_mp4 reads fps/size/rate only
    return Path(path).stat().st_size


def _render_packed(args: tuple[LongClip, str]) -> int:
    return render_long_clip(*args)


# ------------------------------------------------------------------------------------------------ questions
def when_tolerance(duration: float, settings: LongSettings) -> float:
    """Half a window of the evaluation's reading of a ``duration``-s clip (seconds): the windows it is cut
    into at ``fps`` (at most ``max_windows``, frames spread uniformly past that) share the clip evenly."""
    frames = min(max(1, math.ceil(duration * settings.fps - 1e-9)), settings.max_windows * settings.window_frames)
    windows = math.ceil(frames / settings.window_frames)
    return duration / windows / 2


def when_chance(truth: float, tolerance: float, duration: float) -> float:
    """Chance of a uniform guess in [0, duration] landing within ``tolerance`` of ``truth``."""
    return (min(duration, truth + tolerance) - max(0.0, truth - tolerance)) / duration


def _seconds_grid(clip: LongClip) -> list[int]:
    return list(range(math.ceil(AT_MARGIN_S), int(clip.duration - AT_MARGIN_S)))


def _one_at(clip: LongClip, present, throughout) -> list[tuple[int, str]]:
    """(second, thing) for every grid second at which exactly one thing is ``present`` in the margin around it,
    ``throughout`` that margin."""
    options = []
    for t in _seconds_grid(clip):
        found = present(t - AT_MARGIN_S, t + AT_MARGIN_S)
        if len(found) == 1 and throughout(t - AT_MARGIN_S, t + AT_MARGIN_S, next(iter(found))):
            options.append((t, next(iter(found))))
    return options


def q_screen_at(clip: LongClip, settings: LongSettings, rng: np.random.Generator) -> LongItem | None:
    options = _one_at(clip, clip.on_screen, clip.covered)
    if not options:
        return None
    t, shape = options[int(rng.integers(len(options)))]
    return LongItem("screen_at", f"What shape is on screen at {clock(t)}?", shape, SHAPES, 1 / len(SHAPES))


def q_sound_at(clip: LongClip, settings: LongSettings, rng: np.random.Generator) -> LongItem | None:
    options = _one_at(clip, clip.sounding, clip.heard_throughout)
    if not options:
        return None
    t, source = options[int(rng.integers(len(options)))]
    return LongItem("sound_at", f"What is making the sound at {clock(t)}?", source, SOUND_SOURCES,
                    1 / len(SOUND_SOURCES))


def _first_times(clip: LongClip) -> dict[str, float]:
    return {name: spans[0][0] for name, spans in clip.appearances().items()}


def q_order(clip: LongClip, settings: LongSettings, rng: np.random.Generator) -> LongItem | None:
    first = _first_times(clip)
    names = sorted(first)
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1:] if abs(first[a] - first[b]) >= ORDER_GAP_S]
    if not pairs:
        return None
    a, b = pairs[int(rng.integers(len(pairs)))]
    if rng.random() < 0.5:  # the answer must not be given away by its position in the question
        a, b = b, a
    answer = a if first[a] < first[b] else b
    return LongItem("order", f"Which appears first, the {a} or the {b}?", answer, (a, b), 0.5)


def q_count(clip: LongClip, settings: LongSettings, rng: np.random.Generator) -> LongItem | None:
    counts = {name: len(spans) for name, spans in clip.appearances().items() if len(spans) <= len(COUNT_CHOICES)}
    if not counts:
        return None
    names = sorted(counts)
    name = names[int(rng.integers(len(names)))]
    return LongItem("count", f"How many times does the {name} appear?", COUNT_CHOICES[counts[name] - 1],
                    COUNT_CHOICES, 1 / len(COUNT_CHOICES))


def q_first_time(clip: LongClip, settings: LongSettings, rng: np.random.Generator) -> LongItem | None:
    first = _first_times(clip)
    names = sorted(first)
    name = names[int(rng.integers(len(names)))]
    truth = first[name]
    tolerance = when_tolerance(clip.duration, settings)
    return LongItem("first_time", f"When does the {name} first appear? {WHEN_SUFFIX}", f"{truth:g}", (),
                    when_chance(truth, tolerance, clip.duration), truth_seconds=truth, tolerance=tolerance)


BUILDERS = {"screen_at": q_screen_at, "sound_at": q_sound_at, "order": q_order, "count": q_count,
            "first_time": q_first_time}


def long_questions(clip: LongClip, settings: LongSettings, rng: np.random.Generator) -> list[LongItem]:
    """One question of every type that applies to ``clip``, in :data:`LONG_TYPES` order."""
    items = [BUILDERS[qtype](clip, settings, rng) for qtype in LONG_TYPES]
    return [item for item in items if item is not None]


def training_questions(clip: LongClip, settings: LongSettings, rng: np.random.Generator,
                       per_type: int = 1) -> list[LongItem]:
    """A training clip's questions: :func:`long_questions`, then up to ``per_type - 1`` more of each time-located
    type (other moments or objects; a question already asked is skipped). ``per_type`` 1 draws exactly as
    :func:`long_questions`."""
    items = long_questions(clip, settings, rng)
    asked = {item.question for item in items}
    for qtype in TIME_LOCATED:
        for _ in range(per_type - 1):
            item = BUILDERS[qtype](clip, settings, rng)
            if item is not None and item.question not in asked:
                asked.add(item.question)
                items.append(item)
    return items


def _training_record(vid: int, items: list[LongItem], rng: np.random.Generator) -> dict[str, Any]:
    """VideoChat shape, the questions in a random order (the answer types must not follow a fixed pattern)."""
    order = rng.permutation(len(items))
    return {"video": f"{vid}.mp4", "QA": [{"q": items[int(k)].question, "a": items[int(k)].answer} for k in order]}


# ------------------------------------------------------------------------------------------------ writing
def _rngs(seed: int, split: str, index: int) -> tuple[np.random.Generator, np.random.Generator]:
    base = [seed, STREAMS[split], index]
    return np.random.default_rng(base + [SCENE_SUBSTREAM]), np.random.default_rng(base + [TEXT_SUBSTREAM])


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def _when_fields(item: LongItem) -> dict[str, float]:
    """A ``first_time`` record's truth and tolerance (nothing for the closed types)."""
    if item.qtype != "first_time":
        return {}
    return {"truth_seconds": item.truth_seconds, "tolerance": round(item.tolerance, 6)}  # type: ignore[arg-type]


def generate_long(out_dir: str | Path, clips: int, seed: int = 0, *, test_clips: int = 50,
                  settings: LongSettings = DEFAULT_LONG, workers: int = 1, overwrite: bool = False,
                  train_questions: int = 1) -> dict[str, Any]:
    """Render ``clips`` long training clips and ``test_clips`` held-out ones into ``out_dir`` (module docstring).
    ``train_questions``: questions of each time-located type per training clip (:func:`training_questions`;
    held-out clips always get one of each type).

    Returns a summary: counts, questions per type, mean chance per type, bytes, seconds (and per clip).
    """
    if train_questions < 1:
        raise UsageError(f"need train_questions >= 1, got {train_questions}")
    if clips < 0 or test_clips < 0 or clips + test_clips < 1:
        raise UsageError(f"need clips >= 0, test_clips >= 0 and at least one clip, got {clips} and {test_clips}")
    if seed < 0 or workers < 1:
        raise UsageError(f"need seed >= 0 and workers >= 1, got {seed} and {workers}")
    out = Path(out_dir)
    existing = [out / name for name in LONG_OUTPUTS if (out / name).exists()]
    if existing and not overwrite:
        raise UsageError(f"{out}: already holds long clips ({existing[0]}); pass --overwrite to replace them")
    for path in existing:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    for sub in ("long/videos", "qa/long_videos"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    jobs: list[tuple[LongClip, str]] = []
    truth, train, test = [], [], []
    for split, count in (("long_instruct", clips), ("long_test", test_clips)):
        for i in range(count):
            scene_rng, text_rng = _rngs(seed, split, i)
            clip = sample_long_clip(scene_rng, settings)
            vid = ID_BASE[split] + i
            if split == "long_instruct":
                media = f"long/videos/{vid}.mp4"
                train.append(_training_record(vid, training_questions(clip, settings, text_rng, train_questions),
                                              text_rng))
            else:
                items = long_questions(clip, settings, text_rng)
                media = f"qa/long_videos/{vid}.mp4"
                test += [{"id": f"{vid}-{item.qtype}", "video": f"long_videos/{vid}.mp4", "type": item.qtype,
                          "question": item.question, "answer": item.answer, "choices": list(item.choices),
                          "chance": round(item.chance, 6), "duration": clip.duration,
                          **_when_fields(item)} for item in items]
            jobs.append((clip, str(out / media)))
            truth.append({"split": split, "id": str(vid), "media": media, "duration": clip.duration,
                          "clip": clip.to_dict()})
    if workers <= 1:
        sizes = [_render_packed(job) for job in jobs]
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            sizes = list(pool.map(_render_packed, jobs))
    render_seconds = time.perf_counter() - started
    # Annotations last: they never point at media that failed to render.
    _write_json(out / "long/long_instruct.json", train)
    _write_json(out / "qa/long_test.json", test)
    with open(out / "long/truth.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(rec) + "\n" for rec in truth)
    types = {qtype: {"items": sum(1 for r in test if r["type"] == qtype),
                     "chance": round(float(np.mean([r["chance"] for r in test if r["type"] == qtype])), 6)
                     if any(r["type"] == qtype for r in test) else None} for qtype in LONG_TYPES}
    seconds = sum(clip.duration for clip, _ in jobs)
    summary = {"out_dir": str(out), "seed": seed, "clips": clips, "test_clips": test_clips,
               "train_questions": train_questions,
               "test_questions": len(test), "train_turns": sum(len(r["QA"]) for r in train),
               "video_seconds": seconds, "types": types, "settings": asdict(settings), "bytes": int(sum(sizes)),
               "seconds": round(time.perf_counter() - started, 3),
               "seconds_per_clip": round(render_seconds / len(jobs), 3), "workers": workers}
    _write_json(out / "long/meta.json", {"generator": "videollama.synthav.long", **summary,
                                         "answer_counts": dict(Counter(r["answer"] for r in test if r["choices"]))})
    return summary


def rewrite_training_questions(out_dir: str | Path, train_questions: int) -> dict[str, Any]:
    """Rewrite ``long/long_instruct.json`` of a generated folder with ``train_questions`` per time-located type,
    from its ``long/truth.jsonl`` and ``long/meta.json`` (seed, settings), without rendering anything: the file
    :func:`generate_long` would have written with that ``train_questions``. Returns {"clips", "train_turns"}."""
    if train_questions < 1:
        raise UsageError(f"need train_questions >= 1, got {train_questions}")
    out = Path(out_dir)
    meta_path, truth_path = out / "long/meta.json", out / "long/truth.jsonl"
    if not (meta_path.is_file() and truth_path.is_file()):
        raise UsageError(f"{out}: no long/meta.json and long/truth.jsonl (write them with generate-long)")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    settings = LongSettings(**meta["settings"])
    train = []
    for line in truth_path.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if record["split"] != "long_instruct":
            continue
        vid = int(record["id"])
        _, text_rng = _rngs(int(meta["seed"]), "long_instruct", vid - ID_BASE["long_instruct"])
        clip = LongClip.from_dict(record["clip"])
        train.append(_training_record(vid, training_questions(clip, settings, text_rng, train_questions), text_rng))
    _write_json(out / "long/long_instruct.json", train)
    meta["train_questions"], meta["train_turns"] = train_questions, sum(len(r["QA"]) for r in train)
    _write_json(meta_path, meta)
    return {"clips": len(train), "train_turns": meta["train_turns"]}


def format_long_summary(summary: dict[str, Any]) -> str:
    """Human-readable lines for the CLI."""
    head = (f"long SynthAV clips written to {summary['out_dir']} (seed {summary['seed']}): {summary['clips']} training, "
            f"{summary['test_clips']} held-out ({summary['test_questions']} questions), "
            f"{summary['video_seconds'] / 60:.1f} min of video, {summary['bytes'] / 1e6:.1f} MB in "
            f"{summary['seconds']:.1f} s ({summary['seconds_per_clip']:.2f} s per clip)")
    lines = [head]
    for qtype, row in summary["types"].items():
        if row["items"]:
            lines.append(f"  {qtype:<11} {row['items']:>5} items  chance {row['chance']:.3f}")
    return "\n".join(lines)


__all__ = ["LONG_TYPES", "TIME_LOCATED", "LongClip", "LongItem", "LongSettings", "format_long_summary", "generate_long",
           "long_questions", "render_long_clip", "rewrite_training_questions", "sample_long_clip", "training_questions",
           "when_chance", "when_tolerance"]
