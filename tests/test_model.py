"""The model: shapes through each branch, placeholder checks, trainability, save/load, 7B counts."""

from __future__ import annotations

import pytest
import torch

from videollama.model import AUDIO_BRANCH_TRAINABLE, VISION_BRANCH_TRAINABLE, VideoLlama, count_parameters


def test_vision_branch_shapes(tiny_model):
    pixels = torch.randn(2, 8, 3, 224, 224)
    out = tiny_model.encode_video(pixels)
    assert out.shape == (2, 32, tiny_model.config.llm_hidden_size)
    # An image is a one-frame video and gives the same number of tokens.
    assert tiny_model.encode_video(pixels[:, :1]).shape == (2, 32, tiny_model.config.llm_hidden_size)


def test_audio_branch_shapes(tiny_model):
    out = tiny_model.encode_audio(torch.randn(3, 8, 1, 128, 204))
    assert out.shape == (3, 8, tiny_model.config.llm_hidden_size)
    via_vision = tiny_model.encode_visual_for_audio_branch(torch.randn(2, 8, 3, 224, 224))
    assert via_vision.shape == (2, 8, tiny_model.config.llm_hidden_size)


def test_frame_position_embedding_is_added_to_all_queries_of_its_frame(tiny_model):
    torch.manual_seed(1)
    pixels = torch.randn(1, 3, 3, 224, 224)
    seen = {}
    hook = tiny_model.video_qformer.register_forward_pre_hook(
        lambda module, args, kwargs: seen.update(memory=kwargs["encoder_hidden_states"]), with_kwargs=True
    )
    try:
        tiny_model.encode_video(pixels)
    finally:
        hook.remove()
    frame_tokens = tiny_model.vision_model(pixel_values=pixels[0]).last_hidden_state
    queries = tiny_model.image_query_tokens.expand(3, -1, -1)
    per_frame = tiny_model.image_qformer(query_embeds=queries, encoder_hidden_states=frame_tokens).last_hidden_state
    memory = seen["memory"].reshape(3, 32, -1)  # (T, Q, D): frame-major, as the official reshape
    positions = tiny_model.frame_position_embedding.weight[:3]
    torch.testing.assert_close(memory - per_frame, positions[:, None, :].expand_as(memory), atol=1e-5, rtol=0)


def test_frame_limit(tiny_model):
    with pytest.raises(ValueError, match="33 frames"):
        tiny_model.encode_video(torch.randn(1, 33, 3, 224, 224))
    with pytest.raises(ValueError, match="9 audio clips"):
        tiny_model.encode_audio(torch.randn(1, 9, 1, 128, 204))


def test_placeholder_count_mismatch_names_both_counts(tiny_model):
    cfg = tiny_model.config
    ids = torch.tensor([[1] + [cfg.image_token_id] * 31 + [5, 6]])
    video = torch.randn(1, 32, cfg.llm_hidden_size)
    with pytest.raises(ValueError, match=r"31 <ImageHere> tokens .* fill 32 \(1 items x 32 tokens\)"):
        tiny_model.embed_inputs(ids, video)
    ids = torch.tensor([[1] + [cfg.audio_token_id] * 8])
    with pytest.raises(ValueError, match=r"8 <AudioHere> tokens .* fill 0 \(no features\)"):
        tiny_model.embed_inputs(ids)


def test_features_land_on_placeholders_in_order(tiny_model):
    cfg = tiny_model.config
    ids = torch.tensor([[1, 7] + [cfg.audio_token_id] * 8 + [9] + [cfg.image_token_id] * 32 + [3]])
    video = torch.randn(1, 32, cfg.llm_hidden_size)
    audio = torch.randn(1, 8, cfg.llm_hidden_size)
    embeds = tiny_model.embed_inputs(ids, video, audio)
    assert torch.equal(embeds[0, 2:10], audio[0])
    assert torch.equal(embeds[0, 11:43], video[0])
    text = tiny_model.language_model.get_input_embeddings()(torch.tensor([1, 7, 9, 3]))
    assert torch.equal(embeds[0, [0, 1, 10, 43]], text)


def test_loss_only_on_labels_and_gradients_only_in_trainable_parts(tiny_model_dir):
    model = VideoLlama.from_pretrained(tiny_model_dir)
    model.set_trainable(VISION_BRANCH_TRAINABLE)
    model.train()
    assert not model.vision_model.training and model.video_qformer.training
    cfg = model.config
    ids = torch.tensor([[1] + [cfg.image_token_id] * 32 + [10, 11, 12, 2]])
    labels = torch.full_like(ids, -100)
    labels[0, -4:] = ids[0, -4:]
    out = model(ids, torch.ones_like(ids), labels=labels, pixel_values=torch.randn(1, 2, 3, 224, 224))
    out.loss.backward()
    grads = {name.split(".")[0] for name, p in model.named_parameters() if p.grad is not None}
    assert grads == set(VISION_BRANCH_TRAINABLE)
    with pytest.raises(ValueError, match="unknown trainable parts"):
        model.set_trainable(["video_qformerz"])


@pytest.mark.slow
def test_save_and_load_round_trip(tiny_model, tiny_model_dir):
    loaded = VideoLlama.from_pretrained(tiny_model_dir)
    for key, value in tiny_model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    pixels = torch.randn(1, 2, 3, 224, 224)
    assert torch.equal(tiny_model.encode_video(pixels), loaded.encode_video(pixels))


def test_load_refuses_wrong_shapes(tiny_model_dir, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    from videollama.model.checkpoint import ModelFolderError

    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    state = load_file(broken / "model.safetensors")
    state["video_projection.weight"] = torch.zeros(3, 3)
    del state["audio_query_tokens"]
    state["surprise.weight"] = torch.zeros(1)
    save_file(state, broken / "model.safetensors")
    with pytest.raises(ModelFolderError) as err:
        VideoLlama.from_pretrained(broken)
    message = str(err.value)
    assert "missing (1): audio_query_tokens" in message
    assert "unexpected (1): surprise.weight" in message
    assert "video_projection.weight: file (3, 3)" in message


@pytest.mark.slow
def test_official_7b_parameter_counts():
    from accelerate import init_empty_weights

    from videollama.presets import videollama2_7b

    with init_empty_weights():
        model = VideoLlama(videollama2_7b())
    counts = count_parameters(model)
    vl = sum(counts[p] for p in VISION_BRANCH_TRAINABLE)
    al = sum(counts[p] for p in AUDIO_BRANCH_TRAINABLE)
    # 2-layer video Q-Former (18.9M) + queries + frame positions + 768->4096 projection: the 22.1M of the
    # official VL checkpoint (whose 266 MB = 22.1M x fp32 x weights+AdamW m+v).
    assert vl == 22_104_064
    assert counts["video_qformer"] == 18_905_088
    assert counts["video_projection"] == 768 * 4096 + 4096
    assert al == 22_855_680
    assert counts["vision_model"] == 985_952_256  # EVA ViT-g/14, 39 blocks + ln_vision
    assert counts["language_model"] == 6_738_415_616  # LLaMA-2-7B


def test_qformer_init_std_and_audio_input_norm_options():
    """``QFormerConfig.init_std`` sets a fresh Q-Former's weight init; ``audio_branch_input_norm`` makes the audio
    Q-Former see sound (norm 20) and frames (norm 1) at one norm. The defaults are the official behaviour."""
    from dataclasses import replace

    from videollama.presets import tiny

    torch.manual_seed(0)
    official = VideoLlama(tiny()).eval()
    wide = replace(tiny().audio_qformer, init_std=0.1)
    torch.manual_seed(0)
    model = VideoLlama(replace(tiny(), audio_qformer=wide, audio_branch_input_norm=1.0)).eval()
    weight = lambda m: m.audio_qformer.encoder.layer[0].crossattention.attention.value.weight  # noqa: E731
    assert 0.015 < weight(official).std().item() < 0.025 and 0.08 < weight(model).std().item() < 0.12
    emb = torch.nn.functional.normalize(torch.randn(2, 3, model.config.imagebind.embed_dim), dim=-1)
    with torch.no_grad():
        assert torch.allclose(model._audio_qformer(emb), model._audio_qformer(20 * emb), atol=1e-5)
        assert not torch.allclose(official._audio_qformer(emb), official._audio_qformer(20 * emb), atol=1e-3)
