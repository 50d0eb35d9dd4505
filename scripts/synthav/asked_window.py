"""Finding vs reading on the long-video questions: `screen_at` / `sound_at` asked with every window (as
``evaluate-long`` asks them) and again with only the window that holds the asked second, under its own label.

    python -m scripts.synthav.asked_window runs/why22/w8q4_s0/export --data runs/long --window-frames 8 --max-windows 16

If the second reading scores much higher, the model fails at finding the window a time names; if both are low,
at reading what a window shows. Prints the accuracies and the commonest first words of the replies.
"""

from __future__ import annotations

import argparse
from collections import Counter
from dataclasses import replace
from pathlib import Path

import torch

from videollama.engine import GenerationConfig
from videollama.inference import Pipeline
from videollama.synthav.long import LongSettings
from videollama.synthav.evaluate import MAX_NEW_TOKENS
from videollama.synthav.long_eval import is_right, load_long_items, reading

TYPES = ("screen_at", "sound_at")


def seconds(clock: str) -> int:
    """"HH:MM:SS" -> seconds."""
    hours, minutes, secs = (int(part) for part in clock.split(":"))
    return hours * 3600 + minutes * 60 + secs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--data", type=Path, required=True, help="a generate-long folder (its held-out questions)")
    parser.add_argument("--window-frames", type=int, required=True)
    parser.add_argument("--max-windows", type=int, required=True)
    args = parser.parse_args()
    pipe = Pipeline.from_pretrained(args.model)
    settings = replace(LongSettings(), window_frames=args.window_frames, max_windows=args.max_windows)
    items = [item for item in load_long_items(args.data) if item.qtype in TYPES]
    gen = GenerationConfig(do_sample=False, max_new_tokens=MAX_NEW_TOKENS)
    right, words = Counter(), Counter()
    for item in items:
        every = pipe.encode_media(item.video, reading("windows", settings))
        asked = seconds(item.question.rstrip("?").split()[-1])  # "... at 00:01:04?"
        k = max(i for i, window in enumerate(every.timeline.windows) if window.start <= asked)
        only = replace(every, video=every.video[k:k + 1],  # (1, 32, D): the asked window alone
                       audio=None if every.audio is None else every.audio[k:k + 1],
                       timeline=replace(every.timeline, windows=[every.timeline.windows[k]]))
        for name, features in (("all windows", every), ("asked window", only)):
            with torch.inference_mode():
                ids = pipe.engine.generate_all([pipe.request(features, [(item.question, None)], gen)])[0]
            reply = pipe.decode_answer(ids)
            right[item.qtype, name] += is_right(item, reply)
            words[item.qtype, name, (reply.split() or [""])[0]] += 1
    counts = Counter(item.qtype for item in items)
    for qtype in TYPES:
        scores = {name: round(right[qtype, name] / counts[qtype], 3) for name in ("all windows", "asked window")}
        print(qtype, scores)
    print("commonest first words:", [(key, n) for key, n in words.most_common(12)])


if __name__ == "__main__":
    main()
