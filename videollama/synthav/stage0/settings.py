"""Sizes and step counts of stage 0 (:class:`Stage0Settings`) and what a run reports (:class:`Stage0Result`).

The defaults are the full chain's (``make synthav-model``); :meth:`Stage0Settings.quick` is the CI size.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Stage0Settings:
    """Sizes and step counts of the stage-0 trainings (defaults: the full chain)."""

    seed: int = 0
    threads: int = 0  # torch threads while stage 0 trains (0: every core; stage 0 runs alone, with no workers)
    vocab_size: int = 768
    frame_clips: int = 2000  # webvid clips decoded for the frame and audio caches
    lm_batch: int = 24  # text documents per generative step (the LLM's language-modelling loss)
    attribute_steps: int = 1200  # supervised per-patch pretraining of each ViT
    attribute_batch: int = 64
    attribute_lr: float = 1e-3
    vision_steps: int = 700
    vision_batch: int = 24
    qa_batch: int = 12  # media chats per generative step, beside the frame descriptions
    reading_steps: int = 450  # the second generative phase (picture losses + text loss)
    vision_lr: float = 1e-3
    llm_lr: float = 1e-3  # the LLM, trained from scratch in the generative phases
    bind_vision_steps: int = 500
    bind_batch: int = 64
    bind_lr: float = 1e-3
    audio_steps: int = 300
    audio_batch: int = 64
    audio_lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_fraction: float = 0.05

    def __post_init__(self) -> None:
        negative = {name: value for name, value in vars(self).items() if value < 0}
        if negative:
            name, value = next(iter(negative.items()))
            raise ValueError(f"stage 0 setting {name} must be >= 0, got {value}")

    @classmethod
    def quick(cls, seed: int = 0) -> "Stage0Settings":
        """A few steps of every phase on 24 clips: the quick chain of CI, same code path."""
        return cls(seed=seed, vocab_size=600, frame_clips=24, lm_batch=4, attribute_steps=4,
                   attribute_batch=8, vision_steps=4, vision_batch=8, qa_batch=4, reading_steps=4, bind_vision_steps=4,
                   bind_batch=16, audio_steps=4, audio_batch=8)


@dataclass
class Stage0Result:
    """Where the frozen model folder went, and each phase's seconds, final loss and data counts."""

    model_dir: str
    seconds: dict[str, float] = field(default_factory=dict)
    final_loss: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

