"""SynthAV's audio-text output: soundtracks with what is heard, read by the audio-text training readers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from videollama.synthav import WorldConfig, generate
from videollama.synthav.annotate import audio_caption, sound_answer
from videollama.synthav.render import render_audio
from videollama.synthav.world import Scene
from videollama.tokenizer import train_tiny_tokenizer
from videollama.train.config import config_from_dict
from videollama.train.data import build_datasets
from videollama.train.text import IGNORE_INDEX

AUDIO_CLIPS = 3


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synthav") / "audio"
    generate(out, clips=2, seed=0, test_clips=2, instruct_clips=0, images=0, audio_clips=AUDIO_CLIPS)
    return out


def test_audio_captions_and_chats_say_what_the_soundtrack_holds(data):
    truth = {r["media"]: Scene.from_dict(r["scene"]) for r in map(json.loads, (data / "truth.jsonl").read_text().splitlines())}
    captions = json.loads((data / "audio_captions/audio_captions.json").read_text())["data"]
    chats = json.loads((data / "audio_instruct/audio_instruct.json").read_text())
    assert len(captions) == len(chats) == AUDIO_CLIPS
    for record in captions:
        scene = truth[f"audio_captions/audio/{record['id']}.wav"]
        assert record["caption"] == audio_caption(scene)
        assert record["caption"] == "silence." or record["caption"].startswith(f"a {scene.sound_sources()[0]} sound")
    for record in chats:
        scene = truth[f"audio_instruct/audio/{record['audio']}"]
        assert {"q": "What do you hear?", "a": sound_answer(scene)} in record["QA"]
    # The wav is the clip's soundtrack itself (16-bit PCM of render_audio).
    import wave

    first = captions[0]["id"]
    with wave.open(str(data / f"audio_captions/audio/{first}.wav")) as w:
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2") / 32767
    expected = render_audio(truth[f"audio_captions/audio/{first}.wav"], WorldConfig())
    np.testing.assert_allclose(pcm, np.clip(expected, -1, 1), atol=1 / 32767)
    meta = json.loads((data / "meta.json").read_text())
    assert meta["counts"]["audio_captions"] == meta["counts"]["audio_instruct"] == AUDIO_CLIPS
    assert not set(truth[k] for k in truth if k.startswith("qa/")) & set(truth[k] for k in truth if k.startswith("audio"))


def test_the_audio_text_readers_train_on_it(data, tmp_path):
    tok = train_tiny_tokenizer(tmp_path / "tok")
    meta = json.loads((data / "meta.json").read_text())["paths"]
    raw = {"model": {"with_audio": True}, "run": {"branch": "audio"}, "data": {"datasets": {
        "captions": {"type": "wavcaps", "annotations": str(data / meta["audio_captions_json"]),
                     "media_root": str(data / meta["audio_captions_audio"])},
        "chats": {"type": "audio_instruct", "annotations": str(data / meta["audio_instruct_json"]),
                  "media_root": str(data / meta["audio_instruct_audio"])}}}}
    for ds in build_datasets(config_from_dict(raw), tok):
        for index in range(len(ds)):
            sample = ds.get(index, seed=0)
            assert sample["index"] == index and not sample["skip_report"]["reasons"]
            assert sample["audio"].shape == (8, 1, 128, 204) and (sample["labels"] != IGNORE_INDEX).any()


def test_without_audio_clips_nothing_audio_is_written(tmp_path):
    out = tmp_path / "plain"
    generate(out, clips=1, seed=0, test_clips=1, instruct_clips=0, images=0)
    assert not (out / "audio_captions").exists() and not (out / "audio_instruct").exists()
    assert "audio_captions_json" not in json.loads((out / "meta.json").read_text())["paths"]
