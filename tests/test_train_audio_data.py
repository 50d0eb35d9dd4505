"""Audio-text readers (AudioCaps, Clotho, WavCaps, audio instructions): records, text, features, skips."""

from __future__ import annotations

import pytest
import torch
from audio_train_fixtures import audio_datasets, make_audio_text_data
from torch.utils.data import DataLoader

from videollama.media import load_audio
from videollama.tokenizer import AUDIO_PLACEHOLDER, IMAGE_PLACEHOLDER, train_tiny_tokenizer
from videollama.train.audio_data import AudioCapsDataset, AudioFolder, audio_message
from videollama.train.config import ConfigError, config_from_dict
from videollama.train.data import DatasetError, build_datasets
from videollama.train.mixing import MixedDataset, MultiDatasetSampler
from videollama.train.text import AUDIO_CAPTION_PROMPTS, IGNORE_INDEX, LLAMA2_PROMPT_TEMPLATE, collate

AUDIO_SHAPE = (8, 1, 128, 204)


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return train_tiny_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_audio_text_data(tmp_path_factory.mktemp("audio"))


def build(data, tok, *, branch: str = "audio", **data_section):
    raw = {"model": {"with_audio": branch == "audio"}, "run": {"branch": branch},
           "data": {"datasets": audio_datasets(data, clotho_captions=data_section.pop("captions", "each")),
                    **data_section}}
    return {d.name: d for d in build_datasets(config_from_dict(raw), tok)}


@pytest.fixture(scope="module")
def sets(data, tok):
    return build(data, tok)


def supervised(tok, sample) -> str:
    ids = [t for t, label in zip(sample["input_ids"].tolist(), sample["labels"].tolist()) if label != IGNORE_INDEX]
    return tok.decode(ids)


def unsupervised(tok, sample) -> str:
    ids = [t for t, label in zip(sample["input_ids"].tolist(), sample["labels"].tolist()) if label == IGNORE_INDEX]
    return tok.decode(ids)


def audio_count(tok, sample) -> int:
    return int((sample["input_ids"] == tok.convert_tokens_to_ids(AUDIO_PLACEHOLDER)).sum())


def test_audiocaps_finds_clips_by_each_naming_convention_and_skips_bad_rows(sets, data, tok):
    ds = sets["audiocaps"]
    assert len(ds) == 7
    audio = data["audiocaps_audio"]
    for index, (clip, caption) in enumerate([("91139.wav", "A dog barks twice."), ("yt2_30.wav", "Birds chirp in the distance"),
                                             ("Yyt3.mp3", "Rain falls on a tin roof")]):
        sample = ds.get(index, seed=0)
        assert sample["index"] == index and sample["skip_report"]["attempted"] == 1
        assert "frames" not in sample and sample["audio"].shape == AUDIO_SHAPE
        assert torch.equal(sample["audio"], load_audio(audio / clip))  # exactly inference's features
        # Stage-1 captioning: [BOS] + 8 <AudioHere> + caption + "\n", only the caption side supervised.
        ids = sample["input_ids"].tolist()
        assert ids[0] == tok.bos_token_id and ids[1:9] == [tok.convert_tokens_to_ids(AUDIO_PLACEHOLDER)] * 8
        assert audio_count(tok, sample) == 8 and supervised(tok, sample) == caption + "\n"
    # Records 3..6 are bad; reading record 3 skips all four and wraps to record 0.
    sample = ds.get(3, seed=0)
    assert sample["index"] == 0
    report = sample["skip_report"]
    assert report["attempted"] == 5 and len(report["reasons"]) == 4
    missing, empty, malformed, undecodable = report["reasons"]
    assert "record 3 (audiocap_id 6, youtube_id yt4)" in missing and "no audio file 6.*, yt4_0.*, Yyt4.*, yt4.*" in missing
    assert empty.endswith("empty caption")
    assert "malformed row: no cell for ['start_time', 'caption']" in malformed
    assert "yt7.wav" in undecodable
    assert ds.skipped.failed == 4


def test_audio_folder_prefers_wav_and_audiocaps_tries_whole_second_starts(data):
    folder = AudioFolder(data["audiocaps_audio"], "x")
    assert folder.find(["91139"]).name == "91139.wav"  # 91139.mp3 exists too
    assert AudioCapsDataset.stems("1", "abc", "30.0") == ["1", "abc_30.0", "abc_30", "Yabc", "abc"]
    assert AudioCapsDataset.stems("1", "abc", "30") == ["1", "abc_30", "Yabc", "abc"]
    with pytest.raises(DatasetError, match="audio folder .*nowhere does not exist"):
        AudioFolder(data["audiocaps_audio"] / "nowhere", "x")


def test_clotho_each_caption_a_record_or_one_sampled_per_draw(data, tok, sets):
    each = sets["clotho"]
    assert len(each) == 3 * 5
    assert [supervised(tok, each.get(i, seed=0)) for i in (5, 6)] == ["Water flows.\n", "A river runs.\n"]
    sample = each.get(2, seed=0)  # caption_3 of the first clip is empty
    assert sample["index"] == 3 and sample["skip_report"]["reasons"][0].endswith("empty caption_3")
    sample = each.get(10, seed=0)  # absent.wav, five times, then wraps
    assert sample["index"] == 0 and len(sample["skip_report"]["reasons"]) == 5
    assert "absent.wav: no such file" in sample["skip_report"]["reasons"][0]
    torch.testing.assert_close(each.get(0, seed=0)["audio"], load_audio(data["clotho_audio"] / "Distorted AM Radio noise.wav"))

    drawn = build(data, tok, captions="sample")["clotho"]
    assert len(drawn) == 3
    seen = {supervised(tok, drawn.get(0, seed=seed)) for seed in range(12)}
    assert seen == {"A radio hisses.\n", "Static crackles.\n", "Noise on a radio.\n", "Radio static.\n"}  # never the empty one
    assert supervised(tok, drawn.get(0, seed=3)) == supervised(tok, drawn.get(0, seed=3))  # the seed decides


def test_wavcaps_ids_with_and_without_extension_and_bad_records(sets, data, tok):
    ds = sets["wavcaps"]
    assert len(ds) == 5
    first, second = ds.get(0, seed=0), ds.get(1, seed=0)
    assert supervised(tok, first) == "A man speaks over music.\n" and supervised(tok, second) == "Thunder rumbles.\n"
    assert torch.equal(first["audio"], load_audio(data["wavcaps_audio"] / "Y7fmOlUlwoNg.m4a"))
    assert torch.equal(second["audio"], load_audio(data["wavcaps_audio"] / "2021.wav"))
    reasons = ds.get(2, seed=0)["skip_report"]["reasons"]
    assert [r.split(": ", 1)[1] for r in reasons] == [
        f"no audio file nothere.* in {data['wavcaps_audio']}", "missing key 'id'", "empty caption"]


def test_audio_instruct_llava_and_videochat_shapes_with_the_official_audio_message(sets, tok):
    ds = sets["audio_instruct"]
    llava, videochat = ds.get(0, seed=0), ds.get(1, seed=0)
    for sample in (llava, videochat):
        assert sample["audio"].shape == AUDIO_SHAPE and audio_count(tok, sample) == 8
    message = audio_message(8)
    assert message.count(AUDIO_PLACEHOLDER) == 8 and message.startswith("Close your eyes, open your ears")
    # The first human message is the audio message + one space + the question, as the demo asks (the
    # <audio> tag and its newline removed); the answers are what is supervised.
    text = tok.decode(llava["input_ids"].tolist()[1:])
    assert f"<</SYS>>\n\n{message} What is making the noise? [/INST] A dog is barking. </s>" in text.replace(
        AUDIO_PLACEHOLDER + " ", AUDIO_PLACEHOLDER)
    assert "<audio>" not in text and "How many times?" in text
    assert supervised(tok, llava).split() == "A dog is barking. </s> Twice. </s>".split()
    assert supervised(tok, videochat).split() == "An engine. </s>".split()
    reasons = ds.get(2, seed=0)["skip_report"]["reasons"]
    assert [r.split(": ", 1)[1] for r in reasons] == [
        "<audio> outside the first human message (one audio per conversation)",
        "record has neither 'conversations' (LLaVA) nor 'QA' (VideoChat)",
        f"{ds.media_root / 'gone.wav'}: no such file"]


def test_audio_instruct_one_turn_draws_one_pair_with_the_audio_message(data, tok):
    """``turns: one``: each draw is one question-answer pair, the audio message opening its question, so
    "How many times?" is asked without "A dog is barking." before it."""
    datasets = audio_datasets(data)
    datasets["audio_instruct"]["turns"] = "one"
    raw = {"model": {"with_audio": True}, "run": {"branch": "audio"}, "data": {"datasets": datasets}}
    ds = {d.name: d for d in build_datasets(config_from_dict(raw), tok)}["audio_instruct"]
    message = audio_message(8)
    seen = {}
    for seed in range(16):
        sample = ds.get(0, seed=seed)
        answer = " ".join(supervised(tok, sample).split())
        text = tok.decode(sample["input_ids"].tolist()[1:]).replace(AUDIO_PLACEHOLDER + " ", AUDIO_PLACEHOLDER)
        assert audio_count(tok, sample) == 8 and "<audio>" not in text and answer.count("</s>") == 1
        seen[answer] = text
    assert set(seen) == {"A dog is barking. </s>", "Twice. </s>"}  # both pairs drawn, one at a time
    assert f"{message} How many times? [/INST] Twice." in seen["Twice. </s>"]
    assert "barking" not in seen["Twice. </s>"] and "How many times" not in seen["A dog is barking. </s>"]
    assert " ".join(supervised(tok, ds.get(1, seed=0)).split()) == "An engine. </s>"  # a one-pair chat as before
    assert torch.equal(ds.get(0, seed=3)["input_ids"], ds.get(0, seed=3)["input_ids"])  # the draw is the seed's


def test_turns_one_is_for_instruction_chats_only():
    raw = {"data": {"datasets": {"w": {"type": "webvid", "turns": "one"}}}}
    with pytest.raises(ConfigError, match="data.datasets.w.turns applies to videochat_instruct and audio_instruct"):
        config_from_dict(raw)
    with pytest.raises(ConfigError, match="turns"):
        config_from_dict({"data": {"datasets": {"v": {"type": "videochat_instruct", "turns": "two"}}}})


def test_stage2_caption_prompt_asks_about_the_sound_like_inference(data, tok):
    raw_prompts = {"prompts": ["audio_caption"], "prompt_template": LLAMA2_PROMPT_TEMPLATE}
    ds = build(data, tok, **raw_prompts)["audiocaps"]
    prompts = {unsupervised(tok, ds.get(0, seed=seed)).replace(AUDIO_PLACEHOLDER, "") for seed in range(12)}
    questions = [p.split(".  ")[-1] for p in AUDIO_CAPTION_PROMPTS]
    assert questions[0] == "Describe what you hear." and len(prompts) == len(questions) == 4
    for prompt in prompts:  # the official audio message, then the question, in the llama_2 chat template
        assert prompt.startswith("<s> [INST] <<SYS>>\n \n<</SYS>>\n\nClose your eyes, open your ears and you "
                                 "imagine only based on the sound that:")
        assert any(prompt.endswith(f".  {q} [/INST] ") for q in questions), prompt


def test_audio_types_need_the_audio_branch_and_captions_is_clotho_only(data, tok):
    with pytest.raises(ConfigError, match=r"data.datasets.audiocaps: 'audiocaps' is real audio .* run.branch: audio"):
        build(data, tok, branch="vision")
    raw = {"model": {"with_audio": True}, "run": {"branch": "audio"},
           "data": {"datasets": {"a": {"type": "wavcaps", "captions": "sample"}}}}
    with pytest.raises(ConfigError, match="data.datasets.a.captions applies to clotho only"):
        config_from_dict(raw)
    with pytest.raises(DatasetError, match="lacks the column.*'caption'"):
        build_datasets(config_from_dict({**raw, "data": {"datasets": {"a": {
            "type": "audiocaps", "annotations": str(data["clotho_csv"]), "media_root": str(data["clotho_audio"])}}}}), tok)


def test_batches_carry_audio_values_and_never_mix_media(sets, tok):
    datasets = [sets["audiocaps"], sets["audio_instruct"]]
    sampler = MultiDatasetSampler([len(d) for d in datasets], [1, 1], batch_size=2, seed=3, num_steps=4)
    loader = DataLoader(MixedDataset(datasets), batch_sampler=sampler, collate_fn=collate)
    for batch in loader:
        assert batch["audio_values"].shape == (2, *AUDIO_SHAPE) and "pixel_values" not in batch
        assert int((batch["input_ids"] == tok.convert_tokens_to_ids(AUDIO_PLACEHOLDER)).sum()) == 16
        assert int((batch["input_ids"] == tok.convert_tokens_to_ids(IMAGE_PLACEHOLDER)).sum()) == 0
    frames = {"input_ids": torch.tensor([1]), "labels": torch.tensor([1]), "frames": torch.zeros(1, 3, 4, 4)}
    audio = {"input_ids": torch.tensor([1]), "labels": torch.tensor([1]), "audio": torch.zeros(AUDIO_SHAPE)}
    with pytest.raises(ValueError, match="a batch mixes audio samples and frame samples"):
        collate([frames, audio])


def test_audio_text_configs_and_dropping_datasets_from_a_mix():
    from pathlib import Path

    from videollama.train.config import AUDIO_TRAINABLE, load_train_config

    configs = Path(__file__).resolve().parents[1] / "configs"
    mixed = load_train_config(configs / "audiobranch_stage1_audiotext.yaml")
    assert {k: (v.type, v.sample_ratio) for k, v in mixed.data.datasets.items()} == {
        "audiocaps": ("audiocaps", 40.0), "clotho": ("clotho", 15.0), "wavcaps_freesound": ("wavcaps", 25.0),
        "webvid": ("webvid", 15.0), "cc_sbu_align": ("cc_sbu_align", 5.0)}
    assert mixed.run.trainable == list(AUDIO_TRAINABLE) and mixed.data.prompts == [] and mixed.needs_imagebind_vision
    alone = load_train_config(configs / "audiobranch_stage1_audiotext.yaml",
                              ["data.datasets.webvid=null", "data.datasets.cc_sbu_align=null"])
    assert list(alone.data.datasets) == ["audiocaps", "clotho", "wavcaps_freesound"]
    assert not alone.needs_imagebind_vision  # real audio only: ImageBind's vision encoder is not built
    stage2 = load_train_config(configs / "audiobranch_stage2_audioinstruct.yaml")
    specs = stage2.data.datasets
    assert specs["audiocaps"].prompts == list(AUDIO_CAPTION_PROMPTS) and specs["audio_instruct"].type == "audio_instruct"
    assert specs["cc_sbu_align"].prompts[0] == "<Image><ImageHere></Image> Describe this image in detail."
    assert stage2.data.prompts == [] and stage2.model.ckpt and stage2.model.ckpt_2
