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

    videollama synthav probe --stage0 runs/synthav/s0/stage0 --data runs/synthav/s0/data
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .annotate import applicable
from .evaluate import match_choice
from .stage0 import PICTURE_PREAMBLES, PROJECTION_FILE, POSITION_BINS, TRAIN_SYSTEM, WorldData, _bin, _caption_batch, \
    _normalize, decode_media, frame_description, frame_queries, picture_chat, splice_prefix
from .world import COLOURS, SHAPES, SIZES

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
            image = _normalize(cache.frames[c, f][None])  # (1, 3, S, S)
            feats["image_qformer"].append(frame_queries(model, image).flatten())
            if model.imagebind_vision is not None:
                feats["imagebind_vision"].append(model.imagebind_vision(image)[0])
            x, _ = obj.centres(data.world.num_frames)[frame]
            for name, value in (("colour", obj.colour), ("shape", obj.shape), ("size", obj.size),
                                ("column", str(_bin(x, data.world.size)))):
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
        queries = frame_queries(model, _normalize(cache.frames[c]))  # (8, Q, W)
        ids, mask = _caption_batch(tokenizer, captions)  # (8, L)
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
            queries = frame_queries(model, _normalize(cache.frames[c, f][None]))  # (1, Q, W)
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


def load_bridge(stage0_dir: Path, model) -> torch.nn.Linear:
    from safetensors.torch import load_file

    state = load_file(str(stage0_dir / PROJECTION_FILE))
    weight = state["llama_proj.weight"]  # (D_llm, W)
    bridge = torch.nn.Linear(weight.shape[1], weight.shape[0])
    bridge.load_state_dict({"weight": weight, "bias": state["llama_proj.bias"]})
    return bridge.to(model.dtype)


def run_probe(stage0_dir: str | Path, data_dir: str | Path, clips: int = 300) -> dict[str, Any]:
    """Both measurements for a stage-0 folder (``model/`` + ``llama_proj.safetensors``)."""
    from transformers import AutoTokenizer

    from ..model import VideoLlama

    stage0_dir = Path(stage0_dir)
    model = VideoLlama.from_pretrained(stage0_dir / "model").eval()
    tokenizer = AutoTokenizer.from_pretrained(str(stage0_dir / "model"))
    data = WorldData.load(data_dir)
    result: dict[str, Any] = {"probes": probe_features(model, data, clips)}
    if (stage0_dir / PROJECTION_FILE).is_file():  # stage-0 folders written before the bridge was kept lack it
        bridge = load_bridge(stage0_dir, model)
        result["caption_loss"] = caption_loss_by_kind(model, tokenizer, bridge, data, max(1, clips // 3))
        result["picture_questions"] = picture_questions(model, tokenizer, bridge, data, clips)
    return result


def format_probe(result: dict[str, Any]) -> str:
    lines = ["linear probes (held-out accuracy / majority rate):"]
    for part, probes in result["probes"].items():
        cells = ", ".join(f"{name} {p['accuracy']:.2f}/{p['majority']:.2f}" for name, p in probes.items())
        lines.append(f"  {part}: {cells}")
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
    return "\n".join(lines)


def save_probe(result: dict[str, Any], path: str | Path) -> None:
    Path(path).write_text(json.dumps(result, indent=1) + "\n")
