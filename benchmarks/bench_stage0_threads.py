"""Benchmark: seconds per SynthAV stage-0 training step with 1 torch thread against every core.

Why: the SynthAV chain runs with ``OMP_NUM_THREADS=1`` because its stages 1-2 run DataLoader
workers beside the trainer, but stage 0 runs alone and without workers, so ``run_stage0`` switches to
every core (``Stage0Settings.threads``). This measures whether that pays, per kind of stage-0 step.

Model: the SynthAV preset (``synthav_config``) at random init. Steps (forward, backward, AdamW),
each on synthetic inputs shaped like stage 0's batches:

  * ``llm``: the LLM's language-modelling step, 24 documents x ``--tokens`` tokens;
  * ``vit``: the image ViT on 64 frames of 112x112 (the dense pretraining's batch);
  * ``imagebind-audio``: the ImageBind-like audio encoder on 64 fbank windows of 128x204;
  * ``q-former+llm``: 32 frames through the frozen ViT, the image Q-Former and a bridge into the LLM,
    which predicts a 40-token description after the 8 soft tokens (the generative phase's core).

Each is timed over ``--steps`` steps after 3 warm-up steps, first with 1 thread, then with
``os.cpu_count()`` threads, in the same process (``torch.set_num_threads``).

Run: ``OMP_NUM_THREADS=1 python benchmarks/bench_stage0_threads.py [--steps 10]``
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from torch import nn


def _timed(step, params, steps: int) -> float:
    opt = torch.optim.AdamW(params, lr=1e-4)
    for i in range(steps + 3):
        if i == 3:
            start = time.perf_counter()
        loss = step()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--tokens", type=int, default=96, help="tokens per LLM document")
    args = parser.parse_args()

    from videollama.model import VideoLlama
    from videollama.synthav.preset import synthav_config

    torch.manual_seed(0)
    model = VideoLlama(synthav_config(vocab_size=768)).train()
    model.requires_grad_(True)
    llm, vit, audio = model.language_model, model.vision_model, model.audio_encoder
    size = model.config.vision.image_size
    ids = torch.randint(3, 768, (24, args.tokens))
    frames = torch.randn(64, 3, size, size)
    mel = torch.randn(64, 1, 128, 204)
    bridge = nn.Linear(model.config.image_qformer.hidden_size, model.config.llm_hidden_size)
    caption = torch.randint(3, 768, (32, 40))

    def generative() -> torch.Tensor:
        with torch.no_grad():
            tokens = vit(pixel_values=frames[:32]).last_hidden_state  # (32, 50, W)
        queries = model.image_query_tokens.expand(32, -1, -1)
        out = model.image_qformer(query_embeds=queries, encoder_hidden_states=tokens).last_hidden_state  # (32, Q, W)
        inputs = torch.cat([bridge(out), llm.get_input_embeddings()(caption)], 1)  # (32, Q + 40, D)
        labels = torch.cat([torch.full(out.shape[:2], -100), caption], 1)
        return llm(inputs_embeds=inputs, labels=labels).loss

    steps = {
        "llm": (lambda: llm(input_ids=ids, labels=ids).loss, list(llm.parameters())),
        "vit": (lambda: vit(pixel_values=frames).last_hidden_state.pow(2).mean(), list(vit.parameters())),
        "imagebind-audio": (lambda: audio(mel)[1].pow(2).mean(), list(audio.parameters())),
        "q-former+llm": (generative, [*model.image_qformer.parameters(), model.image_query_tokens,
                                      *bridge.parameters(), *llm.parameters()]),
    }
    cores = os.cpu_count() or 1
    rows = []
    for name, (step, params) in steps.items():
        times = []
        for threads in (1, cores):
            torch.set_num_threads(threads)
            times.append(_timed(step, params, args.steps))
        rows.append((name, *times))
    print(f"\nSynthAV stage-0 steps, seconds per step (torch {torch.__version__}, {cores} cores)\n")
    print(f"| step | 1 thread | {cores} threads | speed-up |")
    print("|---|---|---|---|")
    for name, one, many in rows:
        print(f"| {name} | {one:.3f} | {many:.3f} | {one / many:.2f}x |")


if __name__ == "__main__":
    main()
