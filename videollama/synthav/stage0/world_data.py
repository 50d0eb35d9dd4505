"""What stage 0 reads from a SynthAV folder, and the text its LLM and tokenizer learn from.

:class:`WorldData` loads a folder written by ``videollama synthav generate``. The LLM's documents
(:func:`lm_texts`) are the world's captions, frame descriptions (:func:`frame_description`) and the
instruction conversations rendered with the ``llama_2`` template (:func:`render_chat`), with the system
prompts and media preambles used at training and inference time (media placeholders removed).
"""

from __future__ import annotations

import csv
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...templates import AUDIO_SENTENCE, AV_MESSAGE, IMAGE_MESSAGE, LLAMA2_DEFAULT_SYSTEM, VIDEO_MESSAGE, VISUAL_SYSTEM
from ...tokenizer import AUDIO_PLACEHOLDER, IMAGE_PLACEHOLDER
from ..world import Scene, WorldConfig

POSITION_BINS = 8  # frame descriptions give column/row in 8 bins
TIMESTAMP_EXAMPLE = "The video contains 8 frames sampled at 0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5 seconds. "
TRAIN_SYSTEM = " "  # what the official llama_2 training text uses as the system prompt
SYSTEMS = (TRAIN_SYSTEM, "", VISUAL_SYSTEM, LLAMA2_DEFAULT_SYSTEM)
PREAMBLES = (
    "",
    IMAGE_MESSAGE,
    VIDEO_MESSAGE + TIMESTAMP_EXAMPLE,
    AV_MESSAGE,
    AUDIO_SENTENCE,
    "<Video></Video> " + TIMESTAMP_EXAMPLE,  # the training-data form (instruct datasets)
    "<Image></Image>",
)



@dataclass
class WorldData:
    """What stage 0 reads from a generated SynthAV folder."""

    root: Path
    world: WorldConfig
    scenes: dict[str, Scene]  # media path (relative to root) -> scene
    webvid: list[tuple[str, str]]  # (video path relative to root, caption)
    videochat: list[dict[str, Any]]
    llava: list[dict[str, Any]]
    corpus: list[str]

    @classmethod
    def load(cls, root: str | Path) -> "WorldData":
        root = Path(root)
        meta_path = root / "meta.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"{root}: not a SynthAV folder (no meta.json; run `videollama synthav generate`)")
        meta = json.loads(meta_path.read_text())
        world = WorldConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in meta["world"].items()})
        scenes = {}
        with open(root / "truth.jsonl", encoding="utf-8") as f:
            for line in f:
                rec = json.loads(line)
                scenes[rec["media"]] = Scene.from_dict(rec["scene"])
        webvid = []
        with open(root / meta["paths"]["webvid_csv"], newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                webvid.append((f"{meta['paths']['webvid_videos']}/{row['page_dir']}/{row['videoid']}.mp4", row["name"]))
        videochat = json.loads((root / meta["paths"]["videochat_json"]).read_text())
        llava = json.loads((root / meta["paths"]["llava_json"]).read_text())
        corpus = [line for line in (root / "corpus.txt").read_text(encoding="utf-8").splitlines() if line.strip()]
        return cls(root, world, scenes, webvid, videochat, llava, corpus)


def position_bin(value: float, size: int) -> int:
    return int(min(POSITION_BINS - 1, max(0, value / size * POSITION_BINS)))


def frame_description(scene: Scene, frame: int, world: WorldConfig) -> str:
    """What one frame shows, left to right, with coarse positions: 'a large red circle at column 2 row 5.'

    Objects are listed left to right because that order is what one frame shows; the scene's own
    order (of creation) cannot be told from a picture (docs/synthav.md#diagnosis).
    """
    placed = sorted(((obj, *obj.centres(world.num_frames)[frame]) for obj in scene.visible_at(frame)),
                    key=lambda item: item[1])
    parts = [f"a {obj.phrase} at column {position_bin(x, world.size)} row {position_bin(y, world.size)}" for obj, x, y in placed]
    if not parts:
        return "an empty grey background."
    return (parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]) + "."


def strip_media(text: str) -> str:
    return text.replace(IMAGE_PLACEHOLDER, "").replace(AUDIO_PLACEHOLDER, "").replace("<image>\n", "")


def render_chat(system: str, turns: list[tuple[str, str]], preamble: str) -> str:
    """llama_2 chat text (as the inference template renders it), media placeholders removed."""
    out = ""
    for i, (user, answer) in enumerate(turns):
        if i == 0:
            user = f"<<SYS>>\n{system}\n<</SYS>>\n\n{strip_media(preamble) + ' ' if preamble else ''}{user}"
        out += ("" if i == 0 else "<s>") + f"[INST] {user} [/INST] {answer} </s>"
    return out


def lm_texts(data: WorldData, frame_descriptions: list[str], rng: random.Random) -> list[str]:
    """The LM's training documents: captions, frame descriptions and rendered conversations."""
    docs = list(data.corpus) + list(frame_descriptions)
    for record in data.videochat:
        turns = [(t["q"], t["a"]) for t in record["QA"]]
        docs.append(render_chat(rng.choice(SYSTEMS), turns, rng.choice(PREAMBLES)))
    for record in data.llava:
        conv = record["conversations"]
        turns = [(strip_media(conv[i]["value"]), conv[i + 1]["value"]) for i in range(0, len(conv) - 1, 2)]
        docs.append(render_chat(rng.choice(SYSTEMS), turns, rng.choice(PREAMBLES)))
    # Single-question chats: the form every evaluation question takes.
    for record in data.videochat:
        q = rng.choice(record["QA"])
        docs.append(render_chat(rng.choice(SYSTEMS), [(q["q"], q["a"])], rng.choice(PREAMBLES)))
    return docs


def tokenizer_corpus(data: WorldData, frame_descriptions: list[str]) -> str:
    prompts = [s for s in SYSTEMS if s.strip()] + [strip_media(p) for p in PREAMBLES if p]
    prompts += ["[INST] <<SYS>> <</SYS>> [/INST] </s>"] * 5
    return "\n".join(data.corpus + frame_descriptions[:2000] + prompts * 20)

