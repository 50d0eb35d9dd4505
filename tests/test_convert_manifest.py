"""Full-size manifests of the released files, on the meta device: every key table against the 7B model.

The official key lists are built at full width (``videollama2-7b``) with the ``make_official_*``
fixtures on ``device="meta"`` (shapes only, no memory), converted through the same functions
``convert`` uses, and compared one to one with the state dict of our 7B model built under
``accelerate.init_empty_weights``. A few names and shapes are spelled out from the official spec
(``/work/shared/reference/video-llama-official.md``, sections 1-2) so the tables are not only
checked against themselves. The ImageBind file has its own manifest test in ``test_imagebind.py``.
"""

from __future__ import annotations

import math

import pytest

from videollama.convert.imagebind import convert_imagebind_state_dict, make_official_imagebind_state_dict
from videollama.convert.lavis import (
    convert_eva_state_dict,
    convert_lavis_blip2_state_dict,
    make_official_blip2_state_dict,
    make_official_eva_state_dict,
    official_eva_shapes,
)
from videollama.convert.official import convert_official_checkpoint, make_official_branch_state_dict
from videollama.presets import get_preset

VL_PARTS = ("video_qformer", "video_query_tokens", "frame_position_embedding", "video_projection")
AL_PARTS = ("audio_qformer", "audio_query_tokens", "audio_position_embedding", "audio_projection")


@pytest.fixture(scope="module")
def config():
    return get_preset("videollama2-7b")


@pytest.fixture(scope="module")
def ours(config) -> dict[str, tuple[int, ...]]:
    """Our 7B model's state-dict key -> shape (built without memory)."""
    from accelerate import init_empty_weights

    from videollama.model import VideoLlama

    with init_empty_weights(include_buffers=False):
        model = VideoLlama(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _part_of(ours: dict, parts: tuple[str, ...]) -> dict[str, tuple[int, ...]]:
    return {k: s for k, s in ours.items() if k.split(".")[0] in parts}


def _shapes(state) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items()}


def _origins(converted) -> dict[str, str]:
    """Our key -> the official key(s) it was read from (``LazyTensor.origin`` is ``"source:key"``)."""
    return {k: v.origin.split(":", 1)[1] for k, v in converted.items()}


def _assert_one_to_one(converted, official: dict, expected: dict) -> None:
    assert _shapes(converted) == expected  # every key of the part, with our module's shape
    sources = list(_origins(converted).values())
    assert len(sources) == len(set(sources))  # no official tensor feeds two of ours
    for target, source in _origins(converted).items():
        for key in source.split("+"):
            assert key in official, (target, source)


@pytest.mark.slow
def test_vl_checkpoint_full_size(config, ours):
    official = make_official_branch_state_dict("vl", config, device="meta")
    assert all(v.device.type == "meta" for v in official.values())
    shapes = _shapes(official)
    # VL keys/shapes of the official 7B checkpoint (spec section 2).
    assert shapes["video_query_tokens"] == (1, 32, 768)
    assert shapes["video_frame_position_embedding.weight"] == (32, 768)
    assert shapes["llama_proj.weight"] == (4096, 768) and shapes["llama_proj.bias"] == (4096,)
    assert shapes["video_Qformer.bert.embeddings.LayerNorm.weight"] == (768,)
    for i in (0, 1):  # 2 layers, cross-attention in every layer over the 768-wide frame tokens
        layer = f"video_Qformer.bert.encoder.layer.{i}."
        assert shapes[layer + "attention.self.query.weight"] == (768, 768)
        assert shapes[layer + "crossattention.self.key.weight"] == (768, 768)
        assert shapes[layer + "intermediate_query.dense.weight"] == (3072, 768)
        assert shapes[layer + "output_query.dense.weight"] == (768, 3072)
    assert not any(".layer.2." in k for k in shapes)
    assert shapes["video_Qformer.bert.embeddings.position_ids"] == (1, 512)  # a buffer a real file carries

    converted, report = convert_official_checkpoint(official, "vl", config)
    assert report.ok(), report.format()
    expected = _part_of(ours, VL_PARTS)
    assert report.converted == len(expected) == 58
    _assert_one_to_one(converted, official, expected)
    # Everything else in the file is a known buffer: the Q-Formers' position_ids, the LLM's inv_freq.
    assert sorted(report.ignored) == sorted(k for k in official if k.endswith(("position_ids", "inv_freq")))
    assert len(report.ignored) + report.converted == len(official)
    origins = _origins(converted)
    assert origins["video_projection.weight"] == "llama_proj.weight"
    assert origins["frame_position_embedding.weight"] == "video_frame_position_embedding.weight"
    assert (origins["video_qformer.encoder.layer.1.crossattention.attention.key.weight"]
            == "video_Qformer.bert.encoder.layer.1.crossattention.self.key.weight")
    assert origins["video_qformer.layernorm.bias"] == "video_Qformer.bert.embeddings.LayerNorm.bias"
    # 22.1M trained parameters: x 4 bytes x 3 (weights + AdamW m, v) = the 266 MB released file.
    params = sum(math.prod(s) for s in expected.values())
    assert params == 22_104_064
    assert 264e6 < params * 4 * 3 < 267e6


def test_al_checkpoint_full_size(config, ours):
    official = make_official_branch_state_dict("al", config, device="meta")
    shapes = _shapes(official)
    assert shapes["audio_query_tokens"] == (1, 8, 768)
    assert shapes["audio_position_embedding.weight"] == (8, 1024)
    assert shapes["audio_llama_proj.weight"] == (4096, 768) and shapes["audio_llama_proj.bias"] == (4096,)
    for i in (0, 1):  # cross-attention reads ImageBind's 1024-d embeddings
        layer = f"audio_Qformer.bert.encoder.layer.{i}."
        assert shapes[layer + "crossattention.self.key.weight"] == (768, 1024)
        assert shapes[layer + "crossattention.self.value.weight"] == (768, 1024)
        assert shapes[layer + "crossattention.self.query.weight"] == (768, 768)
        assert shapes[layer + "attention.self.key.weight"] == (768, 768)

    converted, report = convert_official_checkpoint(official, "al", config)
    assert report.ok(), report.format()
    expected = _part_of(ours, AL_PARTS)
    assert report.converted == len(expected) == 58
    _assert_one_to_one(converted, official, expected)
    assert len(report.ignored) + report.converted == len(official)
    origins = _origins(converted)
    assert origins["audio_projection.weight"] == "audio_llama_proj.weight"
    assert origins["audio_position_embedding.weight"] == "audio_position_embedding.weight"
    assert (origins["audio_qformer.encoder.layer.0.crossattention.attention.value.weight"]
            == "audio_Qformer.bert.encoder.layer.0.crossattention.self.value.weight")
    params = sum(math.prod(s) for s in expected.values())
    assert params == 22_855_680
    assert 273e6 < params * 4 * 3 < 276e6  # the 275 MB AL file


def test_eva_vit_g_full_size(config, ours):
    official = make_official_eva_state_dict(config.vision, device="meta", head=True)
    shapes = _shapes(official)
    assert shapes == official_eva_shapes(config.vision) | {"norm.weight": (1408,), "norm.bias": (1408,)}
    blocks = {int(k.split(".")[1]) for k in shapes if k.startswith("blocks.")}
    assert blocks == set(range(40))  # EVA-CLIP's 40 blocks; Video-LLaMA keeps 39
    assert shapes["cls_token"] == (1, 1, 1408) and shapes["pos_embed"] == (1, 257, 1408)
    assert shapes["patch_embed.proj.weight"] == (1408, 3, 14, 14)
    assert shapes["blocks.38.attn.qkv.weight"] == (4224, 1408)
    assert shapes["blocks.38.attn.q_bias"] == shapes["blocks.38.attn.v_bias"] == (1408,)
    assert "blocks.38.attn.k_bias" not in shapes  # the key projection has no bias
    assert shapes["blocks.38.mlp.fc1.weight"] == (6144, 1408) and shapes["blocks.38.mlp.fc2.weight"] == (1408, 6144)

    converted, report = convert_eva_state_dict(official, config.vision)
    assert report.ok(), report.format()
    expected = {k: s for k, s in _part_of(ours, ("vision_model",)).items() if ".post_layernorm." not in k}
    assert len(expected) == 4 + 39 * 12
    assert report.converted == len(expected)
    _assert_one_to_one(converted, official, expected)
    # The 40th block and EVA-CLIP's final norm are ignored, and only they.
    assert sorted(report.ignored) == sorted(k for k in official if k.startswith(("blocks.39.", "norm.")))
    assert len(report.ignored) == 13 + 2  # a block has 13 tensors
    assert any("[39]" in note for note in report.notes)
    origins = _origins(converted)
    assert origins["vision_model.encoder.layers.38.self_attn.qkv.bias"] == "blocks.38.attn.q_bias+blocks.38.attn.v_bias"
    assert converted["vision_model.encoder.layers.38.self_attn.qkv.bias"].shape == (4224,)
    assert origins["vision_model.encoder.layers.38.self_attn.projection.weight"] == "blocks.38.attn.proj.weight"
    assert origins["vision_model.embeddings.position_embedding"] == "pos_embed"
    assert not any("blocks.39." in source for source in origins.values())


def test_blip2_qformer_full_size(config, ours):
    official = make_official_blip2_state_dict(config, device="meta")
    shapes = _shapes(official)
    assert shapes["query_tokens"] == (1, 32, 768)
    assert shapes["ln_vision.weight"] == shapes["ln_vision.bias"] == (1408,)
    crossed = sorted({int(k.split(".")[4]) for k in shapes if ".crossattention." in k})
    assert crossed == [0, 2, 4, 6, 8, 10]  # cross-attention every 2nd of 12 layers
    assert shapes["Qformer.bert.encoder.layer.10.crossattention.self.key.weight"] == (768, 1408)
    assert shapes["Qformer.bert.encoder.layer.11.intermediate_query.dense.weight"] == (3072, 768)

    converted, report = convert_lavis_blip2_state_dict(official, config)
    assert report.ok(), report.format()
    expected = _part_of(ours, ("image_qformer", "image_query_tokens"))
    expected |= {k: s for k, s in ours.items() if k.startswith("vision_model.post_layernorm.")}
    assert len(expected) == 254 + 1 + 2
    assert report.converted == len(expected)
    _assert_one_to_one(converted, official, expected)
    # T5 and the Q-Former's position_ids buffer are ignored, nothing else.
    assert sorted(report.ignored) == sorted(k for k in official if k.startswith(("t5_", "Qformer.bert.embeddings.position_ids")))
    origins = _origins(converted)
    assert origins["image_query_tokens"] == "query_tokens"
    assert origins["vision_model.post_layernorm.weight"] == "ln_vision.weight"
    assert (origins["image_qformer.encoder.layer.10.crossattention.attention.key.weight"]
            == "Qformer.bert.encoder.layer.10.crossattention.self.key.weight")
    assert sum(math.prod(s) for k, s in expected.items() if k.startswith("image_qformer.")) == 105_137_664


def test_released_files_cover_the_whole_model(config, ours):
    """VL + AL + EVA + BLIP-2 + ImageBind give every non-LLM tensor of the 7B model exactly once."""
    converted: dict[str, tuple[int, ...]] = {}
    pieces = [
        convert_official_checkpoint(make_official_branch_state_dict("vl", config, device="meta"), "vl", config)[0],
        convert_official_checkpoint(make_official_branch_state_dict("al", config, device="meta"), "al", config)[0],
        convert_eva_state_dict(make_official_eva_state_dict(config.vision, device="meta"), config.vision)[0],
        convert_lavis_blip2_state_dict(make_official_blip2_state_dict(config, device="meta"), config)[0],
    ]
    imagebind, report = convert_imagebind_state_dict(
        make_official_imagebind_state_dict(config.imagebind, device="meta", other_modalities=True),
        audio=True, vision=False, cfg=config.imagebind)
    assert report.ok(), report.format()
    pieces.append({"audio_encoder." + k[len("audio."):]: v for k, v in imagebind.items()})
    for piece in pieces:
        assert not set(piece) & set(converted)
        converted |= _shapes(piece)
    assert converted == {k: s for k, s in ours.items() if not k.startswith("language_model.")}
    assert sum(math.prod(s) for k, s in ours.items() if k.startswith("language_model.")) == 6_738_415_616
