"""The evaluation loop: batched answering, resumable, sharded under torchrun, then scoring.

    summary = main_eval("msvd-qa", Path("data/MSVD-QA"), Path("runs/msvd"), answerer,
                        judge_url="http://127.0.0.1:8000/v1", judge_model="judge")

* **Answerer**: any ``Callable[[list[QAItem]], list[str]]`` returning one prediction per item
  (send ``item.prompt`` with ``item.video_path``; greedy decoding is the protocol default).
  A batch that raises is retried item by item; items that still fail are written to
  ``errors.jsonl`` and retried by the next run; only a long run of consecutive failures stops
  the run (the answerer is broken, not one video).
* **Resumable**: each prediction is appended to ``OUT/predictions.jsonl`` (flushed and fsynced per
  batch); a restarted run skips the ids already there, and an unfinished last line left by a
  kill is cut off. ``OUT/run.json`` records the task, data and model fingerprints; resuming into
  a folder made with another model or data file is refused (``overwrite=True`` starts afresh).
* **Sharded**: under ``torchrun`` (RANK / WORLD_SIZE set) rank r answers items[r::world_size]
  into ``predictions.rank{r}.jsonl``; after a barrier (gloo: works on CPU) rank 0 merges them
  into ``predictions.jsonl`` in item order and scores; the other ranks return early.
* **Scoring**: offline metrics (:mod:`.metrics`) always; the GPT judge (:mod:`.judge`) when a judge
  URL is given. Outputs: ``summary.json``, ``summary.md``, ``chart.png`` (:mod:`.report`),
  ``scores.jsonl`` (per item) and ``missing_videos.txt``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

from ..errors import UsageError, VideoLlamaError
from . import metrics
from .base import QAItem, Task
from .judge import PROTOCOL, Judge, JudgeOptions, aggregate_judgements
from .records import JsonlWriter, read_records, write_atomic
from .tasks import TASK_NAMES, get_task

log = logging.getLogger(__name__)

Answerer = Callable[[list[QAItem]], list[str]]

PREDICTIONS = "predictions.jsonl"
ERRORS = "errors.jsonl"
MANIFEST = "run.json"
JUDGE_CACHE = "judge_cache.jsonl"
SCORES = "scores.jsonl"
MISSING = "missing_videos.txt"
OUTPUTS = (PREDICTIONS, ERRORS, MANIFEST, SCORES, MISSING, "summary.json", "summary.md", "chart.png")
MAX_CONSECUTIVE_FAILURES = 16  # this many failed items in a row means the answerer itself is broken
DIST_TIMEOUT_S = 24 * 3600  # ranks wait at the merge barrier for the slowest shard
DECODING = "greedy"
"""What :func:`main_eval` records unless told otherwise (Video-ChatGPT sampled at temperature 0.2)."""


class EvalError(VideoLlamaError, RuntimeError):
    """The evaluation cannot proceed; the message says why in one line."""


def rank_predictions(rank: int) -> str:
    return f"predictions.rank{rank}.jsonl"


def rank_errors(rank: int) -> str:
    return f"errors.rank{rank}.jsonl"


# ---------------------------------------------------------------------------- distributed
@dataclass
class Dist:
    """This process's place in a torchrun job (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world_size: int = 1
    group: Any = None  # the gloo group used for barriers
    owns_default_group: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as tdist

            tdist.barrier(group=self.group)

    def close(self) -> None:
        if self.owns_default_group:
            import torch.distributed as tdist

            if tdist.is_initialized():
                tdist.destroy_process_group()
            self.owns_default_group = False


def setup_distributed(timeout_s: float = DIST_TIMEOUT_S) -> Dist:
    """Join the torchrun job named by RANK/WORLD_SIZE (gloo), or return a single-process Dist."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch.distributed as tdist

    timeout = timedelta(seconds=timeout_s)
    owns = False
    if not tdist.is_initialized():
        tdist.init_process_group(backend="gloo", timeout=timeout)
        owns = True
    group = None if owns else tdist.new_group(backend="gloo", timeout=timeout)
    return Dist(rank=tdist.get_rank(), world_size=tdist.get_world_size(), group=group, owns_default_group=owns)


# ------------------------------------------------------------------------------ inference
@dataclass
class InferenceResult:
    """What one process did in :func:`run_eval`."""

    rank: int
    world_size: int
    shard: int  # items assigned to this process
    skipped: int  # already answered by an earlier run
    answered: int  # answered now
    failed: int  # answerer errors (retried by the next run)
    seconds: float

    @property
    def items_per_s(self) -> float:
        return self.answered / self.seconds if self.seconds > 0 else 0.0


def prediction_files(out_dir: Path) -> list[Path]:
    return [out_dir / PREDICTIONS] + sorted(out_dir.glob("predictions.rank*.jsonl"))


def load_predictions(out_dir: Path) -> dict[str, dict[str, Any]]:
    """id -> prediction record, from the merged file and any rank files (later wins)."""
    found: dict[str, dict[str, Any]] = {}
    for path in prediction_files(out_dir):
        for record in read_records(path):
            if isinstance(record.get("id"), str) and isinstance(record.get("pred"), str):
                found[record["id"]] = record
    return found


def _record(item: QAItem, pred: str) -> dict[str, Any]:
    record = {"id": item.id, "video": str(item.video_path), "question": item.question, "prompt": item.prompt,
              "answer": item.answer, "qtype": item.qtype, "pred": pred}
    if item.choices:
        record["choices"] = list(item.choices)
    return record


def _error(item: QAItem, err: BaseException | str) -> dict[str, Any]:
    message = err if isinstance(err, str) else f"{type(err).__name__}: {err}"
    return {"id": item.id, "video": str(item.video_path), "error": message.strip().splitlines()[0][:500]
            if message.strip() else "error"}


def _call(answerer: Answerer, batch: list[QAItem]) -> list[str]:
    preds = answerer(batch)
    if not isinstance(preds, (list, tuple)) or len(preds) != len(batch):
        got = len(preds) if isinstance(preds, (list, tuple)) else type(preds).__name__
        raise EvalError(f"answerer returned {got} predictions for a batch of {len(batch)}")
    bad = [type(p).__name__ for p in preds if not isinstance(p, str)]
    if bad:
        raise EvalError(f"answerer returned non-string predictions ({', '.join(sorted(set(bad)))})")
    return [p.strip() for p in preds]


def _answer(answerer: Answerer, batch: list[QAItem]) -> tuple[list[str | None], list[dict[str, Any]]]:
    """Predictions for a batch (None where failed) and the error records."""
    try:
        return list(_call(answerer, batch)), []
    except Exception as err:  # noqa: BLE001 - fall back to one item at a time to isolate the bad item
        if len(batch) == 1:
            return [None], [_error(batch[0], err)]
        log.warning("batch of %d failed (%s: %s); retrying its items one by one", len(batch), type(err).__name__, err)
    preds: list[str | None] = []
    errors = []
    for item in batch:
        try:
            preds.append(_call(answerer, [item])[0])
        except Exception as err:  # noqa: BLE001 - recorded in errors.jsonl and retried next run
            preds.append(None)
            errors.append(_error(item, err))
    return preds, errors


def check_manifest(out_dir: Path, info: dict[str, Any], dist: Dist) -> None:
    """Refuse to resume predictions made with another model, data file, task or prompt."""
    path = out_dir / MANIFEST
    if path.is_file():
        try:
            previous = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise EvalError(f"{path}: unreadable; remove it or pass overwrite to start afresh") from None
        for key in ("task", "split", "prompt_template", "model", "data_sha256"):
            if previous.get(key) != info.get(key):
                raise EvalError(f"{out_dir} holds predictions made with a different {key} "
                                f"({previous.get(key)!r} != {info.get(key)!r}); use another output folder "
                                f"or overwrite")
    elif dist.rank == 0:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(info, indent=2, default=str), encoding="utf-8")
        os.replace(tmp, path)


def run_eval(task: str | Task, items: Sequence[QAItem], answerer: Answerer, out_dir: Path, batch_size: int = 8, *,
             progress: bool = True, dist: Dist | None = None, run_info: dict[str, Any] | None = None,
             overwrite: bool = False) -> InferenceResult:
    """Answer every item not yet in ``out_dir``'s predictions, this process's shard only.

    Under torchrun all ranks must call this with the same ``items``; rank 0 merges the shards
    into ``predictions.jsonl`` before returning.
    """
    from tqdm.auto import tqdm

    task = get_task(task)
    if batch_size < 1:
        raise UsageError(f"batch_size must be >= 1, got {batch_size}")
    own_dist = dist is None
    dist = dist or setup_distributed()
    out_dir = Path(out_dir)
    if overwrite and dist.rank == 0:
        _clear_outputs(out_dir)
    dist.barrier()
    out_dir.mkdir(parents=True, exist_ok=True)
    if run_info is not None:
        check_manifest(out_dir, run_info, dist)

    shard = list(items)[dist.rank::dist.world_size]
    done = set(load_predictions(out_dir))
    todo = [item for item in shard if item.id not in done]
    own = out_dir / (rank_predictions(dist.rank) if dist.enabled else PREDICTIONS)
    answered = failed = consecutive = 0
    start = time.perf_counter()
    desc = task.name + (f" [rank {dist.rank}/{dist.world_size}]" if dist.enabled else "")
    with JsonlWriter(own) as writer, JsonlWriter(out_dir / rank_errors(dist.rank), fsync=False) as errors, \
            tqdm(total=len(shard), initial=len(shard) - len(todo), desc=desc, unit="q",
                 disable=not progress or dist.rank != 0) as bar:
        for offset in range(0, len(todo), batch_size):
            batch = todo[offset:offset + batch_size]
            preds, error_records = _answer(answerer, batch)
            writer.write([_record(item, pred) for item, pred in zip(batch, preds) if pred is not None])
            errors.write(error_records)
            ok = sum(p is not None for p in preds)
            answered += ok
            failed += len(batch) - ok
            consecutive = 0 if ok else consecutive + len(batch)
            bar.update(len(batch))
            if consecutive >= MAX_CONSECUTIVE_FAILURES:
                raise EvalError(f"the answerer failed on {consecutive} items in a row; last error: "
                                f"{error_records[-1]['error']} (see {out_dir / rank_errors(dist.rank)})")
    seconds = time.perf_counter() - start
    dist.barrier()
    if dist.rank == 0:
        _merge(out_dir, list(items))
    if own_dist:
        dist.close()
    return InferenceResult(dist.rank, dist.world_size, len(shard), len(shard) - len(todo), answered, failed, seconds)


def _merge(out_dir: Path, items: list[QAItem]) -> None:
    """Rank files -> predictions.jsonl in item order; error files -> errors.jsonl (still unanswered only)."""
    rank_files = sorted(out_dir.glob("predictions.rank*.jsonl"))
    if rank_files:
        merged = load_predictions(out_dir)
        order = {item.id: i for i, item in enumerate(items)}
        ids = sorted(merged, key=lambda i: (order.get(i, len(order)), i))
        write_atomic(out_dir / PREDICTIONS, (merged[i] for i in ids))
        for path in rank_files:
            path.unlink()
    answered = set(load_predictions(out_dir))
    error_files = sorted(out_dir.glob("errors.rank*.jsonl"))
    still = {}
    for path in error_files:
        for record in read_records(path):
            if record.get("id") not in answered:
                still[record.get("id")] = record
    write_atomic(out_dir / ERRORS, still.values())
    for path in error_files:
        path.unlink()


def _clear_outputs(out_dir: Path) -> None:
    for name in OUTPUTS:
        (out_dir / name).unlink(missing_ok=True)
    for pattern in ("predictions.rank*.jsonl", "errors.rank*.jsonl"):
        for path in out_dir.glob(pattern):
            path.unlink()


# -------------------------------------------------------------------------------- the job
def main_eval(task: str, data: Path, out: Path, answerer: Answerer | None, *, judge_url: str | None = None,
              judge_model: str | None = None, batch_size: int = 8, limit: int | None = None, split: str = "test",
              video_dir: Path | None = None, model_fingerprint: Any = None,
              judge_options: JudgeOptions | None = None, overwrite: bool = False, progress: bool = True,
              decoding: str = DECODING) -> dict[str, Any]:
    """Load a benchmark, answer it (resumably, sharded under torchrun), score it and write reports.

    ``answerer=None`` scores the predictions already in ``out`` without answering anything.
    ``decoding`` describes the answerer's generation settings for the reports (e.g. "greedy, 64 tokens").
    Returns the summary on rank 0; other ranks return ``{"rank": r, "inference": {...}}``.
    """
    started = time.perf_counter()
    spec = get_task(task)
    data, out = Path(data), Path(out)
    loaded = spec.load(data, split=split, video_dir=Path(video_dir) if video_dir else None)
    items = loaded.items[:limit] if limit is not None else loaded.items
    if answerer is not None and not items:
        where = ", ".join(str(d) for d in loaded.video_dirs) or str(data)
        example = f"; e.g. {loaded.missing[0].video}" if loaded.missing else ""
        raise EvalError(f"{spec.title}: no question has its video on disk ({len(loaded.missing)} missing; "
                        f"looked in {where}{example})")
    fingerprint = loaded.fingerprint()
    load_s = time.perf_counter() - started

    dist = setup_distributed()
    judge = None
    try:
        if dist.rank == 0:
            out.mkdir(parents=True, exist_ok=True)
            if loaded.missing:
                log.warning("%s: %d of %d questions skipped: video not found (listed in %s)", spec.title,
                            len(loaded.missing), fingerprint["questions"], out / MISSING)
            if answerer is None and not load_predictions(out):
                raise EvalError(f"nothing to score: {out / PREDICTIONS} holds no predictions")
            if judge_url or judge_options:
                base = judge_options or JudgeOptions(url=judge_url or "")
                options = replace(base, url=judge_url or base.url, model=judge_model or base.model,
                                  cache_path=base.cache_path or out / JUDGE_CACHE)
                judge = Judge(options)
                _ = judge.model  # fail now, before hours of inference, if the judge is unusable
        inference = None
        if answerer is not None:
            info = {"task": spec.name, "split": split, "prompt_template": spec.prompt_template,
                    "model": model_fingerprint, "data_sha256": fingerprint["sha256"], "data": fingerprint}
            inference = run_eval(spec, items, answerer, out, batch_size, progress=progress, dist=dist,
                                 run_info=info, overwrite=overwrite)
        if dist.rank != 0:
            return {"rank": dist.rank, "inference": asdict(inference) if inference else None}
        (out / MISSING).write_text("".join(f"{m.id}\t{m.video}\n" for m in loaded.missing), encoding="utf-8")
        summary = score(spec, items, out, judge=judge, progress=progress, decoding=decoding)
    finally:
        if judge is not None:
            judge.close()
        dist.close()

    summary.update(model=model_fingerprint, data=fingerprint, split=split)
    summary["counts"].update(questions=fingerprint["questions"], missing_videos=len(loaded.missing))
    summary["run"]["timings"]["load_s"] = load_s
    summary["run"]["timings"]["total_s"] = time.perf_counter() - started
    if inference is not None:
        summary["run"]["inference"] = {**asdict(inference), "items_per_s": inference.items_per_s}
        summary["run"]["timings"]["inference_s"] = inference.seconds
    from .report import write_reports

    write_reports(summary, out)
    head = summary["headline"]
    log.info("%s: %s accuracy %.2f%%%s over %d answered questions", spec.title, head["metric"],
             head["accuracy_pct"] or 0.0, f", score {head['score']:.2f}" if head.get("score") is not None else "",
             summary["counts"]["predicted"])
    return summary


def score(task: str | Task, items: Sequence[QAItem], out: Path, *, judge: Judge | None = None,
          progress: bool = True, decoding: str = DECODING) -> dict[str, Any]:
    """Score the predictions in ``out`` for ``items``: offline metrics, and the judge if given."""
    spec = get_task(task)
    preds = load_predictions(Path(out))
    scored = [(item, preds[item.id]["pred"]) for item in items if item.id in preds]
    offline_scores = [metrics.score_item(item.id, pred, item.answer, item.qtype, item.choices) for item, pred in scored]
    summary: dict[str, Any] = {
        "task": spec.name, "title": spec.title,
        "protocol": {"prompt_template": spec.prompt_template, "decoding": decoding,
                     "judge_protocol": PROTOCOL if judge else None},
        "counts": {"selected": len(items), "predicted": len(scored), "unanswered": len(items) - len(scored)},
        "offline": metrics.aggregate(offline_scores, spec.qtypes),
        "judge": None,
        "published": spec.published,
        "run": {"timings": {}},
    }
    chances = [(item.qtype, item.chance) for item, _ in scored if item.chance is not None]
    if chances:
        types = metrics.ordered_types((t for t, _ in chances), spec.qtypes)
        overall = [c for _, c in chances]
        summary["chance_pct"] = {"overall": metrics.PERCENT * sum(overall) / len(overall),
                                 **{t: metrics.PERCENT * sum(cs) / len(cs)
                                    for t in types if (cs := [c for q, c in chances if q == t])}}
    judgements = []
    if judge is not None:
        judge_start = time.perf_counter()
        judgements = judge.judge_many([(item.question, item.answer, pred) for item, pred in scored], progress=progress)
        summary["judge"] = {"model": judge.model, "url": judge.base_url,
                            **aggregate_judgements(judgements, [item.qtype for item, _ in scored], spec.qtypes)}
        summary["run"]["timings"]["judge_s"] = time.perf_counter() - judge_start
        summary["run"]["judge"] = {"requests": judge.stats.requests, "cache_hits": judge.stats.cache_hits}
    if summary["judge"] is not None:
        summary["headline"] = {"metric": "judge", "accuracy_pct": summary["judge"]["accuracy_pct"],
                               "score": summary["judge"]["score"]}
    else:
        metric = "choice" if "choice_pct" in summary["offline"] else "contains"
        summary["headline"] = {"metric": metric, "accuracy_pct": summary["offline"][f"{metric}_pct"], "score": None}

    rows = []
    for index, ((item, pred), item_score) in enumerate(zip(scored, offline_scores)):
        row = {**metrics.as_record(item_score), "answer": item.answer, "pred": pred}
        if judgements:
            j = judgements[index]
            row.update(judge_pred=j.pred, judge_score=j.score, judge_error=j.error)
        rows.append(row)
    write_atomic(Path(out) / SCORES, rows)
    return summary


# ----------------------------------------------------------------------------- CLI helpers
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``videollama eval`` options this module understands (the CLI adds the model options)."""
    parser.add_argument("task", choices=TASK_NAMES, help="benchmark")
    parser.add_argument("--data", type=Path, required=True, help="benchmark folder (see docs/evaluation.md)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: runs/eval/TASK)")
    parser.add_argument("--split", default="test", help="annotation split to read (default: test)")
    parser.add_argument("--video-dir", type=Path, default=None, help="video folder, if not the layout's default")
    parser.add_argument("--limit", type=int, default=None, help="only the first N questions (quick runs)")
    parser.add_argument("--batch-size", type=int, default=8, help="questions answered together")
    parser.add_argument("--overwrite", action="store_true", help="discard earlier predictions in --out")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    g = parser.add_argument_group("GPT judge (Video-ChatGPT protocol; any OpenAI-compatible endpoint)")
    g.add_argument("--judge-url", default=None, help="base URL, e.g. http://127.0.0.1:8000/v1 (off if not given)")
    g.add_argument("--judge-model", default=None, help="judge model name (default: first listed by the endpoint)")
    g.add_argument("--judge-concurrency", type=int, default=4, help="requests in flight")
    g.add_argument("--judge-rps", type=float, default=5.0, help="max requests per second (0: unlimited)")
    g.add_argument("--judge-attempts", type=int, default=4, help="tries per item before it counts as a failure")
    g.add_argument("--judge-timeout", type=float, default=60.0, help="seconds per request")
    g.add_argument("--judge-temperature", type=float, default=None, help="default: the endpoint's (as the original)")
    g.add_argument("--judge-cache", type=Path, default=None, help="judgement cache (default: OUT/judge_cache.jsonl)")


def options_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments for :func:`main_eval` from :func:`add_arguments` options (no answerer)."""
    judge = None
    if args.judge_url:
        judge = JudgeOptions(url=args.judge_url, model=args.judge_model, concurrency=args.judge_concurrency,
                             requests_per_second=args.judge_rps, max_attempts=args.judge_attempts,
                             timeout_s=args.judge_timeout, temperature=args.judge_temperature,
                             cache_path=args.judge_cache)
    return {"task": args.task, "data": args.data, "out": args.out or Path("runs") / "eval" / args.task,
            "split": args.split, "video_dir": args.video_dir, "limit": args.limit, "batch_size": args.batch_size,
            "overwrite": args.overwrite, "progress": not args.no_progress, "judge_options": judge}

