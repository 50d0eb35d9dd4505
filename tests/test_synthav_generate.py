"""SynthAV generator: determinism, official formats, rendered truth vs annotations, QA families.

A few small datasets are generated once per module into tmp folders (about 2 s in all).
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from videollama.synthav import FAMILIES, WorldConfig, generate
from videollama.synthav.annotate import QUESTION_TYPES, applicable, sample_question, video_caption
from videollama.synthav.render import render_audio
from videollama.synthav.world import (
    BACKGROUND_RGB,
    COLOURS,
    SHAPES,
    SIGNATURES,
    SOUND_SOURCES,
    OffscreenSound,
    Scene,
    SceneObject,
    sample_scene,
)

SMALL = dict(clips=6, test_clips=12, instruct_clips=4, images=4)
ANNOTATION_FILES = (
    "webvid/annotations/train.csv",
    "cc_sbu/filter_cap.json",
    "llava/llava_instruct.json",
    "videochat/videochat_instruct.json",
    "qa/test.json",
    "truth.jsonl",
    "corpus.txt",
    "meta.json",
)
CONFIG = WorldConfig()
COLOUR_TOLERANCE = 40
"""Max per-channel error at an object's centre after H.264 (yuv420, crf 18) and back."""
WINDOW = CONFIG.sample_rate  # 1-s analysis windows: one whole bell period
HOP = CONFIG.sample_rate // 8
ON_MARGIN_DB, OFF_MARGIN_DB = 12.0, 20.0
"""A source's band level while audible is within 12 dB of its level alone, and 20 dB below it when not."""


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synthav") / "seed0"
    generate(out, seed=0, **SMALL)
    return out


@pytest.fixture(scope="module")
def data_again(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synthav") / "seed0_again"
    generate(out, seed=0, workers=2, **SMALL)  # same seed, other worker count
    return out


@pytest.fixture(scope="module")
def data_other(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synthav") / "seed1"
    generate(out, seed=1, **SMALL)
    return out


def decode(path: Path) -> tuple[np.ndarray, np.ndarray, dict]:
    """(T, H, W, 3) uint8 frames, (N,) float32 audio, stream info."""
    with av.open(str(path)) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        info = {
            "vcodec": video.codec_context.name,
            "acodec": audio.codec_context.name,
            "rate": audio.codec_context.sample_rate,
            "channels": audio.codec_context.channels,
            "fps": float(video.average_rate),
        }
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    with av.open(str(path)) as container:
        samples = np.concatenate([f.to_ndarray() for f in container.decode(audio=0)], axis=1)[0]
    return frames, samples, info


def truth(out: Path, split: str | None = None) -> list[dict]:
    records = [json.loads(line) for line in (out / "truth.jsonl").read_text().splitlines()]
    return [r for r in records if split is None or r["split"] == split]


def band_levels(audio: np.ndarray, band: tuple[float, float]) -> list[tuple[int, float]]:
    """(start sample, mean power in band in dB) for Hann windows of WINDOW samples every HOP."""
    freqs = np.fft.rfftfreq(WINDOW, 1.0 / CONFIG.sample_rate)
    in_band = (freqs >= band[0]) & (freqs <= band[1])
    out = []
    for start in range(0, CONFIG.num_samples - WINDOW + 1, HOP):
        spectrum = np.abs(np.fft.rfft(audio[start : start + WINDOW] * np.hanning(WINDOW))) ** 2
        out.append((start, 10 * np.log10(spectrum[in_band].mean() + 1e-20)))
    return out


# ----------------------------------------------------------------------------- determinism


@pytest.mark.slow
def test_same_seed_is_identical_for_any_worker_count(data: Path, data_again: Path) -> None:
    for rel in ANNOTATION_FILES:
        assert (data / rel).read_bytes() == (data_again / rel).read_bytes(), rel
    for rec in truth(data, "webvid")[:2] + truth(data, "test")[:1]:
        f1, a1, _ = decode(data / rec["media"])
        f2, a2, _ = decode(data_again / rec["media"])
        np.testing.assert_array_equal(f1, f2)
        np.testing.assert_array_equal(a1, a2)
    for rec in truth(data, "llava")[:2]:
        assert (data / rec["media"]).read_bytes() == (data_again / rec["media"]).read_bytes()


@pytest.mark.slow
def test_different_seed_differs(data: Path, data_other: Path) -> None:
    for rel in ("webvid/annotations/train.csv", "qa/test.json", "truth.jsonl"):
        assert (data / rel).read_bytes() != (data_other / rel).read_bytes(), rel
    f1, a1, _ = decode(data / truth(data, "webvid")[0]["media"])
    f2, a2, _ = decode(data_other / truth(data_other, "webvid")[0]["media"])
    assert not np.array_equal(f1, f2)
    assert not np.array_equal(a1[:64000], a2[:64000])


def test_refuses_to_overwrite_unless_asked(data: Path, tmp_path: Path) -> None:
    with pytest.raises(FileExistsError, match="not empty"):
        generate(data, clips=1, test_clips=0)
    (tmp_path / "keep.txt").write_text("mine")
    generate(tmp_path, clips=1, test_clips=1, images=0, instruct_clips=0, overwrite=True)
    assert (tmp_path / "keep.txt").read_text() == "mine"  # only SynthAV's own outputs are replaced
    summary = generate(tmp_path, clips=2, test_clips=1, images=1, instruct_clips=0, overwrite=True)
    assert summary["counts"]["webvid"] == 2
    assert len(list((tmp_path / "webvid/videos").rglob("*.mp4"))) == 2


def test_bad_arguments_raise_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="clips must be >= 1"):
        generate(tmp_path / "a", clips=0)
    with pytest.raises(ValueError, match="size must be even"):
        generate(tmp_path / "b", clips=1, size=111)
    with pytest.raises(ValueError, match="whole number of frames"):
        WorldConfig(fps=3, seconds=1.5)


# ---------------------------------------------------------------------------------- formats


def test_webvid_csv_and_videos(data: Path) -> None:
    with open(data / "webvid/annotations/train.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == SMALL["clips"]
    assert {"videoid", "name", "page_dir"} <= set(rows[0])
    for row in rows:
        assert row["videoid"].isdigit() and not row["videoid"].startswith("0")  # pandas reads it as int
        path = data / "webvid/videos" / row["page_dir"] / f"{row['videoid']}.mp4"
        assert path.is_file(), path
        # The official blip_caption keeps at most 50 words.
        assert len(re.sub(r"[.!\"()*#:;~]", " ", row["name"]).split()) <= 50
    frames, audio, info = decode(path)
    assert frames.shape == (CONFIG.num_frames, CONFIG.size, CONFIG.size, 3)
    assert (info["vcodec"], info["acodec"], info["rate"], info["channels"]) == ("h264", "aac", 16000, 1)
    assert info["fps"] == CONFIG.fps
    assert CONFIG.num_samples <= len(audio) <= CONFIG.num_samples + 2048  # AAC pads the last frame


def test_image_caption_and_instruction_formats(data: Path) -> None:
    cc = json.loads((data / "cc_sbu/filter_cap.json").read_text())
    assert len(cc["annotations"]) == SMALL["images"]
    for ann in cc["annotations"]:
        assert set(ann) == {"image_id", "caption"} and ann["caption"]
        with Image.open(data / "cc_sbu/image" / f"{ann['image_id']}.jpg") as im:
            assert im.size == (CONFIG.size, CONFIG.size)

    llava = json.loads((data / "llava/llava_instruct.json").read_text())
    assert len(llava) == SMALL["images"]
    for sample in llava:
        assert re.fullmatch(r"\d{12}\.jpg", sample["image"])
        assert (data / "llava/images" / ("COCO_train2014_" + sample["image"])).is_file()  # official path rule
        conv = sample["conversations"]
        assert [t["from"] for t in conv] == ["human", "gpt"] * (len(conv) // 2) and len(conv) >= 4
        assert conv[0]["value"].startswith("<image>\n")
        assert all("<image>" not in t["value"] for t in conv[1:])

    chat = json.loads((data / "videochat/videochat_instruct.json").read_text())
    assert len(chat) == SMALL["instruct_clips"]
    asked = set()
    for sample in chat:
        assert (data / "videochat/videos" / sample["video"]).is_file()
        assert all(set(qa) == {"q", "a"} and qa["q"] and qa["a"] for qa in sample["QA"])
        asked.update(qa["q"] for qa in sample["QA"])
    assert "Describe what happens in the video." in asked and "What do you hear?" in asked


def test_qa_test_set_schema_and_chance(data: Path) -> None:
    items = json.loads((data / "qa/test.json").read_text())
    assert {it["family"] for it in items} == set(FAMILIES)  # every family present
    ids = [it["id"] for it in items]
    assert len(ids) == len(set(ids))
    for it in items:
        assert (data / "qa" / it["video"]).is_file()
        assert it["answer"] in it["choices"] and len(set(it["choices"])) == len(it["choices"])
        assert it["chance"] == pytest.approx(1 / len(it["choices"]), abs=1e-6)
        assert len(it["answer"].split()) <= 2
        assert it["hide_video"] == (it["family"] == "audio")
    meta = json.loads((data / "meta.json").read_text())
    for family in FAMILIES:
        fam = [it for it in items if it["family"] == family]
        stats = meta["test_families"][family]
        assert stats["items"] == len(fam)
        assert stats["chance"] == pytest.approx(np.mean([it["chance"] for it in fam]), abs=1e-5)
        assert 0 < stats["chance"] <= stats["majority"] <= 1
    assert meta["seed"] == 0 and meta["counts"]["test"] == SMALL["test_clips"]


def test_question_families_cover_every_type_and_balance_yes_no() -> None:
    rng = np.random.default_rng(123)
    seen, yes_no = set(), []
    for _ in range(400):
        scene = sample_scene(rng, CONFIG)
        for item in applicable(scene, CONFIG, rng):
            seen.add(item.qtype)
            if item.choices == ("yes", "no"):
                yes_no.append(item.answer == "yes")
        for family in FAMILIES:
            item = sample_question(scene, CONFIG, rng, family)
            assert item is None or item.family == family
    assert seen == {qt.name for qt in QUESTION_TYPES}
    assert 0.4 < np.mean(yes_no) < 0.6


# ---------------------------------------------------------------------------- truth vs media


@pytest.mark.slow
def test_pixels_match_recorded_objects(data: Path) -> None:
    checked = 0
    for rec in truth(data, "webvid") + truth(data, "test"):
        scene = Scene.from_dict(rec["scene"])
        frames, _, _ = decode(data / rec["media"])
        for obj in scene.objects:
            centres, visible = obj.centres(CONFIG.num_frames), obj.visible(CONFIG.num_frames)
            for t in range(CONFIG.num_frames):
                x, y = (int(v) for v in np.floor(centres[t]))
                if not (0 <= x < CONFIG.size and 0 <= y < CONFIG.size):
                    continue
                pixel = frames[t, y, x].astype(int)
                others = [o for o in scene.objects if o is not obj and o.visible(CONFIG.num_frames)[t]]
                if visible[t]:
                    expected = COLOURS[obj.colour]
                elif all(np.hypot(*(o.centres(CONFIG.num_frames)[t] - (x, y))) > o.bound(CONFIG) + 2 for o in others):
                    expected = BACKGROUND_RGB  # the object is gone and nothing else covers the spot
                else:
                    continue
                assert np.abs(pixel - expected).max() <= COLOUR_TOLERANCE, (rec["id"], obj.name, t, pixel)
                checked += 1
    assert checked > 300


def _reference_levels() -> dict[str, float]:
    """Median band level of each source sounding alone for the whole clip."""
    levels = {}
    for source in SOUND_SOURCES:
        anchor = SceneObject("circle", "red", "small", "left", 50.0, 50.0, 1.0, 0, 32, source == "circle")
        objects = (SceneObject(source, "red", "small", "left", 50.0, 50.0, 1.0, 0, 32, True),) if source in SHAPES else (anchor,)
        offscreen = () if source in SHAPES else (OffscreenSound(source, 0, 32),)
        audio = render_audio(Scene(objects, offscreen, noise_seed=1), CONFIG)
        levels[source] = float(np.median([lv for _, lv in band_levels(audio, SIGNATURES[source].band_hz)]))
    return levels


@pytest.mark.slow
def test_each_sound_is_heard_exactly_while_its_source_is_on(data: Path) -> None:
    reference = _reference_levels()
    spf = CONFIG.sample_rate // CONFIG.fps
    inside = outside = 0
    for rec in truth(data, "webvid") + truth(data, "test"):
        scene = Scene.from_dict(rec["scene"])
        _, audio, _ = decode(data / rec["media"])
        spans = {o.shape: (o.on_frame * spf, o.off_frame * spf) for o in scene.objects if o.sounding}
        spans.update({s.source: (s.on_frame * spf, s.off_frame * spf) for s in scene.offscreen})
        for source, sig in SIGNATURES.items():
            lo, hi = spans.get(source, (0, 0))
            for start, level in band_levels(audio, sig.band_hz):
                if lo <= start and start + WINDOW <= hi:
                    assert level >= reference[source] - ON_MARGIN_DB, (rec["id"], source, start, level)
                    inside += 1
                elif start + WINDOW <= lo or start >= hi:
                    assert level <= reference[source] - OFF_MARGIN_DB, (rec["id"], source, start, level)
                    outside += 1
    assert inside > 50 and outside > 300


EDGE_WINDOW, EDGE_GUARD = 800, 160  # 50-ms windows, 10 ms away from the edge
EDGE_JUMP_DB = 12.0
CONTINUOUS = ("circle", "square", "triangle")
"""Sources that sound continuously; rhythmic ones may be between two beats just before they stop."""


def _window_level(audio: np.ndarray, start: int, band: tuple[float, float]) -> float:
    segment = audio[start : start + EDGE_WINDOW] * np.hanning(EDGE_WINDOW)
    freqs = np.fft.rfftfreq(EDGE_WINDOW, 1.0 / CONFIG.sample_rate)
    power = np.abs(np.fft.rfft(segment)) ** 2
    return float(10 * np.log10(power[(freqs >= band[0]) & (freqs <= band[1])].mean() + 1e-20))


def test_sounds_switch_at_the_recorded_frames(data: Path) -> None:
    """A sound starts (and a continuous one stops) at its object's on/off frame, to within 10 ms."""
    spf = CONFIG.sample_rate // CONFIG.fps
    edges = 0
    for rec in truth(data, "webvid") + truth(data, "test"):
        scene = Scene.from_dict(rec["scene"])
        _, audio, _ = decode(data / rec["media"])
        spans = [(o.shape, o.on_frame, o.off_frame) for o in scene.objects if o.sounding]
        spans += [(s.source, s.on_frame, s.off_frame) for s in scene.offscreen]
        for source, on, off in spans:
            band = SIGNATURES[source].band_hz
            if on > 0:
                before = _window_level(audio, on * spf - EDGE_GUARD - EDGE_WINDOW, band)
                after = _window_level(audio, on * spf + EDGE_GUARD, band)
                assert after - before >= EDGE_JUMP_DB, (rec["id"], source, "on", before, after)
                edges += 1
            if off < CONFIG.num_frames and source in CONTINUOUS:
                before = _window_level(audio, off * spf - EDGE_GUARD - EDGE_WINDOW, band)
                after = _window_level(audio, off * spf + EDGE_GUARD, band)
                assert before - after >= EDGE_JUMP_DB, (rec["id"], source, "off", before, after)
                edges += 1
    assert edges >= 5


def test_captions_follow_the_scene() -> None:
    a = SceneObject("circle", "red", "large", "left", 60.0, 60.0, 1.0, 0, 32, True)
    b = SceneObject("star", "blue", "small", "up", 30.0, 90.0, 2.0, 8, 24, False)
    caption = video_caption(Scene((a, b), noise_seed=0))
    assert caption == "a large red circle moves left. then a small blue star appears, moves up and disappears."


# ----------------------------------------------------------------------------- disjointness


def test_test_clips_never_appear_in_training(data: Path) -> None:
    records = truth(data)
    test = [r for r in records if r["split"] == "test"]
    train = [r for r in records if r["split"] != "test"]
    assert {r["id"] for r in test}.isdisjoint(r["id"] for r in train)
    scene_key = lambda r: json.dumps(r["scene"]["objects"], sort_keys=True)  # noqa: E731
    assert {scene_key(r) for r in test}.isdisjoint(scene_key(r) for r in train)
    digest = lambda p: hashlib.sha256((data / p).read_bytes()).hexdigest()  # noqa: E731
    assert {digest(r["media"]) for r in test}.isdisjoint(digest(r["media"]) for r in train)
    corpus = (data / "corpus.txt").read_text().splitlines()
    with open(data / "webvid/annotations/train.csv", newline="") as f:
        assert {row["name"] for row in csv.DictReader(f)} <= set(corpus)
