"""SynthAV: a small generated audio-visual world whose truth is known.

Clips of moving, appearing and disappearing shapes whose sounds are linked to what is seen,
written in the official Video-LLaMA data formats (WebVid, cc_sbu, LLaVA-Instruct, VideoChat) plus
a held-out QA test set with four question families. See ``docs/synthav.md``.

    from videollama.synthav import generate
    generate("data/synthav", clips=2000, seed=0, workers=2)
"""

from .annotate import FAMILIES, QUESTION_TYPES, QAItem
from .generate import GENERATOR_VERSION, format_summary, generate
from .render import render_audio, render_frames
from .world import Scene, SceneObject, WorldConfig, sample_scene

__all__ = [
    "FAMILIES",
    "GENERATOR_VERSION",
    "QAItem",
    "QUESTION_TYPES",
    "Scene",
    "SceneObject",
    "WorldConfig",
    "format_summary",
    "generate",
    "render_audio",
    "render_frames",
    "sample_scene",
]
