"""``convert`` on tiny files in the official layouts: outputs equal a hand-assembled model; failures are clear.

The reference model is built directly from the same official state dicts by assigning every tensor by
hand below (an independent re-statement of the key tables), so a wrong table entry shows up as
different outputs, not only as a different key list.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re

import pytest
import torch
from safetensors import safe_open

from convert_fixtures import release_args, write_llm_folder, write_release
from videollama.convert.build import convert
from videollama.convert.official import make_official_checkpoint
from videollama.convert.report import ConversionError
from videollama.convert.safe_load import CheckpointReadError, UnsafeCheckpointError, WrongCheckpointError, load_pth
from videollama.model import VideoLlama
from videollama.tokenizer import train_tiny_tokenizer

torch.manual_seed(0)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("spm")
    train_tiny_tokenizer(path)
    return path


@pytest.fixture(scope="module")
def release(tmp_path_factory, tokenizer_dir):
    from transformers import AutoTokenizer

    vocab = AutoTokenizer.from_pretrained(str(tokenizer_dir)).vocab_size
    return write_release(tmp_path_factory.mktemp("release"), tokenizer_dir, vocab_size=vocab)


@pytest.fixture(scope="module")
def converted(release, tmp_path_factory):
    out = tmp_path_factory.mktemp("converted") / "model"
    report = convert(out, **release_args(release), dtype="fp32", config=release.config, imagebind_vision=True)
    return out, report


# ------------------------------------------------------------------------------ the reference model
def _set(param: torch.Tensor, value: torch.Tensor) -> None:
    with torch.no_grad():
        assert param.shape == value.shape, (param.shape, value.shape)
        param.copy_(value)


def _set_qformer(qformer, state: dict, prefix: str, cross_every: int) -> None:
    _set(qformer.layernorm.weight, state[f"{prefix}.bert.embeddings.LayerNorm.weight"])
    _set(qformer.layernorm.bias, state[f"{prefix}.bert.embeddings.LayerNorm.bias"])
    for i, layer in enumerate(qformer.encoder.layer):
        src = f"{prefix}.bert.encoder.layer.{i}."
        blocks = [("attention", layer.attention)] + ([("crossattention", layer.crossattention)] if i % cross_every == 0 else [])
        for name, block in blocks:
            for proj in ("query", "key", "value"):
                _set(getattr(block.attention, proj).weight, state[f"{src}{name}.self.{proj}.weight"])
                _set(getattr(block.attention, proj).bias, state[f"{src}{name}.self.{proj}.bias"])
            _set(block.output.dense.weight, state[f"{src}{name}.output.dense.weight"])
            _set(block.output.dense.bias, state[f"{src}{name}.output.dense.bias"])
            _set(block.output.LayerNorm.weight, state[f"{src}{name}.output.LayerNorm.weight"])
            _set(block.output.LayerNorm.bias, state[f"{src}{name}.output.LayerNorm.bias"])
        assert hasattr(layer, "crossattention") == (i % cross_every == 0)
        _set(layer.intermediate_query.dense.weight, state[f"{src}intermediate_query.dense.weight"])
        _set(layer.intermediate_query.dense.bias, state[f"{src}intermediate_query.dense.bias"])
        _set(layer.output_query.dense.weight, state[f"{src}output_query.dense.weight"])
        _set(layer.output_query.dense.bias, state[f"{src}output_query.dense.bias"])
        _set(layer.output_query.LayerNorm.weight, state[f"{src}output_query.LayerNorm.weight"])
        _set(layer.output_query.LayerNorm.bias, state[f"{src}output_query.LayerNorm.bias"])


def _set_imagebind(encoder, state: dict, modality: str) -> None:
    pre, trunk, head = (f"modality_{g}.{modality}." for g in ("preprocessors", "trunks", "heads"))
    stem = "rgbt_stem.proj.weight" if modality == "audio" else "rgbt_stem.proj.1.weight"
    _set(encoder.stem.weight, state[pre + stem])
    _set(encoder.cls_token, state[pre + "cls_token"])
    _set(encoder.pos_embed, state[pre + "pos_embedding_helper.pos_embed"])
    if modality == "audio":
        _set(encoder.stem_norm.weight, state[pre + "rgbt_stem.norm_layer.weight"])
        _set(encoder.stem_norm.bias, state[pre + "rgbt_stem.norm_layer.bias"])
        _set(encoder.log_logit_scale, state["modality_postprocessors.audio.1.log_logit_scale"])
    else:
        _set(encoder.pre_norm.weight, state[trunk + "pre_transformer_layer.0.weight"])
        _set(encoder.pre_norm.bias, state[trunk + "pre_transformer_layer.0.bias"])
    for i, block in enumerate(encoder.blocks):
        b = f"{trunk}blocks.{i}."
        _set(block.norm1.weight, state[b + "norm_1.weight"]), _set(block.norm1.bias, state[b + "norm_1.bias"])
        _set(block.norm2.weight, state[b + "norm_2.weight"]), _set(block.norm2.bias, state[b + "norm_2.bias"])
        _set(block.attn.in_proj_weight, state[b + "attn.in_proj_weight"])
        _set(block.attn.in_proj_bias, state[b + "attn.in_proj_bias"])
        _set(block.attn.out_proj.weight, state[b + "attn.out_proj.weight"])
        _set(block.attn.out_proj.bias, state[b + "attn.out_proj.bias"])
        if modality == "audio":
            _set(block.attn.bias_k, state[b + "attn.bias_k"]), _set(block.attn.bias_v, state[b + "attn.bias_v"])
        for fc in ("fc1", "fc2"):
            _set(getattr(block.mlp, fc).weight, state[f"{b}mlp.{fc}.weight"])
            _set(getattr(block.mlp, fc).bias, state[f"{b}mlp.{fc}.bias"])
    _set(encoder.head_norm.weight, state[head + "0.weight"])
    _set(encoder.head_norm.bias, state[head + "0.bias"])
    _set(encoder.head.weight, state[head + "2.weight"])


def hand_built(release, config) -> VideoLlama:
    """Our model with every tensor assigned by hand from the official state dicts."""
    s = release.states
    model = VideoLlama(config).eval()
    model.language_model.load_state_dict(s["llm"])
    vision, eva = model.vision_model, s["eva"]
    _set(vision.embeddings.class_embedding, eva["cls_token"])
    _set(vision.embeddings.position_embedding, eva["pos_embed"])
    _set(vision.embeddings.patch_embedding.weight, eva["patch_embed.proj.weight"])
    _set(vision.embeddings.patch_embedding.bias, eva["patch_embed.proj.bias"])
    for i, layer in enumerate(vision.encoder.layers):
        b = f"blocks.{i}."
        _set(layer.layer_norm1.weight, eva[b + "norm1.weight"]), _set(layer.layer_norm1.bias, eva[b + "norm1.bias"])
        _set(layer.layer_norm2.weight, eva[b + "norm2.weight"]), _set(layer.layer_norm2.bias, eva[b + "norm2.bias"])
        _set(layer.self_attn.qkv.weight, eva[b + "attn.qkv.weight"])
        q, v = eva[b + "attn.q_bias"], eva[b + "attn.v_bias"]
        _set(layer.self_attn.qkv.bias, torch.cat([q, torch.zeros_like(q), v]))
        _set(layer.self_attn.projection.weight, eva[b + "attn.proj.weight"])
        _set(layer.self_attn.projection.bias, eva[b + "attn.proj.bias"])
        for fc in ("fc1", "fc2"):
            _set(getattr(layer.mlp, fc).weight, eva[f"{b}mlp.{fc}.weight"])
            _set(getattr(layer.mlp, fc).bias, eva[f"{b}mlp.{fc}.bias"])
    blip2 = s["blip2"]
    _set(vision.post_layernorm.weight, blip2["ln_vision.weight"])
    _set(vision.post_layernorm.bias, blip2["ln_vision.bias"])
    _set(model.image_query_tokens, blip2["query_tokens"])
    _set_qformer(model.image_qformer, blip2, "Qformer", config.image_qformer.cross_attention_every)
    vl, al = s["vl"], s["al"]
    _set(model.video_query_tokens, vl["video_query_tokens"])
    _set(model.frame_position_embedding.weight, vl["video_frame_position_embedding.weight"])
    _set_qformer(model.video_qformer, vl, "video_Qformer", config.video_qformer.cross_attention_every)
    _set(model.video_projection.weight, vl["llama_proj.weight"]), _set(model.video_projection.bias, vl["llama_proj.bias"])
    _set(model.audio_query_tokens, al["audio_query_tokens"])
    _set(model.audio_position_embedding.weight, al["audio_position_embedding.weight"])
    _set_qformer(model.audio_qformer, al, "audio_Qformer", config.audio_qformer.cross_attention_every)
    _set(model.audio_projection.weight, al["audio_llama_proj.weight"])
    _set(model.audio_projection.bias, al["audio_llama_proj.bias"])
    _set_imagebind(model.audio_encoder, s["imagebind"], "audio")
    _set_imagebind(model.imagebind_vision, s["imagebind"], "vision")
    return model


# ------------------------------------------------------------------------------ parity
@pytest.mark.slow
def test_converted_model_equals_hand_built_model(release, converted):
    out, report = converted
    assert report.ok(), report.format()
    model = VideoLlama.from_pretrained(out)
    reference = hand_built(release, model.config)
    torch.manual_seed(1)
    frames = torch.randn(2, 3, 3, 224, 224)
    mel = torch.randn(2, 8, 1, 128, 204)
    with torch.no_grad():
        video, ref_video = model.encode_video(frames), reference.encode_video(frames)
        audio, ref_audio = model.encode_audio(mel), reference.encode_audio(mel)
        torch.testing.assert_close(video, ref_video, rtol=0, atol=0)
        torch.testing.assert_close(audio, ref_audio, rtol=0, atol=0)
        torch.testing.assert_close(model.encode_visual_for_audio_branch(frames),
                                   reference.encode_visual_for_audio_branch(frames), rtol=0, atol=0)
        cfg = model.config
        ids = torch.tensor([[1, 7] + [cfg.audio_token_id] * 8 + [9] + [cfg.image_token_id] * 32 + [3, 4]] * 2)
        logits = model(ids, pixel_values=frames, audio_values=mel).logits
        ref_logits = reference(ids, pixel_values=frames, audio_values=mel).logits
    torch.testing.assert_close(logits, ref_logits, rtol=0, atol=0)
    assert logits.abs().sum() > 0 and not torch.equal(video[0], video[1])  # a real signal, not zeros


def test_folder_is_self_contained(release, converted):
    from transformers import AutoTokenizer

    out, report = converted
    config = json.loads((out / "config.json").read_text())["videollama"]
    vocab = config["llm"]["vocab_size"]
    assert vocab == release.config.llm["vocab_size"]  # the embedding is not resized
    assert (config["image_token_id"], config["audio_token_id"]) == (vocab, vocab + 1)  # like 32000 / 32001
    assert config["template"] == "llama_2" and config["with_audio"]
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    assert tokenizer.convert_tokens_to_ids(["<ImageHere>", "<AudioHere>"]) == [vocab, vocab + 1]
    assert sorted(p.suffix for p in out.iterdir() if p.suffix in (".pth", ".bin", ".pt")) == []
    card = (out / "README.md").read_text()
    for path in (release.vl, release.al, release.eva, release.blip2, release.imagebind):
        assert path.name in card and hashlib.sha256(path.read_bytes()).hexdigest() in card
    # Everything in the file came from a key table: the model's state dict, one to one.
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert keys == set(VideoLlama.from_pretrained(out).state_dict())
    ignored = {r.source: r.ignored for r in report.reports}
    assert "<file entry> optimizer" in ignored[str(release.vl)]
    assert "llama_model.model.layers.0.self_attn.rotary_emb.inv_freq" in ignored[str(release.vl)]
    assert "blocks.2.attn.qkv.weight" in ignored[str(release.eva)]  # the 40th block of 40 (here 3rd of 3)
    assert "t5_proj.weight" in ignored[str(release.blip2)]


def test_bf16_sharded_vl_only(release, tmp_path):
    args = release_args(release)
    del args["al_ckpt"]
    report = convert(tmp_path / "vl", **args, dtype="bf16", branches="vl", config=release.config,
                     max_shard_size="60KB", hash_sources=False)
    assert any("--imagebind" in note and "not used" in note for note in report.notes)
    assert len(report.written.files) > 1 and (tmp_path / "vl" / "model.safetensors.index.json").is_file()
    model = VideoLlama.from_pretrained(tmp_path / "vl")
    assert not model.config.with_audio and not hasattr(model, "audio_encoder")
    with safe_open(str(report.written.files[0]), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} <= {"BF16"}
    expected = release.states["vl"]["llama_proj.weight"].to(torch.bfloat16)
    assert torch.equal(model.video_projection.weight.to(torch.bfloat16), expected)


def test_audio_logit_scale_stays_float32(converted, release, tmp_path):
    report = convert(tmp_path / "half", **release_args(release), dtype="fp16", config=release.config, hash_sources=False)
    with safe_open(str(report.written.files[0]), "pt") as f:
        assert f.get_slice("audio_encoder.log_logit_scale").get_dtype() == "F32"
        assert f.get_slice("audio_projection.weight").get_dtype() == "F16"


def test_llm_from_bin_shards_with_rotary_buffers(release, tokenizer_dir, tmp_path):
    llm = tmp_path / "vicuna-tiny"
    state = write_llm_folder(llm, tokenizer_dir, release.config.llm, seed=0, bin_format=True)
    assert not (llm / "model.safetensors").exists()
    args = release_args(release) | {"llm_dir": llm}
    report = convert(tmp_path / "out", **args, dtype="fp32", config=release.config, hash_sources=False)
    llm_report = next(r for r in report.reports if r.source == str(llm))
    assert any(k.endswith("rotary_emb.inv_freq") for k in llm_report.ignored)
    model = VideoLlama.from_pretrained(tmp_path / "out")
    assert torch.equal(model.language_model.model.embed_tokens.weight, state["model.embed_tokens.weight"])


# ------------------------------------------------------------------------------ failures
def _with_vl_state(release, tmp_path, edit) -> dict:
    state = {k: v.clone() for k, v in release.states["vl"].items()}
    edit(state)
    path = tmp_path / "VL_edited.pth"
    torch.save(make_official_checkpoint(state), path)
    return release_args(release) | {"vl_ckpt": path}


def test_unknown_key_fails_with_the_report_even_with_allow_missing(release, tmp_path):
    args = _with_vl_state(release, tmp_path, lambda s: s.update({"video_Qformer.bert.encoder.layer.0.extra.weight": torch.ones(2)}))
    for allow in (False, True):
        with pytest.raises(ConversionError) as err:
            convert(tmp_path / "out", **args, config=release.config, allow_missing=allow, hash_sources=False)
        assert "unexpected (in the source, in no key table): 1" in str(err.value)
        assert "video_Qformer.bert.encoder.layer.0.extra.weight" in str(err.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_missing_key_fails_then_allow_missing_fills_and_says_so(release, tmp_path):
    args = _with_vl_state(release, tmp_path, lambda s: s.pop("llama_proj.bias"))
    with pytest.raises(ConversionError, match="missing") as err:
        convert(tmp_path / "out", **args, config=release.config, hash_sources=False)
    assert "llama_proj.bias" in str(err.value)
    report = convert(tmp_path / "out", **args, config=release.config, allow_missing=True, hash_sources=False)
    assert report.filled == ["video_projection.bias"] and not report.ok()
    assert "llama_proj.bias" in report.format() and "fresh random init" in report.format()
    assert "video_projection" in (tmp_path / "out" / "README.md").read_text().split("NOT from a checkpoint")[1]
    model = VideoLlama.from_pretrained(tmp_path / "out")
    assert torch.isfinite(model.video_projection.bias).all()


def test_projection_for_another_llm_size_is_a_shape_error(release, tmp_path):
    def widen(state):
        state["llama_proj.weight"] = torch.zeros(96, state["llama_proj.weight"].shape[1])
        state["llama_proj.bias"] = torch.zeros(96)

    args = _with_vl_state(release, tmp_path, widen)
    with pytest.raises(ConversionError, match=r"llama_proj.weight: \(96, 32\) -> \(64, 32\)") as err:
        convert(tmp_path / "out", **args, config=release.config, allow_missing=True, hash_sources=False)
    assert "LLM of width 96" in str(err.value)


@pytest.mark.parametrize("dtype", [torch.bool, torch.int64])
def test_a_float_weight_given_as_bool_or_integers_is_refused(release, tmp_path, dtype):
    def edit(state):
        state["video_query_tokens"] = (state["video_query_tokens"] > 0).to(dtype)  # right shape, wrong kind

    args = _with_vl_state(release, tmp_path, edit)
    with pytest.raises(ValueError) as err:
        convert(tmp_path / "out", **args, config=release.config, hash_sources=False)
    message = str(err.value)
    assert message.startswith("video_query_tokens: ") and "\n" not in message
    kind = "bool" if dtype is torch.bool else "integer"
    assert f"{kind} values ({dtype}) in {args['vl_ckpt'].name}:video_query_tokens, the model needs floating-point " \
           "(torch.float32)" in message, message
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("dtype, value, says", [
    ("bf16", 1e300, "values up to 1e+300 in {src} overflow to inf in torch.bfloat16 (largest finite 3.39e+38)"),
    ("fp16", 1e5, "values up to 1e+05 in {src} overflow to inf in torch.float16 (largest finite 6.55e+04)"),
    ("fp32", float("nan"), "1 NaN and 0 infinite values in {src}"),
    ("bf16", float("-inf"), "0 NaN and 1 infinite values in {src}"),
])
def test_non_finite_weights_are_refused_after_the_cast(release, tmp_path, dtype, value, says):
    def edit(state):
        tokens = state["video_query_tokens"].double()  # float64 holds 1e300; bf16 and fp16 do not
        tokens[0, 1, 2] = value
        state["video_query_tokens"] = tokens

    args = _with_vl_state(release, tmp_path, edit)
    with pytest.raises(ValueError) as err:
        convert(tmp_path / "out", **args, dtype=dtype, config=release.config, hash_sources=False)
    message = str(err.value)
    assert message.startswith("video_query_tokens: ") and "\n" not in message
    assert says.format(src=f"{args['vl_ckpt'].name}:video_query_tokens") in message, message
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.partial-*"))


def test_missing_inputs_are_named(release, tmp_path):
    args = release_args(release)
    del args["imagebind"]
    with pytest.raises(ValueError, match=r"--imagebind"):
        convert(tmp_path / "out", **args, config=release.config)


@pytest.mark.parametrize("slot, given, says", [
    ("vl_ckpt", "al", "looks like a Video-LLaMA audio-language (AL) checkpoint; pass it as --al-ckpt"),
    ("al_ckpt", "vl", "looks like a Video-LLaMA vision-language (VL) checkpoint; pass it as --vl-ckpt"),
    ("eva_vit", "blip2", "looks like a LAVIS BLIP-2 checkpoint (blip2_pretrained_*.pth); pass it as --blip2"),
    ("imagebind", "eva", "pass it as --eva-vit"),
])
def test_checkpoint_in_the_wrong_slot(release, tmp_path, slot, given, says):
    args = release_args(release) | {slot: getattr(release, given)}
    with pytest.raises(WrongCheckpointError, match=re.escape(says)):
        convert(tmp_path / "out", **args, config=release.config)


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("layout", ["torch.save", "raw pickle"])
def test_malicious_pickle_is_refused_without_running(release, tmp_path, layout):
    marker = tmp_path / "PWNED"
    evil = tmp_path / "VL_LLaMA_2_7B_Finetuned.pth"
    payload = {"model": dict(release.states["vl"]), "config": _RunsCode(marker)}
    if layout == "torch.save":
        torch.save(payload, evil)
    else:
        evil.write_bytes(pickle.dumps(payload))
    with pytest.raises(UnsafeCheckpointError, match="refused") as err:
        convert(tmp_path / "out", **(release_args(release) | {"vl_ckpt": evil}), config=release.config)
    assert str(evil) in str(err.value) and "\n" not in str(err.value)
    if layout == "torch.save":
        assert "posix.system" in str(err.value) or "os.system" in str(err.value)
    assert not marker.exists()


def test_truncated_and_non_checkpoint_files(release, tmp_path):
    data = release.vl.read_bytes()
    cut = tmp_path / "VL_cut.pth"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointReadError, match=r"VL_cut\.pth: truncated or corrupt"):
        convert(tmp_path / "out", **(release_args(release) | {"vl_ckpt": cut}), config=release.config)
    junk = tmp_path / "notes.pth"
    junk.write_text("not a checkpoint\n")
    with pytest.raises(CheckpointReadError, match=r"notes\.pth"):
        load_pth(junk)
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointReadError, match="empty file"):
        load_pth(empty)


def test_existing_output_is_not_overwritten(release, converted, tmp_path):
    out, _ = converted
    with pytest.raises(FileExistsError, match="--overwrite"):
        convert(out, **release_args(release), config=release.config)


def test_template_from_release_names(release):
    from videollama.convert.build import choose_template

    assert choose_template(None, "x/finetune-vicuna7b-v2.pth", None, {})[0] == "vicuna_v0"
    assert choose_template(None, None, "AL_LLaMA_2_13B_Pretrained.pth", {})[0] == "llama_2"
    assert choose_template(None, "mine.pth", None, {"max_position_embeddings": 2048})[0] == "vicuna_v0"
    assert choose_template("vicuna_v0", release.vl, None, {})[0] == "vicuna_v0"

