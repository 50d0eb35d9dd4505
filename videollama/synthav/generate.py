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
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import annotate
from .annotate import FAMILIES
from .render import render_clip, render_sound, render_still
from .world import COLOURS, DIRECTIONS, SHAPES, SIGNATURES, SIZES, SOUND_SOURCES, Scene, WorldConfig, sample_scene

GENERATOR_VERSION = "1.0.0"
STREAMS: dict[str, int] = {"webvid": 1, "videochat": 2, "test": 3, "cc_sbu": 4, "llava": 5, "audio_captions": 6,
                           "audio_instruct": 7, "long_instruct": 8, "long_test": 9}
"""Seed stream per split; the test streams are used by nothing else (long_*: ``synthav.long``)."""
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


@dataclass
class Collected:
    """What the splits gather before anything is rendered: render jobs, truth records, training text."""

    out: Path
    config: WorldConfig
    wav: bool
    jobs: list[RenderJob] = field(default_factory=list)
    truth: list[dict[str, Any]] = field(default_factory=list)
    corpus: list[str] = field(default_factory=list)

    def add(self, split: str, item_id: int, media: str, scene: Scene, frame: int | None = None,
            sound_only: bool = False) -> None:
        """Queue the render of ``media`` (a clip, a still of ``frame``, or a soundtrack alone) and record its scene."""
        clip = frame is None and not sound_only
        self.jobs.append(RenderJob(scene, str(self.out / media), frame=frame, wav=self.wav and clip,
                                   sound_only=sound_only))
        record: dict[str, Any] = {"split": split, "id": str(item_id), "media": media}
        if frame is not None:
            record["frame"] = frame
        record["scene"] = scene.to_dict()
        self.truth.append(record)


def _scenes(seed: int, split: str, count: int, config: WorldConfig) -> Iterator[tuple[int, Scene, np.random.Generator,
                                                                                    np.random.Generator]]:
    """(index, scene, its scene stream after sampling, its text stream) of every item of ``split``."""
    for i in range(count):
        scene_rng, text_rng = _rngs(seed, split, i)
        yield i, sample_scene(scene_rng, config), scene_rng, text_rng


def _webvid(acc: Collected, seed: int, count: int) -> list[dict[str, Any]]:
    """WebVid-style caption clips; returns the rows of ``train.csv``."""
    rows = []
    for i, scene, _, _ in _scenes(seed, "webvid", count, acc.config):
        vid = ID_BASE["webvid"] + i
        page_dir = f"shard_{i // SHARD_SIZE:04d}"
        caption = annotate.video_caption(scene)
        rows.append({"videoid": vid, "name": caption, "page_dir": page_dir,
                     "duration": _iso_duration(acc.config.seconds)})
        acc.corpus.append(caption)
        (acc.out / "webvid/videos" / page_dir).mkdir(exist_ok=True)
        acc.add("webvid", vid, f"webvid/videos/{page_dir}/{vid}.mp4", scene)
    return rows


def _instruction_qa(acc: Collected, seed: int, count: int, split: str, media_key: str, folder: str,
                    sound_only: bool = False) -> list[dict[str, Any]]:
    """An instruction-QA split: VideoChat-style clips (``videochat``) or audio-only QA about soundtracks alone
    (``audio_instruct``); returns its records (``{media_key: file, "QA": [...]}``)."""
    instruction = annotate.audio_instruction if sound_only else annotate.video_instruction
    suffix = "wav" if sound_only else "mp4"
    records = []
    for i, scene, _, text_rng in _scenes(seed, split, count, acc.config):
        item_id = ID_BASE[split] + i
        qa = instruction(scene, acc.config, text_rng)
        records.append({media_key: f"{item_id}.{suffix}", "QA": qa})
        acc.corpus.extend(line for turn in qa for line in (turn["q"], turn["a"]))
        acc.add(split, item_id, f"{folder}/{item_id}.{suffix}", scene, sound_only=sound_only)
    if count:
        (acc.out / folder).mkdir(parents=True, exist_ok=True)
    return records


def _cc_sbu(acc: Collected, seed: int, count: int) -> list[dict[str, Any]]:
    """cc_sbu-style still captions; returns the annotations of ``filter_cap.json``."""
    records = []
    for i, scene, scene_rng, _ in _scenes(seed, "cc_sbu", count, acc.config):
        frame = int(scene_rng.integers(acc.config.num_frames))
        image_id = ID_BASE["cc_sbu"] + i
        caption = annotate.still_caption(scene, frame)
        records.append({"image_id": str(image_id), "caption": caption})
        acc.corpus.append(caption)
        acc.add("cc_sbu", image_id, f"cc_sbu/image/{image_id}.jpg", scene, frame)
    return records


def _llava(acc: Collected, seed: int, count: int) -> list[dict[str, Any]]:
    """LLaVA-Instruct-style still conversations; returns the records of ``llava_instruct.json``."""
    records = []
    for i, scene, scene_rng, text_rng in _scenes(seed, "llava", count, acc.config):
        frame = int(scene_rng.integers(acc.config.num_frames))
        name = f"{ID_BASE['llava'] + i:0{LLAVA_IMAGE_DIGITS}d}.jpg"
        conversation = annotate.image_instruction(scene, acc.config, text_rng, frame)
        records.append({"id": name[:-4], "image": name, "conversations": conversation})
        acc.corpus.extend(turn["value"].replace("<image>\n", "") for turn in conversation)
        acc.add("llava", ID_BASE["llava"] + i, f"llava/images/COCO_train2014_{name}", scene, frame)
    return records


def _audio_captions(acc: Collected, seed: int, count: int) -> list[dict[str, Any]]:
    """WavCaps-style captions of soundtracks alone (what is heard); returns the ``data`` of ``audio_captions.json``."""
    records = []
    for i, scene, _, _ in _scenes(seed, "audio_captions", count, acc.config):
        clip_id = ID_BASE["audio_captions"] + i
        caption = annotate.audio_caption(scene)
        records.append({"id": str(clip_id), "caption": caption, "duration": acc.config.seconds})
        acc.corpus.append(caption)
        acc.add("audio_captions", clip_id, f"audio_captions/audio/{clip_id}.wav", scene, sound_only=True)
    if count:
        (acc.out / "audio_captions/audio").mkdir(parents=True, exist_ok=True)
    return records


def _test(acc: Collected, seed: int, count: int) -> tuple[list[dict[str, Any]], list[annotate.QAItem]]:
    """The held-out QA clips, one question per applicable family each: (``qa/test.json`` records, the items).

    Its text goes to no corpus: nothing trains on it."""
    records: list[dict[str, Any]] = []
    items: list[annotate.QAItem] = []
    for i, scene, _, text_rng in _scenes(seed, "test", count, acc.config):
        vid = ID_BASE["test"] + i
        for family in FAMILIES:
            item = annotate.sample_question(scene, acc.config, text_rng, family)
            if item is None:
                continue
            items.append(item)
            records.append({"id": f"{vid}-{family}", "video": f"videos/{vid}.mp4", "question": item.question,
                            "answer": item.answer, "family": family, "type": item.qtype,
                            "choices": list(item.choices), "chance": round(item.chance, 6),
                            "hide_video": item.hide_video})
        acc.add("test", vid, f"qa/videos/{vid}.mp4", scene)
    return records, items


def _meta(seed: int, counts: dict[str, int], config: WorldConfig, families: dict[str, Any],
          with_audio: bool) -> dict[str, Any]:
    """``meta.json``: version, seed, counts, world, vocabulary, question types, per-family chance, paths."""
    return {
        "generator": "videollama.synthav",
        "version": GENERATOR_VERSION,
        "seed": seed,
        "counts": counts,
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
               if with_audio else {}),
        },
    }


def _check_counts(clips: int, counts: dict[str, int], seed: int, workers: int) -> None:
    if clips < 1:
        raise ValueError(f"clips must be >= 1, got {clips}")
    for name, n in counts.items():
        if not 0 <= n < MAX_PER_SPLIT:
            raise ValueError(f"{name} count must be in [0, {MAX_PER_SPLIT}), got {n}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")


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
    _check_counts(clips, counts, seed, workers)
    config = WorldConfig(fps=fps, seconds=seconds, size=size)
    out = Path(out_dir)
    _prepare_out_dir(out, overwrite)
    started = time.perf_counter()

    acc = Collected(out, config, wav)
    webvid_rows = _webvid(acc, seed, clips)
    videochat = _instruction_qa(acc, seed, instruct_clips, "videochat", "video", "videochat/videos")
    cc_sbu = _cc_sbu(acc, seed, images)
    llava = _llava(acc, seed, images)
    audio_captions = _audio_captions(acc, seed, audio_clips)
    audio_instruct = _instruction_qa(acc, seed, audio_clips, "audio_instruct", "audio", "audio_instruct/audio",
                                     sound_only=True)
    test_items, test_qa = _test(acc, seed, test_clips)

    total_bytes = _run_jobs(acc.jobs, config, workers, progress)
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
        f.writelines(json.dumps(rec) + "\n" for rec in acc.truth)
    (out / "corpus.txt").write_text("\n".join(acc.corpus) + "\n", encoding="utf-8")
    families = _family_stats(test_qa)
    meta = _meta(seed, {**counts, "test_questions": len(test_items), "corpus_lines": len(acc.corpus)}, config, families,
                 with_audio=audio_clips > 0)
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
