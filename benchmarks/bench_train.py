"""Benchmark: training samples/s. CPU: the tiny model, 1 process vs 2 under torchrun (same global batch).
GPU (``--full-size``): one stage-1 step of the full-size model on synthetic tensors.

CPU mode (default). Data: the test fixtures' synthetic data in the official formats
(``tests/train_fixtures.py``: a WebVid CSV + videos, cc_sbu ``filter_cap.json`` + images), read by
the real loaders; model: the tiny preset without dropout (``make_model_dir``). The vision-branch
stage-1 recipe (``stage_config``, 8 frames per video as in the official config) runs through
``videollama train`` in a subprocess, three ways, with the same global batch and the same steps:

  * 1 process, torch's default threads (one per core);
  * 1 process, 1 thread;
  * 2 processes x 1 thread (``torchrun --nproc_per_node 2``, gloo DDP, half the batch each).

samples/s = global batch x steps after the first ``--warmup`` / time between those steps, from the
run's ``metrics.jsonl`` (process start-up, data indexing and the end-of-run checkpoint excluded);
the command's wall time is shown too.

GPU mode (``--full-size``; NOT run on the CPU machine the committed numbers come from): the
``videollama2-7b`` preset (EVA ViT-g 39 blocks, Q-Formers, LLaMA-2-7B) built directly on the device
with random weights, the stage-1 vision-branch trainable set, AdamW, bf16 autocast as the recipe
does, and synthetic batches shaped like the official stage 1 (``--batch-size`` 32 per GPU, 8 frames
at 224x224, [BOS] + 32 video placeholders + a 32-token caption). Reports samples/s (after warm-up
steps) and the peak GPU memory. ``--frozen-bf16`` stores the frozen parts (ViT, image Q-Former,
LLM) in bf16, as the official code holds them in half precision, instead of the recipe's fp32
master copy. ``--preset tiny --device cpu`` runs the same code path on a CPU as a smoke test.

Run: ``python benchmarks/bench_train.py [--steps 10] [--batch-size 4]``
     ``python benchmarks/bench_train.py --full-size --device cuda [--batch-size 32] [--frozen-bf16]``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


# ------------------------------------------------------------------------------------- CPU: 1 vs 2 processes
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def steady_rate(run_dir: Path, global_batch: int, warmup: int) -> tuple[float, int]:
    """(samples/s over the steps after ``warmup``, number of logged steps) from metrics.jsonl."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    times = {int(r["step"]): float(r["time"]) for r in records}
    steps = sorted(times)
    first, last = steps[warmup - 1], steps[-1]
    return global_batch * (last - first) / (times[last] - times[first]), len(steps)


def cpu_benchmark(args) -> None:
    import yaml

    from train_fixtures import make_model_dir, make_official_data, stage_config
    from videollama.tokenizer import train_tiny_tokenizer

    work = Path(tempfile.mkdtemp(prefix="videollama-bench-train-"))
    try:
        start = time.perf_counter()
        data = make_official_data(work / "data", clips=args.clips, bad_record=False)
        tokenizer = train_tiny_tokenizer(work / "tokenizer")
        model_dir = make_model_dir(work / "model", tokenizer)
        print(f"synthetic data ({args.clips} WebVid clips, 4 cc_sbu images) and tiny model ready in "
              f"{time.perf_counter() - start:.0f} s", flush=True)
        variants = [("1 process, default threads", 1, None), ("1 process, 1 thread", 1, 1), ("2 processes x 1 thread", 2, 1)]
        results = []
        for label, procs, threads in variants:
            if args.batch_size % procs:
                raise SystemExit(f"--batch-size {args.batch_size} is not divisible by {procs} processes")
            out = work / f"run{len(results)}"
            cfg = stage_config(data, model_dir, out, steps=args.steps, batch_size=args.batch_size // procs,
                               save_every=args.steps, tensorboard=False, export=False, log_every=1)
            cfg["data"]["datasets"]["webvid"]["num_frames"] = args.frames
            path = work / f"run{len(results)}.yaml"
            path.write_text(yaml.safe_dump(cfg, sort_keys=False))
            env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]))
            env.pop("OMP_NUM_THREADS", None)
            if threads:
                env["OMP_NUM_THREADS"] = str(threads)
            if procs == 1:
                cmd = [sys.executable, "-m", "videollama", "train", str(path)]
            else:
                cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(procs),
                       "--master_port", str(_free_port()), "-m", "videollama", "train", str(path)]
            print(f"running: {label} ...", flush=True)
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=args.timeout)
            wall = time.perf_counter() - t0
            if proc.returncode:
                print(proc.stdout[-2000:], proc.stderr[-4000:])
                raise SystemExit(f"{label}: exit {proc.returncode}")
            rate, logged = steady_rate(out, args.batch_size, args.warmup)
            summary = json.loads((out / "summary.json").read_text())
            results.append((label, procs, threads, rate, wall, logged, summary.get("final_loss", summary.get("loss"))))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    base = results[0][3]
    print()
    print(f"Stage-1 vision branch, tiny model, global batch {args.batch_size}, {args.frames} frames per video, "
          f"{args.steps} steps (rate over steps {args.warmup}..{args.steps - 1}); torch {torch.__version__}, "
          f"cpus {os.cpu_count()}")
    print()
    print("| run | processes | threads each | samples/s | vs 1 process (default threads) | wall s (whole command) |")
    print("|---|---|---|---|---|---|")
    for label, procs, threads, rate, wall, logged, _ in results:
        print(f"| {label} | {procs} | {threads or torch.get_num_threads()} | {rate:.2f} | {rate / base:.2f}x | {wall:.1f} |")
    two, one_thread = results[2][3], results[1][3]
    print()
    print(f"2 processes vs 1 process x 1 thread: {two / one_thread:.2f}x")


# ------------------------------------------------------------------------------------- GPU: full-size step
def full_size_benchmark(args) -> None:
    from videollama.model import VideoLlama
    from videollama.presets import get_preset
    from videollama.train.config import VISION_TRAINABLE
    from videollama.train.optim import build_optimizer
    from videollama.train.recipe import token_loss_sum
    from videollama.train.text import IGNORE_INDEX

    device = torch.device(args.device)
    config = get_preset(args.preset)
    config.with_audio = False
    vocab = int(config.llm["vocab_size"])
    # Placeholder ids: the model replaces them with media features before the embedding lookup.
    config.image_token_id, config.audio_token_id = vocab, vocab + 1
    torch.manual_seed(0)
    start = time.perf_counter()
    with device:
        model = VideoLlama(config)
    model.set_trainable(VISION_TRAINABLE)
    if args.frozen_bf16:
        for name in model.part_names:
            if name not in model.trainable_parts and isinstance(getattr(model, name), torch.nn.Module):
                getattr(model, name).to(torch.bfloat16)
    model.train()
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    build_s = time.perf_counter() - start
    optimizer = build_optimizer(model.named_parameters(), lr=1e-4, weight_decay=0.05, betas=(0.9, 0.999))

    b, t, size, queries = args.batch_size, args.frames, config.vision.image_size, config.num_video_tokens
    generator = torch.Generator().manual_seed(0)
    caption = torch.randint(3, vocab, (b, args.caption_tokens), generator=generator)
    input_ids = torch.cat([torch.ones(b, 1, dtype=torch.long), torch.full((b, queries), vocab), caption], 1)
    labels = input_ids.clone()
    labels[:, : 1 + queries] = IGNORE_INDEX
    batch = {"input_ids": input_ids.to(device), "attention_mask": torch.ones_like(input_ids).to(device),
             "pixel_values": torch.randn(b, t, 3, size, size, generator=generator).to(device)}
    labels = labels.to(device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16)  # the recipe's amp with optim.dtype bf16

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def step() -> float:
        with autocast:
            logits = model(**batch).logits
            loss_sum, tokens = token_loss_sum(logits, labels)
            loss = loss_sum / tokens.clamp(min=1)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    for _ in range(args.warmup):
        step()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    losses = [step() for _ in range(args.steps)]
    sync()
    seconds = (time.perf_counter() - t0) / args.steps
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print()
    print(f"Full-size stage-1 step: preset {args.preset} ({params / 1e6:,.1f} M params, {trainable / 1e6:,.1f} M trainable), "
          f"built in {build_s:.0f} s on {name}; torch {torch.__version__}")
    print()
    print("| preset | device | frozen parts | batch | frames | s/step | samples/s | peak GPU memory GB | loss |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(f"| {args.preset} | {name} | {'bf16' if args.frozen_bf16 else 'fp32 (recipe)'} | {b} | {t} | {seconds:.3f} | "
          f"{b / seconds:.1f} | {peak / 1e9:.1f} | {losses[-1]:.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=None, help="timed steps (CPU default 10, GPU default 5)")
    parser.add_argument("--warmup", type=int, default=2, help="steps excluded from the rate")
    parser.add_argument("--batch-size", type=int, default=None, help="global batch (CPU default 4); per GPU with --full-size (default 32)")
    parser.add_argument("--frames", type=int, default=8, help="frames per video (official stage 1: 8)")
    parser.add_argument("--clips", type=int, default=8, help="synthetic WebVid clips (CPU mode)")
    parser.add_argument("--timeout", type=int, default=600, help="seconds allowed per training command (CPU mode)")
    parser.add_argument("--full-size", action="store_true", help="GPU mode: one full-size stage-1 step (see above)")
    parser.add_argument("--preset", default="videollama2-7b", help="model preset for --full-size")
    parser.add_argument("--device", default="cuda", help="device for --full-size")
    parser.add_argument("--frozen-bf16", action="store_true", help="--full-size: frozen parts in bf16 (official)")
    parser.add_argument("--caption-tokens", type=int, default=32, help="--full-size: caption length (max_txt_len)")
    args = parser.parse_args()
    if args.full_size:
        args.steps = args.steps or 5
        args.batch_size = args.batch_size or 32
        full_size_benchmark(args)
    else:
        args.steps = args.steps or 10
        args.batch_size = args.batch_size or 4
        if args.steps <= args.warmup:
            raise SystemExit("--steps must be larger than --warmup")
        cpu_benchmark(args)


if __name__ == "__main__":
    main()
