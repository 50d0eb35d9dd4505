"""Datasets in the official formats, built from tiny synthetic data: text, media, skipping."""

from __future__ import annotations

import csv
import io
import json
import tarfile
from pathlib import Path

import pytest
import torch
from media_fixtures import make_numbered_video
from PIL import Image
from torch.utils.data import DataLoader

from videollama.tokenizer import AUDIO_PLACEHOLDER, IMAGE_PLACEHOLDER, train_tiny_tokenizer
from videollama.train.config import config_from_dict
from videollama.train.data import DatasetError, build_datasets, merge_skip_reports
from videollama.train.mixing import MixedDataset, MultiDatasetSampler
from videollama.train.text import ALIGNMENT_IMAGE_PROMPTS, IGNORE_INDEX, blip_caption, collate

FRAMES = 8
SIZE = 224


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return train_tiny_tokenizer(tmp_path_factory.mktemp("tok"))


def write_video(path: Path, n_frames: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    make_numbered_video(path, n_frames, fps=8, size=(64, 48))


def write_image(path: Path, color: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (48, 40), color).save(path, format="JPEG")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """One tiny copy of every official layout, each with a few broken records."""
    root = tmp_path_factory.mktemp("corpus")
    for page, vid, n in (("p1", "101", 12), ("p1", "103", 10), ("p2", "104", 9), ("p2", "105", 4)):
        write_video(root / "webvid/videos" / page / f"{vid}.mp4", n)
    ann = root / "webvid/ann"
    ann.mkdir(parents=True)
    with open(ann / "part0.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["videoid", "name", "page_dir", "duration"])
        w.writerow(["101", "A Dog (running) on the BEACH!", "p1", "3"])
        w.writerow(["102", "missing video", "p1", "3"])  # no such file
        w.writerow(["103", "Two cats; sleeping.", "p1", "3"])
    with open(ann / "part1.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["videoid", "name", "page_dir"])
        w.writerow(["104", "a red car", "p2"])
        w.writerow(["105", "too short", "p2"])  # 4 frames < 8: rejected like the official loader
    (ann / "ignored.tsv").write_text("videoid\tname\tpage_dir\n999\tx\tp1\n")

    store = root / "cc_sbu_align"
    write_image(store / "image/1.jpg", (255, 0, 0))
    write_image(store / "image/3.jpg", (0, 0, 255))
    (store / "filter_cap.json").write_text(json.dumps({"annotations": [
        {"image_id": "1", "caption": "A Red Circle."},
        {"image_id": "2", "caption": "missing image"},
        {"image_id": "3", "caption": "A blue square."},
        {"caption": "no image_id"},
    ]}))

    coco = root / "coco"
    write_image(coco / "COCO_train2014_000001.jpg", (0, 255, 0))
    (root / "llava.json").write_text(json.dumps([
        {"image": "000001.jpg", "conversations": [
            {"from": "human", "value": "<image>\nwhat color is the ball?"}, {"from": "gpt", "value": "it is yellow."},
            {"from": "human", "value": "and then?"}, {"from": "gpt", "value": "it rolls."}]},
        {"image": "000001.jpg", "conversations": [  # no <image>: no placeholders -> skipped
            {"from": "human", "value": "hello"}, {"from": "gpt", "value": "hi"}]},
        "not an object",
        {"image": "000002.jpg", "conversations": [
            {"from": "human", "value": "<image> hi"}, {"from": "gpt", "value": "x"}]},  # missing image
    ]))

    write_video(root / "instruct/videos/a.mp4", 16)
    (root / "instruct/broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not really a video")
    (root / "videochat.json").write_text(json.dumps([
        {"video": "videos/a.mp4", "QA": [{"q": "what is shown?", "a": "numbers."}, {"q": "why?", "a": "a test."}]},
        {"video": "broken.mp4", "QA": [{"q": "q", "a": "a"}]},
        {"video": "videos/a.mp4", "QA": [{"q": "only a question"}]},
    ]))

    shards = root / "shards"
    shards.mkdir()
    clip = root / "wds_clip.mp4"
    write_video(clip, 10)
    jpg = io.BytesIO()
    Image.new("RGB", (32, 32), (9, 9, 9)).save(jpg, format="JPEG")
    members = {
        "s/k1.mp4": clip.read_bytes(), "s/k1.txt": b"A Video Caption!",
        "s/k2.jpg": jpg.getvalue(), "s/k2.json": json.dumps({"caption": "An IMAGE: caption"}).encode(),
        "s/k3.txt": b"caption without media",
    }
    with tarfile.open(shards / "shard-000.tar", "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (shards / "shard-001.tar").write_bytes(b"not a tar archive at all" * 20)
    return root


def make_config(root: Path, branch: str = "vision", **data_overrides):
    raw = {
        "model": {"with_audio": branch == "audio"},
        "data": {"datasets": {
            "webvid": {"annotations": str(root / "webvid/ann"), "media_root": str(root / "webvid/videos"),
                       "sampling": "headtail", "sample_ratio": 100},
            "cc_sbu_align": {"annotations": str(root / "cc_sbu_align"), "sample_ratio": 24},
            "llava_instruct": {"annotations": str(root / "llava.json"), "media_root": str(root / "coco")},
            "webvid_instruct": {"type": "videochat_instruct", "annotations": str(root / "videochat.json"),
                                "media_root": str(root / "instruct")},
            "wds": {"type": "webdataset", "shards": [str(root / "shards/shard-{000..001}.tar")]},
        }, **data_overrides},
        "run": {"branch": branch},
    }
    return config_from_dict(raw)


def supervised_text(tok, sample) -> str:
    """Decoded supervised spans, joined with '|'."""
    spans, current = [], []
    for token, label in zip(sample["input_ids"].tolist(), sample["labels"].tolist()):
        if label != IGNORE_INDEX:
            current.append(token)
        elif current:
            spans, current = spans + [current], []
    spans += [current] if current else []
    return "|".join(tok.decode(span) for span in spans)


@pytest.fixture(scope="module")
def vision(corpus, tok):
    return {d.name: d for d in build_datasets(make_config(corpus), tok)}


def test_webvid_csv_captions_frames_and_skips(vision, tok):
    ds = vision["webvid"]
    assert len(ds) == 5  # both *.csv files, the .tsv ignored
    sample = ds.get(0, seed=1)
    assert sample["frames"].shape == (FRAMES, 3, SIZE, SIZE) and sample["frames"].dtype == torch.float32
    assert -2.0 < float(sample["frames"].min()) and float(sample["frames"].max()) < 2.5  # CLIP-normalised
    assert supervised_text(tok, sample) == blip_caption("A Dog (running) on the BEACH!") + "\n"
    assert supervised_text(tok, sample) == "a dog running on the beach\n"
    ids = sample["input_ids"].tolist()
    assert ids[: 1 + 32] == [tok.bos_token_id] + [tok.convert_tokens_to_ids(IMAGE_PLACEHOLDER)] * 32
    # Same seed -> same frames and crop; another seed -> another crop / headtail draw.
    assert torch.equal(ds.get(0, seed=1)["frames"], sample["frames"])
    assert not torch.equal(ds.get(0, seed=2)["frames"], sample["frames"])
    # Record 1 has no video: the next record (2) is returned and the failure reported.
    skipped = ds.get(1, seed=1)
    assert skipped["index"] == 2 and supervised_text(tok, skipped) == "two cats sleeping\n"
    assert skipped["skip_report"]["attempted"] == 2
    assert "record 1 (p1/102.mp4)" in skipped["skip_report"]["reasons"][0]
    assert "no such file" in skipped["skip_report"]["reasons"][0]
    wrapped = ds.get(4, seed=1)  # 4 frames < 8 -> wraps to record 0
    assert wrapped["index"] == 0 and "4 frames, need 8" in wrapped["skip_report"]["reasons"][0]
    assert ds.skipped.failed >= 2


def test_cc_sbu_align_caption_verbatim_and_stage2_prompt(corpus, tok, vision):
    ds = vision["cc_sbu_align"]
    sample = ds.get(0, seed=0)
    assert sample["frames"].shape == (1, 3, SIZE, SIZE)
    assert supervised_text(tok, sample) == "A Red Circle.\n"  # not blip-cleaned (official)
    assert ds.get(1, seed=0)["index"] == 2  # missing image -> next
    assert "missing key 'image_id'" in ds.get(3, seed=0)["skip_report"]["reasons"][0]
    stage2 = make_config(corpus, end_sym="###", prompt_template="###Human: {} ###Assistant: ",
                         prompts=["alignment_image"])
    ds2 = [d for d in build_datasets(stage2, tok) if d.name == "cc_sbu_align"][0]
    sample = ds2.get(0, seed=0)
    ids = sample["input_ids"].tolist()
    before = tok.encode("###Human: <Image>", add_special_tokens=False)
    assert ids[: 1 + len(before) + 32] == [tok.bos_token_id] + before + [tok.convert_tokens_to_ids(IMAGE_PLACEHOLDER)] * 32
    text = tok.decode(ids, skip_special_tokens=True)
    assert any(p.split("</Image> ")[1] + " ###Assistant:" in text for p in ALIGNMENT_IMAGE_PROMPTS)
    assert supervised_text(tok, sample) == "A Red Circle.###"


def test_llava_instruct_conversation(vision, tok):
    ds = vision["llava_instruct"]
    sample = ds.get(0, seed=0)
    ids = sample["input_ids"]
    assert int((ids == tok.convert_tokens_to_ids(IMAGE_PLACEHOLDER)).sum()) == 32
    assert supervised_text(tok, sample) == "it is yellow. </s>|it rolls. </s>"  # llama_2 default
    full = tok.decode(ids.tolist())
    assert "<Image>" + "<ImageHere>" * 32 + "</Image>\nwhat color" in full
    assert sample["frames"].shape == (1, 3, SIZE, SIZE)
    nothing = ds.get(1, seed=0)  # no <image> -> 0 placeholders; "not an object"; missing file -> wrap
    assert nothing["index"] == 0 and nothing["skip_report"]["attempted"] == 4
    reasons = " | ".join(nothing["skip_report"]["reasons"])
    assert "0 <ImageHere> tokens" in reasons and "not an object" in reasons and "no such file" in reasons


def test_videochat_instruct_timestamps_and_cn(corpus, vision, tok):
    ds = vision["webvid_instruct"]
    sample = ds.get(0, seed=0)
    assert sample["frames"].shape == (FRAMES, 3, SIZE, SIZE)
    text = tok.decode(sample["input_ids"].tolist())
    # uniform sampling of 16 frames at 8 fps: frames 0, 2, ..., 14 -> 0.0, 0.2, ... seconds
    message = "The video contains 8 frames sampled at 0.0, 0.2, 0.5, 0.8, 1.0, 1.2, 1.5, 1.8 seconds. "
    assert "<Video>" + "<ImageHere>" * 32 + "</Video> " + message + "what is shown?" in text
    assert supervised_text(tok, sample) == "numbers. </s>|a test. </s>"
    assert ds.get(1, seed=0)["index"] == 0  # broken video, then a QA without 'a' -> wraps to 0
    cn = make_config(corpus)
    cn.data.datasets["webvid_instruct"].data_type = "video_cn"
    ds_cn = [d for d in build_datasets(cn, tok) if d.name == "webvid_instruct"][0]
    assert "</Video> what is shown?" in tok.decode(ds_cn.get(0, seed=0)["input_ids"].tolist())


def test_vicuna_template_for_instruct(corpus, tok):
    cfg = make_config(corpus, template="vicuna_v0")
    ds = [d for d in build_datasets(cfg, tok) if d.name == "llava_instruct"][0]
    sample = ds.get(0, seed=0)
    text = tok.decode(sample["input_ids"].tolist())
    assert text.startswith("<s> \n\n###Human: <Image>") or text.startswith("<s>\n\n###Human: <Image>")
    assert text.rstrip().endswith("###Assistant: it rolls.\n###")


def test_webdataset_shards(vision, tok):
    ds = vision["wds"]
    assert len(ds) == 3  # the broken shard adds no records
    assert ds.skipped.failed == 1 and "shard-001.tar" in ds.skipped.reasons[0]
    video = ds.get(0, seed=0)
    assert video["frames"].shape == (FRAMES, 3, SIZE, SIZE)
    assert supervised_text(tok, video) == "a video caption\n"
    image = ds.get(1, seed=0)
    assert image["frames"].shape == (1, 3, SIZE, SIZE) and supervised_text(tok, image) == "an image caption\n"
    wrapped = ds.get(2, seed=0)  # k3 has no media member
    assert wrapped["index"] == 0 and "no media member" in wrapped["skip_report"]["reasons"][0]


def test_audio_branch_uses_audio_placeholders(corpus, tok):
    ds = {d.name: d for d in build_datasets(make_config(corpus, branch="audio"), tok)}
    audio_id = tok.convert_tokens_to_ids(AUDIO_PLACEHOLDER)
    for name in ("webvid", "llava_instruct", "webvid_instruct"):
        ids = ds[name].get(0, seed=0)["input_ids"]
        assert int((ids == audio_id).sum()) == 8, name
        assert int((ids == tok.convert_tokens_to_ids(IMAGE_PLACEHOLDER)).sum()) == 0


def test_mostly_broken_dataset_stops_with_clear_error(tmp_path, tok):
    ann = tmp_path / "ann"
    ann.mkdir()
    with open(ann / "a.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["videoid", "name", "page_dir"])
        for i in range(40):
            w.writerow([str(i), "caption", "p"])  # no video exists
    raw = {"data": {"datasets": {"webvid": {"annotations": str(ann), "media_root": str(tmp_path / "none")}}}}
    ds = build_datasets(config_from_dict(raw), tok)[0]
    with pytest.raises(DatasetError, match=r"dataset 'webvid': 16 of 16 records tried failed .*no such file"):
        ds.get(0, seed=0)
    tiny = config_from_dict({"data": {"datasets": {"webvid": {"annotations": str(ann), "media_root": "/nope",
                                                              "max_bad_fraction": 1.0}}}})
    with pytest.raises(DatasetError, match="none of its 40 records could be read"):
        build_datasets(tiny, tok)[0].get(0, seed=0)
    with pytest.raises(DatasetError, match="no \\*.csv files"):
        build_datasets(config_from_dict({"data": {"datasets": {"webvid": {"annotations": str(tmp_path)}}}}), tok)


def test_dataloader_with_mixing_and_worker_skip_reports(vision):
    datasets = [vision["webvid"], vision["cc_sbu_align"]]
    sampler = MultiDatasetSampler([len(d) for d in datasets], [100, 24], batch_size=2, seed=42, num_steps=4)
    loader = DataLoader(MixedDataset(datasets), batch_sampler=sampler, num_workers=1, collate_fn=collate)
    totals = {}
    for step, batch in enumerate(loader):
        assert batch["step"] == step and len(set(batch["dataset"])) == 1
        expected_frames = FRAMES if batch["dataset"][0] == "webvid" else 1
        assert batch["pixel_values"].shape == (2, expected_frames, 3, SIZE, SIZE)
        assert batch["attention_mask"].shape == batch["input_ids"].shape
        merge_skip_reports(totals, batch["skip_reports"])
    # Reports made in the worker process reach the main process: every sample is one success.
    assert sum(s.attempted - s.failed for s in totals.values()) == 4 * 2
