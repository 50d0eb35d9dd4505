"""Tokenizer helpers: media placeholder tokens and a tiny LLaMA-style tokenizer for tests.

The official code adds ``<ImageHere>`` and ``<AudioHere>`` as special tokens *without* resizing the
LLM's embedding matrix (ids 32000 and 32001 for LLaMA). The model swaps those ids out before the
embedding lookup and writes media features into their positions, so the LLM stays untouched.
"""

from __future__ import annotations

from pathlib import Path

IMAGE_PLACEHOLDER = "<ImageHere>"
AUDIO_PLACEHOLDER = "<AudioHere>"


def add_media_tokens(tokenizer) -> tuple[int, int]:
    """Make sure both placeholders are single special tokens; return their ids (image, audio)."""
    missing = [t for t in (IMAGE_PLACEHOLDER, AUDIO_PLACEHOLDER) if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
    if tokenizer.pad_token is None:
        # LLaMA convention (and the official code): pad with unk, id 0.
        tokenizer.pad_token = tokenizer.unk_token
    image_id, audio_id = tokenizer.convert_tokens_to_ids([IMAGE_PLACEHOLDER, AUDIO_PLACEHOLDER])
    return image_id, audio_id


_TINY_CORPUS = """\
the video shows a red circle moving from left to right .
a blue square appears and then a green triangle disappears .
what is making the sound ? a dog is barking . a bell rings twice .
describe the video in detail . the man is playing a guitar on a stage .
### Human : what happens in this video ? ### Assistant : a person walks into the room .
[INST] <<SYS>> you are a helpful assistant . <</SYS>> what color is the ball ? [/INST] it is yellow . </s>
close your eyes , open your ears and you imagine only based on the sound that .
close your ears , open your eyes and you see that . now answer my question based on what you have just seen and heard .
the video contains 8 frames sampled at 0.0 , 0.5 , 1.0 , 1.5 , 2.0 , 2.5 , 3.0 , 3.5 seconds .
yes no one two three four five six seven eight nine ten up down left right before after
"""


def train_tiny_tokenizer(out_dir: str | Path, vocab_size: int = 500, corpus: str | None = None):
    """Train a byte-fallback BPE sentencepiece tokenizer (LLaMA layout) in well under a second.

    Returns a transformers tokenizer with the media placeholders added and saved in ``out_dir``.
    """
    import sentencepiece as spm
    from transformers import LlamaTokenizer

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = (corpus or _TINY_CORPUS).splitlines()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines * 20),
        model_prefix=str(out_dir / "tokenizer"),
        vocab_size=vocab_size,
        model_type="bpe",
        byte_fallback=True,
        character_coverage=1.0,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        split_digits=True,
        normalization_rule_name="identity",
        hard_vocab_limit=False,
        minloglevel=2,
    )
    tokenizer = LlamaTokenizer.from_pretrained(str(out_dir))
    add_media_tokens(tokenizer)
    tokenizer.save_pretrained(str(out_dir))
    return tokenizer
