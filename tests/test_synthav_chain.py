"""The SynthAV chain end to end (``--quick``), the audio branch's no-audio training, and the shipped model.

The quick chain generates a tiny world, trains every stage-0 part and both branches' stages 1-2
for a couple of steps through the real recipe and loaders, exports a model folder and evaluates it;
the test checks each product exists, loads, and that its answers parse into the metric.
"""

from __future__ import annotations

import json
import random
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from videollama.synthav.chain import ChainSettings, load_stage_config, run_chain, stage_overrides
from videollama.synthav.evaluate import match_choice, score, TestItem
from videollama.synthav.stage0 import (PHRASES, PICTURE_PREAMBLES, PROJECTION_FILE, MediaCache, audio_image_pairs,
                                       frame_description, patch_labels, picture_chat, presence_labels, slot_targets,
                                       splice_prefix, SlotReadout)
from videollama.synthav.world import OffscreenSound, Scene, SceneObject, WorldConfig

SHIPPED = Path(__file__).resolve().parents[1] / "videollama" / "assets" / "synthav-model"
EXAMPLES = Path(__file__).resolve().parents[1] / "videollama" / "assets" / "examples"


@pytest.mark.slow
def test_quick_chain_runs_end_to_end(quick_chain):
    out, result = quick_chain
    for step in ("generate", "stage0", "vl_stage1", "vl_stage2", "al_stage1", "al_stage2", "ablation/vl_stage2",
                 "evaluate"):
        assert step in result.seconds, step
    from videollama.inference import Pipeline

    pipe = Pipeline.from_pretrained(out / "model")
    assert pipe.model.config.with_audio and pipe.model.config.use_frame_position
    ablation = json.loads((out / "ablation" / "vl_stage2" / "export" / "config.json").read_text())
    assert ablation["videollama"]["use_frame_position"] is False
    results = json.loads((out / "results" / "results.json").read_text())
    assert (out / "results" / "results.png").stat().st_size > 1000
    assert set(results["summary"]) == {"audio+video", "video", "audio", "one_frame", "no_frame_pos", "other_audio",
                                       "video+other_audio"}
    limit = ChainSettings.quick().eval_limit
    asked = json.loads((out / "data" / "qa" / "test.json").read_text())[:limit]
    chance = sum(1 / len(item["choices"]) for item in asked) / limit
    for setting, families in results["summary"].items():
        everything = families["all"]
        assert everything["items"] == limit and everything["chance"] == pytest.approx(chance, abs=1e-4), setting
        right = everything["accuracy_mean"] * limit  # a count of right answers
        assert right == pytest.approx(round(right)), setting
        assert sum(f["accuracy_mean"] * f["items"] for name, f in families.items() if name != "all") == \
            pytest.approx(right), setting  # "all" is the item-weighted mean of the families
    # Every stage changed only its own branch: the frozen stage-0 encoders are bit-identical at the end, and the
    # LLM changed only where AL stage 2's LoRA adapters (al_stage2_audiotext.yaml) were merged into it.
    stage0 = json.loads((out / "stage0" / "stage0.json").read_text())
    assert set(stage0["final_loss"]) == {"image_attributes", "image_encoder", "picture_reading",
                                         "imagebind_attributes", "imagebind_vision", "imagebind_audio"}
    from videollama.model import VideoLlama

    first = VideoLlama.from_pretrained(out / "stage0" / "model")
    last = pipe.model
    for name in ("vision_model", "image_qformer", "audio_encoder", "imagebind_vision"):
        a, b = getattr(first, name).state_dict(), getattr(last, name).state_dict()
        assert all(torch.equal(a[k], b[k].to(a[k].dtype)) for k in a), f"{name} changed after stage 0"
    vision_llm = VideoLlama.from_pretrained(out / "vl_stage2" / "export").language_model.state_dict()
    a, b = first.language_model.state_dict(), last.language_model.state_dict()
    assert all(torch.equal(a[k], vision_llm[k].to(a[k].dtype)) for k in a), "the VL stages changed the LLM"
    changed = {k for k in a if not torch.equal(a[k], b[k].to(a[k].dtype))}
    adapted = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    assert changed and all(k.split(".")[-2] in adapted for k in changed), sorted(changed)[:4]
    for name in ("video_projection", "audio_projection"):
        assert not torch.equal(getattr(first, name).weight, getattr(last, name).weight.to(torch.float32)), name


@pytest.mark.slow
def test_audio_branch_trains_on_frames_only(quick_chain, tmp_path):
    """The AL stages' batches carry visual_audio_values (frames for ImageBind's vision path), never audio."""
    from transformers import AutoTokenizer

    from videollama.train.recipe import build_batches  # the recipe's own batch construction

    out, _ = quick_chain
    data = out / "data"
    model_dir = out / "stage0" / "model"
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    for stage in ("al_stage1", "al_stage2"):
        cfg = load_stage_config(stage, stage_overrides(stage, data, model_dir, tmp_path / stage, 0,
                                                       ChainSettings.quick().stages[stage], 0))
        assert cfg.run.branch == "audio"
        for batch in build_batches(cfg, tokenizer, steps=2):
            assert "audio_values" not in batch or batch["audio_values"] is None, stage
            frames = batch["visual_audio_values"]
            frames = frames if isinstance(frames, list) else [frames]
            assert all(f.shape[-3:] == (3, 112, 112) for f in frames), stage
            assert int((batch["input_ids"] == tokenizer.convert_tokens_to_ids("<AudioHere>")).sum()) > 0
            assert int((batch["input_ids"] == tokenizer.convert_tokens_to_ids("<ImageHere>")).sum()) == 0


@pytest.mark.slow
def test_audio_recipes_choose_what_the_audio_branch_hears(quick_chain, tmp_path):
    """audiotext: every AL batch is real audio (audio_values, ImageBind's audio encoder), in stage 2 also with the
    clip's frames for the vision branch (audio-visual chats); mixed: real-audio batches and frame batches by the
    YAML's weights; visual (the paper): frames only (test above)."""
    from transformers import AutoTokenizer

    from videollama.synthav.chain import AUDIO_RECIPES
    from videollama.train.recipe import build_batches

    out, _ = quick_chain
    model_dir = out / "stage0" / "model"
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    audio_id = tokenizer.convert_tokens_to_ids("<AudioHere>")
    seen: dict[str, set[str]] = {}
    for recipe in ("audiotext", "mixed"):
        configs, drop = AUDIO_RECIPES[recipe]
        for stage, config in zip(("al_stage1", "al_stage2"), configs):
            steps = replace(ChainSettings.quick().stages[stage], steps=6)
            cfg = load_stage_config(config, stage_overrides(stage, out / "data", model_dir, tmp_path / stage, 0, steps,
                                                            0, config=config, drop=drop))
            assert cfg.run.branch == "audio"
            names = set(cfg.data.datasets)
            assert ("webvid" in names or "llava_instruct" in names) == (recipe == "mixed"), (recipe, names)
            kinds = seen.setdefault(f"{recipe}/{stage}", set())
            for batch in build_batches(cfg, tokenizer, steps=6):
                if batch.get("audio_values") is not None:
                    assert batch["audio_values"].shape[1:] == (8, 1, 128, 204)
                    assert "visual_audio_values" not in batch
                    kinds.add("audio" if batch.get("pixel_values") is None else "audio-visual")
                else:
                    assert batch["visual_audio_values"].shape[2:] == (3, 112, 112) and "pixel_values" not in batch
                    kinds.add("frames")
                assert int((batch["input_ids"] == audio_id).sum()) == 8 * batch["input_ids"].shape[0]
    assert seen["audiotext/al_stage1"] == {"audio"} and seen["audiotext/al_stage2"] == {"audio", "audio-visual"}
    assert "audio" in seen["mixed/al_stage1"] | seen["mixed/al_stage2"]
    assert "frames" in seen["mixed/al_stage1"] | seen["mixed/al_stage2"]


@pytest.mark.slow
def test_audio_recipe_on_a_reused_vision_branch(quick_chain, tmp_path):
    """--vision-from trains only the audio branch on the run's vision branch; the audio stage's LoRA changes the LLM,
    so only the ablation's results are that run's and every other setting is evaluated again; a world without the
    audio-text sets is refused."""
    from safetensors.torch import load_file

    from videollama.errors import UsageError
    from videollama.synthav.chain import ABLATION_SETTINGS, AUDIO_RECIPES, audio_stages_train_llm

    out, _ = quick_chain
    settings = replace(ChainSettings.quick(0), audio_recipe="audiotext")
    result = run_chain(tmp_path / "audiotext", seed=0, settings=settings, data_dir=out / "data",
                       stage0_dir=out / "stage0", vision_from=out)
    assert {"al_stage1", "al_stage2", "evaluate"} <= set(result.seconds)
    assert not {"vl_stage1", "vl_stage2", "ablation/vl_stage2"} & set(result.seconds)
    vision = load_file(str(out / "vl_stage2" / "export" / "model.safetensors"))
    final = load_file(str(tmp_path / "audiotext" / "model" / "model.safetensors"))
    video_keys = [k for k in vision if k.startswith(("video_qformer.", "video_projection."))]
    assert video_keys and all(torch.equal(vision[k], final[k].to(vision[k].dtype)) for k in video_keys)
    audio_keys = [k for k in vision if k.startswith("audio_projection.")]
    assert audio_keys and not all(torch.equal(vision[k], final[k].to(vision[k].dtype)) for k in audio_keys)
    mine = json.loads((tmp_path / "audiotext" / "results" / "results.json").read_text())["per_seed"]["0"]
    theirs = json.loads((out / "results" / "results.json").read_text())["per_seed"]["0"]
    llm_keys = [k for k in vision if k.startswith("language_model.") and k.endswith("q_proj.weight")]
    assert llm_keys and not any(torch.equal(vision[k], final[k].to(vision[k].dtype)) for k in llm_keys)  # LoRA merged
    assert audio_stages_train_llm(AUDIO_RECIPES["audiotext"][0]) and not audio_stages_train_llm(AUDIO_RECIPES["visual"][0])
    assert set(mine) == set(theirs)
    for setting in ABLATION_SETTINGS:
        assert mine[setting] == theirs[setting], setting
    with pytest.raises(UsageError, match="needs a world generated with --audio-clips"):
        run_chain(tmp_path / "x", seed=0, settings=settings, data_dir=tmp_path, stage0_dir=out / "stage0",
                  vision_from=out)
    with pytest.raises(UsageError, match="unknown audio recipe"):
        replace(ChainSettings.quick(0), audio_recipe="speech")


def test_cli_recipe_names_match_the_chain():
    from videollama.synthav import cli
    from videollama.synthav.chain import AUDIO_RECIPES

    assert tuple(AUDIO_RECIPES) == cli.AUDIO_RECIPE_NAMES
    assert ChainSettings().audio_recipe == cli.DEFAULT_AUDIO_RECIPE


def test_claims_are_gaps_paired_by_seed():
    from videollama.synthav.evaluate import claims, format_claims

    def run(audio, other, av, av_other, video_t, one_t, static):
        fam = lambda acc: {"accuracy": acc}  # noqa: E731
        return {"audio": {"families": {"audio": fam(audio)}}, "other_audio": {"families": {"audio": fam(other)}},
                "audio+video": {"families": {"audio_visual": fam(av), "static": fam(static)}},
                "video+other_audio": {"families": {"audio_visual": fam(av_other)}},
                "video": {"families": {"temporal": fam(video_t)}}, "one_frame": {"families": {"temporal": fam(one_t)}}}

    results = {"per_seed": {"0": run(0.9, 0.5, 0.6, 0.5, 0.3, 0.3, 0.6), "1": run(0.7, 0.5, 0.7, 0.5, 0.4, 0.3, 0.5)}}
    c = claims(results)
    assert c["hears: audio - other_audio"]["gap_mean"] == pytest.approx(0.3)
    assert c["hears: audio - other_audio"]["gap_std"] == pytest.approx(0.1) and c["hears: audio - other_audio"]["met"]
    assert c["hearing helps: audio+video - video+other_audio"]["gap_mean"] == pytest.approx(0.15)
    assert not c["reads order: video - one_frame"]["met"]
    assert "frame positions: video - no_frame_pos" not in c  # no ablation setting: no claim
    assert c["static: audio+video"]["gap_mean"] == pytest.approx(0.55) and not c["static: audio+video"]["met"]
    table = format_claims(results)
    assert "| reads order: video - one_frame | +0.050 ± 0.050 | >= +0.15 | short by 0.100 |" in table
    assert "| static: audio+video | 0.550 ± 0.050 | >= 0.58 | short by 0.030 |" in table


def test_choice_matching():
    assert match_choice("The circle disappears.", ["circle appears", "circle disappears"]) == "circle disappears"
    assert match_choice("it is red", ["red", "green"]) == "red"
    assert match_choice("a reddish thing", ["red", "green"]) is None
    assert match_choice("green, then red", ["red", "green"]) == "green"
    items = [TestItem("a", Path("x"), "q", "red", "static", "colour", ("red", "green")),
             TestItem("b", Path("x"), "q", "up", "temporal", "direction", ("up", "down", "left", "right"))]
    scores = score(items, ["red.", "it moves left"])
    assert scores["static"]["accuracy"] == 1.0 and scores["static"]["exact"] == 1.0
    assert scores["temporal"]["accuracy"] == 0.0 and scores["temporal"]["chance"] == 0.25
    assert scores["all"]["accuracy"] == 0.5
    assert scores["all"]["no_choice"] == 0.0  # "left" is a wrong choice, not a wrong type
    scores = score(items, ["two", "it moves left"])
    assert scores["static"]["no_choice"] == 1.0 and scores["all"]["no_choice"] == 0.5
    from videollama.synthav.evaluate import summarize

    per_seed = {"0": {"video": {"families": score(items, ["two", "up"])}},
                "1": {"video": {"families": score(items, ["red", "up"])}}}
    assert summarize(per_seed)["video"]["static"]["no_choice_mean"] == 0.5


def test_audio_image_pairs_need_the_source_on_screen():
    world = WorldConfig()
    obj = dict(colour="red", size="large", direction="left", x0=80.0, y0=50.0, speed=1.0)
    # A circle audible on [0, 2 s) only, and a bell from 3 s: windows touching the bell are refused.
    circle = SceneObject(shape="circle", on_frame=0, off_frame=16, sounding=True, **obj)
    scene = Scene((circle,), (OffscreenSound("bell", 24, 32),), num_frames=32)
    frames = list(range(0, 32, 4))
    cache = MediaCache(torch.zeros(1, 8, 3, 4, 4, dtype=torch.uint8), [frames], None, [scene])
    pairs = audio_image_pairs(cache, world)
    assert pairs, "the first window (circle on screen, no bell) must pair"
    for _, k, f in pairs:
        start = k * 2.0 / 7
        assert start + 2.0 <= 3.0 + 1e-9, "a window overlapping the off-screen bell was paired"
        assert frames[f] < 16, "paired with a frame where the circle is gone"
    assert "column" in frame_description(scene, 0, world) and "red circle" in frame_description(scene, 0, world)


def test_patch_labels_mark_the_object_under_each_patch():
    world = WorldConfig()
    still = dict(direction="left", speed=0.0, on_frame=0, off_frame=32, sounding=True)
    big = SceneObject(shape="circle", colour="red", size="large", x0=24.0, y0=24.0, **still)  # bound 17.6 px
    small = SceneObject(shape="star", colour="blue", size="small", x0=88.0, y0=88.0, **still)  # bound 9.9 px
    late = SceneObject(shape="square", colour="white", size="large", x0=88.0, y0=24.0, **{**still, "on_frame": 16})
    scene = Scene((big, small, late), (), num_frames=32)
    labels = patch_labels(scene, 0, world, grid=7).view(7, 7, 3)  # 16-px patches, centres at 8, 24, 40, ...
    # (colour, shape, size), 1-based in ATTRIBUTES order; the circle covers the patch centred on it and
    # its 4-neighbours (16 px away), not the diagonals (22.6 px away).
    assert labels[1, 1].tolist() == [1, 1, 2]  # red, circle, large
    assert labels[1, 0].tolist() == labels[0, 1].tolist() == [1, 1, 2]
    assert labels[0, 0].tolist() == [0, 0, 0]
    assert labels[5, 5].tolist() == [3, 4, 1]  # blue, star, small
    assert labels[5, 4].tolist() == [0, 0, 0]  # 16 px from the small star: outside its 9.9-px bound
    assert labels[1, 5].tolist() == [0, 0, 0]  # the square is not on screen yet at frame 0
    assert patch_labels(scene, 20, world, grid=7).view(7, 7, 3)[1, 5].tolist() == [5, 2, 2]  # white square
    assert int((labels[..., 0] > 0).sum()) == 5 + 1
    kinds = presence_labels(scene, 0)
    assert kinds.sum() == 2 and kinds[PHRASES.index("large red circle")] == 1 and kinds[PHRASES.index("small blue star")] == 1
    present, attributes = slot_targets(scene, 0, world)  # one slot per shape: circle, square, triangle, star
    assert present.tolist() == [1, 0, 0, 1]  # the square is not on screen yet, there is no triangle
    assert attributes[0].tolist() == [0, 1, 1, 1]  # red, large, (24, 24) px -> column/row 1 of 8 bins of 14 px
    assert attributes[3].tolist() == [2, 0, 6, 6]  # blue, small, (88, 88) px -> 6, 6
    assert attributes[1].tolist() == attributes[2].tolist() == [0, 0, 0, 0]
    present, attributes = slot_targets(scene, 20, world)
    assert present.tolist() == [1, 1, 0, 1] and attributes[1].tolist() == [4, 1, 6, 1]  # the white square came


def test_slot_readout_scores_only_the_slots_whose_object_is_there():
    """Attribute losses count where a slot's object is present; what absent slots hold does not matter."""
    torch.manual_seed(0)
    readout = SlotReadout(width=16)
    query_out = torch.randn(3, 8, 16)  # (B, Q, W); queries 4-7 are not slots
    present = torch.tensor([[1.0, 0, 0, 1], [0, 1, 0, 0], [0, 0, 0, 0]])
    attributes = torch.randint(0, 2, (3, 4, 4))
    loss = readout.loss(query_out, present, attributes)
    shuffled = attributes.clone()
    shuffled[present == 0] = torch.randint(0, 2, (int((present == 0).sum()), 4))
    assert torch.equal(loss, readout.loss(query_out, present, shuffled))
    other = query_out.clone()
    other[:, 4:] = torch.randn(3, 4, 16)
    assert torch.equal(loss, readout.loss(other, present, attributes))
    moved = attributes.clone()
    moved[0, 0, 0] = 1 - moved[0, 0, 0]  # the first row's circle changes colour
    assert not torch.equal(loss, readout.loss(query_out, present, moved))
    # A read-out trained on slots that carry their object's attributes reaches a low loss.
    opt = torch.optim.Adam(readout.parameters(), lr=0.05)
    slots = torch.zeros(3, 8, 16)
    slots[:, :4, :4] = attributes.float() * present[..., None]  # slot k's (B, 4) attributes in features 0-3
    slots[:, :4, 4] = present
    for _ in range(300):
        opt.zero_grad()
        readout.loss(slots, present, attributes).backward()
        opt.step()
    assert readout.loss(slots, present, attributes).item() < 0.05


def test_frame_description_lists_objects_left_to_right():
    world = WorldConfig()
    still = dict(direction="left", speed=0.0, on_frame=0, off_frame=32, sounding=False, size="large")
    right = SceneObject(shape="star", colour="blue", x0=100.0, y0=20.0, **still)  # created first, seen right
    left = SceneObject(shape="circle", colour="red", x0=10.0, y0=90.0, **still)
    middle = SceneObject(shape="square", colour="green", x0=60.0, y0=60.0, **still)
    text = frame_description(Scene((right, left, middle), (), num_frames=32), 0, world)
    assert text == ("a large red circle at column 0 row 6, a large green square at column 4 row 4 "
                    "and a large blue star at column 7 row 1.")


def test_picture_chat_splices_the_picture_where_the_prompt_puts_it(tiny_tokenizer):
    from videollama.tokenizer import IMAGE_PLACEHOLDER

    tokenizer = tiny_tokenizer
    (before, after), answer_len = picture_chat(tokenizer, "sys", PICTURE_PREAMBLES[0], "What colour is the circle?",
                                               "red")
    assert before[0] == tokenizer.bos_token_id and after[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(after[-answer_len:], skip_special_tokens=True).strip() == "red"
    assert tokenizer.decode(before).endswith(PICTURE_PREAMBLES[0].split(IMAGE_PLACEHOLDER)[0].strip())
    assert tokenizer.decode(after[:-answer_len]).strip().endswith("[/INST]")
    embed = torch.nn.Embedding(tokenizer.vocab_size, 6)
    short = picture_chat(tokenizer, "", PICTURE_PREAMBLES[0], "Describe the image.", "a red circle.")
    parts = [([before, after], answer_len), short]
    pictures = torch.randn(2, 3, 6)  # (B, Q, D)
    inputs, mask, labels = splice_prefix(embed, parts, [[p] for p in pictures])
    lengths = [len(p[0]) + 3 + len(p[1]) for p, _ in parts]
    assert inputs.shape == (2, max(lengths), 6) and mask.sum(1).tolist() == lengths
    for i, ((b, a), n) in enumerate(parts):
        assert torch.equal(inputs[i, len(b): len(b) + 3], pictures[i])  # the picture right after the preamble's head
        assert torch.equal(inputs[i, :len(b)], embed(torch.tensor(b)))
        supervised = labels[i][labels[i] != -100].tolist()
        assert supervised == a[-n:], "only the answer (and EOS) carries labels"
        assert int(labels[i, lengths[i] - n - 1]) == -100 and int(labels[i, lengths[i] - 1]) == tokenizer.eos_token_id
    with pytest.raises(ValueError, match="1 media slots got 2 pictures"):
        splice_prefix(embed, parts[:1], [[pictures[0], pictures[1]]])


def test_audio_visual_chat_puts_the_sound_slot_first(tiny_tokenizer):
    """The AV upload message has two slots, the audio one first; each picture lands in its own slot."""
    from videollama.templates import AV_MESSAGE

    pieces, n = picture_chat(tiny_tokenizer, "", AV_MESSAGE, "Does the red object make a sound?", "yes")
    assert len(pieces) == 3
    assert "imagine only based on the sound" in tiny_tokenizer.decode(pieces[0])
    assert "open your eyes" in tiny_tokenizer.decode(pieces[1]) and "[/INST]" in tiny_tokenizer.decode(pieces[2])
    embed = torch.nn.Embedding(tiny_tokenizer.vocab_size, 4)
    sound, video = torch.full((2, 4), 1.0), torch.full((5, 4), 2.0)  # (Q_audio, D), (Q_video, D)
    inputs, mask, labels = splice_prefix(embed, [(pieces, n)], [[sound, video]])
    a, b = len(pieces[0]), len(pieces[0]) + 2 + len(pieces[1])
    assert torch.equal(inputs[0, a: a + 2], sound) and torch.equal(inputs[0, b: b + 5], video)
    assert int(mask.sum()) == sum(map(len, pieces)) + 7
    assert tiny_tokenizer.decode(labels[0][labels[0] != -100].tolist(), skip_special_tokens=True).strip() == "yes"


@pytest.mark.slow
def test_generative_step_builds_every_chat_form(quick_chain):
    """Every stage-0 chat form puts the right number of frames in each slot and asks a question of its kind."""
    from synthav_fixtures import load_quick_stage0
    from videollama.synthav.stage0 import CHAT_FORMS, VIDEO_FRAMES, PictureLosses, Stage0Settings

    out, _ = quick_chain
    data, cache, tokenizer, model = load_quick_stage0(out, 6)
    bridge = torch.nn.Linear(model.config.image_qformer.hidden_size, model.config.llm_hidden_size)
    losses = PictureLosses(model, tokenizer, bridge, cache, data.world, Stage0Settings.quick(), random.Random(0))
    seen = {}
    for _ in range(200):
        chat = losses.chat()
        text = tokenizer.decode(chat.pieces[0])
        form = ("audio_video" if len(chat.slots) == 2 else "audio" if "sound that" in text
                else "video" if "<Video>" in text else "image")
        seen.setdefault(form, []).append(chat)
    assert set(seen) == {f.name for f in CHAT_FORMS}
    for chat in seen["video"] + seen["audio_video"]:
        c = chat.slots[-1][0][0]
        assert chat.slots[-1] == [(c, i) for i in VIDEO_FRAMES]
    assert all(len(ch.slots) == 1 and len(ch.slots[0]) == 1 for ch in seen["image"] + seen["audio"])
    audio_questions = {tokenizer.decode(ch.pieces[-1][:-ch.answer_len]) for ch in seen["audio"]}
    assert any("sound" in q or "hear" in q for q in audio_questions)
    picks, query_out, caption_loss, qa_loss = losses.step()
    assert query_out.shape[0] == len(picks) and torch.isfinite(caption_loss) and qa_loss.item() > 0


@pytest.mark.slow
def test_vl_stage1_starts_from_stage0s_projection(quick_chain, tmp_path):
    """Stage 0 keeps its Q-Former -> LLM bridge in MiniGPT-4's key names; VL stage 1 (only) loads it."""
    from safetensors.torch import load_file

    out, _ = quick_chain
    bridge = load_file(str(out / "stage0" / PROJECTION_FILE))
    stage0 = json.loads((out / "stage0" / "model" / "config.json").read_text())
    assert set(bridge) == {"llama_proj.weight", "llama_proj.bias"}
    assert bridge["llama_proj.weight"].shape[1] == stage0["videollama"]["image_qformer"]["hidden_size"]
    steps = ChainSettings.quick().stages
    for stage in ("vl_stage1", "vl_stage2", "al_stage1"):
        over = stage_overrides(stage, out / "data", out / "stage0" / "model", tmp_path / stage, 0, steps[stage], 0,
                               projection=out / "stage0" / PROJECTION_FILE)
        cfg = load_stage_config(stage, over)
        assert (cfg.model.llama_proj_ckpt is not None) == (stage == "vl_stage1"), stage
    from videollama.model import VideoLlama
    from videollama.train.base_model import build_model

    cfg = load_stage_config("vl_stage1", stage_overrides("vl_stage1", out / "data", out / "stage0" / "model",
                                                         tmp_path / "s1", 0, steps["vl_stage1"], 0,
                                                         projection=out / "stage0" / PROJECTION_FILE))
    model, _ = build_model(cfg.model, with_audio_vision=False, cache_dir=tmp_path)
    assert torch.equal(model.video_projection.weight, bridge["llama_proj.weight"])
    assert not torch.equal(VideoLlama.from_pretrained(out / "stage0" / "model").video_projection.weight,
                           bridge["llama_proj.weight"])


@pytest.mark.slow
def test_chain_can_share_a_stage0_across_seeds(quick_chain, tmp_path):
    """--stage0 reuses the frozen parts (as downloaded weights are shared); a folder without them is refused."""
    from dataclasses import replace

    out, _ = quick_chain
    with pytest.raises(FileNotFoundError, match="not a stage-0 folder"):
        run_chain(tmp_path / "bad", seed=1, settings=ChainSettings.quick(1), data_dir=out / "data",
                  stage0_dir=tmp_path, evaluate=False)
    settings = replace(ChainSettings.quick(1), ablation=False)
    result = run_chain(tmp_path / "s1", seed=1, settings=settings, data_dir=out / "data", stage0_dir=out / "stage0",
                       evaluate=False)
    assert "stage0" not in result.seconds and not (tmp_path / "s1" / "stage0").exists()
    assert result.stage0_dir == str((out / "stage0").resolve())
    from safetensors.torch import load_file

    shared = load_file(str(out / "stage0" / "model" / "model.safetensors"))
    final = load_file(str(tmp_path / "s1" / "model" / "model.safetensors"))
    adapted = ("q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight", "gate_proj.weight", "up_proj.weight",
               "down_proj.weight")  # the LLM's projections take AL stage 2's merged LoRA adapters
    frozen = [k for k in shared if k.startswith(("language_model.", "vision_model.", "audio_encoder."))
              and not k.endswith(adapted)]
    assert frozen and all(torch.equal(shared[k], final[k].to(shared[k].dtype)) for k in frozen)


@pytest.mark.slow
def test_shipped_model_answers_the_shipped_clip():
    from videollama.engine import GenerationConfig
    from videollama.inference import Pipeline

    manifest = json.loads((EXAMPLES / "examples.json").read_text())
    weights = sum(p.stat().st_size for p in SHIPPED.iterdir())
    assert weights <= 30 * 1024 * 1024
    pipe = Pipeline.from_pretrained(SHIPPED)
    for example in manifest["examples"]:
        clip = EXAMPLES / example["file"]
        assert clip.stat().st_size < 200_000
        reply = pipe.chat(clip).ask(example["question"], GenerationConfig(do_sample=False, max_new_tokens=24))
        assert match_choice(reply, example["choices"]) == example["answer"], (example, reply)


@pytest.mark.slow
def test_ship_copies_the_model_and_records_how_examples_were_chosen(quick_chain, tmp_path):
    from videollama.synthav.ship import EXAMPLE_FAMILIES, ship

    out, _ = quick_chain
    manifest = ship(out, model_dir=tmp_path / "model", examples_dir=tmp_path / "examples")
    assert (tmp_path / "model" / "config.json").is_file()
    assert json.loads((tmp_path / "examples" / "examples.json").read_text()) == manifest
    for example in manifest["examples"]:  # a 2-step quick model may answer none right: then none ship
        assert example["family"] in EXAMPLE_FAMILIES and (tmp_path / "examples" / example["file"]).is_file()
        assert match_choice(example["reply"], example["choices"]) == example["answer"]
        assert example["chosen"].startswith(f"first of the {example['family']} held-out questions answered right")
        if example["family"] == "audio":  # answered from the sound: another clip's soundtrack does not get it right
            assert match_choice(example["reply_with_other_sound"], example["choices"]) != example["answer"]


@pytest.mark.slow
def test_combine_runs_reuses_each_runs_results_and_refuses_duplicate_seeds(quick_chain):
    from videollama.synthav.evaluate import combine_runs

    out, _ = quick_chain
    combined = combine_runs([out], limit=8)
    own = json.loads((out / "results" / "results.json").read_text())
    assert combined["summary"] == own["summary"] and combined["per_seed"] == own["per_seed"]
    with pytest.raises(ValueError, match="seed 0 appears twice"):
        combine_runs([out, out], limit=8)


@pytest.mark.slow
def test_evaluate_cli_on_one_model_folder(quick_chain, tmp_path, capsys):
    from videollama.cli import main

    out, _ = quick_chain
    assert main(["synthav", "evaluate", "--model", str(out / "model"), "--data", str(out / "data"), "--limit", "4",
                 "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["questions"] == 4
    assert set(results["summary"]) == {"audio+video", "video", "audio", "one_frame", "other_audio", "video+other_audio"}
    assert "| audio+video |" in capsys.readouterr().out
    assert main(["synthav", "evaluate", "--model", str(out / "model"), "--out", str(tmp_path)]) == 2  # no --data


def test_stage0_runs_on_its_own_thread_count_and_restores_the_callers(monkeypatch, tmp_path):
    """Stage 0 trains on ``Stage0Settings.threads`` (0: every core) and gives the caller back its count, even
    when a stage fails."""
    import os

    from videollama.synthav import stage0
    from videollama.synthav.stage0 import run as stage0_run

    seen = []

    def failing_stage0(data_dir, out_dir, settings):
        seen.append(torch.get_num_threads())
        raise RuntimeError("stage failed")

    monkeypatch.setattr(stage0_run, "_run_stage0", failing_stage0)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for threads, want in ((2, 2), (0, os.cpu_count())):
            with pytest.raises(RuntimeError, match="stage failed"):
                stage0.run_stage0(tmp_path, tmp_path / "out", stage0.Stage0Settings(threads=threads))
            assert seen[-1] == want and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_sound_frames_show_exactly_the_sound_sources():
    """Audio-slot chats of stage 0 use frames that show every sounding object and no silent one."""
    from videollama.synthav.stage0 import sound_frames

    obj = dict(colour="red", size="large", direction="left", x0=80.0, y0=50.0, speed=1.0)
    drum = SceneObject(shape="circle", on_frame=0, off_frame=16, sounding=True, **obj)
    mute = SceneObject(shape="star", on_frame=8, off_frame=32, sounding=False, **{**obj, "colour": "blue"})
    frames = list(range(0, 32, 4))  # 0, 4, ..., 28
    scenes = [Scene((drum, mute), num_frames=32),  # circle alone on frames 0 and 4
              Scene((drum,), (OffscreenSound("bell", 24, 32),), num_frames=32),  # an unseen sound: never
              Scene((mute,), num_frames=32)]  # nothing sounds: never
    cache = MediaCache(torch.zeros(3, 8, 3, 4, 4, dtype=torch.uint8), [frames] * 3, None, scenes)
    assert sound_frames(cache) == [(0, 0), (0, 1)]


def test_other_audio_plays_another_clips_soundtrack(monkeypatch):
    """The ``other_audio`` control answers each question from a different held-out clip's sound only."""
    from videollama.synthav import evaluate

    videos = [Path(f"clip{i}.mp4") for i in (0, 0, 1, 2, 2)]
    other = evaluate.other_clips(videos)
    assert other == {Path("clip0.mp4"): Path("clip1.mp4"), Path("clip1.mp4"): Path("clip2.mp4"),
                     Path("clip2.mp4"): Path("clip0.mp4")}
    with pytest.raises(ValueError, match="at least two"):
        evaluate.other_clips([Path("a.mp4")] * 3)

    shown = []
    monkeypatch.setattr(evaluate, "media_features", lambda pipe, path, setting, sound=None:
                        shown.append((path, setting, sound)) or sound)

    class Pipe:  # records what each request was given; replies with the clip it heard
        engine = type("Engine", (), {"generate_all": staticmethod(lambda reqs: reqs)})()

        @staticmethod
        def request(media, turns, gen):
            return media

        @staticmethod
        def decode_answer(media):
            return media.stem

    items = [evaluate.TestItem(str(i), v, "Is there a bell sound?", "no", "audio", "hear", ("yes", "no"))
             for i, v in enumerate(videos)]
    replies = evaluate.answer_items(Pipe, items, "other_audio")
    assert replies == ["clip1", "clip1", "clip2", "clip0", "clip0"]
    assert shown == [(Path("clip0.mp4"), "audio", Path("clip1.mp4")), (Path("clip1.mp4"), "audio", Path("clip2.mp4")),
                     (Path("clip2.mp4"), "audio", Path("clip0.mp4"))]
    # video+other_audio: each clip's own frames with the next clip's sound
    shown.clear()
    assert evaluate.answer_items(Pipe, items, "video+other_audio") == replies
    assert shown == [(Path("clip0.mp4"), "audio+video", Path("clip1.mp4")),
                     (Path("clip1.mp4"), "audio+video", Path("clip2.mp4")),
                     (Path("clip2.mp4"), "audio+video", Path("clip0.mp4"))]


def test_media_features_hear_the_given_soundtrack(monkeypatch):
    """``sound`` replaces the clip's soundtrack and nothing else: the frames stay the clip's own."""
    from videollama.synthav import evaluate

    loaded = []
    monkeypatch.setattr("videollama.media.load_audio", lambda path: loaded.append(("audio", path)) or torch.zeros(1, 1, 1, 128, 204))
    monkeypatch.setattr("videollama.media.video.load_video", lambda path, n, image_size: loaded.append(("video", path)) or
                        type("Clip", (), {"frames": torch.zeros(n, 3, 8, 8), "timestamp_message": lambda self: ""})())

    class Pipe:
        image_size = 8
        model = type("Model", (), {"device": "cpu", "dtype": torch.float32,
                                   "encode_video": staticmethod(lambda x: x), "encode_audio": staticmethod(lambda x: x)})()

    evaluate.media_features(Pipe, Path("own.mp4"), "audio+video", sound=Path("other.mp4"))
    evaluate.media_features(Pipe, Path("own.mp4"), "audio", sound=Path("other.mp4"))
    evaluate.media_features(Pipe, Path("own.mp4"), "audio+video")
    assert loaded == [("video", Path("own.mp4")), ("audio", Path("other.mp4")), ("audio", Path("other.mp4")),
                      ("video", Path("own.mp4")), ("audio", Path("own.mp4"))]


@pytest.mark.slow
def test_combine_runs_evaluates_settings_a_saved_run_lacks(quick_chain, tmp_path):
    import shutil

    from videollama.synthav.evaluate import combine_runs

    out, _ = quick_chain
    run = tmp_path / "run"
    shutil.copytree(out, run, symlinks=True)
    chain = json.loads((run / "chain.json").read_text())
    chain["data_dir"] = str(out / "data")
    (run / "chain.json").write_text(json.dumps(chain))
    saved = json.loads((run / "results" / "results.json").read_text())
    for runs in saved["per_seed"].values():
        del runs["other_audio"]
    saved["settings"].remove("other_audio")
    (run / "results" / "results.json").write_text(json.dumps(saved))
    combined = combine_runs([run], limit=8)
    assert "other_audio" in combined["summary"] and combined["summary"]["video"] == saved["summary"]["video"]
    assert "other_audio" in json.loads((run / "results" / "results.json").read_text())["settings"]


@pytest.mark.slow
def test_train_all_passes_stage0_threads_and_refuses_negative(monkeypatch, capsys):
    """``train-all --stage0-threads N`` reaches stage 0's settings; a negative count is a clear usage error."""
    from videollama.cli import main
    from videollama.synthav import chain

    seen = []

    def fake_run_chain(out_dir, seed, settings, **kwargs):
        seen.append((seed, settings.stage0.seed, settings.stage0.threads, settings.clips, kwargs))
        return chain.ChainResult(out_dir=str(out_dir), model_dir="m", data_dir="d")

    monkeypatch.setattr(chain, "run_chain", fake_run_chain)
    assert main(["synthav", "train-all", "--out", "/tmp/unused", "--quick", "--seed", "3", "--stage0-threads", "1"]) == 0
    assert main(["synthav", "train-all", "--out", "/tmp/unused", "--no-eval", "--data", "d", "--stage0", "s"]) == 0
    quick, full = seen
    assert quick[:4] == (3, 3, 1, ChainSettings.quick().clips)
    assert full[:4] == (0, 0, 0, ChainSettings().clips)
    assert full[4] == {"data_seed": 0, "data_dir": "d", "stage0_dir": "s", "vision_from": None, "evaluate": False}
    with pytest.raises(SystemExit) as exit_info:
        main(["synthav", "train-all", "--out", "/tmp/unused", "--stage0-threads", "-1"])
    assert exit_info.value.code == 2
    assert "--stage0-threads: must be >= 0, got -1" in capsys.readouterr().err


def test_stage0_command_builds_its_settings_once(monkeypatch):
    """``synthav stage0`` passes the quick or full :class:`Stage0Settings` straight to ``run_stage0``."""
    from videollama.cli import main
    from videollama.synthav import stage0

    seen = []
    monkeypatch.setattr(stage0, "run_stage0", lambda data, out, settings: seen.append((data, out, settings))
                        or stage0.Stage0Result(model_dir="m"))
    assert main(["synthav", "stage0", "--data", "d", "--out", "o", "--quick", "--seed", "2"]) == 0
    assert main(["synthav", "stage0", "--data", "d", "--out", "o", "--stage0-threads", "1"]) == 0
    assert seen[0] == ("d", "o", stage0.Stage0Settings.quick(2))
    assert seen[1] == ("d", "o", stage0.Stage0Settings(threads=1))


def test_stage0_settings_refuse_negative_values():
    from videollama.synthav.stage0 import Stage0Settings

    with pytest.raises(ValueError, match="stage 0 setting vision_steps must be >= 0, got -1"):
        Stage0Settings(vision_steps=-1)
