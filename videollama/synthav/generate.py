"""Generate a SynthAV dataset: clips, stills and annotations in the official Video-LLaMA formats.

``generate(out_dir, clips, seed)`` writes (paths relative to ``out_dir``)::

    webvid/videos/shard_0000/<videoid>.mp4   WebVid-style caption clips (H.264 + AAC)
    webvid/annotations/train.csv             videoid,name,page_dir,duration
    cc_sbu/filter_cap.json, cc_sbu/image/<image_id>.jpg          still image captions
    llava/llava_instruct.json, llava/images/COCO_train2014_<image>  LLaVA-Instruct-style chats
    videochat/videochat_instruct.json, videochat/videos/<id>.mp4   VideoChat-style video QA
    qa/test.json, qa/videos/<id>.mp4         held-out QA test set (its own seed stream)
    audio_captions/audio_captions.json, audio_captions/audio/<id>.wav   WavCaps-style audio captions
    audio_instruct/audio_instruct.json, audio_instruct/audio/<id>.wav   audio-only instruction QA
                                             (these two only with ``audio_clips`` > 0; the formats of
                                             ``videollama.train.audio_data``: ``wavcaps``, ``audio_instruct``)
    truth.jsonl                              the full scene of every clip and still
    corpus.txt                               all training text (no test text)
    meta.json                                version, seed, counts, world, per-family chance

Every item draws its scene from ``numpy.random.default_rng([seed, split_stream, index, 0])`` and
its text from ``[..., 1]``, so the output is identical for any ``workers`` and test clips are
drawn from a stream no training split uses. Clip ids come from disjoint ranges per split.

Example::

    from videollama.synthav import generate
    summary = generate("data/synthav", clips=2000, seed=0, workers=2)
"""

from __future__ import annotations

import csv
import json
import shutil
import time
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import annotate
from .annotate import FAMILIES
from .render import render_clip, render_sound, render_still
from .world import COLOURS, DIRECTIONS, SHAPES, SIGNATURES, SIZES, SOUND_SOURCES, Scene, WorldConfig, sample_scene

GENERATOR_VERSION = "1.0.0"
STREAMS: dict[str, int] = {"webvid": 1, "videochat": 2, "test": 3, "cc_sbu": 4, "llava": 5, "audio_captions": 6,
                           "audio_instruct": 7}
"""Seed stream per split; the test stream is used by nothing else."""
ID_BASE: dict[str, int] = {s: 10_000_000 * k for s, k in STREAMS.items()}
"""Ids of split s are ID_BASE[s] + index: disjoint ranges, numeric like WebVid's, no leading zeros."""
MAX_PER_SPLIT = 10_000_000
SCENE_SUBSTREAM, TEXT_SUBSTREAM = 0, 1
SHARD_SIZE = 1000
"""Clips per WebVid page_dir folder."""
LLAVA_IMAGE_DIGITS = 12  # COCO file names: COCO_train2014_000000000009.jpg
WEBVID_COLUMNS = ("videoid", "name", "page_dir", "duration")
OUTPUTS = ("webvid", "cc_sbu", "llava", "videochat", "qa", "audio_captions", "audio_instruct", "truth.jsonl", "corpus.txt",
           "meta.json")


@dataclass(frozen=True)
class RenderJob:
    """One file to render: a clip (``frame`` None), a still JPEG of one frame, or a soundtrack alone (``sound_only``)."""

    scene: Scene
    path: str
    frame: int | None = None
    wav: bool = False
    sound_only: bool = False


def _run_job(job: RenderJob, config: WorldConfig) -> int:
    if job.sound_only:
        return render_sound(job.scene, config, job.path)
    if job.frame is None:
        return render_clip(job.scene, config, job.path, wav=job.wav)
    return render_still(job.scene, config, job.frame, job.path)


def _run_job_packed(args: tuple[RenderJob, WorldConfig]) -> int:
    return _run_job(*args)


def _rngs(seed: int, split: str, index: int) -> tuple[np.random.Generator, np.random.Generator]:
    base = [seed, STREAMS[split], index]
    return np.random.default_rng(base + [SCENE_SUBSTREAM]), np.random.default_rng(base + [TEXT_SUBSTREAM])


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def _prepare_out_dir(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out}: exists and is not a directory")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out}: not empty; pass overwrite=True to replace a previous SynthAV output")
        for name in OUTPUTS:  # remove only what this generator writes
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    for sub in ("webvid/annotations", "webvid/videos", "cc_sbu/image", "llava/images", "videochat/videos", "qa/videos"):
        (out / sub).mkdir(parents=True, exist_ok=True)


def _family_stats(items: list[annotate.QAItem]) -> dict[str, Any]:
    """Per family: item count, mean chance (1/len(choices)), majority-answer baseline, types."""
    stats: dict[str, Any] = {}
    for family in FAMILIES:
        fam = [it for it in items if it.family == family]
        types = Counter(it.qtype for it in fam)
        # Majority baseline: always answer the most frequent answer of each question type.
        majority = sum(Counter(it.answer for it in fam if it.qtype == t).most_common(1)[0][1] for t in types)
        stats[family] = {
            "items": len(fam),
            "chance": round(float(np.mean([it.chance for it in fam])), 6) if fam else None,
            "majority": round(majority / len(fam), 6) if fam else None,
            "types": dict(sorted(types.items())),
        }
    return stats


def _run_jobs(jobs: list[RenderJob], config: WorldConfig, workers: int, progress: bool) -> int:
    """Render every job; returns the total bytes written. Errors name the file (RenderError)."""
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), desc="synthav render", unit="file")
    total = 0
    results: Iterable[int]
    if workers <= 1:
        results = (_run_job(job, config) for job in jobs)
        pool = None
    else:
        pool = ProcessPoolExecutor(max_workers=workers)
        results = pool.map(_run_job_packed, [(job, config) for job in jobs], chunksize=8)
    try:
        for size in results:
            total += size
            if bar is not None:
                bar.update(1)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
        if bar is not None:
            bar.close()
    return total


def generate(
    out_dir: str | Path,
    clips: int,
    seed: int = 0,
    *,
    test_clips: int = 400,
    instruct_clips: int | None = None,
    images: int | None = None,
    audio_clips: int = 0,
    fps: int = 8,
    seconds: float = 4.0,
    size: int = 112,
    workers: int = 1,
    wav: bool = False,
    overwrite: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """Render a SynthAV dataset into ``out_dir`` and return a summary (counts, sizes, speed).

    Args:
        out_dir: output folder (created; must be empty unless ``overwrite``).
        clips: WebVid-style caption clips (stage 1 video data).
        seed: world seed; the same seed gives byte-identical annotations and identical media.
        test_clips: held-out QA clips (one question per applicable family each).
        instruct_clips: VideoChat-style instruction clips; default ``clips // 2``.
        images: stills for each of cc_sbu and LLaVA; default ``clips // 2``.
        audio_clips: soundtracks (wav) for each of the audio captions and the audio instructions; 0 (default)
            writes neither.
        fps, seconds, size: clip frame rate, length and square frame side (pixels).
        workers: processes used for rendering (output does not depend on it).
        wav: also write a 16-kHz ``.wav`` beside every mp4.
        overwrite: replace a previous SynthAV output in ``out_dir``.
        progress: show a tqdm progress bar.
    """
    instruct_clips = clips // 2 if instruct_clips is None else instruct_clips
    images = clips // 2 if images is None else images
    counts = {"webvid": clips, "videochat": instruct_clips, "test": test_clips, "cc_sbu": images, "llava": images,
              "audio_captions": audio_clips, "audio_instruct": audio_clips}
    if clips < 1:
        raise ValueError(f"clips must be >= 1, got {clips}")
    for name, n in counts.items():
        if not 0 <= n < MAX_PER_SPLIT:
            raise ValueError(f"{name} count must be in [0, {MAX_PER_SPLIT}), got {n}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    config = WorldConfig(fps=fps, seconds=seconds, size=size)
    out = Path(out_dir)
    _prepare_out_dir(out, overwrite)
    started = time.perf_counter()

    jobs: list[RenderJob] = []
    truth: list[dict[str, Any]] = []
    corpus: list[str] = []

    def add_truth(split: str, item_id: int, media: str, scene: Scene, frame: int | None = None) -> None:
        record: dict[str, Any] = {"split": split, "id": str(item_id), "media": media}
        if frame is not None:
            record["frame"] = frame
        record["scene"] = scene.to_dict()
        truth.append(record)

    # WebVid-style caption clips.
    webvid_rows = []
    for i in range(clips):
        scene_rng, _ = _rngs(seed, "webvid", i)
        scene = sample_scene(scene_rng, config)
        vid = ID_BASE["webvid"] + i
        page_dir = f"shard_{i // SHARD_SIZE:04d}"
        rel = f"webvid/videos/{page_dir}/{vid}.mp4"
        caption = annotate.video_caption(scene)
        webvid_rows.append({"videoid": vid, "name": caption, "page_dir": page_dir, "duration": _iso_duration(seconds)})
        corpus.append(caption)
        jobs.append(RenderJob(scene, str(out / rel), wav=wav))
        add_truth("webvid", vid, rel, scene)
        (out / "webvid/videos" / page_dir).mkdir(exist_ok=True)

    # VideoChat-style instruction clips.
    videochat = []
    for i in range(instruct_clips):
        scene_rng, text_rng = _rngs(seed, "videochat", i)
        scene = sample_scene(scene_rng, config)
        vid = ID_BASE["videochat"] + i
        qa = annotate.video_instruction(scene, config, text_rng)
        videochat.append({"video": f"{vid}.mp4", "QA": qa})
        corpus.extend(line for turn in qa for line in (turn["q"], turn["a"]))
        jobs.append(RenderJob(scene, str(out / "videochat/videos" / f"{vid}.mp4"), wav=wav))
        add_truth("videochat", vid, f"videochat/videos/{vid}.mp4", scene)

    # cc_sbu-style image captions.
    cc_sbu = []
    for i in range(images):
        scene_rng, _ = _rngs(seed, "cc_sbu", i)
        scene = sample_scene(scene_rng, config)
        frame = int(scene_rng.integers(config.num_frames))
        image_id = str(ID_BASE["cc_sbu"] + i)
        caption = annotate.still_caption(scene, frame)
        cc_sbu.append({"image_id": image_id, "caption": caption})
        corpus.append(caption)
        jobs.append(RenderJob(scene, str(out / "cc_sbu/image" / f"{image_id}.jpg"), frame=frame))
        add_truth("cc_sbu", int(image_id), f"cc_sbu/image/{image_id}.jpg", scene, frame)

    # LLaVA-Instruct-style image conversations.
    llava = []
    for i in range(images):
        scene_rng, text_rng = _rngs(seed, "llava", i)
        scene = sample_scene(scene_rng, config)
        frame = int(scene_rng.integers(config.num_frames))
        name = f"{ID_BASE['llava'] + i:0{LLAVA_IMAGE_DIGITS}d}.jpg"
        conversation = annotate.image_instruction(scene, config, text_rng, frame)
        llava.append({"id": name[:-4], "image": name, "conversations": conversation})
        corpus.extend(turn["value"].replace("<image>\n", "") for turn in conversation)
        jobs.append(RenderJob(scene, str(out / "llava/images" / f"COCO_train2014_{name}"), frame=frame))
        add_truth("llava", ID_BASE["llava"] + i, f"llava/images/COCO_train2014_{name}", scene, frame)

    # Audio-text data: soundtracks alone, with what is heard as WavCaps-style captions and as instruction QA.
    audio_captions, audio_instruct = [], []
    for i in range(audio_clips):
        scene = sample_scene(_rngs(seed, "audio_captions", i)[0], config)
        clip_id = str(ID_BASE["audio_captions"] + i)
        caption = annotate.audio_caption(scene)
        audio_captions.append({"id": clip_id, "caption": caption, "duration": seconds})
        corpus.append(caption)
        jobs.append(RenderJob(scene, str(out / "audio_captions/audio" / f"{clip_id}.wav"), sound_only=True))
        add_truth("audio_captions", int(clip_id), f"audio_captions/audio/{clip_id}.wav", scene)
    for i in range(audio_clips):
        scene_rng, text_rng = _rngs(seed, "audio_instruct", i)
        scene = sample_scene(scene_rng, config)
        clip_id = ID_BASE["audio_instruct"] + i
        qa = annotate.audio_instruction(scene, config, text_rng)
        audio_instruct.append({"audio": f"{clip_id}.wav", "QA": qa})
        corpus.extend(line for turn in qa for line in (turn["q"], turn["a"]))
        jobs.append(RenderJob(scene, str(out / "audio_instruct/audio" / f"{clip_id}.wav"), sound_only=True))
        add_truth("audio_instruct", clip_id, f"audio_instruct/audio/{clip_id}.wav", scene)
    if audio_clips:
        for sub in ("audio_captions/audio", "audio_instruct/audio"):
            (out / sub).mkdir(parents=True, exist_ok=True)

    # Held-out QA test set: one question per applicable family per clip.
    test_items: list[dict[str, Any]] = []
    test_qa: list[annotate.QAItem] = []
    for i in range(test_clips):
        scene_rng, text_rng = _rngs(seed, "test", i)
        scene = sample_scene(scene_rng, config)
        vid = ID_BASE["test"] + i
        for family in FAMILIES:
            item = annotate.sample_question(scene, config, text_rng, family)
            if item is None:
                continue
            test_qa.append(item)
            test_items.append(
                {
                    "id": f"{vid}-{family}",
                    "video": f"videos/{vid}.mp4",
                    "question": item.question,
                    "answer": item.answer,
                    "family": family,
                    "type": item.qtype,
                    "choices": list(item.choices),
                    "chance": round(item.chance, 6),
                    "hide_video": item.hide_video,
                }
            )
        jobs.append(RenderJob(scene, str(out / "qa/videos" / f"{vid}.mp4"), wav=wav))
        add_truth("test", vid, f"qa/videos/{vid}.mp4", scene)

    total_bytes = _run_jobs(jobs, config, workers, progress)
    render_seconds = time.perf_counter() - started

    # Annotations are written last, so they never point at media that failed to render.
    with open(out / "webvid/annotations/train.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=WEBVID_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(webvid_rows)
    _write_json(out / "cc_sbu/filter_cap.json", {"annotations": cc_sbu})
    _write_json(out / "llava/llava_instruct.json", llava)
    _write_json(out / "videochat/videochat_instruct.json", videochat)
    _write_json(out / "qa/test.json", test_items)
    if audio_clips:
        _write_json(out / "audio_captions/audio_captions.json", {"data": audio_captions})
        _write_json(out / "audio_instruct/audio_instruct.json", audio_instruct)
    with open(out / "truth.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(rec) + "\n" for rec in truth)
    (out / "corpus.txt").write_text("\n".join(corpus) + "\n", encoding="utf-8")
    families = _family_stats(test_qa)
    meta = {
        "generator": "videollama.synthav",
        "version": GENERATOR_VERSION,
        "seed": seed,
        "counts": {**counts, "test_questions": len(test_items), "corpus_lines": len(corpus)},
        "world": config.to_dict(),
        "vocabulary": {
            "shapes": list(SHAPES),
            "colours": {k: list(v) for k, v in COLOURS.items()},
            "sizes": SIZES,
            "directions": list(DIRECTIONS),
            "sound_sources": list(SOUND_SOURCES),
        },
        "sound_signatures": {k: {"description": v.description, "band_hz": list(v.band_hz)} for k, v in SIGNATURES.items()},
        "question_types": [{"name": qt.name, "family": qt.family} for qt in annotate.QUESTION_TYPES],
        "test_families": families,
        "paths": {
            "webvid_csv": "webvid/annotations/train.csv",
            "webvid_videos": "webvid/videos",
            "cc_sbu": "cc_sbu",
            "llava_json": "llava/llava_instruct.json",
            "llava_images": "llava/images",
            "videochat_json": "videochat/videochat_instruct.json",
            "videochat_videos": "videochat/videos",
            "test_json": "qa/test.json",
            "test_videos_relative_to": "qa",
            **({"audio_captions_json": "audio_captions/audio_captions.json", "audio_captions_audio": "audio_captions/audio",
                "audio_instruct_json": "audio_instruct/audio_instruct.json", "audio_instruct_audio": "audio_instruct/audio"}
               if audio_clips else {}),
        },
    }
    _write_json(out / "meta.json", meta)
    seconds_total = time.perf_counter() - started
    n_videos = clips + instruct_clips + test_clips
    return {
        "out_dir": str(out),
        "seed": seed,
        "counts": meta["counts"],
        "test_families": families,
        "bytes": total_bytes,
        "seconds": round(seconds_total, 3),
        "clips_per_s": round(n_videos / render_seconds, 2) if render_seconds > 0 else None,
        "workers": workers,
    }


def _iso_duration(seconds: float) -> str:
    """WebVid's duration column format, e.g. 'PT00H00M04S'."""
    whole = int(round(seconds))
    return f"PT{whole // 3600:02d}H{whole % 3600 // 60:02d}M{whole % 60:02d}S"


def format_summary(summary: dict[str, Any]) -> str:
    """Human-readable lines for the CLI."""
    c = summary["counts"]
    lines = [
        f"SynthAV written to {summary['out_dir']} (seed {summary['seed']}, {summary['workers']} worker(s))",
        f"  clips: webvid {c['webvid']}, videochat {c['videochat']}, test {c['test']}; "
        f"stills: cc_sbu {c['cc_sbu']}, llava {c['llava']}; test questions {c['test_questions']}",
        f"  {summary['bytes'] / 1e6:.1f} MB of media in {summary['seconds']:.1f} s ({summary['clips_per_s']} clips/s)",
    ]
    for family, st in summary["test_families"].items():
        if st["items"]:
            lines.append(f"  {family:<13} {st['items']:>5} items  chance {st['chance']:.3f}  majority {st['majority']:.3f}")
    return "\n".join(lines)
