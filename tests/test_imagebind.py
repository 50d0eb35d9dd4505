"""ImageBind-Huge audio/vision encoders and the conversion from the official key layout.

The round-trip tests compare our modules, loaded through the converter, with an independent
functional forward pass written here directly on the *official* state dict (manual patchify,
manual multi-head attention with appended bias_k/bias_v, manual LayerNorm and GELU), so both the
key table and the forward semantics are cross-checked rather than self-consistent.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from videollama.config import ImageBindConfig
from videollama.convert.imagebind import (
    convert_imagebind_state_dict,
    make_official_imagebind_state_dict,
    official_imagebind_shapes,
)
from videollama.convert.report import ConversionError
from videollama.model.imagebind import ImageBindAudioEncoder, ImageBindVisionEncoder
from videollama.presets import tiny

MEL_SHAPE = (1, 128, 204)
IMAGE_SHAPE = (3, 224, 224)


@pytest.fixture(scope="module")
def cfg() -> ImageBindConfig:
    return tiny().imagebind


def _load(encoder: torch.nn.Module, ours: dict[str, torch.Tensor], prefix: str) -> torch.nn.Module:
    encoder.load_state_dict({k[len(prefix):]: v for k, v in ours.items() if k.startswith(prefix)}, strict=True)
    return encoder


def _converted_encoders(cfg: ImageBindConfig, official: dict[str, torch.Tensor], dtype=torch.float64):
    ours, report = convert_imagebind_state_dict(official, cfg=cfg)
    assert report.ok()
    # Cast before loading: load_state_dict copies into the existing (float32) tensors.
    audio = _load(ImageBindAudioEncoder(cfg).to(dtype), ours, "audio.").eval()
    vision = _load(ImageBindVisionEncoder(cfg).to(dtype), ours, "vision.").eval()
    return audio, vision


# ------------------------------------------------------------------ independent reference forward


def _ln(x, w, b, eps):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * w + b


def _gelu(x):
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def _attention(x, sd, p, heads):
    n, length, d = x.shape
    q, k, v = (x @ sd[p + "in_proj_weight"].T + sd[p + "in_proj_bias"]).split(d, dim=-1)
    if p + "bias_k" in sd:  # one learned key/value slot appended to every sequence
        k = torch.cat([k, sd[p + "bias_k"].expand(n, 1, d)], dim=1)
        v = torch.cat([v, sd[p + "bias_v"].expand(n, 1, d)], dim=1)
    hd = d // heads
    q, k, v = (t.reshape(n, t.shape[1], heads, hd).transpose(1, 2) for t in (q, k, v))
    probs = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd), dim=-1)
    out = (probs @ v).transpose(1, 2).reshape(n, length, d)
    return out @ sd[p + "out_proj.weight"].T + sd[p + "out_proj.bias"]


def _trunk(x, sd, modality, layers, heads):
    for i in range(layers):
        p = f"modality_trunks.{modality}.blocks.{i}."
        h = _ln(x, sd[p + "norm_1.weight"], sd[p + "norm_1.bias"], 1e-6)
        x = x + _attention(h, sd, p + "attn.", heads)
        h = _ln(x, sd[p + "norm_2.weight"], sd[p + "norm_2.bias"], 1e-6)
        h = _gelu(h @ sd[p + "mlp.fc1.weight"].T + sd[p + "mlp.fc1.bias"])
        x = x + h @ sd[p + "mlp.fc2.weight"].T + sd[p + "mlp.fc2.bias"]
    return x


def _head(x, sd, modality):
    x = _ln(x, sd[f"modality_heads.{modality}.0.weight"], sd[f"modality_heads.{modality}.0.bias"], 1e-6)
    cls = x[:, 0]
    emb = cls @ sd[f"modality_heads.{modality}.2.weight"].T
    return cls, emb / emb.norm(dim=-1, keepdim=True)


def reference_audio(sd, mel, cfg):
    pre = "modality_preprocessors.audio."
    w = sd[pre + "rgbt_stem.proj.weight"]  # (D, 1, k, k)
    cols = torch.nn.functional.unfold(mel, cfg.audio_kernel, stride=cfg.audio_stride)  # (N, k*k, P)
    patches = cols.transpose(1, 2) @ w.reshape(w.shape[0], -1).T  # (N, P, D)
    patches = _ln(patches, sd[pre + "rgbt_stem.norm_layer.weight"], sd[pre + "rgbt_stem.norm_layer.bias"], 1e-5)
    x = torch.cat([sd[pre + "cls_token"].expand(len(mel), -1, -1), patches], 1) + sd[pre + "pos_embedding_helper.pos_embed"]
    x = _trunk(x, sd, "audio", cfg.audio_layers, cfg.audio_heads)
    cls, emb = _head(x, sd, "audio")
    scale = sd["modality_postprocessors.audio.1.log_logit_scale"].exp().clamp(max=100)
    return cls, emb * scale


def reference_vision(sd, images, cfg):
    pre = "modality_preprocessors.vision."
    w = sd[pre + "rgbt_stem.proj.1.weight"]  # (D, 3, 2, p, p)
    n, p, s = len(images), cfg.patch_size, cfg.image_size // cfg.patch_size
    video = images[:, :, None].repeat(1, 1, 2, 1, 1)  # PadIm2Video(repeat, 2)
    cols = video.reshape(n, 3, 2, s, p, s, p).permute(0, 3, 5, 1, 2, 4, 6).reshape(n, s * s, -1)
    patches = cols @ w.reshape(w.shape[0], -1).T  # (N, 256, D)
    x = torch.cat([sd[pre + "cls_token"].expand(n, -1, -1), patches], 1) + sd[pre + "pos_embedding_helper.pos_embed"]
    x = _ln(x, sd["modality_trunks.vision.pre_transformer_layer.0.weight"],
            sd["modality_trunks.vision.pre_transformer_layer.0.bias"], 1e-6)
    x = _trunk(x, sd, "vision", cfg.vision_layers, cfg.vision_heads)
    return _head(x, sd, "vision")[1]


# ------------------------------------------------------------------ tests


def test_output_shapes_and_norms(cfg):
    torch.manual_seed(0)
    audio, vision = ImageBindAudioEncoder(cfg).eval(), ImageBindVisionEncoder(cfg).eval()
    with torch.no_grad():
        cls, emb = audio(torch.randn(3, *MEL_SHAPE))
        assert cls.shape == (3, cfg.audio_width) and emb.shape == (3, cfg.embed_dim)
        torch.testing.assert_close(emb.norm(dim=-1), torch.full((3,), 20.0))
        cls5, emb5 = audio(torch.randn(2, 4, *MEL_SHAPE))  # (B, S, ...) clips
        assert cls5.shape == (2, 4, cfg.audio_width) and emb5.shape == (2, 4, cfg.embed_dim)

        images = torch.randn(2, *IMAGE_SHAPE)
        out = vision(images)
        assert out.shape == (2, cfg.embed_dim)
        torch.testing.assert_close(out.norm(dim=-1), torch.ones(2))
        # An image is a 2-frame video of itself; a 1-frame video is padded the same way.
        torch.testing.assert_close(vision(images[:, :, None].repeat(1, 1, 2, 1, 1)), out)
        torch.testing.assert_close(vision(images[:, :, None]), out)
        # Two different frames really are both used.
        video = torch.stack([images[0], images[1]], dim=1)[None]  # (1, 3, 2, H, W)
        assert not torch.allclose(vision(video), out[:1], atol=1e-4)


def test_bad_input_shapes_raise(cfg):
    audio, vision = ImageBindAudioEncoder(cfg), ImageBindVisionEncoder(cfg)
    with pytest.raises(ValueError, match=r"expects mel of shape.*got \(2, 1, 128, 200\)"):
        audio(torch.randn(2, 1, 128, 200))
    with pytest.raises(ValueError, match="expects images"):
        vision(torch.randn(2, 3, 112, 112))
    with pytest.raises(ValueError, match="T in"):
        vision(torch.randn(1, 3, 4, 224, 224))


def test_state_dict_names(cfg):
    audio_keys = set(ImageBindAudioEncoder(cfg).state_dict())
    vision_keys = set(ImageBindVisionEncoder(cfg).state_dict())
    for key in ("stem.weight", "stem_norm.weight", "cls_token", "pos_embed", "blocks.1.attn.bias_k",
                "blocks.1.attn.in_proj_weight", "blocks.0.mlp.fc2.bias", "head_norm.bias", "head.weight",
                "log_logit_scale"):
        assert key in audio_keys
    assert "pre_norm.weight" in vision_keys and "blocks.0.attn.bias_k" not in vision_keys
    assert "stem_norm.weight" not in vision_keys and "log_logit_scale" not in vision_keys


def test_full_size_manifest_on_meta():
    full = ImageBindConfig()
    official = make_official_imagebind_state_dict(full, device="meta")
    shapes = official_imagebind_shapes(full)
    assert {k: tuple(v.shape) for k, v in official.items()} == shapes
    assert sum(k.startswith(("modality_preprocessors.audio", "modality_trunks.audio", "modality_heads.audio",
                             "modality_postprocessors.audio")) for k in shapes) == 5 + 12 * 14 + 3 + 1
    assert sum(".vision." in k for k in shapes) == 3 + 2 + 32 * 12 + 3
    assert shapes["modality_preprocessors.audio.pos_embedding_helper.pos_embed"] == (1, 229, 768)  # 12*19 + CLS
    assert shapes["modality_preprocessors.vision.pos_embedding_helper.pos_embed"] == (1, 257, 1280)

    with torch.device("meta"):
        audio, vision = ImageBindAudioEncoder(full), ImageBindVisionEncoder(full)
    ours, report = convert_imagebind_state_dict(official, cfg=full)
    assert report.ok() and report.converted == len(official) == 569
    expected = {f"audio.{k}": tuple(v.shape) for k, v in audio.state_dict().items()}
    expected |= {f"vision.{k}": tuple(v.shape) for k, v in vision.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in ours.items()} == expected  # one to one, same shapes

    def count(prefix):
        return sum(math.prod(s) for k, s in shapes.items() if k.startswith(prefix))

    # Per block: 12 W^2 weights + 13 W biases/norms (+ 2 W for bias_k/bias_v).
    assert count("modality_trunks.audio.") == 12 * (12 * 768**2 + 15 * 768) == 85_072_896
    assert count("modality_trunks.vision.") == 32 * (12 * 1280**2 + 13 * 1280) + 2 * 1280 == 629_680_640
    assert sum(p.numel() for p in audio.parameters()) == 86_235_648
    assert sum(p.numel() for p in vision.parameters()) == 632_829_440
    assert sum(p.numel() for p in audio.blocks.parameters()) == 85_072_896


def test_round_trip_matches_independent_reference(cfg):
    official = make_official_imagebind_state_dict(cfg, seed=1, dtype=torch.float64, other_modalities=True)
    audio, vision = _converted_encoders(cfg, official)
    gen = torch.Generator().manual_seed(2)
    mel = torch.randn(3, *MEL_SHAPE, generator=gen, dtype=torch.float64)
    images = torch.randn(2, *IMAGE_SHAPE, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        cls, emb = audio(mel)
        ref_cls, ref_emb = reference_audio(official, mel, cfg)
        torch.testing.assert_close(cls, ref_cls, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(emb, ref_emb, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(vision(images), reference_vision(official, images, cfg), rtol=1e-9, atol=1e-9)
    # The fabricated embeddings are not degenerate (different inputs -> different embeddings).
    assert (emb[0] - emb[1]).abs().max() > 1e-3


def test_bias_kv_are_used(cfg):
    official = make_official_imagebind_state_dict(cfg, seed=3, dtype=torch.float64)
    mel = torch.randn(2, *MEL_SHAPE, dtype=torch.float64)
    with torch.no_grad():
        base = _converted_encoders(cfg, official)[0](mel)[1]
        for name in ("bias_k", "bias_v"):
            changed = dict(official)
            key = f"modality_trunks.audio.blocks.1.attn.{name}"
            changed[key] = official[key] + 5.0
            out = _converted_encoders(cfg, changed)[0](mel)[1]
            # The slot is one of 230 keys, so the effect is small, but far above float64 round-off.
            assert (out - base).abs().max() > 1e-5, name
            torch.testing.assert_close(out, reference_audio(changed, mel, cfg)[1], rtol=1e-9, atol=1e-9)


def test_conversion_errors_list_the_keys(cfg):
    official = make_official_imagebind_state_dict(cfg)
    bad = dict(official)
    bad["modality_trunks.audio.blocks.0.attn.extra"] = torch.zeros(3)
    bad["something.else"] = torch.zeros(1)
    del bad["modality_trunks.vision.blocks.1.mlp.fc1.bias"]
    bad["modality_preprocessors.audio.pos_embedding_helper.pos_embed"] = torch.zeros(1, 230, cfg.audio_width)
    with pytest.raises(ConversionError) as info:
        convert_imagebind_state_dict(bad, cfg=cfg, source="bad.pth")
    text = str(info.value)
    assert isinstance(info.value, ValueError) and info.value.report is not None
    assert "bad.pth: FAILED" in text
    for needle in ("modality_trunks.audio.blocks.0.attn.extra", "something.else",
                   "modality_trunks.vision.blocks.1.mlp.fc1.bias",
                   f"modality_preprocessors.audio.pos_embedding_helper.pos_embed: (1, 230, {cfg.audio_width}) "
                   f"-> (1, 229, {cfg.audio_width})"):
        assert needle in text, needle
    report = info.value.report
    assert report.missing == ["modality_trunks.vision.blocks.1.mlp.fc1.bias"]
    assert sorted(report.unexpected) == ["modality_trunks.audio.blocks.0.attn.extra", "something.else"]
    assert len(report.shape_mismatch) == 1


def test_allow_missing_only_tolerates_missing(cfg):
    official = make_official_imagebind_state_dict(cfg)
    del official["modality_heads.audio.2.weight"]
    ours, report = convert_imagebind_state_dict(official, cfg=cfg, allow_missing=True)
    assert report.missing == ["modality_heads.audio.2.weight"] and not report.ok()
    assert "audio.head.weight" not in ours and "audio.head_norm.weight" in ours
    official["foo"] = torch.zeros(1)
    with pytest.raises(ConversionError, match="foo"):
        convert_imagebind_state_dict(official, cfg=cfg, allow_missing=True)


def test_other_modalities_and_unselected_trunk_are_ignored_not_dropped(cfg):
    official = make_official_imagebind_state_dict(cfg, other_modalities=True)
    ours, report = convert_imagebind_state_dict(official, cfg=cfg, vision=False)
    assert report.ok() and all(k.startswith("audio.") for k in ours)
    assert set(ours) == {f"audio.{k}" for k in ImageBindAudioEncoder(cfg).state_dict()}
    ignored = set(report.ignored)
    assert {k for k in official if ".vision." in k} <= ignored
    assert any(".text." in k for k in ignored) and any(".imu." in k for k in ignored)
    assert len(ours) + len(ignored) == len(official)  # every key accounted for
    assert "ignored on purpose" in report.format()


def test_wrong_file_and_wrong_depth_get_hints(cfg):
    vl = {"video_Qformer.bert.embeddings.LayerNorm.weight": torch.ones(768), "llama_proj.weight": torch.zeros(4, 768)}
    with pytest.raises(ConversionError, match="no ImageBind key was found"):
        convert_imagebind_state_dict(vl, cfg=cfg)
    deeper = make_official_imagebind_state_dict(dataclasses.replace(cfg, audio_layers=3), audio=True, vision=False)
    with pytest.raises(ConversionError, match="blocks beyond the config.*audio block 2"):
        convert_imagebind_state_dict(deeper, cfg=cfg, vision=False)


def test_drop_path_only_in_training(cfg):
    noisy_cfg = dataclasses.replace(cfg, audio_drop_path=0.5)
    official = make_official_imagebind_state_dict(cfg, seed=4)
    ours, _ = convert_imagebind_state_dict(official, cfg=cfg, vision=False)
    noisy = _load(ImageBindAudioEncoder(noisy_cfg), ours, "audio.")
    clean = _load(ImageBindAudioEncoder(cfg), ours, "audio.")
    mel = torch.randn(4, *MEL_SHAPE)
    torch.manual_seed(0)
    with torch.no_grad():
        noisy.train()
        first, second = noisy(mel)[1], noisy(mel)[1]
        assert not torch.allclose(first, second)  # stochastic depth is active in training
        noisy.eval()
        a, b = noisy(mel)[1], noisy(mel)[1]
    assert torch.equal(a, b)
    torch.testing.assert_close(a, reference_audio(official, mel, cfg)[1], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(a, clean.eval()(mel)[1])


def test_fabricated_state_dict_is_deterministic(cfg):
    a = make_official_imagebind_state_dict(cfg, seed=7)
    b = make_official_imagebind_state_dict(cfg, seed=7)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert a["modality_postprocessors.audio.1.log_logit_scale"].item() == pytest.approx(math.log(20.0))


@pytest.mark.parametrize("scale, expected_norm", [(5.0, 5.0), (400.0, 100.0)])
def test_logit_scale_comes_from_the_checkpoint_and_is_clipped(cfg, scale, expected_norm):
    official = make_official_imagebind_state_dict(cfg, vision=False)
    official["modality_postprocessors.audio.1.log_logit_scale"] = torch.tensor(math.log(scale))
    ours, _ = convert_imagebind_state_dict(official, cfg=cfg, vision=False)
    audio = _load(ImageBindAudioEncoder(cfg), ours, "audio.").eval()
    with torch.no_grad():
        emb = audio(torch.randn(2, *MEL_SHAPE))[1]
    torch.testing.assert_close(emb.norm(dim=-1), torch.full((2,), expected_norm))


def test_half_precision_keeps_the_logit_scale_exact(cfg):
    audio = ImageBindAudioEncoder(cfg).to(torch.bfloat16).eval()
    assert audio.stem.weight.dtype == torch.bfloat16 and audio.log_logit_scale.dtype == torch.float32
    assert audio.logit_scale.item() == pytest.approx(20.0, rel=1e-6)  # bf16 would give exp(3.0) = 20.09
    with torch.no_grad():
        emb = audio(torch.randn(2, *MEL_SHAPE))[1]
    assert emb.dtype == torch.bfloat16
    torch.testing.assert_close(emb.float().norm(dim=-1), torch.full((2,), 20.0), rtol=5e-3, atol=0)
