"""The audio-text stages end to end (``videollama train`` with the shipped configs on a tiny model): real
audio through the frozen ImageBind audio encoder, alone and mixed with the paper's visual-only data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from audio_train_fixtures import make_audio_text_data
from train_fixtures import make_model_dir, make_official_data

from videollama.cli import main
from videollama.model import VideoLlama
from videollama.train.config import AUDIO_TRAINABLE

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SMALL_RUN = ["optim.batch_size=2", "optim.max_epoch=1", "optim.warmup_steps=1", "optim.init_lr=1e-3",
             "optim.min_lr=1e-4", "optim.amp=false", "optim.dtype=fp32", "run.num_workers=0", "run.tensorboard=false",
             "run.log_every=1", "data.image_size=224"]


@pytest.fixture(scope="module")
def audio(tmp_path_factory):
    return make_audio_text_data(tmp_path_factory.mktemp("audio"))


@pytest.fixture(scope="module")
def visual(tmp_path_factory):
    return make_official_data(tmp_path_factory.mktemp("visual"), clips=2, bad_record=False)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_tokenizer):
    return make_model_dir(tmp_path_factory.mktemp("base") / "model", tiny_tokenizer)


@pytest.fixture
def media_seen(monkeypatch):
    """The media arguments of every training forward pass."""
    seen: list[set[str]] = []
    original = VideoLlama.forward

    def spy(self, *args, **kwargs):
        seen.append({k for k in ("pixel_values", "audio_values", "visual_audio_values") if kwargs.get(k) is not None})
        return original(self, *args, **kwargs)

    monkeypatch.setattr(VideoLlama, "forward", spy)
    return seen


def changed_parts(base: Path, trained: Path) -> set[str]:
    a, b = VideoLlama.from_pretrained(base).state_dict(), VideoLlama.from_pretrained(trained).state_dict()
    assert a.keys() == b.keys()
    return {k.split(".")[0] for k in a if not torch.equal(a[k], b[k])}


def test_stage1_audiotext_alone_trains_exactly_the_audio_branch(audio, model_dir, tmp_path, media_seen, capsys):
    out = tmp_path / "stage1"
    code = main(["train", str(CONFIGS / "audiobranch_stage1_audiotext.yaml"), *SMALL_RUN,
                 f"model.model_dir={model_dir}", "optim.iters_per_epoch=4", f"run.output_dir={out}",
                 "data.datasets.webvid=null", "data.datasets.cc_sbu_align=null",
                 "data.datasets.audiocaps.max_bad_fraction=1.0",
                 f"data.datasets.audiocaps.annotations={audio['audiocaps_csv']}",
                 f"data.datasets.audiocaps.media_root={audio['audiocaps_audio']}",
                 f"data.datasets.clotho.annotations={audio['clotho_csv']}",
                 f"data.datasets.clotho.media_root={audio['clotho_audio']}",
                 f"data.datasets.wavcaps_freesound.annotations={audio['wavcaps_json']}",
                 f"data.datasets.wavcaps_freesound.media_root={audio['wavcaps_audio']}"])
    assert code == 0 and '"steps": 4' in capsys.readouterr().out
    assert len(media_seen) == 4 and all(kinds == {"audio_values"} for kinds in media_seen)
    # Only the audio Q-Former, its queries, positions and projection moved: ImageBind's audio encoder, the
    # LLM and everything else are bit-identical to the base model.
    assert changed_parts(model_dir, out / "export") == set(AUDIO_TRAINABLE)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["branch"] == "audio"
    assert set(summary["skipped"]) <= {"audiocaps", "clotho", "wavcaps_freesound"} and summary["skipped"]


@pytest.mark.slow
def test_stage2_audioinstruct_mixed_with_visual_data(audio, visual, model_dir, tmp_path, media_seen):
    out = tmp_path / "stage2"
    code = main(["train", str(CONFIGS / "audiobranch_stage2_audioinstruct.yaml"), *SMALL_RUN,
                 f"model.model_dir={model_dir}", "model.ckpt=null", "model.ckpt_2=null", "optim.iters_per_epoch=8",
                 f"run.output_dir={out}", "data.datasets.llava_instruct=null", "data.datasets.webvid_instruct=null",
                 "data.datasets.audio_instruct.sample_ratio=1", "data.datasets.audiocaps.sample_ratio=1",
                 "data.datasets.cc_sbu_align.sample_ratio=1", "data.datasets.audiocaps.max_bad_fraction=1.0",
                 f"data.datasets.audio_instruct.annotations={audio['instruct_json']}",
                 f"data.datasets.audio_instruct.media_root={audio['instruct_audio']}",
                 f"data.datasets.audiocaps.annotations={audio['audiocaps_csv']}",
                 f"data.datasets.audiocaps.media_root={audio['audiocaps_audio']}",
                 f"data.datasets.cc_sbu_align.annotations={visual['cc_sbu']}"])
    assert code == 0
    # Each step is one dataset's batch: real audio through ImageBind's audio encoder, or frames through its
    # vision encoder (the paper's visual-only data), both into the same audio Q-Former.
    assert {frozenset(k) for k in media_seen} == {frozenset({"audio_values"}), frozenset({"visual_audio_values"})}
    assert changed_parts(model_dir, out / "export") == set(AUDIO_TRAINABLE)

