"""Seconds per named step of a long run (stage 0's phases, the chain's stages), rounded to 0.1 s."""

from __future__ import annotations

import time


class Stopwatch:
    """Writes the seconds since the previous lap (or since it was made) into ``seconds[name]`` at each lap."""

    def __init__(self, seconds: dict[str, float]):
        self.seconds = seconds
        self._clock = time.perf_counter()

    def lap(self, name: str) -> float:
        now = time.perf_counter()
        self.seconds[name] = round(now - self._clock, 1)
        self._clock = now
        return self.seconds[name]
