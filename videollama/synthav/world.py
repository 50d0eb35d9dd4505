"""The SynthAV scene model: objects, motion, visibility and sounds, as pure data.

SynthAV is a tiny audio-visual world whose truth is known exactly, so that a small Video-LLaMA can
be trained on it end to end and its claims measured (see ``docs/synthav.md``). This module holds
only the *description* of a clip (no pixels, no samples): ``render.py`` turns a :class:`Scene`
into frames and a soundtrack, ``annotate.py`` turns it into captions and questions.

The world, at the reference resolution of 112x112 (everything scales with ``size``):

- a clip lasts ``seconds`` (4.0) at ``fps`` (8): 32 frames, on a plain dark-grey background;
- 1-3 objects, each a distinct shape (circle, square, triangle, star) with a distinct colour
  (red, green, blue, yellow, white) and a size (small, large);
- every object moves in a straight line (left, right, up or down) at constant speed while it is
  visible; object 0 (the *anchor*) is visible for the whole clip, the others may appear and/or
  disappear on a 0.5-s grid (1.0 ... 3.0 s), never two events at the same time;
- each shape kind has its own sound signature, audible exactly while the object is on screen,
  unless the object is *silent* (probability ``p_silent``; needed for the audio-visual questions:
  which object is making the sound can only be told by combining sight and hearing);
- some clips also carry an off-screen sound (a bell or a drum) that has no visual at all.

Example::

    rng = np.random.default_rng(0)
    scene = sample_scene(rng, WorldConfig())
    scene.objects[0].centres(WorldConfig().num_frames)  # (T, 2) x, y in pixels
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

REFERENCE_SIZE = 112
"""Frame side (pixels) at which the geometric constants below are stated; they scale with size."""

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (225, 45, 45),
    "green": (45, 190, 70),
    "blue": (50, 100, 240),
    "yellow": (240, 215, 40),
    "white": (235, 235, 235),
}
BACKGROUND_RGB: tuple[int, int, int] = (40, 40, 40)
SIZES: dict[str, float] = {"small": 9.0, "large": 16.0}
"""Nominal radius in pixels at the reference size; every shape fits in 1.1 x this radius."""
BOUND_FACTOR = 1.1
"""Bounding-circle radius of every shape, as a multiple of its nominal radius."""
DIRECTIONS: dict[str, tuple[int, int]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
"""Unit motion per direction in image coordinates (x to the right, y downwards)."""
OFFSCREEN_SOURCES: tuple[str, ...] = ("bell", "drum")
SOUND_SOURCES: tuple[str, ...] = SHAPES + OFFSCREEN_SOURCES


@dataclass(frozen=True)
class SoundSignature:
    """How one sound source sounds: the words for it and its dominant frequency band."""

    source: str
    description: str
    band_hz: tuple[float, float]
    """Band that holds most of the signature's energy (used by tests and documentation)."""


SIGNATURES: dict[str, SoundSignature] = {
    "circle": SoundSignature("circle", "steady pure tone at 800 Hz (hum)", (760.0, 840.0)),
    "square": SoundSignature("square", "buzzy band-limited square wave, 200 Hz fundamental", (180.0, 220.0)),
    "triangle": SoundSignature("triangle", "chirp rising 1.2 -> 2.4 kHz, repeated every 0.5 s", (1200.0, 2400.0)),
    "star": SoundSignature("star", "40-ms bursts of 4-6 kHz noise, 4 per second (clicks)", (4000.0, 6000.0)),
    "bell": SoundSignature("bell", "struck bell, partials 3.0 + 3.3 kHz, once per second", (2950.0, 3350.0)),
    "drum": SoundSignature("drum", "low thump gliding 90 -> 50 Hz, twice per second", (40.0, 100.0)),
}

# Visibility patterns of non-anchor objects and their probabilities.
PATTERNS: tuple[str, ...] = ("full", "enter", "exit", "brief")
PATTERN_PROBS: tuple[float, ...] = (0.2, 0.3, 0.3, 0.2)
MAX_ATTRIBUTE_TRIES, MAX_PLACEMENT_TRIES = 8, 20
"""Attribute draws per object, and placements per draw, before the whole scene is resampled."""
MAX_SCENE_TRIES = 1000
"""Whole-scene resamples before giving up (only reachable with a world config that barely fits)."""


@dataclass(frozen=True)
class WorldConfig:
    """Numbers that define the world. Defaults are the shipped SynthAV world."""

    fps: int = 8
    seconds: float = 4.0
    size: int = 112
    """Frame width = height in pixels (even, >= 32)."""
    sample_rate: int = 16000
    min_objects: int = 1
    max_objects: int = 3
    count_weights: tuple[float, ...] = (0.25, 0.4, 0.35)
    """Relative frequency of min_objects ... max_objects objects per clip (more objects, more events)."""
    p_silent: float = 0.3
    """Probability that an object makes no sound."""
    p_offscreen: float = 0.3
    """Probability that a clip has an off-screen sound (bell or drum)."""
    event_step_s: float = 0.5
    """Appear/disappear times lie on this grid (8 uniformly sampled frames of 4 s are 0.5 s apart)."""
    event_first_s: float = 1.0
    event_last_s: float = 3.0
    min_visible_s: float = 1.5
    travel_min: float = 0.45
    travel_max: float = 0.6
    """Distance an object travels while visible, as a fraction of the frame side."""
    min_gap: float = 4.0
    """Minimum gap in pixels (at the reference size) between the bounding circles of two objects."""

    def __post_init__(self) -> None:
        if self.size < 32 or self.size % 2:
            raise ValueError(f"WorldConfig.size must be even and >= 32, got {self.size}")
        if self.fps < 2 or self.seconds <= 0:
            raise ValueError(f"WorldConfig needs fps >= 2 and seconds > 0, got fps={self.fps}, seconds={self.seconds}")
        if abs(self.fps * self.seconds - round(self.fps * self.seconds)) > 1e-9:
            raise ValueError(f"fps * seconds must be a whole number of frames, got {self.fps} * {self.seconds}")
        if not 1 <= self.min_objects <= self.max_objects <= len(SHAPES):
            raise ValueError(f"need 1 <= min_objects <= max_objects <= {len(SHAPES)}, got {self.min_objects}, {self.max_objects}")
        if len(self.count_weights) != self.max_objects - self.min_objects + 1 or min(self.count_weights) < 0:
            raise ValueError(f"count_weights needs {self.max_objects - self.min_objects + 1} non-negative weights, got {self.count_weights}")
        if self.event_last_s + 1e-9 < self.event_first_s or self.event_last_s >= self.seconds:
            raise ValueError("event grid must satisfy event_first_s <= event_last_s < seconds")
        if not 0 < self.travel_min <= self.travel_max:
            raise ValueError("need 0 < travel_min <= travel_max")
        usable = self.size - 2 * (SIZES["large"] * BOUND_FACTOR + self.min_gap) * self.scale
        if self.travel_max * self.size > usable:
            raise ValueError(f"travel_max={self.travel_max} does not fit a large object in a {self.size}-px frame")

    @property
    def num_frames(self) -> int:
        return int(round(self.fps * self.seconds))

    @property
    def num_samples(self) -> int:
        return int(round(self.sample_rate * self.seconds))

    @property
    def samples_per_frame(self) -> float:
        return self.sample_rate / self.fps

    @property
    def scale(self) -> float:
        """Pixel scale relative to the reference 112x112 world."""
        return self.size / REFERENCE_SIZE

    def event_frames(self) -> list[int]:
        """Frames at which objects may appear or disappear (the 0.5-s grid, 1.0 ... 3.0 s)."""
        n = int(round((self.event_last_s - self.event_first_s) / self.event_step_s)) + 1
        return [int(round((self.event_first_s + k * self.event_step_s) * self.fps)) for k in range(n)]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SceneObject:
    """One visible object. Frames are indices; ``off_frame`` is exclusive (= num_frames if it stays)."""

    shape: str
    colour: str
    size: str
    direction: str
    x0: float
    """Centre x (pixels) at ``on_frame``."""
    y0: float
    speed: float
    """Pixels per frame along ``direction``."""
    on_frame: int
    off_frame: int
    sounding: bool

    def radius(self, config: WorldConfig) -> float:
        return SIZES[self.size] * config.scale

    def bound(self, config: WorldConfig) -> float:
        return self.radius(config) * BOUND_FACTOR

    def centres(self, num_frames: int) -> np.ndarray:
        """(T, 2) centre x, y per frame, extrapolated outside the visible interval."""
        dx, dy = DIRECTIONS[self.direction]
        steps = np.arange(num_frames, dtype=np.float64) - self.on_frame  # (T,)
        return np.stack([self.x0 + dx * self.speed * steps, self.y0 + dy * self.speed * steps], axis=1)

    def visible(self, num_frames: int) -> np.ndarray:
        """(T,) bool, True where the object is on screen."""
        frames = np.arange(num_frames)
        return (frames >= self.on_frame) & (frames < self.off_frame)

    @property
    def name(self) -> str:
        """Unique within a clip: 'red circle'."""
        return f"{self.colour} {self.shape}"

    @property
    def phrase(self) -> str:
        """'large red circle'."""
        return f"{self.size} {self.colour} {self.shape}"


@dataclass(frozen=True)
class OffscreenSound:
    """A sound with no visual source, audible on [on_frame, off_frame)."""

    source: str
    on_frame: int
    off_frame: int


@dataclass(frozen=True)
class Event:
    """An object appearing or disappearing at ``frame`` (events at frame 0 / the end are not events)."""

    frame: int
    kind: str  # "appears" | "disappears"
    index: int  # object index in Scene.objects


@dataclass(frozen=True)
class Scene:
    """A whole clip's truth. ``noise_seed`` drives the noise-based sounds and the noise floor."""

    objects: tuple[SceneObject, ...]
    offscreen: tuple[OffscreenSound, ...] = ()
    noise_seed: int = 0
    num_frames: int = 32

    def events(self) -> list[Event]:
        """Appear / disappear events strictly inside the clip, in time order."""
        out = []
        for i, obj in enumerate(self.objects):
            if obj.on_frame > 0:
                out.append(Event(obj.on_frame, "appears", i))
            if obj.off_frame < self.num_frames:
                out.append(Event(obj.off_frame, "disappears", i))
        return sorted(out, key=lambda e: (e.frame, e.index))

    def sound_sources(self) -> list[str]:
        """Audible sources in order of onset (sounding objects, then off-screen sounds on ties)."""
        timed = [(o.on_frame, 0, i, o.shape) for i, o in enumerate(self.objects) if o.sounding]
        timed += [(s.on_frame, 1, i, s.source) for i, s in enumerate(self.offscreen)]
        return [name for *_, name in sorted(timed)]

    def visible_at(self, frame: int) -> list[SceneObject]:
        return [o for o in self.objects if o.on_frame <= frame < o.off_frame]

    def always_visible(self) -> list[SceneObject]:
        return [o for o in self.objects if o.on_frame == 0 and o.off_frame == self.num_frames]

    def to_dict(self) -> dict[str, Any]:
        return {
            "objects": [asdict(o) for o in self.objects],
            "offscreen": [asdict(s) for s in self.offscreen],
            "noise_seed": self.noise_seed,
            "num_frames": self.num_frames,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Scene:
        return cls(
            objects=tuple(SceneObject(**o) for o in data["objects"]),
            offscreen=tuple(OffscreenSound(**s) for s in data["offscreen"]),
            noise_seed=int(data["noise_seed"]),
            num_frames=int(data["num_frames"]),
        )


def _sample_interval(rng: np.random.Generator, config: WorldConfig, pattern: str, taken: set[int]) -> tuple[int, int]:
    """On/off frames for a visibility pattern, avoiding event frames already used in the clip."""
    t = config.num_frames
    grid = [f for f in config.event_frames() if f not in taken]
    min_len = int(round(config.min_visible_s * config.fps))
    if pattern == "enter":
        options = [(f, t) for f in grid if t - f >= min_len]
    elif pattern == "exit":
        options = [(0, f) for f in grid if f >= min_len]
    elif pattern == "brief":
        options = [(a, b) for a in grid for b in grid if b - a >= min_len]
    else:
        options = []
    if not options:
        return 0, t  # pattern impossible here: the object stays for the whole clip
    return options[int(rng.integers(len(options)))]


def _place(
    rng: np.random.Generator, config: WorldConfig, direction: str, bound: float, travel: float
) -> tuple[float, float]:
    """Start centre such that the whole straight path stays inside the frame."""
    lo = bound + config.min_gap * config.scale
    hi = config.size - lo
    dx, dy = DIRECTIONS[direction]
    along_lo, along_hi = (lo + travel, hi) if (dx < 0 or dy < 0) else (lo, hi - travel)
    along = rng.uniform(along_lo, along_hi)
    across = rng.uniform(lo, hi)
    return (along, across) if dx != 0 else (across, along)


def _clear_of(obj: SceneObject, placed: list[SceneObject], config: WorldConfig) -> bool:
    """True if ``obj`` keeps ``min_gap`` from every placed object on every frame both are visible."""
    t = config.num_frames
    for other in placed:
        both = obj.visible(t) & other.visible(t)
        if not both.any():
            continue
        dist = np.linalg.norm(obj.centres(t)[both] - other.centres(t)[both], axis=1)
        if dist.min() < obj.bound(config) + other.bound(config) + config.min_gap * config.scale:
            return False
    return True


def _sample_object(
    rng: np.random.Generator,
    config: WorldConfig,
    k: int,
    shape: str,
    colour: str,
    taken: set[int],
    placed: list[SceneObject],
) -> SceneObject | None:
    """Object ``k`` of a scene: a few draws of its motion and timing, each with several placements.

    The size is drawn once, so that crowded scenes do not turn large objects into small ones.
    """
    t = config.num_frames
    size = ("small", "large")[int(rng.integers(2))]
    for _ in range(MAX_ATTRIBUTE_TRIES):
        pattern = "full" if k == 0 else PATTERNS[int(rng.choice(len(PATTERNS), p=PATTERN_PROBS))]
        on, off = _sample_interval(rng, config, pattern, taken)
        direction = list(DIRECTIONS)[int(rng.integers(len(DIRECTIONS)))]
        travel = rng.uniform(config.travel_min, config.travel_max) * config.size
        speed = travel / max(off - on - 1, 1)
        sounding = bool(rng.random() >= config.p_silent)
        bound = SIZES[size] * BOUND_FACTOR * config.scale
        for _ in range(MAX_PLACEMENT_TRIES):
            x0, y0 = _place(rng, config, direction, bound, travel)
            obj = SceneObject(
                shape=shape,
                colour=colour,
                size=size,
                direction=direction,
                x0=round(float(x0), 3),
                y0=round(float(y0), 3),
                speed=round(float(speed), 4),
                on_frame=int(on),
                off_frame=int(off),
                sounding=sounding,
            )
            if _clear_of(obj, placed, config):
                taken.update(f for f in (on, off) if 0 < f < t)
                return obj
    return None


def _try_sample(rng: np.random.Generator, config: WorldConfig) -> Scene | None:
    t = config.num_frames
    weights = np.asarray(config.count_weights, dtype=np.float64)
    n = config.min_objects + int(rng.choice(len(weights), p=weights / weights.sum()))
    shapes = rng.choice(len(SHAPES), size=n, replace=False)
    colour_names = list(COLOURS)
    colours = rng.choice(len(colour_names), size=n, replace=False)
    taken: set[int] = set()
    objects: list[SceneObject] = []
    for k in range(n):
        obj = _sample_object(rng, config, k, SHAPES[int(shapes[k])], colour_names[int(colours[k])], taken, objects)
        if obj is None:
            return None
        objects.append(obj)
    offscreen: tuple[OffscreenSound, ...] = ()
    if rng.random() < config.p_offscreen:
        source = OFFSCREEN_SOURCES[int(rng.integers(len(OFFSCREEN_SOURCES)))]
        pattern = "full" if rng.random() < 0.5 else PATTERNS[1 + int(rng.integers(3))]
        on, off = _sample_interval(rng, config, pattern, set())
        offscreen = (OffscreenSound(source, int(on), int(off)),)
    return Scene(tuple(objects), offscreen, noise_seed=int(rng.integers(2**31 - 1)), num_frames=t)


def sample_scene(rng: np.random.Generator, config: WorldConfig) -> Scene:
    """Draw one random scene. Deterministic given the generator state."""
    for _ in range(MAX_SCENE_TRIES):  # placement fails rarely (crowded large objects): resample
        scene = _try_sample(rng, config)
        if scene is not None:
            return scene
    raise RuntimeError(f"could not place {config.max_objects} objects without overlap in a {config.size}-px frame")
