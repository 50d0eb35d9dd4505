"""Generation core: KV-cache decoding equals full recomputation; a padded batch equals single requests."""

from __future__ import annotations

import pytest
import torch

from videollama.engine import Engine, GenerationConfig, Request, RowFailure


def _prompt(model, n_text: int, seed: int, with_video: bool = True) -> Request:
    g = torch.Generator().manual_seed(seed)
    cfg = model.config
    text = torch.randint(3, 400, (n_text,), generator=g).tolist()
    ids = [1] + ([cfg.image_token_id] * 32 if with_video else []) + text
    video = torch.randn(1, 32, cfg.llm_hidden_size, generator=g) if with_video else None
    return Request(ids, video, None, GenerationConfig(max_new_tokens=12, do_sample=False))


def _greedy_without_cache(model, request: Request, steps: int) -> list[int]:
    """Reference: recompute the whole sequence at every step, no KV cache."""
    ids = torch.tensor([request.input_ids])
    embeds = model.embed_inputs(ids, request.video_features, request.audio_features)
    out: list[int] = []
    for _ in range(steps):
        logits = model.language_model(inputs_embeds=embeds, use_cache=False).logits[0, -1]
        token = int(logits.argmax())
        out.append(token)
        embeds = torch.cat([embeds, model.language_model.get_input_embeddings()(torch.tensor([[token]]))], dim=1)
    return out


@pytest.mark.slow
@torch.inference_mode()
def test_kv_cache_decoding_matches_full_recompute(tiny_model):
    engine = Engine(tiny_model, eos_token_id=None)
    request = _prompt(tiny_model, 9, seed=0)
    cached = engine.generate_all([request])[0]
    assert len(cached) == 12
    assert cached == _greedy_without_cache(tiny_model, request, 12)


@pytest.mark.slow
@torch.inference_mode()
def test_padded_batch_matches_single_requests(tiny_model):
    engine = Engine(tiny_model, eos_token_id=None)
    requests = [_prompt(tiny_model, 3, seed=1), _prompt(tiny_model, 17, seed=2, with_video=False), _prompt(tiny_model, 8, seed=3)]
    batched = engine.generate_all(requests)
    singles = [engine.generate_all([r])[0] for r in requests]
    assert batched == singles


def test_rows_stop_independently(tiny_model):
    engine = Engine(tiny_model, eos_token_id=None)
    a, b = _prompt(tiny_model, 4, seed=5), _prompt(tiny_model, 6, seed=6)
    b.generation = GenerationConfig(max_new_tokens=3, do_sample=False)
    a.stop = lambda generated: len(generated) == 5
    out = engine.generate_all([a, b])
    assert [len(o) for o in out] == [5, 3]


def test_sampling_is_reproducible_with_a_seed(tiny_model):
    engine = Engine(tiny_model, eos_token_id=None)
    r = _prompt(tiny_model, 5, seed=7)
    r.generation = GenerationConfig(max_new_tokens=10, do_sample=True, temperature=1.5, top_p=0.95, seed=123)
    first = engine.generate_all([r])[0]
    assert engine.generate_all([r])[0] == first
    r.generation = GenerationConfig(max_new_tokens=10, do_sample=True, temperature=1.5, top_p=0.95, seed=124)
    assert engine.generate_all([r])[0] != first


def test_top_p_keeps_only_the_nucleus():
    from videollama.engine import _pick

    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    gen = GenerationConfig(top_p=0.7, temperature=1.0)
    picks = {_pick(logits.clone(), [], gen, torch.Generator().manual_seed(s)) for s in range(200)}
    assert picks == {0, 1}


def test_prompt_longer_than_context_is_refused(tiny_model):
    engine = Engine(tiny_model, eos_token_id=None)
    r = Request([1] * 2040, None, None, GenerationConfig(max_new_tokens=20))
    with pytest.raises(ValueError, match="exceeds the model's context of 2048 tokens"):
        engine.generate_all([r])


def test_bad_generation_settings_are_refused():
    with pytest.raises(ValueError, match="top_p"):
        GenerationConfig(top_p=0)
    with pytest.raises(ValueError, match="temperature"):
        GenerationConfig(temperature=0)


# ------------------------------------------------------------------------------------ one bad row never fails its batch
def _three_rows(model) -> list[Request]:
    return [_prompt(model, 3, seed=11), _prompt(model, 9, seed=12, with_video=False), _prompt(model, 6, seed=13)]


def test_a_row_that_fails_alone_leaves_the_others_their_answers(tiny_model):
    from videollama.engine import GenerationError

    engine = Engine(tiny_model, eos_token_id=None)
    requests = _three_rows(tiny_model)
    singles = [engine.generate_all([r])[0] for r in requests]

    def poisoned_stop(generated: list[int]) -> bool:
        if len(generated) == 4:
            raise ZeroDivisionError("poisoned stop predicate")
        return False

    requests[1].stop = poisoned_stop
    with pytest.raises(GenerationError, match="1 of 3 requests failed: request 1: ZeroDivisionError") as err:
        engine.generate_all(requests)
    assert list(err.value.errors) == [1] and isinstance(err.value.errors[1], ZeroDivisionError)
    assert err.value.outputs == [singles[0], None, singles[2]]


def test_a_row_over_the_context_fails_alone(tiny_model):
    from videollama.engine import GenerationError

    engine = Engine(tiny_model, eos_token_id=None)
    requests = _three_rows(tiny_model)
    singles = [engine.generate_all([r])[0] for r in requests]
    requests.insert(1, Request([1] * 2040, None, None, GenerationConfig(max_new_tokens=20, do_sample=False)))
    with pytest.raises(GenerationError, match="exceeds the model's context") as err:
        engine.generate_all(requests)
    assert err.value.outputs == [singles[0], None, singles[1], singles[2]]


def test_a_failed_batched_step_is_decoded_again_row_by_row(tiny_model, monkeypatch):
    """The shared forward pass fails mid-answer: every row is decoded alone, tokens already yielded are not repeated."""
    engine = Engine(tiny_model, eos_token_id=None)
    requests = _three_rows(tiny_model)
    requests[2].generation = GenerationConfig(max_new_tokens=12, do_sample=True, temperature=0.8)  # no seed given
    singles = [engine.generate_all([r])[0] for r in requests[:2]]
    original, calls = engine._step, []

    def failing_step(**kwargs):
        calls.append(1)
        batch = (kwargs.get("inputs_embeds") if "inputs_embeds" in kwargs else kwargs["input_ids"]).shape[0]
        if batch > 1 and len(calls) == 5:
            raise RuntimeError("simulated failure of the batched forward pass")
        return original(**kwargs)

    monkeypatch.setattr(engine, "_step", failing_step)
    steps = list(engine.generate(requests))
    outputs = [[s[row] for s in steps if isinstance(s[row], int)] for row in range(3)]
    assert outputs[:2] == singles
    assert len(outputs[2]) == 12  # the unseeded row kept its drawn seed: its replayed prefix matched
    assert not any(isinstance(value, RowFailure) for s in steps for value in s)


def test_a_row_that_breaks_the_forward_pass_fails_alone(tiny_model, monkeypatch):
    engine = Engine(tiny_model, eos_token_id=None)
    requests = _three_rows(tiny_model)
    singles = [engine.generate_all([r])[0] for r in requests]
    poison = 77
    requests[0].input_ids = [*requests[0].input_ids[:-1], poison]
    original = tiny_model.embed_inputs

    def embed(input_ids, *args, **kwargs):
        if (input_ids == poison).any():
            raise RuntimeError("simulated kernel failure on this prompt")
        return original(input_ids, *args, **kwargs)

    monkeypatch.setattr(tiny_model, "embed_inputs", embed)
    steps = list(engine.generate(requests))
    failures = [(row, value.error) for s in steps for row, value in enumerate(s) if isinstance(value, RowFailure)]
    assert [row for row, _ in failures] == [0] and "simulated kernel failure" in str(failures[0][1])
    assert [[s[row] for s in steps if isinstance(s[row], int)] for row in (1, 2)] == singles[1:]


@pytest.mark.parametrize("settings, message", [
    ({"seed": 2**70}, "seed must be an integer from -2\\*\\*63 to 2\\*\\*64-1"),
    ({"seed": -(2**63) - 1}, "seed"),
    ({"repetition_penalty": 1e-300}, "repetition_penalty must be between 0.01 and 100"),
    ({"repetition_penalty": float("inf")}, "repetition_penalty"),
    ({"temperature": float("nan")}, "temperature"),
    ({"top_k": -1}, "top_k"),
])
def test_settings_that_would_fail_generation_are_refused_up_front(settings, message):
    with pytest.raises(ValueError, match=message):
        GenerationConfig(**settings)
    GenerationConfig(seed=2**64 - 1)  # the ends of the range are accepted
    GenerationConfig(seed=-(2**63), repetition_penalty=0.01)


def test_a_tiny_temperature_samples_the_most_likely_token():
    from videollama.engine import _pick

    logits = torch.tensor([1.0, 3.0, 2.5, -1.0])
    gen = GenerationConfig(temperature=1e-300, top_p=1.0)
    assert {_pick(logits.clone(), [], gen, torch.Generator().manual_seed(s)) for s in range(20)} == {1}
