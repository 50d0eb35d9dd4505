"""Generation core: token ids (+ media features) in, token ids out, batched, with a KV cache.

The engine knows nothing about text, templates or files. Each :class:`Request` carries its prompt ids
(placeholders already expanded), its encoded media, its sampling settings and a stop predicate over
the tokens generated so far. ``Engine.generate`` left-pads the batch, runs one prefill, then decodes
one token per step for every unfinished row, yielding the new token of each row as it comes.
Chat, the batch API, the CLI, the web demo and the HTTP server are thin layers over this.

One bad row never fails its batch. A row whose own work fails (its length check, its seed, its
sampling, its stop predicate) ends with a :class:`RowFailure` in its slot and the other rows go on.
When the shared forward pass itself fails, every unfinished row is decoded again on its own (same
seed, its already-yielded tokens replayed and checked, not yielded twice), so only a row that also
fails alone fails; the others end with exactly the tokens they get alone.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from .errors import UsageError, VideoLlamaError
from .model import VideoLlama

SEED_MIN = -(2**63)  # torch.Generator.manual_seed's range: every int64 (OpenAI's) and every uint64
SEED_MAX = 2**64 - 1
UNSEEDED_MAX = 2**62  # seeds drawn for requests that give none
REPETITION_PENALTY_MIN = 0.01  # logits / penalty must stay finite in float32 for any sane logit
REPETITION_PENALTY_MAX = 100.0



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
            raise UsageError("max_new_tokens must be >= 1")
        if self.do_sample and self.temperature <= 0:
            raise UsageError("temperature must be > 0 when sampling (use greedy decoding instead)")
        if not 0 < self.top_p <= 1:
            raise UsageError("top_p must be in (0, 1]")
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise UsageError(f"temperature must be a finite number >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise UsageError(f"top_k must be >= 0, got {self.top_k}")
        if not REPETITION_PENALTY_MIN <= self.repetition_penalty <= REPETITION_PENALTY_MAX:
            raise UsageError(f"repetition_penalty must be between {REPETITION_PENALTY_MIN:g} and "
                             f"{REPETITION_PENALTY_MAX:g}, got {self.repetition_penalty}")
        if self.seed is not None and not SEED_MIN <= self.seed <= SEED_MAX:
            raise UsageError(f"seed must be an integer from -2**63 to 2**64-1, got {self.seed}")


@dataclass
class Request:
    input_ids: list[int]
    video_features: torch.Tensor | None = None  # (N_v, Q_v, D): one row per <ImageHere> run, in order
    audio_features: torch.Tensor | None = None  # (N_a, Q_a, D)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    stop: Callable[[list[int]], bool] | None = None  # called with the tokens generated so far


@dataclass(frozen=True)
class RowFailure:
    """In a step of :meth:`Engine.generate`: this row ended with ``error`` (it yields ``None`` afterwards)."""

    error: Exception


Step = list["int | None | RowFailure"]


class GenerationError(VideoLlamaError):
    """Rows of an :meth:`Engine.generate_all` call failed: ``errors`` maps row -> exception, ``outputs`` holds
    every row's result (None where it failed)."""

    noun = "request"

    def __init__(self, errors: dict[int, Exception], outputs: list) -> None:
        first, err = min(errors.items())
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        super().__init__(f"{len(errors)} of {len(outputs)} {self.noun}s failed: {self.noun} {first}: "
                         f"{type(err).__name__}: {err}{more}")
        self.errors = errors
        self.outputs = outputs


class _Lane:
    """Some rows of a ``generate`` call decoded together; a replayed lane first re-decodes ``replay`` tokens."""

    def __init__(self, rows: list[int], steps: Iterator[Step], replay: list[int] | None = None) -> None:
        self.rows = rows
        self.steps = steps
        self.replay = replay or []


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
            raise UsageError(
                f"prompt of {len(request.input_ids)} tokens + {request.generation.max_new_tokens} new tokens "
                f"exceeds the model's context of {self.max_positions} tokens"
            )

    def generate(self, requests: list[Request]) -> Iterator[Step]:
        """Yield, per decoding step, each row's new token id (``None`` once a row has finished, a
        :class:`RowFailure` once in the step where it failed). See the module docstring for isolation."""
        if not requests:
            return
        seeds = [r.generation.seed if r.generation.seed is not None else _random_seed() for r in requests]
        failed: dict[int, RowFailure] = {}
        live: list[int] = []
        for row, r in enumerate(requests):
            try:
                self.check_length(r)
                _generator(seeds[row])
            except Exception as err:  # noqa: BLE001 - this row's own problem: it fails alone
                failed[row] = RowFailure(err)
            else:
                live.append(row)
        lanes: list[_Lane] = []
        if live:
            lanes.append(_Lane(live, self._decode([requests[row] for row in live], [seeds[row] for row in live])))
        emitted: dict[int, list[int]] = {row: [] for row in live}
        ended: set[int] = set()  # live rows that yielded None or a RowFailure
        while lanes:
            step: Step = [failed.pop(row, None) for row in range(len(requests))]  # pre-check failures: first step
            pending = list(lanes)
            while pending:  # a lane split by a failure is replaced within the step: every live row gets its value
                lane = pending.pop(0)
                try:
                    values = self._advance(lane)
                except StopIteration:
                    lanes.remove(lane)
                    continue
                except Exception as err:  # noqa: BLE001 - the shared forward pass failed: isolate its rows
                    lanes.remove(lane)
                    unfinished = [row for row in lane.rows if row not in ended]
                    if len(lane.rows) == 1:
                        step[lane.rows[0]] = RowFailure(err)
                        ended.update(lane.rows)
                    else:
                        alone = [_Lane([row], self._decode([requests[row]], [seeds[row]]), list(emitted[row]))
                                 for row in unfinished]
                        lanes += alone
                        pending += alone
                    continue
                for row, value in zip(lane.rows, values):
                    if row in ended:
                        continue
                    step[row] = value
                    if isinstance(value, int):
                        emitted[row].append(value)
                    else:
                        ended.add(row)
                if ended.issuperset(lane.rows):
                    lanes.remove(lane)
                    lane.steps.close()
            if any(value is not None for value in step):
                yield step
        if failed:  # every row failed its pre-checks
            yield [failed.get(row) for row in range(len(requests))]

    @staticmethod
    def _advance(lane: _Lane) -> Step:
        """The lane's next step; a replayed lane first re-decodes the tokens its row already yielded."""
        while lane.replay:
            value = next(lane.steps)[0]
            expected = lane.replay.pop(0)
            if isinstance(value, RowFailure):
                return [value]
            if value != expected:
                return [RowFailure(RuntimeError(
                    "decoded again alone after its batch failed, this row diverged from the tokens already sent "
                    f"({value} instead of {expected})"))]
        return next(lane.steps)

    @torch.inference_mode()
    def _decode(self, requests: list[Request], seeds: list[int]) -> Iterator[Step]:
        """One batched decode; a row's own failure ends that row, a failure of the shared forward pass raises."""
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

        generators = [_generator(seed) for seed in seeds]
        generated: list[list[int]] = [[] for _ in requests]
        done = [False] * len(requests)
        cache, logits = self._step(inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids)
        next_positions = position_ids[:, -1] + 1
        while True:
            step: Step = []
            next_tokens = torch.full((len(requests),), self.pad_token_id, dtype=torch.long)
            for row, r in enumerate(requests):
                if done[row]:
                    step.append(None)
                    continue
                try:
                    token = _pick(logits[row].float(), generated[row], r.generation, generators[row])
                    generated[row].append(token)
                    stop = (token == self.eos_token_id or len(generated[row]) >= r.generation.max_new_tokens
                            or (r.stop is not None and r.stop(generated[row])))
                except Exception as err:  # noqa: BLE001 - this row's own failure: the others go on
                    done[row] = True
                    step.append(RowFailure(err))
                    continue
                next_tokens[row] = token
                step.append(token)
                done[row] = stop
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
        """Run to completion; the generated ids of each request (stop tokens included).

        A single request's failure is raised as it is; failed rows of a batch raise :class:`GenerationError`
        once every row has ended, carrying the other rows' ids."""
        outputs: list[list[int]] = [[] for _ in requests]
        errors: dict[int, Exception] = {}
        for step in self.generate(requests):
            for row, value in enumerate(step):
                if isinstance(value, RowFailure):
                    errors[row] = value.error
                elif value is not None:
                    outputs[row].append(value)
        if errors and len(requests) == 1:
            raise errors[0]
        if errors:
            raise GenerationError(errors, [None if row in errors else ids for row, ids in enumerate(outputs)])
        return outputs


def _cat(features: list[torch.Tensor | None]) -> torch.Tensor | None:
    present = [f for f in features if f is not None and f.numel()]
    return torch.cat(present) if present else None


def _random_seed() -> int:
    """A seed for a request that gives none (drawn once, so a row decoded again alone samples the same)."""
    return int(torch.randint(0, UNSEEDED_MAX, (1,)).item())


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _pick(logits: torch.Tensor, history: list[int], gen: GenerationConfig, generator: torch.Generator) -> int:
    """One next token from (V,) logits: repetition penalty, then greedy or temperature/top-k/top-p sampling."""
    logits = logits.cpu()
    if gen.repetition_penalty != 1.0 and history:
        seen = torch.tensor(sorted(set(history)))
        scores = logits[seen]
        logits[seen] = torch.where(scores > 0, scores / gen.repetition_penalty, scores * gen.repetition_penalty)
    if not gen.do_sample:
        return int(logits.argmax())
    # In float64 and shifted so the best logit is 0 before dividing: any temperature > 0 (a float64), however
    # small, leaves the best token at 0 and the others at -inf at worst, never nan.
    logits = (logits.double() - logits.max()) / gen.temperature
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
    if not torch.isfinite(probs).all():
        raise ValueError("the sampling distribution is not finite (check temperature and repetition_penalty)")
    return int(torch.multinomial(probs / probs.sum(), 1, generator=generator))
