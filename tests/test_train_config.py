"""The four official stages as YAML: exact numbers, typed loading, overrides and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from videollama.train.config import (
    AUDIO_TRAINABLE,
    VISION_TRAINABLE,
    ConfigError,
    TrainConfig,
    load_train_config,
)
from videollama.train.text import ALIGNMENT_IMAGE_PROMPTS

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

# (init_lr, min_lr, warmup_lr, warmup_steps, max_epoch, iters_per_epoch, batch_size, max_txt_len)
OFFICIAL = {
    "visionbranch_stage1_pretrain": (1e-4, 8e-5, 1e-6, 2500, 5, 2500, 32, 32),
    "visionbranch_stage2_finetune": (3e-5, 1e-5, 1e-6, 1000, 3, 1000, 4, 320),
    "audiobranch_stage1_pretrain": (1e-4, 8e-5, 1e-6, 5000, 5, 5000, 32, 32),
    "audiobranch_stage2_finetune": (3e-5, 1e-5, 1e-6, 400, 3, 1000, 4, 512),
}


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_official_numbers(name):
    cfg = load_train_config(CONFIGS / f"{name}.yaml")
    o = cfg.optim
    got = (o.init_lr, o.min_lr, o.warmup_lr, o.warmup_steps, o.max_epoch, o.iters_per_epoch, o.batch_size,
           o.max_txt_len)
    assert got == OFFICIAL[name]
    assert o.weight_decay == 0.05 and o.betas == [0.9, 0.999] and o.accum_grad_iters == 1 and o.amp
    assert cfg.run.seed == 42
    audio = name.startswith("audio")
    assert cfg.run.branch == ("audio" if audio else "vision")
    assert cfg.run.trainable == list(AUDIO_TRAINABLE if audio else VISION_TRAINABLE)
    assert cfg.model.with_audio is audio
    assert cfg.media_placeholder == ("<AudioHere>" if audio else "<ImageHere>")
    datasets = cfg.data.datasets
    if "stage1" in name:
        assert {k: (v.type, v.sample_ratio) for k, v in datasets.items()} == {
            "webvid": ("webvid", 100.0), "cc_sbu_align": ("cc_sbu_align", 24.0)}
        assert datasets["webvid"].sampling == "headtail" and datasets["webvid"].num_frames == 8
        assert cfg.data.end_sym == "\n" and cfg.data.prompts == [] and cfg.run.num_workers == 8
    else:
        assert {k: v.type for k, v in datasets.items()} == {
            "cc_sbu_align": "cc_sbu_align", "llava_instruct": "llava_instruct", "webvid_instruct": "videochat_instruct"}
        assert {v.sample_ratio for v in datasets.values()} == {1.0}  # uniform 1/3 per batch
        assert datasets["webvid_instruct"].sampling == "uniform" and datasets["webvid_instruct"].num_frames == 8
        assert cfg.data.prompts == list(ALIGNMENT_IMAGE_PROMPTS) and cfg.data.end_sym == "</s>"
        assert cfg.data.prompt_template == "[INST] <<SYS>>\n \n<</SYS>>\n\n{} [/INST] "
        assert cfg.run.num_workers == 4
    n = 8 if audio else 32
    assert {cfg.num_placeholders(k) for k in datasets} == {n}
    assert name == "audiobranch_stage2_finetune" or cfg.model.ckpt_2 is None
    if name == "audiobranch_stage2_finetune":
        assert cfg.model.ckpt and cfg.model.ckpt_2


def test_overrides_are_typed_and_unknown_keys_fail():
    path = CONFIGS / "visionbranch_stage1_pretrain.yaml"
    cfg = load_train_config(path, ["optim.init_lr=3e-5", "optim.batch_size=2", "run.trainable=[video_projection]",
                                   "data.datasets.webvid.annotations=/x/ann", "optim.betas.1=0.98",
                                   "model.ckpt=null", "optim.lora.enabled=true"])
    assert cfg.optim.init_lr == 3e-5 and isinstance(cfg.optim.init_lr, float)
    assert cfg.optim.batch_size == 2 and cfg.run.trainable == ["video_projection"]
    assert cfg.data.datasets["webvid"].annotations == "/x/ann" and cfg.optim.betas == [0.9, 0.98]
    assert cfg.optim.lora.enabled is True
    with pytest.raises(ConfigError, match=r"unknown key 'optim.learning_rate'.*init_lr"):
        load_train_config(path, ["optim.learning_rate=1"])
    with pytest.raises(ConfigError, match=r"optim.batch_size: expected an integer"):
        load_train_config(path, ["optim.batch_size=big"])
    with pytest.raises(ConfigError, match=r"run.branch: 'both' is not one of"):
        load_train_config(path, ["run.branch=both"])
    with pytest.raises(ConfigError, match="not of the form key=value"):
        load_train_config(path, ["optim.batch_size"])
    with pytest.raises(ConfigError, match="model.with_audio is false"):
        load_train_config(path, ["run.branch=audio"])
    with pytest.raises(ConfigError, match="unknown dataset type"):
        load_train_config(path, ["data.datasets.webvid.type=youtube"])


def test_yaml_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text('model:\n  llm_path: "a" or "b"\n')  # the official YAML placeholder style
    with pytest.raises(ConfigError, match="bad.yaml: invalid YAML"):
        load_train_config(bad)
    missing = tmp_path / "missing.yaml"
    with pytest.raises(ConfigError, match="missing.yaml: cannot read"):
        load_train_config(missing)


def test_defaults_and_roundtrip(tmp_path):
    cfg = TrainConfig()
    assert cfg.run.trainable == list(VISION_TRAINABLE)
    again = tmp_path / "again.yaml"
    source = load_train_config(CONFIGS / "audiobranch_stage2_finetune.yaml")
    again.write_text(source.to_yaml())
    assert load_train_config(again) == source


def test_override_value_that_yaml_reads_as_a_comment_stays_text():
    """`data.end_sym=###` (the Vicuna end symbol): YAML reads `#...` as a comment (None); keep the text."""
    path = CONFIGS / "visionbranch_stage2_finetune.yaml"
    cfg = load_train_config(path, ["data.end_sym=###", "data.prompt_template=###Human: {} ###Assistant: "])
    assert cfg.data.end_sym == "###"
    assert cfg.data.prompt_template == "###Human: {} ###Assistant: "
    assert load_train_config(path, ['data.end_sym="###"']).data.end_sym == "###"  # the quoted form still works
    for null in ("null", "~", " null "):  # explicit nulls stay null
        assert load_train_config(path, [f"model.ckpt={null}"]).model.ckpt is None
    assert load_train_config(path, ["data.end_sym="]).data.end_sym == ""
