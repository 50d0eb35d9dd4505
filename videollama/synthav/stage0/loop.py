"""The optimisation loop every stage-0 phase runs, and the padded token batches its losses read.

:func:`train_loop` is AdamW with a linear warmup, then cosine decay or a constant rate; it stops with
``FloatingPointError`` naming the phase and step when a loss is not finite.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from .settings import Stage0Settings

logger = logging.getLogger(__name__)

LM_MAX_TOKENS = 256  # longest LLM document, in tokens
CAPTION_MAX_TOKENS = 64  # longest caption read by a caption loss or the contrastive text encoder
IGNORE_INDEX = -100  # label of a token that carries no loss
RECENT_LOSSES = 20  # the loss a phase reports: the mean over its last steps
LOG_EVERY = 50  # steps between progress lines


def _optimizer(groups: list[dict], lr: float, weight_decay: float, steps: int, warmup_fraction: float,
               cosine: bool = True):
    """AdamW (trainable parameters only; a group may set its own "lr") + warmup, then cosine or constant."""
    groups = [{**g, "params": [p for p in g["params"] if p.requires_grad]} for g in groups]
    opt = torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, betas=(0.9, 0.98))
    warmup = max(1, int(steps * warmup_fraction))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if not cosine:
            return 1.0
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def train_loop(name: str, steps: int, step_fn: Callable[[int], Tensor], params, lr: float, settings: Stage0Settings,
               clip_norm: float | None = 1.0, cosine: bool = True) -> float:
    """Run ``steps`` optimisation steps of ``step_fn(step) -> loss``; returns the mean loss of the last
    :data:`RECENT_LOSSES`. ``params``: parameters, or parameter groups (dicts) that may set their own "lr"."""
    params = list(params)
    groups = params if params and isinstance(params[0], dict) else [{"params": params}]
    flat = [p for g in groups for p in g["params"]]
    opt, sched = _optimizer(groups, lr, settings.weight_decay, steps, settings.warmup_fraction, cosine)
    recent: list[float] = []
    started = time.perf_counter()
    for step in range(steps):
        loss = step_fn(step)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"stage 0 {name}: loss became {loss.item()} at step {step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(flat, clip_norm)
        opt.step()
        sched.step()
        recent = (recent + [loss.item()])[-RECENT_LOSSES:]
        if step % LOG_EVERY == 0 or step == steps - 1:
            logger.info("stage0 %s step %d/%d loss %.4f (%.0f s)", name, step + 1, steps, recent[-1],
                        time.perf_counter() - started)
    return float(np.mean(recent)) if recent else float("nan")


def pad_batch(seqs: list[list[int]], pad: int) -> tuple[Tensor, Tensor]:
    """Right-padded (ids (B, L), attention mask (B, L)) of token-id lists."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    return ids, mask


def lm_batches(tokenizer, docs: list[str], batch_size: int) -> list[list[list[int]]]:
    """Token-id batches of the LM documents, grouped by length (little padding)."""
    encoded = [[tokenizer.bos_token_id] + tokenizer(d, add_special_tokens=False)["input_ids"][: LM_MAX_TOKENS - 2]
               + [tokenizer.eos_token_id] for d in docs]
    encoded.sort(key=len)
    return [encoded[i: i + batch_size] for i in range(0, len(encoded), batch_size)]


def lm_loss(llm, batch: list[list[int]], pad: int) -> Tensor:
    """The LLM's language-modelling loss on one batch of token-id lists (padding ignored)."""
    ids, mask = pad_batch(batch, pad)
    return llm(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, IGNORE_INDEX)).loss


def caption_batch(tokenizer, captions: list[str]) -> tuple[Tensor, Tensor]:
    """Padded (ids, mask) of captions: BOS, at most :data:`CAPTION_MAX_TOKENS` tokens, EOS."""
    seqs = [[tokenizer.bos_token_id] + tokenizer(c, add_special_tokens=False)["input_ids"][:CAPTION_MAX_TOKENS]
            + [tokenizer.eos_token_id] for c in captions]
    return pad_batch(seqs, tokenizer.pad_token_id or 0)

