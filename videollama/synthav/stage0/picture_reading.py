"""Stage-0 phases: the image Q-Former and the LLM learn to read pictures (BLIP-2-like generative pre-training).

With the ViT frozen, the Q-Former's query outputs go through a linear ``bridge`` into the LLM, which
generates a *frame description* after the picture and answers the one-turn media chats of
:data:`~.chats.CHAT_FORMS` (:class:`PictureLosses`). Unlike BLIP-2, the small LLM trains along, from
random weights, with its language-modelling loss beside: this is where it learns its language. Two
phases run in turn: :func:`train_image_encoder` (with the :class:`~.labels.SlotReadout` loss, clipped,
cosine decay) and :func:`train_picture_reading` (picture and text losses only, unclipped, constant rate).
Everything is frozen afterwards; the bridge is kept as MiniGPT-4's ``llama_proj``, which initialises the
video projection of VL stage 1. docs/synthav.md#diagnosis has the measurements behind each choice.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from ..world import WorldConfig
from .chats import VIDEO_FRAMES, ChatSampler, picture_chat, splice_prefix
from .labels import SlotReadout, slot_targets
from .loop import IGNORE_INDEX, caption_batch, lm_loss, train_loop
from .media_cache import FRAMES_PER_CLIP, MediaCache, normalize_frames
from .settings import Stage0Settings
from .world_data import frame_description


def frame_queries(model, images: Tensor) -> Tensor:
    """The image Q-Former's query outputs (N, Q, W) for normalised frames (N, 3, S, S); the ViT stays frozen."""
    with torch.no_grad():
        tokens = model.vision_model(pixel_values=images).last_hidden_state  # (N, P + 1, W)
    queries = model.image_query_tokens.expand(images.shape[0], -1, -1)
    return model.image_qformer(query_embeds=queries, encoder_hidden_states=tokens).last_hidden_state


@dataclass
class MediaChat:
    """One chat of a generative step: its token pieces, answer length and the (clip, frame) of each slot."""

    pieces: list[list[int]]
    answer_len: int
    slots: list[list[tuple[int, int]]]


class PictureLosses:
    """One step's LM losses of the generative phases: frame descriptions after the picture (BLIP-2's
    captioning form) and one-turn media chats (:data:`CHAT_FORMS`) with the pictures spliced in where the
    inference prompt puts the media.
    """

    def __init__(self, model, tokenizer, bridge: nn.Linear, cache: MediaCache, world: WorldConfig,
                 settings: Stage0Settings, rng: random.Random):
        self.model, self.tokenizer, self.bridge, self.cache, self.world = model, tokenizer, bridge, cache, world
        self.settings, self.rng = settings, rng
        self.sampler = ChatSampler(cache, world, rng, np.random.default_rng(settings.seed))
        self.embed = model.language_model.get_input_embeddings()

    def chat(self) -> MediaChat:
        draw = self.sampler.draw()
        pieces, answer_len = picture_chat(self.tokenizer, draw.system, draw.form.preamble, draw.question, draw.answer)
        c, f = draw.c, draw.f
        slots = [[(c, f)] if slot == "frame" else [(c, i) for i in VIDEO_FRAMES] for slot in draw.form.slots]
        return MediaChat(pieces, answer_len, slots)

    def step(self) -> tuple[list[tuple[int, int]], Tensor, Tensor, Tensor]:
        """(caption picks, their query outputs (B, Q, W), caption loss, chat loss) of a fresh random batch."""
        model, settings, cache, rng = self.model, self.settings, self.cache, self.rng
        n_clips = cache.frames.shape[0]
        picks = [(rng.randrange(n_clips), rng.randrange(FRAMES_PER_CLIP)) for _ in range(settings.vision_batch)]
        chats = [self.chat() for _ in range(settings.qa_batch)]
        frames = picks + [cf for chat in chats for slot in chat.slots for cf in slot]
        images = normalize_frames(torch.stack([cache.frames[c, f] for c, f in frames]))  # (B + F_chat, 3, S, S)
        query_out = frame_queries(model, images)  # (B + F_chat, Q, W)
        pictures = self.bridge(query_out)  # (B + F_chat, Q, D_llm)
        llm = model.language_model
        qa_loss = torch.zeros(())
        if chats:
            per_slot = iter(pictures[len(picks):].split([len(slot) for chat in chats for slot in chat.slots]))
            slot_pictures = [[next(per_slot).flatten(0, 1) for _ in chat.slots] for chat in chats]  # (n_frames * Q, D_llm) each
            # Two length buckets (the long default system prompt would pad every row to its length),
            # their mean losses weighted by answer tokens: the mean over the whole batch's answer tokens.
            order = sorted(range(len(chats)), key=lambda i: sum(map(len, chats[i].pieces)))
            answers = sum(ch.answer_len for ch in chats)
            for bucket in (order[: len(order) // 2], order[len(order) // 2:]):
                if not bucket:
                    continue
                qa_inputs, qa_mask, qa_labels = splice_prefix(
                    self.embed, [(chats[i].pieces, chats[i].answer_len) for i in bucket], [slot_pictures[i] for i in bucket])
                weight = sum(chats[i].answer_len for i in bucket) / answers
                qa_loss = qa_loss + weight * llm(inputs_embeds=qa_inputs, attention_mask=qa_mask, labels=qa_labels).loss
        query_out, pictures = query_out[: len(picks)], pictures[: len(picks)]
        captions = [frame_description(cache.scenes[c], cache.frame_index[c][f], self.world) for c, f in picks]
        prefix = pictures  # (B, Q, D_llm): the caption's picture goes first, as in BLIP-2
        ids, mask = caption_batch(self.tokenizer, captions)
        inputs = torch.cat([prefix, self.embed(ids)], dim=1)  # (B, Q + L, D_llm)
        attention = torch.cat([torch.ones(prefix.shape[:2], dtype=torch.long), mask], dim=1)
        labels = torch.cat([torch.full(prefix.shape[:2], IGNORE_INDEX), ids.masked_fill(mask == 0, IGNORE_INDEX)], 1)
        labels[:, prefix.shape[1]] = IGNORE_INDEX  # BOS is given, not predicted
        caption_loss = llm(inputs_embeds=inputs, attention_mask=attention, labels=labels).loss
        return picks, query_out, caption_loss, qa_loss

def _train_generative_parts(model, bridge: nn.Linear, trainable: bool) -> None:
    """(Un)freeze what both generative phases train: the image Q-Former, its query tokens, the bridge, the LLM."""
    for module in (model.image_qformer, model.language_model):
        module.requires_grad_(trainable).train(trainable)
    model.image_query_tokens.requires_grad_(trainable)
    bridge.requires_grad_(trainable)


def train_image_encoder(model, tokenizer, cache: MediaCache, world: WorldConfig, settings: Stage0Settings,
                        rng: random.Random, lm_batches: list[list[list[int]]]) -> tuple[float, nn.Linear]:
    """First generative phase: BLIP-2-like pre-training of the image Q-Former through the LLM, the ViT frozen.

    Unlike BLIP-2, the LLM trains here too, from random weights (at ``llm_lr``), with its
    language-modelling loss on ``lm_batches`` alongside: this is where it learns its language, and a small
    LLM pretrained on text alone does not learn to read soft prefix tokens (docs/synthav.md#diagnosis).
    Beside the frame descriptions, each step has ``qa_batch`` one-turn media chats (:data:`~.chats.CHAT_FORMS`),
    so the LLM learns to answer whatever is asked from the soft tokens: what the 7B chat LLMs and
    MiniGPT-4's image instruction tuning bring to the real recipe. The first four query outputs are also
    object slots, one per shape (:class:`~.labels.SlotReadout`, discarded afterwards): its direct gradient
    makes the queries attend to the objects, one object per token, so colour and shape reach the LLM, not
    only size and count. Everything trained here is frozen again afterwards, as in stages 1-2.

    Returns the mean of the last losses and the trained Q-Former -> LLM projection (``bridge``):
    MiniGPT-4's ``llama_proj`` in the real recipe, which initialises the video projection of VL stage 1.
    """
    llm = model.language_model
    bridge = nn.Linear(model.config.image_qformer.hidden_size, model.config.llm_hidden_size)
    model.vision_model.requires_grad_(False).eval()  # BLIP-2 trains its Q-Former on a frozen image encoder
    _train_generative_parts(model, bridge, True)
    readout = SlotReadout(model.config.image_qformer.hidden_size)  # queries 0-3: one object slot per shape
    params = list(model.image_qformer.parameters()) + [model.image_query_tokens] + list(bridge.parameters())
    params += list(readout.parameters())
    groups = [{"params": params, "lr": settings.vision_lr}, {"params": list(llm.parameters()), "lr": settings.llm_lr}]
    pad = tokenizer.pad_token_id or 0
    picture_losses = PictureLosses(model, tokenizer, bridge, cache, world, settings, rng)

    def step(_: int) -> Tensor:
        picks, query_out, caption_loss, qa_loss = picture_losses.step()
        present, attributes = zip(*(slot_targets(cache.scenes[c], cache.frame_index[c][f], world) for c, f in picks))
        readout_loss = readout.loss(query_out, torch.stack(present), torch.stack(attributes))
        text_loss = lm_loss(llm, rng.choice(lm_batches), pad)
        return caption_loss + qa_loss + text_loss + readout_loss

    loss = train_loop("image-encoder", settings.vision_steps, step, groups, settings.vision_lr, settings)
    _train_generative_parts(model, bridge, False)
    return loss, bridge


def train_picture_reading(model, tokenizer, bridge: nn.Linear, cache: MediaCache, world: WorldConfig,
                          settings: Stage0Settings, rng: random.Random, lm_batches: list[list[list[int]]]) -> float:
    """Second generative phase: the picture losses and the LLM's own text loss, no read-out, unclipped, at a
    constant rate.

    It trains what the first phase trains (the Q-Former, its query tokens, the bridge in place, the LLM)
    and is what teaches the LLM to read colour and shape from the picture; the text loss keeps its
    language (docs/synthav.md#diagnosis has the measurements).
    """
    llm = model.language_model
    _train_generative_parts(model, bridge, True)
    params = list(model.image_qformer.parameters()) + [model.image_query_tokens] + list(bridge.parameters())
    groups = [{"params": params, "lr": settings.vision_lr}, {"params": list(llm.parameters()), "lr": settings.llm_lr}]
    picture_losses = PictureLosses(model, tokenizer, bridge, cache, world, settings, rng)
    pad = tokenizer.pad_token_id or 0

    def step(_: int) -> Tensor:
        _, _, caption_loss, qa_loss = picture_losses.step()
        text_loss = lm_loss(llm, rng.choice(lm_batches), pad)
        return caption_loss + qa_loss + text_loss

    loss = train_loop("picture-reading", settings.reading_steps, step, groups, settings.vision_lr, settings,
                 clip_norm=None, cosine=False)
    _train_generative_parts(model, bridge, False)
    return loss

