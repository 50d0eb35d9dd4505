"""Tiny training data in the official formats, and a tiny model folder (without dropout unless asked)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from media_fixtures import make_numbered_video

COLORS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "yellow": (230, 230, 40)}


def make_official_data(root: Path, *, clips: int = 6, bad_record: bool = True) -> dict[str, Path]:
    """WebVid CSV + videos, cc_sbu filter_cap.json + images, LLaVA and VideoChat instruction JSON."""
    root = Path(root)
    videos = root / "webvid" / "videos"
    (root / "webvid" / "ann").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(clips):
        (videos / f"page{i % 2}").mkdir(parents=True, exist_ok=True)
        make_numbered_video(videos / f"page{i % 2}" / f"{1000 + i}.mp4", 16, fps=8, size=(64, 48))
        rows.append({"videoid": 1000 + i, "name": f"A clip number {i}: red circle moves left!", "page_dir": f"page{i % 2}"})
    if bad_record:
        rows.append({"videoid": 9999, "name": "a missing video", "page_dir": "nowhere"})
    with open(root / "webvid" / "ann" / "train.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["videoid", "name", "page_dir"])
        writer.writeheader()
        writer.writerows(rows)
    cc = root / "cc_sbu"
    (cc / "image").mkdir(parents=True, exist_ok=True)
    annotations = []
    for i, (name, rgb) in enumerate(COLORS.items()):
        image = np.zeros((48, 64, 3), np.uint8)
        image[:] = rgb
        Image.fromarray(image).save(cc / "image" / f"img{i}.jpg")
        annotations.append({"image_id": f"img{i}", "caption": f"a {name} square"})
    (cc / "filter_cap.json").write_text(json.dumps({"annotations": annotations}))
    llava = root / "llava"
    (llava / "images").mkdir(parents=True, exist_ok=True)
    records = []
    for i, name in enumerate(COLORS):
        Image.open(cc / "image" / f"img{i}.jpg").save(llava / "images" / f"COCO_train2014_00000{i}.jpg")
        records.append({"image": f"00000{i}.jpg", "conversations": [
            {"from": "human", "value": "<image>\nWhat colour is it?"}, {"from": "gpt", "value": f"It is {name}."}]})
    (llava / "llava_instruct.json").write_text(json.dumps(records))
    videochat = [{"video": f"page{i % 2}/{1000 + i}.mp4", "QA": [{"q": "What moves?", "a": "A circle."}]}
                 for i in range(clips)]
    (root / "videochat.json").write_text(json.dumps(videochat))
    return {"webvid_ann": root / "webvid" / "ann", "webvid_videos": videos, "cc_sbu": cc,
            "llava": llava / "llava_instruct.json", "llava_images": llava / "images", "videochat": root / "videochat.json"}


def make_model_dir(path: Path, tokenizer, *, seed: int = 0, dropout: float = 0.0) -> Path:
    """The tiny preset saved as a model folder (with ImageBind's vision trunk); ``dropout`` in the Q-Formers
    and ImageBind's drop path (0 by default: exact comparisons need no RNG for those)."""
    from videollama.model import VideoLlama
    from videollama.presets import tiny
    from videollama.processor import attach_media_tokens

    config = tiny(vocab_size=tokenizer.vocab_size)
    for q in (config.image_qformer, config.video_qformer, config.audio_qformer):
        q.dropout = dropout
    config.imagebind.audio_drop_path = dropout
    attach_media_tokens(tokenizer, config)
    torch.manual_seed(seed)
    VideoLlama(config).save_pretrained(path, tokenizer=tokenizer)
    return path


def stage_config(data: dict[str, Path], model_dir: Path, out: Path, *, stage: int = 1, branch: str = "vision",
                 steps: int = 6, batch_size: int = 2, **run) -> dict:
    if stage == 1:
        datasets = {
            "webvid": {"type": "webvid", "annotations": str(data["webvid_ann"]), "media_root": str(data["webvid_videos"]),
                       "sample_ratio": 100, "num_frames": 4, "sampling": "headtail"},
            "cc_sbu_align": {"type": "cc_sbu_align", "annotations": str(data["cc_sbu"]), "sample_ratio": 24},
        }
    else:
        datasets = {
            "llava_instruct": {"type": "llava_instruct", "annotations": str(data["llava"]),
                               "media_root": str(data["llava_images"])},
            "videochat_instruct": {"type": "videochat_instruct", "annotations": str(data["videochat"]),
                                   "media_root": str(data["webvid_videos"]), "num_frames": 4},
        }
    return {
        "model": {"model_dir": str(model_dir), "with_audio": branch == "audio"},
        "data": {"datasets": datasets, "end_sym": "\n" if stage == 1 else "</s>", "image_size": 224},
        "optim": {"init_lr": 1e-3, "min_lr": 1e-4, "warmup_lr": 1e-5, "warmup_steps": 2, "max_epoch": 1,
                  "iters_per_epoch": steps, "batch_size": batch_size, "max_txt_len": 24, "amp": False,
                  "dtype": "fp32"},
        "run": {"output_dir": str(out), "seed": 7, "num_workers": 0, "branch": branch, "tensorboard": True,
                "save_every": 3, "keep_last_k": 2, "log_every": 1, **run},
    }
