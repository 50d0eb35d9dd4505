"""Bounded memory: reading a 20-minute video window by window peaks no higher than a 1-minute one.

One subprocess (a fresh peak) loads the shipped SynthAV model, encodes a 2-s warm-up clip (the
allocator's pools, the codecs), then the 1-minute clip, then the 20-minute one, at 0.5 frames per
second, every window through both branches, and reports its peak RSS (``resource.getrusage``)
after each. Peak RSS only grows within a process, so the second reading is the larger of the two
clips' peaks: it must stay within 1.2x the first, and the long clip may add less than half of
what holding its decoded frames would take (600 x 3 x 112 x 112 float32 = 90 MB; its whole audio
track at 16 kHz would be another 77 MB).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from media_fixtures import make_long_video

SYNTHAV = Path(__file__).resolve().parents[1] / "videollama" / "assets" / "synthav-model"
FPS = 0.5
RSS_RATIO = 1.2
SHORT_S, LONG_S = 60, 20 * 60

CHILD = r"""
import json, resource, sys
import psutil, torch
torch.set_num_threads(1)
from videollama.long_video import encode_video_file, encode_window_audio
from videollama.media.windows import VideoSampling
from videollama.model import VideoLlama

model = VideoLlama.from_pretrained(sys.argv[1]).eval()
size = model.config.vision.image_size

def encode(path):
    video = encode_video_file(model, path, VideoSampling(frames=None, fps=float(sys.argv[3])), image_size=size)
    audio = encode_window_audio(model, path, video.timeline.windows)
    return video, audio

encode(sys.argv[4])  # warm-up: the allocator's pools, the codecs
report = {"baseline": psutil.Process().memory_info().rss}
for name, path in (("short", sys.argv[2]), ("long", sys.argv[5])):
    video, audio = encode(path)
    report[name] = {"peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,  # KiB on Linux
                    "windows": video.video.shape[0], "audio": audio.shape[0], "frames": len(video.timeline.frame_times)}
    del video, audio
print(json.dumps(report))
"""


HELD_FRAMES_BYTES = 600 * 3 * 112 * 112 * 4  # the long clip's sampled frames, decoded and kept


def _measure(short: Path, long: Path, warmup: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(SYNTHAV), str(short), str(FPS), str(warmup), str(long)],
                         capture_output=True, text=True, timeout=600, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not (SYNTHAV / "config.json").is_file(), reason="the shipped SynthAV model is not present")
def test_peak_rss_does_not_grow_with_length(tmp_path):
    warmup = make_long_video(tmp_path / "warmup.mp4", 2, fps=5, size=(48, 48))
    short = make_long_video(tmp_path / "short.mp4", SHORT_S, fps=5, size=(48, 48))
    long = make_long_video(tmp_path / "long.mp4", LONG_S, fps=5, size=(48, 48))
    report = _measure(short, long, warmup)
    short_run, long_run = report["short"], report["long"]
    assert (short_run["frames"], short_run["windows"]) == (30, 1)
    assert (long_run["frames"], long_run["windows"], long_run["audio"]) == (600, 19, 19)  # 19 windows of 31-32
    assert long_run["peak"] <= RSS_RATIO * short_run["peak"], report
    assert long_run["peak"] - short_run["peak"] < HELD_FRAMES_BYTES / 2, report
