"""``convert(hf_blip2=FOLDER)``: the frozen vision side from a Hugging Face BLIP-2 folder.

The folder is written by transformers itself (a tiny ``Blip2ForConditionalGeneration`` with an OPT
language model, at the tiny preset's vision/Q-Former widths), so the key names are the ones
transformers really uses. The converted ``vision_model.*``, ``image_qformer.*`` and
``image_query_tokens`` must equal the folder's tensors bit for bit, and the language model must not
be read: data reads are recorded, and in the sharded layout the language-model shard is not even a
safetensors file, so opening it would fail the conversion.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from convert_fixtures import write_tiny_release
from videollama.convert.build import convert
from videollama.convert.safe_load import CheckpointReadError, SafetensorsStateDict

VISION_SIDE = ("vision_model.", "qformer.", "query_tokens")
OURS_VISION_SIDE = ("vision_model.", "image_qformer.", "image_query_tokens")


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return write_tiny_release(tmp_path_factory)


@pytest.fixture(scope="module")
def hf_model(release):
    """A tiny transformers BLIP-2 (OPT) with the tiny preset's ViT and Q-Former widths; its state dict."""
    from transformers import Blip2Config, Blip2ForConditionalGeneration, OPTConfig

    from videollama.model.videollama import qformer_config, vision_model_config

    cfg = release.config
    text = OPTConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, ffn_dim=32, num_attention_heads=2,
                     word_embed_proj_dim=16, max_position_embeddings=64)
    config = Blip2Config(vision_config=vision_model_config(cfg.vision).to_dict(),
                         qformer_config=qformer_config(cfg.image_qformer).to_dict(),
                         text_config=text.to_dict(), num_query_tokens=cfg.image_qformer.num_queries)
    torch.manual_seed(7)
    model = Blip2ForConditionalGeneration(config)
    with torch.no_grad():  # transformers inits biases/norms to constants: make every tensor distinctive
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    return model


def _read_spy(monkeypatch) -> list[str]:
    """Record every tensor whose data a safetensors source hands out."""
    reads: list[str] = []
    original = SafetensorsStateDict._get

    def spy(self, key):
        reads.append(key)
        return original(self, key)

    monkeypatch.setattr(SafetensorsStateDict, "_get", spy)
    return reads


def _convert(release, folder: Path, out: Path):
    return convert(out, llm_dir=release.llm, vl_ckpt=release.vl, al_ckpt=release.al, hf_blip2=folder,
                   imagebind=release.imagebind, dtype="fp32", config=release.config)


def _load_folder(out: Path) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for file in sorted(out.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            tensors.update({k: f.get_tensor(k) for k in f.keys()})
    return tensors


def _ours(hf_key: str) -> str:
    if hf_key == "query_tokens":
        return "image_query_tokens"
    if hf_key.startswith("qformer."):
        return "image_qformer." + hf_key[len("qformer."):]
    return hf_key


def _hf_report(report, folder: Path):
    (rep,) = [r for r in report.reports if r.source == str(folder)]
    return rep


def test_save_pretrained_folder(release, hf_model, tmp_path, monkeypatch):
    folder = tmp_path / "blip2-tiny"
    hf_model.save_pretrained(str(folder))
    assert (folder / "model.safetensors").is_file()
    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        written = {k: f.get_tensor(k) for k in f.keys()}
    hf_side = {k: v for k, v in written.items() if k.startswith(VISION_SIDE)}
    language = sorted(k for k in written if not k.startswith(VISION_SIDE))
    assert language and all(k.startswith(("language_model.", "language_projection.")) for k in language)
    assert "vision_model.encoder.layers.1.self_attn.qkv.bias" in hf_side  # transformers writes it fused

    reads = _read_spy(monkeypatch)
    report = _convert(release, folder, tmp_path / "model")
    assert report.ok(), report.format()
    out = _load_folder(tmp_path / "model")
    vision_side = {k for k in out if k.startswith(OURS_VISION_SIDE)}
    assert vision_side == {_ours(k) for k in hf_side}  # one to one, nothing else on that side
    for key, value in hf_side.items():
        assert out[_ours(key)].dtype == value.dtype
        assert torch.equal(out[_ours(key)], value), key
    assert torch.equal(out["image_qformer.encoder.layer.0.crossattention.attention.key.weight"],
                       hf_model.qformer.encoder.layer[0].crossattention.attention.key.weight.detach())
    assert torch.equal(out["image_query_tokens"], hf_model.query_tokens.detach())
    assert torch.equal(out["vision_model.post_layernorm.weight"], hf_model.vision_model.post_layernorm.weight.detach())

    # The language model's tensors were listed (not read), and never handed out.
    rep = _hf_report(report, folder)
    assert rep.converted == len(hf_side)
    assert sorted(rep.ignored) == [f"<not read> {k}" for k in language]
    assert any("language_model.*" in note for note in rep.notes)
    folder_reads = [k for k in reads if k in written]
    assert set(folder_reads) >= set(hf_side)
    assert not [k for k in folder_reads if k.startswith(("language_model.", "language_projection."))]


def test_sharded_folder_never_opens_the_language_model_shard(release, hf_model, tmp_path, monkeypatch):
    """Index + shards, separate q/v biases (older layout); the LM shard is garbage and must not be opened."""
    folder = tmp_path / "blip2-sharded"
    folder.mkdir()
    state = {k: v.detach().clone().contiguous() for k, v in hf_model.state_dict().items()}
    vision = {k: v for k, v in state.items() if k.startswith(VISION_SIDE)}
    gen = torch.Generator().manual_seed(3)
    q_v = {}
    for i in range(release.config.vision.num_layers):
        fused = vision.pop(f"vision_model.encoder.layers.{i}.self_attn.qkv.bias")
        q_v[i] = (torch.randn(fused.shape[0] // 3, generator=gen), torch.randn(fused.shape[0] // 3, generator=gen))
        vision[f"vision_model.encoder.layers.{i}.self_attn.q_bias"] = q_v[i][0]
        vision[f"vision_model.encoder.layers.{i}.self_attn.v_bias"] = q_v[i][1]
    language = {k: v for k, v in state.items() if not k.startswith(VISION_SIDE)}
    save_file(vision, str(folder / "model-00001-of-00002.safetensors"))
    lm_shard = folder / "model-00002-of-00002.safetensors"
    lm_shard.write_bytes(b"\x00" * 64)  # would fail if it were opened
    weight_map = {k: "model-00001-of-00002.safetensors" for k in vision}
    weight_map |= {k: "model-00002-of-00002.safetensors" for k in language}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    with pytest.raises(CheckpointReadError):  # the control: opening that shard is an error
        SafetensorsStateDict([lm_shard])

    reads = _read_spy(monkeypatch)
    report = _convert(release, folder, tmp_path / "model")
    assert report.ok(), report.format()
    out = _load_folder(tmp_path / "model")
    for key, value in vision.items():
        if key.endswith(("q_bias", "v_bias")):
            continue
        assert torch.equal(out[_ours(key)], value), key
    for i, (q, v) in q_v.items():
        assert torch.equal(out[f"vision_model.encoder.layers.{i}.self_attn.qkv.bias"], torch.cat([q, torch.zeros_like(q), v]))
    rep = _hf_report(report, folder)
    assert sorted(rep.ignored) == [f"<not read> {k}" for k in sorted(language)]
    assert not [k for k in reads if k in language]
