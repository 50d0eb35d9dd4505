"""Tiny audio-text training data in the four formats of ``videollama.train.audio_data``, with bad records.

Clips are 2.5 s tones (a different pitch per clip) written with PyAV; every format carries the kinds of
bad record a real download has: a missing clip, an empty caption, a malformed row or record, and a file
that is not audio.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from media_fixtures import make_tone_audio

CLIP_SECONDS = 2.5
NOT_AUDIO = b"RIFF\x24\x00\x00\x00WAVEthis is not audio at all" * 4


def _tone(path: Path, index: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return make_tone_audio(path, CLIP_SECONDS, freq=220.0 * (index + 1))


def _write_csv(path: Path, rows: list[list[str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(rows)


def make_audio_text_data(root: Path) -> dict[str, Path]:
    """AudioCaps, Clotho, WavCaps and audio-instruction files under ``root``; returns their paths."""
    root = Path(root)
    caps = root / "audiocaps/audio"
    _tone(caps / "91139.wav", 0)  # {audiocap_id}
    _tone(caps / "91139.mp3", 5)  # same stem: the .wav is preferred
    _tone(caps / "yt2_30.wav", 1)  # {youtube_id}_{start_time}, the CSV writes 30.0
    _tone(caps / "Yyt3.mp3", 2)  # Y{youtube_id}
    _tone(caps / "yt5.wav", 3)  # {youtube_id}; its caption is empty
    (caps / "yt7.wav").write_bytes(NOT_AUDIO)
    _write_csv(root / "audiocaps/train.csv", [
        ["audiocap_id", "youtube_id", "start_time", "caption"],
        ["91139", "yt1", "0", "A dog barks  twice."],
        ["4", "yt2", "30.0", "Birds chirp in the distance"],
        ["5", "yt3", "10", "Rain falls on a tin roof"],
        ["6", "yt4", "0", "the clip of this row is missing"],
        ["7", "yt5", "0", "   "],
        ["8", "yt6"],
        ["9", "yt7", "0", "a file that is not audio"],
    ])
    clotho = root / "clotho/development"
    _tone(clotho / "Distorted AM Radio noise.wav", 0)
    _tone(clotho / "river.wav", 1)
    _write_csv(root / "clotho/captions.csv", [
        ["file_name", "caption_1", "caption_2", "caption_3", "caption_4", "caption_5"],
        ["Distorted AM Radio noise.wav", "A radio hisses.", "Static crackles.", "", "Noise on a radio.", "Radio static."],
        ["river.wav", "Water flows.", "A river runs.", "A stream gurgles.", "Water splashes.", "A brook babbles."],
        ["absent.wav", "a", "b", "c", "d", "e"],
    ])
    wav = root / "wavcaps/audio"
    _tone(wav / "Y7fmOlUlwoNg.m4a", 0)  # AudioSet-SL ids carry ".wav"; the release ships another format
    _tone(wav / "2021.wav", 1)
    (root / "wavcaps").mkdir(exist_ok=True)
    (root / "wavcaps/as_final.json").write_text(json.dumps({"num_captions_per_audio": 1, "data": [
        {"id": "Y7fmOlUlwoNg.wav", "caption": "A man speaks over music.", "audio": "wav_path", "duration": 10.0},
        {"id": 2021, "caption": "Thunder rumbles.", "duration": 2.5},
        {"id": "nothere", "caption": "missing clip"},
        {"caption": "a record without an id"},
        {"id": "2021", "caption": ""},
    ]}))
    inst = root / "instruct/audio"
    _tone(inst / "dog.wav", 0)
    _tone(inst / "car.wav", 1)
    (root / "instruct/audio_instruct.json").write_text(json.dumps([
        {"audio": "dog.wav", "conversations": [
            {"from": "human", "value": "<audio>\nWhat is making the noise?"},
            {"from": "gpt", "value": "A dog is barking."},
            {"from": "human", "value": "How many times?"},
            {"from": "gpt", "value": "Twice."}]},
        {"audio": "car.wav", "QA": [{"q": "What do you hear?", "a": "An engine."}]},
        {"audio": "dog.wav", "conversations": [
            {"from": "human", "value": "Listen."}, {"from": "gpt", "value": "ok"},
            {"from": "human", "value": "<audio> and now?"}, {"from": "gpt", "value": "a dog"}]},
        {"audio": "dog.wav", "text": "neither shape"},
        {"audio": "gone.wav", "QA": [{"q": "q", "a": "a"}]},
    ]))
    return {"audiocaps_csv": root / "audiocaps/train.csv", "audiocaps_audio": caps,
            "clotho_csv": root / "clotho/captions.csv", "clotho_audio": clotho,
            "wavcaps_json": root / "wavcaps/as_final.json", "wavcaps_audio": wav,
            "instruct_json": root / "instruct/audio_instruct.json", "instruct_audio": inst}


def audio_datasets(data: dict[str, Path], *, clotho_captions: str = "each") -> dict[str, dict]:
    """``data.datasets`` entries for the four formats."""
    return {
        "audiocaps": {"type": "audiocaps", "annotations": str(data["audiocaps_csv"]),
                      "media_root": str(data["audiocaps_audio"]), "max_bad_fraction": 1.0},
        "clotho": {"type": "clotho", "annotations": str(data["clotho_csv"]), "media_root": str(data["clotho_audio"]),
                   "captions": clotho_captions, "max_bad_fraction": 1.0},
        "wavcaps": {"type": "wavcaps", "annotations": str(data["wavcaps_json"]),
                    "media_root": str(data["wavcaps_audio"]), "max_bad_fraction": 1.0},
        "audio_instruct": {"type": "audio_instruct", "annotations": str(data["instruct_json"]),
                           "media_root": str(data["instruct_audio"]), "max_bad_fraction": 1.0},
    }
