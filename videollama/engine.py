"""Generation core: token ids (+ media features) in, token ids out, batched, with a KV cache.

The engine knows nothing about text, templates or files. Each :class:`Request` carries its prompt ids
(placeholders already expanded), its encoded media, its sampling settings and a stop predicate over
the tokens generated so far. ``Engine.generate`` left-pads the batch, runs one prefill, then decodes
one token per step for every unfinished row, yielding the new token of each row as it comes.
Chat, the batch API, the CLI, the web demo and the HTTP server are thin layers over this.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from .model import VideoLlama


@dataclass
class GenerationConfig:
    """Sampling settings. Defaults are the official demo's (sampling, top-p 0.9, 300 new tokens)."""

    max_new_tokens: int = 300
    do_sample: bool = True
    temperature: float = 1.0
    top_p: float = 0.9
    top_k: int = 0
    repetition_penalty: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be >= 1")
        if self.do_sample and self.temperature <= 0:
            raise ValueError("temperature must be > 0 when sampling (use greedy decoding instead)")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")


@dataclass
class Request:
    input_ids: list[int]
    video_features: torch.Tensor | None = None  # (N_v, Q_v, D): one row per <ImageHere> run, in order
    audio_features: torch.Tensor | None = None  # (N_a, Q_a, D)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    stop: Callable[[list[int]], bool] | None = None  # called with the tokens generated so far


class Engine:
    def __init__(self, model: VideoLlama, *, eos_token_id: int | None, pad_token_id: int = 0):
        self.model = model
        self.eos_token_id = eos_token_id
        self.pad_token_id = pad_token_id
        self.max_positions = getattr(model.language_model.config, "max_position_embeddings", None)
        # transformers renamed ``past_key_values`` to ``cache`` during 5.x; support both.
        params = inspect.signature(model.language_model.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"

    def _step(self, **kwargs):
        """One LLM call returning (cache, last-position logits); only the last position's logits are computed."""
        cache = kwargs.pop("cache", None)
        if cache is not None:
            kwargs[self._cache_arg] = cache
        out = self.model.language_model(use_cache=True, logits_to_keep=1, **kwargs)
        return getattr(out, self._cache_arg), out.logits[:, -1, :]

    def check_length(self, request: Request) -> None:
        need = len(request.input_ids) + request.generation.max_new_tokens
        if self.max_positions is not None and need > self.max_positions:
            raise ValueError(
                f"prompt of {len(request.input_ids)} tokens + {request.generation.max_new_tokens} new tokens "
                f"exceeds the model's context of {self.max_positions} tokens"
            )

    @torch.inference_mode()
    def generate(self, requests: list[Request]) -> Iterator[list[int | None]]:
        """Yield, per decoding step, each row's new token id (``None`` once a row has finished)."""
        if not requests:
            return
        for r in requests:
            self.check_length(r)
        model, device = self.model, self.model.device
        lengths = [len(r.input_ids) for r in requests]
        width = max(lengths)
        # Left padding keeps every row's last prompt token in the final column.
        input_ids = torch.full((len(requests), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(requests), width), dtype=torch.long)
        for row, r in enumerate(requests):
            input_ids[row, width - len(r.input_ids):] = torch.tensor(r.input_ids)
            attention_mask[row, width - len(r.input_ids):] = 1
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        video = _cat([r.video_features for r in requests])
        audio = _cat([r.audio_features for r in requests])
        inputs_embeds = model.embed_inputs(input_ids, video, audio)
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # (B, L)

        generators = [_generator(r.generation.seed) for r in requests]
        generated: list[list[int]] = [[] for _ in requests]
        done = [False] * len(requests)
        cache, logits = self._step(inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids)
        next_positions = position_ids[:, -1] + 1
        while True:
            step: list[int | None] = []
            next_tokens = torch.full((len(requests),), self.pad_token_id, dtype=torch.long)
            for row, r in enumerate(requests):
                if done[row]:
                    step.append(None)
                    continue
                token = _pick(logits[row].float(), generated[row], r.generation, generators[row])
                generated[row].append(token)
                next_tokens[row] = token
                step.append(token)
                if (
                    token == self.eos_token_id
                    or len(generated[row]) >= r.generation.max_new_tokens
                    or (r.stop is not None and r.stop(generated[row]))
                ):
                    done[row] = True
            yield step
            if all(done):
                return
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones((len(requests), 1))], dim=1)
            cache, logits = self._step(
                input_ids=next_tokens[:, None].to(device),
                attention_mask=attention_mask,
                position_ids=next_positions[:, None],
                cache=cache,
            )
            next_positions = next_positions + 1

    def generate_all(self, requests: list[Request]) -> list[list[int]]:
        """Run to completion; the generated ids of each request (stop tokens included)."""
        outputs: list[list[int]] = [[] for _ in requests]
        for step in self.generate(requests):
            for row, token in enumerate(step):
                if token is not None:
                    outputs[row].append(token)
        return outputs


def _cat(features: list[torch.Tensor | None]) -> torch.Tensor | None:
    present = [f for f in features if f is not None and f.numel()]
    return torch.cat(present) if present else None


def _generator(seed: int | None) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed if seed is not None else int(torch.randint(0, 2**62, (1,)).item()))
    return g


def _pick(logits: torch.Tensor, history: list[int], gen: GenerationConfig, generator: torch.Generator) -> int:
    """One next token from (V,) logits: repetition penalty, then greedy or temperature/top-k/top-p sampling."""
    logits = logits.cpu()
    if gen.repetition_penalty != 1.0 and history:
        seen = torch.tensor(sorted(set(history)))
        scores = logits[seen]
        logits[seen] = torch.where(scores > 0, scores / gen.repetition_penalty, scores * gen.repetition_penalty)
    if not gen.do_sample:
        return int(logits.argmax())
    logits = logits / gen.temperature
    if gen.top_k > 0:
        kth = torch.topk(logits, min(gen.top_k, logits.numel())).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if gen.top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        cumulative = sorted_probs.cumsum(0)
        keep = cumulative - sorted_probs < gen.top_p  # always keeps the most likely token
        sorted_probs = sorted_probs * keep
        probs = torch.zeros_like(probs).scatter(0, order, sorted_probs)
    return int(torch.multinomial(probs / probs.sum(), 1, generator=generator))
