"""Training text: caption cleaning, conversation rendering, label masks and batch collation.

Everything here reproduces the official Video-LLaMA training text token for token (see
``docs``/the reference, section 4). Two modes:

* **caption mode** (stage 1, and the ``cc_sbu_align`` set in stage 2)::

      [BOS] + prompt_before + <placeholder> x N + prompt_after + caption + end_sym

  The official model tokenises ``prompt_before``/``prompt_after`` and ``caption + end_sym``
  separately without special tokens, truncates the caption side to ``max_txt_len`` and supervises
  only the caption side. Stage 1 has no prompt (``[BOS] + media + caption``).

* **conversation mode** (stage 2 instruction data), templates ``vicuna_v0`` and ``llama_2``:

  - ``vicuna_v0``: ``"\\n\\n" + "###Human: q\\n###Assistant: a\\n" ... + "###"``, tokenised with
    BOS and truncated to 512 tokens. Masks follow LLaVA-v0's ``_mask_targets``: turn lengths are
    measured by tokenising each piece *separately with its own BOS*, the header is masked and each
    human turn is masked except its first 2 tokens. Because every piece is counted with an extra
    BOS, the offsets drift by one token per turn: this is the official behaviour ("slightly off
    by design") and is reproduced on purpose so losses are comparable with the released models.
  - ``llama_2``: ``"[INST] <<SYS>>\\n \\n<</SYS>>\\n\\n{q1} [/INST] {a1} </s><s>[INST] {q2}
    [/INST] {a2} </s>"`` with BOS. The official mask: BOS, then per round (split on ``</s>``)
    ``len(tok(before "[/INST] ")) - 2`` tokens, where every length includes a BOS; anything after
    the last round is masked.

Placeholders (``<ImageHere>`` / ``<AudioHere>``) are single special tokens of the tokenizer, so
``"<ImageHere>" * N`` in the text becomes exactly N ids. The model later writes media features at
those positions.

BOS is prepended explicitly (``[bos_token_id] + encode(text, add_special_tokens=False)``) rather
than trusting ``tokenizer(text)``: some tokenizer exports do not add it, and the official slow
LLaMA tokenizer always did. Run ``pytest tests/test_train_text.py`` for the hand-worked examples.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from videollama.templates import AUDIO_SENTENCE, join_question
from videollama.tokenizer import AUDIO_PLACEHOLDER

from .config import ConfigError

__all__ = [
    "IGNORE_INDEX",
    "OFFICIAL_CONVERSATION_MAX_LEN",
    "ALIGNMENT_IMAGE_PROMPTS",
    "AUDIO_CAPTION_PROMPTS",
    "NAMED_PROMPTS",
    "PROMPT_MEDIA_MARKER",
    "VICUNA_PROMPT_TEMPLATE",
    "LLAMA2_PROMPT_TEMPLATE",
    "TEMPLATES",
    "Turn",
    "EncodedText",
    "blip_caption",
    "media_block",
    "render_vicuna_v0",
    "render_llama_2",
    "encode_caption",
    "encode_conversation",
    "collate",
]

IGNORE_INDEX = -100  # label value that ``CrossEntropyLoss`` skips
AUDIO_SAMPLE_KEY = "audio"  # a sample's real-audio features (audio_data.py)
AUDIO_BATCH_KEY = "audio_values"  # ... batched as VideoLlama.forward's argument
AV_AUDIO_KEY = "av_audio"  # an audio-visual sample's sound, per clip or window (data.py), batched under AUDIO_BATCH_KEY too
OFFICIAL_CONVERSATION_MAX_LEN = 512  # hard-coded max_length of the official instruct datasets
CAPTION_MAX_WORDS = 50  # blip_caption default
TEMPLATES = ("vicuna_v0", "llama_2")
Template = Literal["vicuna_v0", "llama_2"]

# The official prompt files mark the media position with ``<ImageHere>`` (one occurrence); we
# split there and insert N placeholder ids of the branch being trained.
PROMPT_MEDIA_MARKER = "<ImageHere>"
# ``prompts/alignment_image.txt`` of the official repository (stage-2 cc_sbu_align prompts).
ALIGNMENT_IMAGE_PROMPTS = (
    "<Image><ImageHere></Image> Describe this image in detail.",
    "<Image><ImageHere></Image> Take a look at this image and describe what you notice.",
    "<Image><ImageHere></Image> Please provide a detailed description of the picture.",
    "<Image><ImageHere></Image> Could you describe the contents of this image for me?",
)
# Audio captions asked as inference asks about a sound: the official audio message (one space, as the
# demo's ``ask()``), then a request for a description. Not from the official repository (it trained the
# audio branch on images only); the marker becomes the 8 <AudioHere> of the audio branch.
AUDIO_CAPTION_PROMPTS = tuple(
    join_question(AUDIO_SENTENCE.replace(AUDIO_PLACEHOLDER, PROMPT_MEDIA_MARKER), question)
    for question in (
        "Describe what you hear.",
        "What sounds can you hear in this audio?",
        "Describe the sounds in this recording in one sentence.",
        "Listen and describe the audio.",
    )
)
NAMED_PROMPTS = {"alignment_image": ALIGNMENT_IMAGE_PROMPTS, "audio_caption": AUDIO_CAPTION_PROMPTS}
VICUNA_PROMPT_TEMPLATE = "###Human: {} ###Assistant: "
LLAMA2_PROMPT_TEMPLATE = "[INST] <<SYS>>\n \n<</SYS>>\n\n{} [/INST] "

# Vicuna v0 (LLaVA-v0 ``_add_speaker_and_signal``) pieces.
_VICUNA_SYSTEM = ""
_VICUNA_BEGIN = "###"
_VICUNA_END = "\n"
_VICUNA_ROLES = {"human": "Human", "gpt": "Assistant"}
_VICUNA_HUMAN_KEEP = 2  # tokens at the start of each human turn left supervised (official quirk)
# LLaMA-2 chat pieces (Conversation(system=" ", sep="<s>", sep2="</s>")).
_LLAMA2_SYSTEM = " "
_LLAMA2_SEP = "<s>"
_LLAMA2_SEP2 = "</s>"
_LLAMA2_INST_END = "[/INST] "
_LLAMA2_SPECIALS_IN_INSTRUCTION = 2  # the official "- 2" (BOS + the trailing-space token)

_BLIP_PUNCT = re.compile(r"([.!\"()*#:;~])")
_BLIP_SPACES = re.compile(r"\s{2,}")


@dataclass(frozen=True)
class Turn:
    """One conversation message. ``role`` is ``"human"`` or ``"gpt"`` (LLaVA naming)."""

    role: str
    text: str


@dataclass
class EncodedText:
    """Token ids and labels of one sample, both ``(L,)`` int64; labels are ``IGNORE_INDEX`` where unsupervised."""

    input_ids: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        if self.input_ids.shape != self.labels.shape:
            raise ValueError(f"input_ids {tuple(self.input_ids.shape)} and labels {tuple(self.labels.shape)} differ")


# ---------------------------------------------------------------------------------------------- text
def blip_caption(caption: str, max_words: int = CAPTION_MAX_WORDS) -> str:
    """The official ``blip_caption`` processor: lowercase, ``[.!"()*#:;~]`` -> space, collapse, cut.

    Only runs of 2+ whitespace characters are collapsed (a single tab stays), as in the original.
    """
    caption = _BLIP_PUNCT.sub(" ", caption.lower())
    caption = _BLIP_SPACES.sub(" ", caption)
    caption = caption.rstrip("\n").strip(" ")
    words = caption.split(" ")
    if len(words) > max_words:
        caption = " ".join(words[:max_words])
    return caption


def media_block(kind: Literal["video", "image"], placeholder: str, count: int) -> str:
    """``<Video>`` + placeholder x count + ``</Video>`` (or ``<Image>``...), as the instruct datasets write it."""
    tag = {"video": "Video", "image": "Image"}[kind]
    return f"<{tag}>{placeholder * count}</{tag}>"


def render_vicuna_v0(turns: Sequence[Turn]) -> tuple[str, str, list[str]]:
    """Return ``(conversation, header, pieces)``: the full text, its header and one piece per turn.

    Unknown roles are rendered as ``"unknown"`` like the original (and are never masked).
    """
    header = f"{_VICUNA_SYSTEM}\n\n"
    pieces = [
        f"{_VICUNA_BEGIN}{_VICUNA_ROLES.get(t.role.lower(), 'unknown')}: {t.text}{_VICUNA_END}" for t in turns
    ]
    return header + "".join(pieces) + _VICUNA_BEGIN, header, pieces


def render_llama_2(turns: Sequence[Turn]) -> str:
    """LLaMA-2 chat text as the official ``preprocess_for_llama_v2`` builds it (BOS not included).

    A leading assistant turn is dropped; roles must then alternate human/assistant.
    """
    turns = list(turns)
    if turns and turns[0].role != "human":
        turns = turns[1:]
    if not turns:
        raise ValueError("conversation has no human turn")
    text = ""
    for i, turn in enumerate(turns):
        expected = "human" if i % 2 == 0 else "gpt"
        if turn.role != expected:
            raise ValueError(f"turn {i} is from {turn.role!r}; llama_2 needs alternating human/gpt turns")
        message = turn.text
        if not message:
            if i == 0:
                raise ValueError("the first human message is empty")
            continue  # the original renders nothing for an empty message
        if i == 0:
            message = f"<<SYS>>\n{_LLAMA2_SYSTEM}\n<</SYS>>\n\n{message}"
        if i % 2 == 0:
            text += f"{_LLAMA2_SEP}[INST] {message} [/INST]"
        else:
            text += f" {message} {_LLAMA2_SEP2}"
    # The original strips the leading "<s>" with ``str.lstrip("<s>")`` (a character set).
    return text.lstrip(_LLAMA2_SEP)


# ---------------------------------------------------------------------------------------------- tokens
def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False))


def _bos_encode(tokenizer, text: str, max_len: int) -> list[int]:
    """``tokenizer(text, max_length=max_len, truncation=True)`` of a LLaMA tokenizer: BOS + ids, cut."""
    return ([tokenizer.bos_token_id] + _encode(tokenizer, text))[:max_len]


def _pad_id(tokenizer) -> int:
    pad = tokenizer.pad_token_id
    return 0 if pad is None else int(pad)


def encode_caption(
    tokenizer,
    caption: str,
    *,
    media_token_id: int,
    num_media_tokens: int,
    end_sym: str,
    max_txt_len: int,
    prompt: str | None = None,
) -> EncodedText:
    """Caption-mode sample: ``[BOS] + prompt_before + media x N + prompt_after + caption + end_sym``.

    ``prompt`` is an already-templated string with exactly one ``<ImageHere>`` marker (e.g.
    ``"###Human: <Image><ImageHere></Image> Describe this image in detail. ###Assistant: "``), or
    None for stage 1. The caption side is truncated to ``max_txt_len`` tokens and is the only part
    supervised. Caption tokens equal to the pad id are unsupervised too (the official code masks
    ``ids == pad_token_id``, and pad is ``<unk>``).
    """
    if prompt:
        if prompt.count(PROMPT_MEDIA_MARKER) != 1:
            raise ConfigError(f"caption prompt must contain {PROMPT_MEDIA_MARKER} exactly once: {prompt!r}")
        before, after = prompt.split(PROMPT_MEDIA_MARKER)
        before_ids, after_ids = _encode(tokenizer, before), _encode(tokenizer, after)
    else:
        before_ids, after_ids = [], []
    caption_ids = _encode(tokenizer, caption + end_sym)[:max_txt_len]
    prefix = [tokenizer.bos_token_id] + before_ids + [media_token_id] * num_media_tokens + after_ids
    pad = _pad_id(tokenizer)
    input_ids = prefix + caption_ids
    labels = [IGNORE_INDEX] * len(prefix) + [IGNORE_INDEX if t == pad else t for t in caption_ids]
    return EncodedText(torch.tensor(input_ids, dtype=torch.long), torch.tensor(labels, dtype=torch.long))


def encode_conversation(
    tokenizer,
    turns: Sequence[Turn],
    template: Template,
    max_len: int = OFFICIAL_CONVERSATION_MAX_LEN,
) -> EncodedText:
    """Conversation-mode sample with the official label mask of ``template``."""
    if template == "vicuna_v0":
        return _encode_vicuna_v0(tokenizer, turns, max_len)
    if template == "llama_2":
        return _encode_llama_2(tokenizer, turns, max_len)
    raise ConfigError(f"unknown conversation template {template!r}; choose one of {TEMPLATES}")


def _encode_vicuna_v0(tokenizer, turns: Sequence[Turn], max_len: int) -> EncodedText:
    conversation, header, pieces = render_vicuna_v0(turns)
    input_ids = torch.tensor(_bos_encode(tokenizer, conversation, max_len), dtype=torch.long)
    labels = input_ids.clone()
    pad = _pad_id(tokenizer)

    def piece_len(text: str) -> int:
        # Official ``_tokenize_fn``: each piece with its own BOS, counting ids != pad.
        return sum(1 for t in _bos_encode(tokenizer, text, max_len) if t != pad)

    cur = piece_len(header)
    labels[:cur] = IGNORE_INDEX
    for turn, piece in zip(turns, pieces):
        length = piece_len(piece)
        if turn.role == "human":  # the original compares the raw role (no lower())
            labels[cur + _VICUNA_HUMAN_KEEP : cur + length] = IGNORE_INDEX
        cur += length
    return EncodedText(input_ids, labels)


def _encode_llama_2(tokenizer, turns: Sequence[Turn], max_len: int) -> EncodedText:
    conversation = render_llama_2(turns)
    input_ids = torch.tensor(_bos_encode(tokenizer, conversation, max_len), dtype=torch.long)
    labels = input_ids.clone()
    cur = 1  # BOS
    labels[:cur] = IGNORE_INDEX
    for round_text in conversation.split(_LLAMA2_SEP2):
        if round_text == "":
            break
        parts = round_text.split(_LLAMA2_INST_END)
        if len(parts) != 2:
            break
        instruction = parts[0] + _LLAMA2_INST_END
        round_len = 1 + len(_encode(tokenizer, round_text))  # BOS included, as ``len(tokenizer(rou))``
        instruction_len = 1 + len(_encode(tokenizer, instruction)) - _LLAMA2_SPECIALS_IN_INSTRUCTION
        if instruction_len > 0:
            labels[cur : cur + instruction_len] = IGNORE_INDEX
        cur += round_len
    labels[cur:] = IGNORE_INDEX
    return EncodedText(input_ids, labels)


# ---------------------------------------------------------------------------------------------- batches
def collate(
    samples: Sequence[dict[str, Any]],
    *,
    pad_id: int = 0,
    mask_pad_by_length: bool = True,
    media_key: str = "pixel_values",
) -> dict[str, Any]:
    """Right-pad a list of samples into a batch.

    Each sample has ``input_ids`` and ``labels`` (``(L,)``) and either ``frames`` ``(T, 3, H, W)``
    or ``audio`` ``(8, 1, 128, 204)`` (real audio, :mod:`videollama.train.audio_data`). A long
    video's sample (``window_fps``, :mod:`videollama.train.data`) has ``frames`` as a list of
    windows ``(T_w, 3, H, W)``: then the batch's frames are a flat list of media items in reading
    order (sample by sample, window by window: the order the model fills the placeholders in). An
    audio-visual sample (``with_audio``) also has ``av_audio`` ``(W, 8, 1, 128, 204)``, one row per
    clip or window: the batch's rows are concatenated under ``audio_values`` ``(sum W, 8, 1, 128, 204)``
    and its frames go under ``pixel_values`` whatever ``media_key`` says (the vision branch reads
    them, also in an audio-branch run).
    Returns ``input_ids`` ``(B, L)`` padded with ``pad_id``, ``labels`` padded with -100,
    ``attention_mask`` ``(B, L)`` and the media: frames under ``media_key``, ``(B, T, 3, H, W)`` when
    all samples have the same shape, else a list (the model encodes groups of equal length); audio
    under ``audio_values`` ``(B, 8, 1, 128, 204)``, whatever the branch reads frames with. A batch
    is one dataset's, so it never mixes these kinds.

    ``mask_pad_by_length`` (default) builds the attention mask from the sequence lengths. The
    official collate uses ``input_ids != pad_id``, which also hides every *real* token whose id
    is 0 (``<unk>``, and placeholders the model zeroes before embedding do not matter here);
    pass ``False`` to get exactly that behaviour.

    Bookkeeping fields are carried along: ``dataset`` (names), ``index`` (record indices),
    ``step`` (sampler step, when present) and ``skip_reports`` (see
    :func:`videollama.train.data.merge_skip_reports`).
    """
    if not samples:
        raise ValueError("cannot collate an empty batch")
    lengths = torch.tensor([len(s["input_ids"]) for s in samples])
    batch_size, max_len = len(samples), int(lengths.max())
    input_ids = torch.full((batch_size, max_len), pad_id, dtype=torch.long)
    labels = torch.full((batch_size, max_len), IGNORE_INDEX, dtype=torch.long)
    for row, sample in enumerate(samples):
        n = len(sample["input_ids"])
        input_ids[row, :n] = sample["input_ids"]
        labels[row, :n] = sample["labels"]
    if mask_pad_by_length:
        attention_mask = (torch.arange(max_len)[None, :] < lengths[:, None]).long()  # (B, L)
    else:
        attention_mask = (input_ids != pad_id).long()
    audio = [AUDIO_SAMPLE_KEY in s for s in samples]
    if any(audio) and not all(audio):
        raise ValueError("a batch mixes audio samples and frame samples; a batch holds one dataset's samples")
    av_audio = [s[AV_AUDIO_KEY] for s in samples if AV_AUDIO_KEY in s]
    if av_audio and len(av_audio) != len(samples):
        raise ValueError("a batch mixes audio-visual samples and others; a batch holds one dataset's samples")
    if av_audio:
        media_key = "pixel_values"
    field, media_key = (AUDIO_SAMPLE_KEY, AUDIO_BATCH_KEY) if all(audio) else ("frames", media_key)
    frames = [s[field] for s in samples]
    if any(isinstance(f, (list, tuple)) for f in frames):  # long videos: every window is its own media item
        media: Any = [w for f in frames for w in (f if isinstance(f, (list, tuple)) else [f])]
    else:
        media = torch.stack(frames) if all(f.shape == frames[0].shape for f in frames) else frames
    batch: dict[str, Any] = {
        "input_ids": input_ids,
        "labels": labels,
        "attention_mask": attention_mask,
        media_key: media,
        "dataset": [s.get("dataset", "") for s in samples],
        "index": [int(s.get("index", -1)) for s in samples],
        "skip_reports": [s["skip_report"] for s in samples if "skip_report" in s],
    }
    if av_audio:
        batch[AUDIO_BATCH_KEY] = torch.cat(av_audio)  # (sum W, 8, 1, 128, 204), in reading order
    if "step" in samples[0]:
        batch["step"] = int(samples[0]["step"])
    return batch
