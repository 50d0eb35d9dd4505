"""What the frozen stage-0 parts know: linear probes of their features, and what the LLM reads from them.

Two measurements that tell where the SynthAV chain loses the picture (``docs/synthav.md#diagnosis``):

1. **Linear probes** on single-object frames of held-out clips: can colour, shape, size and column
   of the object be read linearly from the image Q-Former's query outputs (flattened) and from the
   ImageBind-like vision embedding? (Train on 75 % of the frames, test on the rest; the
   majority-class rate is printed beside each accuracy.)
2. **Caption loss by token kind**: the per-token loss of the frozen LLM on frame descriptions
   ("a large red circle at column 2 row 5."), given the image Q-Former's outputs through stage 0's
   bridge (``llama_proj.safetensors``), against the same with an all-zero prefix. Where the two are
   equal, the LLM reads nothing of that kind from the picture.
3. **Picture questions**: static questions about single held-out frames (colour, shape, count,
   size), the picture spliced into the chat as stage 0 trains it, answered greedily by the frozen
   LLM; accuracy per question type with the picture, with a zero picture, with the frame's
   description *written out* in the slot instead of the picture (can the LLM answer from its
   context at all?), and chance.
4. **Media questions by chat form**: the held-out question families that need more than one frame,
   asked the way stage 0 trains its media chats (:data:`videollama.synthav.stage0.CHAT_FORMS`) with the stand-in
   pictures in the slots: temporal questions with 4 frames in order in the video slot (and the same
   frames *reversed*: an LLM that reads the order answers differently), audio questions with a frame
   showing exactly the clip's sound sources in the audio slot (:func:`videollama.synthav.stage0.sound_frames`),
   audio-visual ones with that frame and the 4 frames. This is the ceiling the trained branches can
   reach: a family the frozen LLM cannot answer from ideal pictures, no branch will teach it.
5. **Binding**: the premise of the audio branch (trained on vision embeddings, run on audio ones).
   A linear read-out of which shapes a frame shows is fitted on ImageBind-like *vision* embeddings of
   held-out frames and then applied to the *audio* embeddings of 2-s windows whose sound sources are all
   on screen (:func:`videollama.synthav.stage0.audio_image_pairs`), against the shapes heard. Also: how often an audio
   window's nearest frame embedding (cosine) shows the same set of sounding shapes, and the cosine to its
   own frame against any frame.

    python -m scripts.synthav.probe --stage0 runs/synthav/seed0/stage0 --data runs/synthav/seed0/data [--out probe.json]
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from videollama.synthav.annotate import applicable
from videollama.synthav.evaluate import match_choice
from videollama.synthav.stage0 import (CHAT_FORMS, PICTURE_PREAMBLES, POSITION_BINS, PROJECTION_FILE, TRAIN_SYSTEM,
                                       VIDEO_FRAMES, WorldData, audio_image_pairs, decode_media, frame_description,
                                       frame_queries, load_bridge, normalize_frames, picture_chat, position_bin,
                                       sound_frames, splice_prefix)
from videollama.synthav.stage0.loop import caption_batch
from videollama.synthav.world import COLOURS, SHAPES, SIZES, Scene

PROBE_STEPS = 300
TRAIN_FRACTION = 0.75
TOKEN_KINDS = {**{c: "colour" for c in COLOURS}, **{s: "shape" for s in SHAPES}, **{z: "size" for z in SIZES},
               **{str(i): "position" for i in range(POSITION_BINS)}}


def linear_probe(features: Tensor, labels: list[str], steps: int = PROBE_STEPS, seed: int = 0) -> dict[str, float]:
    """Held-out accuracy of a linear classifier of ``labels`` from ``features`` (N, D), and the majority rate."""
    classes = sorted(set(labels))
    y = torch.tensor([classes.index(label) for label in labels])
    x = (features - features.mean(0)) / (features.std(0) + 1e-5)  # (N, D) standardised
    n = int(len(y) * TRAIN_FRACTION)
    if n < 2 or n == len(y):
        raise ValueError(f"linear_probe needs more than {len(y)} examples")
    generator = torch.Generator().manual_seed(seed)
    head = torch.nn.Linear(x.shape[1], len(classes))
    with torch.no_grad():
        head.weight.normal_(0, 0.01, generator=generator)
        head.bias.zero_()
    opt = torch.optim.Adam(head.parameters(), lr=1e-2, weight_decay=1e-3)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(head(x[:n]), y[:n]).backward()
        opt.step()
    with torch.no_grad():
        accuracy = (head(x[n:]).argmax(1) == y[n:]).float().mean().item()
    majority = max((y[n:] == k).float().mean().item() for k in range(len(classes)))
    return {"accuracy": round(accuracy, 3), "majority": round(majority, 3), "n": len(y)}


def _held_out(data: WorldData, clips: int) -> WorldData:
    """The last ``clips`` WebVid clips (stage 0 decodes from the front)."""
    return WorldData(data.root, data.world, data.scenes, data.webvid[-clips:], [], [], [])


@torch.no_grad()
def _single_object_features(model, data: WorldData, clips: int) -> tuple[dict[str, list[Tensor]], dict[str, list[str]]]:
    cache = decode_media(_held_out(data, clips), clips, model.config.vision.image_size, with_audio=False)
    feats: dict[str, list[Tensor]] = defaultdict(list)
    labels: dict[str, list[str]] = defaultdict(list)
    for c, (scene, index) in enumerate(zip(cache.scenes, cache.frame_index)):
        for f, frame in enumerate(index):
            visible = scene.visible_at(frame)
            if len(visible) != 1:
                continue
            obj = visible[0]
            image = normalize_frames(cache.frames[c, f][None])  # (1, 3, S, S)
            feats["image_qformer"].append(frame_queries(model, image).flatten())
            if model.imagebind_vision is not None:
                feats["imagebind_vision"].append(model.imagebind_vision(image)[0])
            x, _ = obj.centres(data.world.num_frames)[frame]
            for name, value in (("colour", obj.colour), ("shape", obj.shape), ("size", obj.size),
                                ("column", str(position_bin(x, data.world.size)))):
                labels[name].append(value)
    return feats, labels


def probe_features(model, data: WorldData, clips: int = 300) -> dict[str, dict[str, dict[str, float]]]:
    """Linear probes of the image Q-Former outputs and the ImageBind vision embedding (single-object frames)."""
    feats, labels = _single_object_features(model, data, clips)
    return {part: {name: linear_probe(torch.stack(vectors), labels[name]) for name in labels}
            for part, vectors in feats.items()}


@torch.inference_mode()
def caption_loss_by_kind(model, tokenizer, bridge: torch.nn.Linear, data: WorldData,
                         clips: int = 100) -> dict[str, dict[str, float]]:
    """Mean per-token loss of frame descriptions by token kind, with the picture and with a zero prefix."""
    cache = decode_media(_held_out(data, clips), clips, model.config.vision.image_size, with_audio=False)
    llm = model.language_model
    embed = llm.get_input_embeddings()
    losses: dict[str, dict[str, list[float]]] = {"picture": defaultdict(list), "zero": defaultdict(list)}
    for c in range(cache.frames.shape[0]):
        captions = [frame_description(cache.scenes[c], i, data.world) for i in cache.frame_index[c]]
        queries = frame_queries(model, normalize_frames(cache.frames[c]))  # (8, Q, W)
        ids, mask = caption_batch(tokenizer, captions)  # (8, L)
        prefix = bridge(queries)  # (8, Q, D)
        for setting, given in (("picture", prefix), ("zero", torch.zeros_like(prefix))):
            attention = torch.cat([torch.ones(given.shape[:2], dtype=torch.long), mask], dim=1)
            logits = llm(inputs_embeds=torch.cat([given, embed(ids)], 1), attention_mask=attention).logits
            logits = logits[:, given.shape[1]: -1]  # (8, L - 1): position t predicts token t + 1
            nll = -torch.log_softmax(logits.float(), -1).gather(-1, ids[:, 1:, None])[..., 0]
            for b in range(len(captions)):
                for t in range(1, int(mask[b].sum())):
                    word = tokenizer.convert_ids_to_tokens(int(ids[b, t])).lstrip("\u2581")
                    losses[setting][TOKEN_KINDS.get(word, "other")].append(nll[b, t - 1].item())
    return {setting: {kind: round(sum(v) / len(v), 3) for kind, v in sorted(by_kind.items())}
            for setting, by_kind in losses.items()}


@torch.inference_mode()
def greedy_answer(llm, embed, parts: list[tuple[list[list[int]], int]], pictures: list[list[Tensor]], eos: int,
                  max_tokens: int = 4) -> list[list[int]]:
    """Greedy continuations (at most ``max_tokens``, up to EOS) of media chats whose answer is cut off."""
    rows = [(pieces[:-1], pieces[-1][:-n]) for pieces, n in parts]  # the prompt: up to and including [/INST]
    out: list[list[int]] = [[] for _ in rows]
    done = [False] * len(rows)
    for _ in range(max_tokens):
        batch = [([*head, last + out[i] + [eos]], 1) for i, (head, last) in enumerate(rows)]  # eos: a slot
        inputs, mask, _ = splice_prefix(embed, batch, pictures)
        logits = llm(inputs_embeds=inputs, attention_mask=mask).logits  # (B, L, V)
        last = mask.sum(1) - 2  # the position before the slot predicts it
        for i, token in enumerate(logits[torch.arange(len(rows)), last].argmax(-1).tolist()):
            if not done[i]:
                done[i] = token == eos
                if not done[i]:
                    out[i].append(token)
        if all(done):
            break
    return out


def picture_questions(model, tokenizer, bridge: torch.nn.Linear, data: WorldData, clips: int = 100,
                      seed: int = 0) -> dict[str, dict[str, float]]:
    """Greedy accuracy on static questions about single held-out frames: with the picture, a zero picture,
    and the frame's description as text in the picture's place."""
    cache = decode_media(_held_out(data, clips), clips, model.config.vision.image_size, with_audio=False)
    rng = np.random.default_rng(seed)
    llm = model.language_model
    embed = llm.get_input_embeddings()
    right: dict[str, dict[str, list[float]]] = {setting: defaultdict(list) for setting in ("picture", "zero", "text")}
    chance: dict[str, list[float]] = defaultdict(list)
    with torch.inference_mode():
        for c in range(cache.frames.shape[0]):
            f = int(rng.integers(cache.frames.shape[1]))
            items = applicable(cache.scenes[c], data.world, rng, family="static", frame=cache.frame_index[c][f])
            if not items:
                continue
            queries = frame_queries(model, normalize_frames(cache.frames[c, f][None]))  # (1, Q, W)
            picture = bridge(queries)[0]  # (Q, D)
            description = frame_description(cache.scenes[c], cache.frame_index[c][f], data.world)
            text = embed(torch.tensor(tokenizer(description, add_special_tokens=False)["input_ids"]))  # (T, D)
            parts = [picture_chat(tokenizer, TRAIN_SYSTEM, PICTURE_PREAMBLES[1], item.question, item.answer)
                     for item in items]
            for setting, given in (("picture", picture), ("zero", torch.zeros_like(picture)), ("text", text)):
                replies = greedy_answer(llm, embed, parts, [[given]] * len(items), tokenizer.eos_token_id)
                for item, reply in zip(items, replies):
                    hit = match_choice(tokenizer.decode(reply, skip_special_tokens=True), item.choices) == item.answer
                    right[setting][item.qtype].append(float(hit))
            for item in items:
                chance[item.qtype].append(item.chance)
    result = {setting: {q: round(float(np.mean(v)), 3) for q, v in sorted(by_type.items())}
              for setting, by_type in right.items()}
    result["chance"] = {q: round(float(np.mean(v)), 3) for q, v in sorted(chance.items())}
    return result


MEDIA_FAMILIES = {"temporal": "video", "audio": "audio", "audio_visual": "audio_video"}
"""Question family -> the stage-0 chat form that asks it."""


def media_questions(model, tokenizer, bridge: torch.nn.Linear, data: WorldData, clips: int = 100,
                    seed: int = 0) -> dict[str, dict[str, float]]:
    """Greedy accuracy per family of :data:`MEDIA_FAMILIES` with the stand-in pictures in the chat form's
    slots, with the video slot's frames reversed, with zero pictures, and chance.

    Audio and audio-visual questions are asked only about clips with a frame that shows exactly their
    sound sources (no off-screen sound), the clips stage 0's audio-slot chats are drawn from.
    """
    cache = decode_media(_held_out(data, clips), clips, model.config.vision.image_size, with_audio=False)
    sound = dict(reversed(sound_frames(cache)))  # clip -> its first frame that shows exactly what is heard
    forms = {form.name: form for form in CHAT_FORMS}
    rng = np.random.default_rng(seed)
    llm = model.language_model
    embed = llm.get_input_embeddings()
    settings = ("picture", "reversed", "zero")
    right: dict[str, dict[str, list[float]]] = {setting: defaultdict(list) for setting in settings}
    chance: dict[str, list[float]] = defaultdict(list)
    with torch.inference_mode():
        for c in range(cache.frames.shape[0]):
            pictures = bridge(frame_queries(model, normalize_frames(cache.frames[c])))  # (8 cached frames, Q, D)
            clip = pictures[list(VIDEO_FRAMES)].flatten(0, 1)  # (4 * Q, D): the video slot
            backwards = pictures[list(reversed(VIDEO_FRAMES))].flatten(0, 1)
            for family, form_name in MEDIA_FAMILIES.items():
                form = forms[form_name]
                if "frame" in form.slots and c not in sound:
                    continue
                items = applicable(cache.scenes[c], data.world, rng, family=family)
                if not items:
                    continue
                parts = [picture_chat(tokenizer, form.system, form.preamble, item.question, item.answer) for item in items]
                for setting in settings:
                    video = backwards if setting == "reversed" else clip
                    slots = [pictures[sound[c]] if slot == "frame" else video for slot in form.slots]
                    if setting == "zero":
                        slots = [torch.zeros_like(s) for s in slots]
                    replies = greedy_answer(llm, embed, parts, [slots] * len(items), tokenizer.eos_token_id)
                    for item, reply in zip(items, replies):
                        hit = match_choice(tokenizer.decode(reply, skip_special_tokens=True), item.choices) == item.answer
                        right[setting][family].append(float(hit))
                for item in items:
                    chance[family].append(item.chance)
    result = {setting: {f: round(float(np.mean(v)), 3) for f, v in sorted(by_family.items())}
              for setting, by_family in right.items()}
    result["chance"] = {f: round(float(np.mean(v)), 3) for f, v in sorted(chance.items())}
    result["questions"] = {f: len(v) for f, v in sorted(chance.items())}
    return result


def _shapes(scene: Scene, frame: int, sounding_only: bool) -> list[float]:
    """Per shape, 1.0 if an object of that shape is visible in ``frame`` (and sounding, if asked)."""
    return [float(any(o.shape == shape and (o.sounding or not sounding_only) for o in scene.visible_at(frame)))
            for shape in SHAPES]


@torch.no_grad()
def binding(model, data: WorldData, clips: int = 100, steps: int = PROBE_STEPS, seed: int = 0) -> dict[str, Any]:
    """How far a read-out of the shapes shown, fitted on vision embeddings, reads the shapes heard from audio ones."""
    cache = decode_media(_held_out(data, clips), clips, model.config.vision.image_size, with_audio=True)
    pairs = audio_image_pairs(cache, data.world)  # (clip, audio window, cached frame): every source on screen
    if len(pairs) < 2 or cache.frames.shape[0] < 2:
        return {"pairs": len(pairs)}
    n, per_clip = cache.frames.shape[:2]
    flat = cache.frames.flatten(0, 1)  # (N*8, 3, S, S)
    vision = torch.cat([model.imagebind_vision(normalize_frames(flat[i: i + 128])) for i in range(0, len(flat), 128)])
    vision = F.normalize(vision, dim=-1).view(n, per_clip, -1)  # (N, 8, E)
    mel = torch.stack([cache.audio[c, k] for c, k, _ in pairs]).float()  # (P, 1, 128, 204)
    audio = F.normalize(torch.cat([model.audio_encoder(mel[i: i + 64])[1] for i in range(0, len(mel), 64)]), dim=-1)
    shown = torch.tensor([_shapes(cache.scenes[c], cache.frame_index[c][f], False) for c in range(n)
                          for f in range(per_clip)])  # (N*8, S)
    heard = torch.tensor([_shapes(cache.scenes[c], cache.frame_index[c][f], True) for c, _, f in pairs])  # (P, S)
    paired_frames = torch.stack([vision[c, f] for c, _, f in pairs])  # (P, E)
    cut = max(1, int(n * TRAIN_FRACTION)) * per_clip  # fit on the first clips' frames
    x = vision.flatten(0, 1)
    generator = torch.Generator().manual_seed(seed)
    head = torch.nn.Linear(x.shape[1], len(SHAPES))
    head.weight.normal_(0, 0.01, generator=generator)
    head.bias.zero_()
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    scale = x.shape[1] ** 0.5  # unit-norm embeddings -> unit-variance coordinates
    with torch.enable_grad():
        for _ in range(steps):
            opt.zero_grad()
            F.binary_cross_entropy_with_logits(head(x[:cut] * scale), shown[:cut]).backward()
            opt.step()

    def accuracy(features: Tensor, labels: Tensor) -> float:
        return round(((head(features * scale) > 0).float() == labels).float().mean().item(), 3)

    def majority(labels: Tensor) -> float:
        rate = labels.mean(0)
        return round(torch.maximum(rate, 1 - rate).mean().item(), 3)

    nearest = (audio @ paired_frames.T).argmax(1)  # (P,): each audio window's nearest paired frame
    same_set = [heard[i].tolist() == heard[j].tolist() for i, j in enumerate(nearest.tolist())]
    any_set = (heard[:, None, :] == heard[None, :, :]).all(-1).float().mean().item()
    return {
        "pairs": len(pairs),
        "shapes_from_vision": {"accuracy": accuracy(x[cut:], shown[cut:]), "majority": majority(shown[cut:])},
        "shapes_heard_from_paired_frames": {"accuracy": accuracy(paired_frames, heard), "majority": majority(heard)},
        "shapes_heard_from_audio": {"accuracy": accuracy(audio, heard), "majority": majority(heard)},
        "nearest_frame_same_sources": {"rate": round(float(np.mean(same_set)), 3), "chance": round(any_set, 3)},
        "cosine": {"own_frame": round((audio * paired_frames).sum(-1).mean().item(), 3),
                   "any_frame": round((audio @ paired_frames.T).mean().item(), 3)},
    }


def run_probe(stage0_dir: str | Path, data_dir: str | Path, clips: int = 300) -> dict[str, Any]:
    """Both measurements for a stage-0 folder (``model/`` + ``llama_proj.safetensors``)."""
    from transformers import AutoTokenizer

    from videollama.model import VideoLlama

    stage0_dir = Path(stage0_dir)
    model = VideoLlama.from_pretrained(stage0_dir / "model").eval()
    tokenizer = AutoTokenizer.from_pretrained(str(stage0_dir / "model"))
    data = WorldData.load(data_dir)
    result: dict[str, Any] = {"probes": probe_features(model, data, clips)}
    if model.config.with_audio and model.imagebind_vision is not None:
        result["binding"] = binding(model, data, clips)
    if (stage0_dir / PROJECTION_FILE).is_file():  # stage-0 folders written before the bridge was kept lack it
        bridge = load_bridge(stage0_dir, model)
        result["caption_loss"] = caption_loss_by_kind(model, tokenizer, bridge, data, max(1, clips // 3))
        result["picture_questions"] = picture_questions(model, tokenizer, bridge, data, clips)
        result["media_questions"] = media_questions(model, tokenizer, bridge, data, clips)
    return result


def format_probe(result: dict[str, Any]) -> str:
    lines = ["linear probes (held-out accuracy / majority rate):"]
    for part, probes in result["probes"].items():
        cells = ", ".join(f"{name} {p['accuracy']:.2f}/{p['majority']:.2f}" for name, p in probes.items())
        lines.append(f"  {part}: {cells}")
    bound = result.get("binding", {})
    if "cosine" in bound:  # absent in results saved before it was measured, or with too few pairs
        lines.append(f"binding ({bound['pairs']} audio windows with every source on screen; accuracy / majority rate):")
        for key, label in (("shapes_from_vision", "shapes shown, read from held-out frames' vision embeddings"),
                           ("shapes_heard_from_paired_frames", "shapes heard, the same read-out on the paired frames"),
                           ("shapes_heard_from_audio", "shapes heard, the same read-out on the audio embeddings")):
            lines.append(f"  {label}: {bound[key]['accuracy']:.2f}/{bound[key]['majority']:.2f}")
        near, cos = bound["nearest_frame_same_sources"], bound["cosine"]
        lines.append(f"  nearest frame to the audio shows the same sound sources: {near['rate']:.2f} (chance "
                     f"{near['chance']:.2f}); cosine to its own frame {cos['own_frame']:.2f}, to any {cos['any_frame']:.2f}")
    if "caption_loss" not in result:
        return "\n".join(lines + [f"(no {PROJECTION_FILE}: caption loss not measured)"])
    lines.append("caption loss by token kind (with the picture | zero prefix):")
    picture, zero = result["caption_loss"]["picture"], result["caption_loss"]["zero"]
    lines += [f"  {kind}: {picture[kind]:.3f} | {zero.get(kind, float('nan')):.3f}" for kind in picture]
    if "picture_questions" in result:  # absent in results saved before it was measured
        qa = result["picture_questions"]
        written = "text" in qa  # absent in results saved before it was measured
        lines.append("static questions about one frame, greedy accuracy (with the picture | zero picture | "
                     + ("description written out | " if written else "") + "chance):")
        lines += [f"  {q}: {qa['picture'][q]:.2f} | {qa['zero'][q]:.2f} | "
                  + (f"{qa['text'][q]:.2f} | " if written else "") + f"{qa['chance'][q]:.2f}" for q in qa["chance"]]
    if "media_questions" in result:  # absent in results saved before it was measured
        qa = result["media_questions"]
        lines.append("questions that need the clip, stand-in pictures in the chat form's slots (with the pictures | "
                     "video frames reversed | zero pictures | chance, questions):")
        lines += [f"  {f}: {qa['picture'][f]:.2f} | {qa['reversed'][f]:.2f} | {qa['zero'][f]:.2f} | "
                  f"{qa['chance'][f]:.2f}, {qa['questions'][f]}" for f in qa["chance"]]
    return "\n".join(lines)


def save_probe(result: dict[str, Any], path: str | Path) -> None:
    Path(path).write_text(json.dumps(result, indent=1) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stage0", required=True, help="a stage-0 folder (model/ + llama_proj.safetensors)")
    parser.add_argument("--data", required=True, help="the SynthAV folder it was trained on (held-out clips are its last)")
    parser.add_argument("--clips", type=int, default=300, help="held-out WebVid clips to probe on")
    parser.add_argument("--out", default=None, help="also write the numbers to this JSON file")
    args = parser.parse_args(argv)
    result = run_probe(args.stage0, args.data, clips=args.clips)
    print(format_probe(result))
    if args.out:
        save_probe(result, args.out)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
