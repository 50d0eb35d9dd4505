"""Generation core: KV-cache decoding equals full recomputation; a padded batch equals single requests."""

from __future__ import annotations

import pytest
import torch

from videollama.engine import Engine, GenerationConfig, Request


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
