"""The SynthAV research tools of ``scripts/synthav/`` (outside the installed package) on the quick chain:
the probe of a stage 0, the spread of a trained model's representations, the extra clip-reading phase."""

from __future__ import annotations

import json
import random
from collections import Counter

import numpy as np
import pytest
import torch

from videollama.synthav.stage0 import PICTURE_PREAMBLES, load_bridge, picture_chat


@pytest.mark.slow
def test_clip_reading_trains_the_llm_alone_on_frozen_pictures(quick_chain):
    """The extra stage-0 phase: chats filled from pictures computed once (4 frames in order for the video slot,
    temporal questions at ``temporal_share``); only the LLM changes, and it is frozen again afterwards."""
    from scripts.synthav.clip_reading import ClipChats, ClipReadingSettings, clip_pictures, train_clip_reading
    from synthav_fixtures import load_quick_stage0
    from videollama.synthav.stage0 import VIDEO_FRAMES, frame_queries, normalize_frames

    out, _ = quick_chain
    data, cache, tokenizer, model = load_quick_stage0(out, 5)
    bridge = load_bridge(out / "stage0", model)
    pictures = clip_pictures(model, bridge, cache, chunk=2)
    q, d = model.config.image_qformer.num_queries, model.config.llm_hidden_size
    assert pictures.shape == (5, 8, q, d)
    with torch.no_grad():
        want = bridge(frame_queries(model, normalize_frames(cache.frames[3])))  # (8, Q, D)
    assert torch.allclose(pictures[3], want, atol=1e-5)

    temporal = ClipChats(tokenizer, pictures, cache, data.world, 1.0, random.Random(0), np.random.default_rng(0))
    words = ("move", "first", "after")
    for _ in range(10):
        pieces, answer_len, slots = temporal.draw()
        question = tokenizer.decode(pieces[-1][:-answer_len])
        assert len(slots) == 1 and any(w in question for w in words), question
        clip = slots[0].reshape(len(VIDEO_FRAMES), q, d)
        assert any(torch.equal(clip, pictures[c, list(VIDEO_FRAMES)]) for c in range(5))
    mixed = ClipChats(tokenizer, pictures, cache, data.world, 0.0, random.Random(0), np.random.default_rng(0))
    sizes = {tuple(s.shape[0] for s in mixed.draw()[2]) for _ in range(60)}
    assert (q,) in sizes and (len(VIDEO_FRAMES) * q,) in sizes  # stills and clips, as the generative phases draw

    before = {k: v.clone() for k, v in model.state_dict().items()}
    loss = train_clip_reading(model, tokenizer, bridge, cache, data.world, ClipReadingSettings(steps=2, batch=3))
    assert np.isfinite(loss)
    after = model.state_dict()
    changed = {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"language_model"}
    assert not any(p.requires_grad for p in model.language_model.parameters()) and not model.language_model.training


@pytest.mark.slow
def test_clip_reading_script_writes_a_new_stage0_with_only_the_llm_changed(quick_chain, tmp_path):
    from safetensors.torch import load_file

    from scripts.synthav.clip_reading import ClipReadingSettings, run_clip_reading

    out, _ = quick_chain
    new = tmp_path / "stage0"
    loss = run_clip_reading(out / "stage0", out / "data", new, ClipReadingSettings(steps=1, batch=2, frame_clips=3))
    assert np.isfinite(loss) and json.loads((new / "clip_reading.json").read_text())["settings"]["steps"] == 1
    before, after = (load_file(str(d / "model" / "model.safetensors")) for d in (out / "stage0", new))
    assert before.keys() == after.keys()
    changed = {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"language_model"}
    assert (new / "llama_proj.safetensors").read_bytes() == (out / "stage0" / "llama_proj.safetensors").read_bytes()


def test_linear_probe_reads_separable_labels_and_not_noise():
    from scripts.synthav.probe import linear_probe

    g = torch.Generator().manual_seed(0)
    labels = [["red", "blue", "green"][i % 3] for i in range(120)]
    signal = torch.nn.functional.one_hot(torch.tensor([i % 3 for i in range(120)]), 3).float()
    separable = torch.cat([signal * 3, torch.randn(120, 5, generator=g)], 1)
    assert linear_probe(separable, labels)["accuracy"] == 1.0
    noise = linear_probe(torch.randn(120, 8, generator=g), labels)
    assert noise["accuracy"] < 0.7 and 0.3 <= noise["majority"] <= 0.45


@pytest.mark.slow
def test_probe_cli_on_the_quick_stage0(quick_chain, tmp_path, capsys):
    from scripts.synthav.probe import main

    out, _ = quick_chain
    main(["--stage0", str(out / "stage0"), "--data", str(out / "data"), "--clips", "12",
          "--out", str(tmp_path / "probe.json")])
    result = json.loads((tmp_path / "probe.json").read_text())
    assert set(result["probes"]) == {"image_qformer", "imagebind_vision"}
    assert set(result["probes"]["image_qformer"]) == {"colour", "shape", "size", "column"}
    assert {"colour", "shape", "size", "position", "other"} <= set(result["caption_loss"]["picture"])
    assert all(v > 0 for v in result["caption_loss"]["zero"].values())
    qa = result["picture_questions"]
    assert set(qa) == {"picture", "zero", "text", "chance"}
    assert set(qa["picture"]) == set(qa["text"]) == set(qa["chance"]) <= {"colour", "shape", "count", "size"}
    assert all(0 <= v <= 1 for setting in qa.values() for v in setting.values())
    assert "binding" in result  # the quick world may have too few paired windows for the numbers
    media = result["media_questions"]
    assert set(media) == {"picture", "reversed", "zero", "chance", "questions"}
    assert set(media["chance"]) == set(media["questions"]) <= {"temporal", "audio", "audio_visual"}
    assert all(0 <= v <= 1 for setting in ("picture", "reversed", "zero") for v in media[setting].values())
    printed = capsys.readouterr().out
    assert "caption loss by token kind" in printed and "static questions about one frame" in printed
    assert "description written out" in printed and "video frames reversed" in printed


@pytest.mark.slow
def test_picture_questions_put_the_written_description_in_the_slot(quick_chain, monkeypatch):
    """The probe's "text" setting fills the picture's slot with the frame description's token embeddings."""
    from transformers import AutoTokenizer

    from scripts.synthav import probe as probe_module
    from videollama.model import VideoLlama
    from videollama.synthav.stage0 import WorldData, decode_media, frame_description

    out, _ = quick_chain
    data = WorldData.load(out / "data")
    tokenizer = AutoTokenizer.from_pretrained(out / "stage0" / "model")
    model = VideoLlama.from_pretrained(out / "stage0" / "model").eval()
    bridge = load_bridge(out / "stage0", model)
    embed = model.language_model.get_input_embeddings()
    calls = []
    real = probe_module.greedy_answer
    monkeypatch.setattr(probe_module, "greedy_answer",
                        lambda llm, emb, parts, pictures, eos: calls.append(pictures) or real(llm, emb, parts, pictures, eos))
    result = probe_module.picture_questions(model, tokenizer, bridge, data, clips=4)
    assert calls and len(calls) % 3 == 0 and set(result) == {"picture", "zero", "text", "chance"}
    cache = decode_media(probe_module._held_out(data, 4), 4, 112, with_audio=False)
    descriptions = {frame_description(scene, frame, data.world) for scene, index in zip(cache.scenes, cache.frame_index)
                    for frame in index}
    written = [embed(torch.tensor(tokenizer(d, add_special_tokens=False)["input_ids"])) for d in descriptions]
    for picture, zero, text in zip(calls[0::3], calls[1::3], calls[2::3]):
        assert picture[0][0].shape == (model.config.image_qformer.num_queries, model.config.llm_hidden_size)
        assert not zero[0][0].any()
        assert any(w.shape == text[0][0].shape and torch.equal(w, text[0][0]) for w in written)


@pytest.mark.slow
def test_media_questions_fill_each_chat_form_slots(quick_chain, monkeypatch):
    """Temporal questions get the 4 video frames in order (and reversed), audio questions the sound frame,
    audio-visual ones both, as stage 0's chat forms place them; the zero setting zeroes every slot."""
    from transformers import AutoTokenizer

    from scripts.synthav import probe as probe_module
    from videollama.model import VideoLlama
    from videollama.synthav.stage0 import VIDEO_FRAMES, WorldData, decode_media, frame_queries, normalize_frames

    out, _ = quick_chain
    data = WorldData.load(out / "data")
    tokenizer = AutoTokenizer.from_pretrained(out / "stage0" / "model")
    model = VideoLlama.from_pretrained(out / "stage0" / "model").eval()
    bridge = load_bridge(out / "stage0", model)
    # every held-out clip's frame 1 "shows exactly what is heard", so all three families are asked
    monkeypatch.setattr(probe_module, "sound_frames", lambda cache: [(c, 1) for c in range(cache.frames.shape[0])])
    calls = []
    real = probe_module.greedy_answer
    monkeypatch.setattr(probe_module, "greedy_answer", lambda llm, emb, parts, pictures, eos: calls.append(
        (tokenizer.decode(parts[0][0][-1]), pictures[0])) or real(llm, emb, parts, pictures, eos))
    result = probe_module.media_questions(model, tokenizer, bridge, data, clips=4)
    assert calls and len(calls) % 3 == 0
    assert sum(result["questions"].values()) > 0
    cache = decode_media(probe_module._held_out(data, 4), 4, 112, with_audio=False)
    q = model.config.image_qformer.num_queries
    with torch.no_grad():
        firsts = {c: bridge(frame_queries(model, normalize_frames(cache.frames[c])))[list(VIDEO_FRAMES)] for c in range(4)}
    seen_slots = set()
    for (_, picture), (_, reversed_), (_, zero) in zip(calls[0::3], calls[1::3], calls[2::3]):
        seen_slots.add(len(picture))
        video = picture[-1]
        if video.shape[0] == len(VIDEO_FRAMES) * q:  # a video slot: 4 frames in order, then reversed
            frames = video.reshape(len(VIDEO_FRAMES), q, -1)
            assert any(torch.allclose(frames, f, atol=1e-5) for f in firsts.values())
            assert torch.equal(reversed_[-1].reshape(len(VIDEO_FRAMES), q, -1), frames.flip(0))
        else:  # the audio slot alone: one frame
            assert video.shape[0] == q and len(picture) == 1
        assert all(not slot.any() for slot in zero) and len(zero) == len(picture)
    assert seen_slots <= {1, 2}


@pytest.mark.slow
def test_binding_reads_audio_that_is_its_frames_embedding_perfectly(quick_chain, monkeypatch):
    """With an audio encoder that returns exactly its paired frame's vision embedding (at ImageBind's audio norm
    20), the vision-fitted read-out scores the same on audio as on the paired frames, and every audio window's
    nearest frame is its own (cosine 1). The vision encoder is a fixed random projection of the pixels, so distinct
    frames have distinct embeddings (the quick chain's barely trained encoder maps some frames almost onto each
    other, and a near-tie would pick another frame)."""
    from scripts.synthav import probe as probe_module
    from videollama.model import VideoLlama
    from videollama.synthav.stage0 import WorldData, normalize_frames, audio_image_pairs

    out, _ = quick_chain
    data = WorldData.load(out / "data")
    model = VideoLlama.from_pretrained(out / "stage0" / "model").eval()
    real_decode = probe_module.decode_media
    table = {}

    class PixelProjection(torch.nn.Module):
        def __init__(self, pixels: int, dim: int = 128):
            super().__init__()
            self.register_buffer("weight", torch.randn(pixels, dim, generator=torch.Generator().manual_seed(0)))

        def forward(self, frames):  # (B, 3, S, S) -> (B, dim)
            return frames.flatten(1) @ self.weight

    size = model.config.vision.image_size
    monkeypatch.setattr(model, "imagebind_vision", PixelProjection(3 * size * size))

    def decode_with_indexed_audio(*args, **kwargs):
        cache = real_decode(*args, **kwargs)
        with torch.no_grad():
            table["vision"] = model.imagebind_vision(normalize_frames(cache.frames.flatten(0, 1)))  # (N*8, E)
        cache.audio = torch.zeros_like(cache.audio)
        for c, k, f in audio_image_pairs(cache, data.world):
            cache.audio[c, k] = c * cache.frames.shape[1] + f  # the window "sounds like" frame f of clip c
        return cache

    class FrameAudio(torch.nn.Module):
        def forward(self, mel):
            index = mel[:, 0, 0, 0].long()
            return None, torch.nn.functional.normalize(table["vision"][index], dim=-1) * 20

    monkeypatch.setattr(probe_module, "decode_media", decode_with_indexed_audio)
    monkeypatch.setattr(model, "audio_encoder", FrameAudio())
    result = probe_module.binding(model, data, clips=16)
    assert result["pairs"] >= 2, result
    assert result["shapes_heard_from_audio"] == result["shapes_heard_from_paired_frames"]
    assert result["cosine"]["own_frame"] == pytest.approx(1.0, abs=1e-3)
    assert result["nearest_frame_same_sources"]["rate"] == 1.0
    assert 0 < result["nearest_frame_same_sources"]["chance"] <= 1


def test_greedy_answer_matches_generate_on_spliced_pictures(tiny_model, tiny_tokenizer):
    """The probe's greedy loop over padded picture chats picks the tokens HF ``generate`` picks, row by row."""
    from scripts.synthav.probe import greedy_answer

    llm = tiny_model.language_model.eval()
    embed = llm.get_input_embeddings()
    questions = [("What colour is the circle?", "red"), ("How many objects are there?", "two")]
    parts = [picture_chat(tiny_tokenizer, "", PICTURE_PREAMBLES[i], q, a) for i, (q, a) in enumerate(questions)]
    pictures = torch.randn(2, 4, llm.config.hidden_size, generator=torch.Generator().manual_seed(0))
    eos = tiny_tokenizer.eos_token_id
    got = greedy_answer(llm, embed, parts, [[p] for p in pictures], eos, max_tokens=3)
    for i, ((before, after), n) in enumerate(parts):
        with torch.no_grad():
            prompt = torch.cat([embed(torch.tensor(before)), pictures[i], embed(torch.tensor(after[:-n]))])[None]
            want = llm.generate(inputs_embeds=prompt, attention_mask=torch.ones(prompt.shape[:2], dtype=torch.long),
                                max_new_tokens=3, do_sample=False, eos_token_id=eos, pad_token_id=0)[0].tolist()
        assert got[i] == [t for t in want if t != eos][:3]  # generate returns only the new tokens here
    assert got[0] != got[1]


def test_relative_spread_is_zero_for_constant_and_near_one_for_random_rows():
    from scripts.synthav.spread import relative_spread

    g = torch.Generator().manual_seed(0)
    assert relative_spread(torch.ones(16, 4, 8)) == 0.0
    assert 0.9 < relative_spread(torch.randn(256, 512, generator=g)) < 1.1
    assert relative_spread(torch.ones(16, 64) + 0.01 * torch.randn(16, 64, generator=g)) < 0.02


@pytest.mark.slow
def test_spread_cli_on_the_quick_model(quick_chain, capsys):
    from scripts.synthav.spread import main

    out, _ = quick_chain
    main(["--model", str(out / "model"), "--data", str(out / "data"), "--clips", "4"])
    table = capsys.readouterr().out
    for name in ("frame_queries", "video_tokens", "audio_embeddings", "audio_tokens", "vision_embeddings",
                 "audio_tokens_from_frames"):
        assert f"| {name} |" in table


@pytest.mark.slow
def test_recipes_compares_runs_into_tables_claims_and_a_plot(quick_chain, tmp_path, capsys):
    from scripts.synthav.recipes import main
    from videollama.synthav.evaluate import claims

    out, _ = quick_chain
    assert main(["--recipe", "mixed", str(out), "--out", str(tmp_path)]) == 0
    mixed = json.loads((tmp_path / "recipes.json").read_text())["mixed"]
    summary, gap = mixed["summary"], mixed["claims"]["hears: audio - other_audio"]
    assert gap["seeds"] == 1 and gap["gap_mean"] == pytest.approx(
        summary["audio"]["audio"]["accuracy_mean"] - summary["other_audio"]["audio"]["accuracy_mean"], abs=1e-3)
    assert mixed["claims"] == claims(mixed)
    assert (tmp_path / "recipes.png").stat().st_size > 1000
    printed = capsys.readouterr().out
    assert "### mixed (1 seeds" in printed and "| hears: audio - other_audio |" in printed
    with pytest.raises(SystemExit):
        main(["--recipe", "mixed", "--out", str(tmp_path)])  # a recipe without runs


@pytest.mark.slow
def test_by_type_splits_a_family_and_counts_the_named_choices(quick_chain, tmp_path):
    from scripts.synthav.by_type import main
    from videollama.synthav.evaluate import load_test_items

    out, _ = quick_chain
    assert main(["--model", str(out / "model"), "--data", str(out / "data"), "--family", "static",
                 "--setting", "video", "--setting", "one_frame", "--out", str(tmp_path / "t.json")]) == 0
    result = json.loads((tmp_path / "t.json").read_text())
    static = [it for it in load_test_items(out / "data") if it.family == "static"]
    assert sum(row["items"] for row in result.values()) == len(static)
    for qtype, row in result.items():
        assert row["answers"] == dict(Counter(
            it.answer for it in static if it.qtype == qtype).most_common())
        for setting in ("video", "one_frame"):
            assert sum(row[setting]["replies"].values()) == row["items"]  # every reply counted once
            assert 0 <= row[setting]["accuracy"] <= 1
