"""Training text: hand-worked label masks for caption mode, vicuna_v0 and llama_2, and collate."""

from __future__ import annotations

import pytest
import torch

from videollama.tokenizer import AUDIO_PLACEHOLDER, IMAGE_PLACEHOLDER, train_tiny_tokenizer
from videollama.train.text import (
    ALIGNMENT_IMAGE_PROMPTS,
    IGNORE_INDEX,
    LLAMA2_PROMPT_TEMPLATE,
    VICUNA_PROMPT_TEMPLATE,
    Turn,
    blip_caption,
    collate,
    encode_caption,
    encode_conversation,
    media_block,
    render_llama_2,
    render_vicuna_v0,
)


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return train_tiny_tokenizer(tmp_path_factory.mktemp("tok"))


def supervised_spans(tok, encoded) -> list[str]:
    """Decode each maximal run of supervised positions."""
    spans, current = [], []
    for token, label in zip(encoded.input_ids.tolist(), encoded.labels.tolist()):
        if label != IGNORE_INDEX:
            assert label == token  # labels are the ids themselves where supervised
            current.append(token)
        elif current:
            spans.append(current)
            current = []
    if current:
        spans.append(current)
    return [tok.decode(s) for s in spans]


def conversation(n_media: int = 2) -> list[Turn]:
    return [
        Turn("human", media_block("video", IMAGE_PLACEHOLDER, n_media) + " what is it?"),
        Turn("gpt", "a dog."),
        Turn("human", "and then?"),
        Turn("gpt", "it runs."),
    ]


def test_blip_caption_matches_official_rules():
    assert blip_caption('  A Dog!! (running) "fast": on; the~beach #1.  ') == "a dog running fast on the beach 1"
    assert blip_caption("word " * 60) == " ".join(["word"] * 50)
    assert blip_caption("tab\tstays") == "tab\tstays"  # only runs of 2+ whitespace collapse


def test_render_vicuna_and_llama2_text():
    turns = [Turn("human", "q1"), Turn("gpt", "a1"), Turn("human", "q2"), Turn("gpt", "a2")]
    text, header, pieces = render_vicuna_v0(turns)
    assert text == "\n\n###Human: q1\n###Assistant: a1\n###Human: q2\n###Assistant: a2\n###"
    assert header == "\n\n" and pieces[1] == "###Assistant: a1\n"
    assert render_llama_2(turns) == "[INST] <<SYS>>\n \n<</SYS>>\n\nq1 [/INST] a1 </s><s>[INST] q2 [/INST] a2 </s>"
    # A leading assistant message is dropped (official); non-alternating roles are refused.
    assert render_llama_2([Turn("gpt", "hi")] + turns).startswith("[INST] <<SYS>>")
    with pytest.raises(ValueError, match="alternating"):
        render_llama_2([Turn("human", "a"), Turn("human", "b")])


def test_vicuna_v0_mask_hand_worked(tok):
    """Worked by hand from the tiny tokenizer's pieces (BOS-counted per piece, the official drift).

    header "\\n\\n" alone = [BOS, '▁', '\\n', '\\n'] -> 4 masked. Turn 1 (human) alone = 24 tokens
    (BOS + '▁###' ... '\\n'), so positions 4+2 .. 4+24 are masked: '###','Hum' of the real text stay
    supervised and the mask runs one token into the next turn ('###' of "###Assistant").
    Turn 2 (gpt) alone = 10 tokens -> next human turn starts at 38, first 2 tokens ('an', ':')
    supervised, masked to 48, which swallows '###','A','ssistant' of the last turn.
    """
    encoded = encode_conversation(tok, conversation(), "vicuna_v0")
    ids = encoded.input_ids.tolist()
    assert ids[0] == tok.bos_token_id
    assert ids.count(tok.convert_tokens_to_ids(IMAGE_PLACEHOLDER)) == 2
    assert supervised_spans(tok, encoded) == ["###Hum", "Assistant: a dog.\n###Human:", ": it runs.\n###"]
    labels = encoded.labels.tolist()
    assert labels[:4] == [IGNORE_INDEX] * 4 and labels[4] != IGNORE_INDEX
    assert (encoded.labels != IGNORE_INDEX).sum() == 2 + 12 + 8


def test_vicuna_v0_matches_literal_official_algorithm(tok):
    """Same result as a literal transcription of LLaVA-v0 preprocess/_mask_targets."""
    turns = conversation(3) + [Turn("human", "why?"), Turn("gpt", "because it is a dog.")]
    header = "\n\n"
    pieces = ["###" + {"human": "Human", "gpt": "Assistant"}[t.role] + ": " + t.text + "\n" for t in turns]
    full = [tok.bos_token_id] + tok.encode(header + "".join(pieces) + "###", add_special_tokens=False)
    target = torch.tensor(full)
    lens = [1 + len(tok.encode(p, add_special_tokens=False)) for p in [header] + pieces]
    cur = lens[0]
    target[:cur] = IGNORE_INDEX
    for length, turn in zip(lens[1:], turns):
        if turn.role == "human":
            target[cur + 2 : cur + length] = IGNORE_INDEX
        cur += length
    encoded = encode_conversation(tok, turns, "vicuna_v0")
    assert encoded.input_ids.tolist() == full
    assert torch.equal(encoded.labels, target)


def test_llama2_mask_hand_worked(tok):
    """Round 1: instruction '[INST] ... [/INST] ' alone = BOS + n tokens ending in the trailing '▁';
    n + 1 - 2 masks exactly through ']' so ' a dog. </s>' is supervised. Round 2 starts with '<s>'
    (BOS text) and is masked through its '[/INST]' the same way."""
    encoded = encode_conversation(tok, conversation(), "llama_2")
    tokens = tok.convert_ids_to_tokens(encoded.input_ids.tolist())
    assert tokens[0] == "<s>" and tokens[-1] == "</s>"
    assert supervised_spans(tok, encoded) == ["a dog. </s>", "it runs. </s>"]
    # token by token: exactly the answer tokens and each round's </s> are supervised
    supervised = [t for t, l in zip(tokens, encoded.labels.tolist()) if l != IGNORE_INDEX]
    assert supervised == ["▁a", "▁d", "og", ".", "▁", "</s>", "▁it", "▁r", "u", "ns", ".", "▁", "</s>"]


def test_llama2_truncation_masks_tail(tok):
    encoded = encode_conversation(tok, conversation(), "llama_2", max_len=30)
    assert len(encoded.input_ids) == 30
    assert (encoded.labels != IGNORE_INDEX).sum() == 0  # answer cut away: nothing to learn


def test_caption_mode_stage1_and_stage2(tok):
    image_id = tok.convert_tokens_to_ids(IMAGE_PLACEHOLDER)
    stage1 = encode_caption(tok, "a red circle", media_token_id=image_id, num_media_tokens=3, end_sym="\n",
                            max_txt_len=32)
    ids = stage1.input_ids.tolist()
    assert ids[:4] == [tok.bos_token_id] + [image_id] * 3
    assert stage1.labels[:4].tolist() == [IGNORE_INDEX] * 4
    assert supervised_spans(tok, stage1) == ["a red circle\n"]

    prompt = VICUNA_PROMPT_TEMPLATE.format(ALIGNMENT_IMAGE_PROMPTS[0])
    stage2 = encode_caption(tok, "a red circle", media_token_id=image_id, num_media_tokens=3, end_sym="###",
                            max_txt_len=32, prompt=prompt)
    assert supervised_spans(tok, stage2) == ["a red circle###"]
    # prompt pieces are tokenised separately around the media, without special tokens
    before = tok.encode("###Human: <Image>", add_special_tokens=False)
    assert stage2.input_ids.tolist()[: 1 + len(before) + 3] == [tok.bos_token_id] + before + [image_id] * 3

    cut = encode_caption(tok, "the video shows a red circle moving", media_token_id=image_id, num_media_tokens=3,
                         end_sym="\n", max_txt_len=4, prompt=LLAMA2_PROMPT_TEMPLATE.format("<ImageHere> hi"))
    assert (cut.labels != IGNORE_INDEX).sum() == 4  # caption side truncated to max_txt_len


def test_audio_placeholder_in_conversation(tok):
    audio_id = tok.convert_tokens_to_ids(AUDIO_PLACEHOLDER)
    turns = [Turn("human", media_block("image", AUDIO_PLACEHOLDER, 8) + " what?"), Turn("gpt", "yes.")]
    encoded = encode_conversation(tok, turns, "llama_2")
    positions = (encoded.input_ids == audio_id).nonzero().flatten().tolist()
    assert len(positions) == 8 and positions == list(range(positions[0], positions[0] + 8))


def test_collate_padding_and_attention_masks():
    a = {"input_ids": torch.tensor([1, 5, 0, 7]), "labels": torch.tensor([-100, 5, 0, 7]),
         "frames": torch.zeros(8, 3, 4, 4), "dataset": "x", "index": 3,
         "skip_report": {"dataset": "x", "attempted": 2, "reasons": ["record 2: bad"]}}
    b = {"input_ids": torch.tensor([1, 6]), "labels": torch.tensor([-100, 6]), "frames": torch.ones(8, 3, 4, 4),
         "dataset": "x", "index": 4, "skip_report": {"dataset": "x", "attempted": 1, "reasons": []}}
    batch = collate([a, b])
    assert batch["input_ids"].tolist() == [[1, 5, 0, 7], [1, 6, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 5, 0, 7], [-100, 6, -100, -100]]
    # by length: the real id-0 token at position 2 of sample a stays visible
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert batch["pixel_values"].shape == (2, 8, 3, 4, 4)
    assert batch["skip_reports"][0]["attempted"] == 2
    official = collate([a, b], mask_pad_by_length=False, media_key="visual_audio_values")
    assert official["attention_mask"].tolist() == [[1, 1, 0, 1], [1, 1, 0, 0]]  # ids != 0 hides it
    assert "visual_audio_values" in official
    c = dict(b, frames=torch.ones(1, 3, 4, 4))
    assert isinstance(collate([a, c])["pixel_values"], list)  # different frame counts: kept as a list
