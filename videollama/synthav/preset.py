"""The SynthAV model size: numbers only.

A Video-LLaMA with every branch and every kind of layer of the 7B model, at widths that train on
2 CPU cores in about an hour (see ``docs/synthav.md``). Frames are 112x112 (the world's
native size, so no resizing), cut into 16x16 patches (7x7 = 49 patches + CLS).

    from videollama.synthav.preset import synthav_config
    config = synthav_config(vocab_size=tokenizer.vocab_size)
"""

from __future__ import annotations

from ..config import ImageBindConfig, QFormerConfig, VideoLlamaConfig, VisionConfig
from ..presets import llama_config

IMAGE_SIZE = 112
PATCH_SIZE = 16
WIDTH = 128  # every encoder and Q-Former
HEADS = 4
MLP = 256
LLM_WIDTH = 192
LLM_MLP = 512
LLM_LAYERS = 4
LLM_HEADS = 4
LLM_MAX_POSITIONS = 512
IMAGE_QUERIES = 8  # per frame; the video Q-Former reads 8 frames x 8 queries
VIDEO_QUERIES = 32  # official count (LLM tokens per video)
AUDIO_QUERIES = 8  # official count (LLM tokens per audio track)
EMBED_DIM = 128  # ImageBind-like shared space


def _qformer(encoder_width: int, num_queries: int, cross_every: int = 1) -> QFormerConfig:
    return QFormerConfig(num_layers=2, hidden_size=WIDTH, num_heads=HEADS, intermediate_size=MLP,
                         encoder_width=encoder_width, cross_attention_every=cross_every, num_queries=num_queries)


def synthav_config(vocab_size: int, *, use_frame_position: bool = True) -> VideoLlamaConfig:
    """The SynthAV model; ``use_frame_position=False`` is the ablation without frame positions."""
    return VideoLlamaConfig(
        vision=VisionConfig(hidden_size=WIDTH, intermediate_size=MLP, num_layers=3, num_heads=HEADS,
                            image_size=IMAGE_SIZE, patch_size=PATCH_SIZE),
        image_qformer=_qformer(WIDTH, IMAGE_QUERIES),
        video_qformer=_qformer(WIDTH, VIDEO_QUERIES),
        use_frame_position=use_frame_position,
        imagebind=ImageBindConfig(embed_dim=EMBED_DIM, audio_width=WIDTH, audio_layers=3, audio_heads=HEADS,
                                  audio_drop_path=0.0, vision_width=WIDTH, vision_layers=3, vision_heads=HEADS,
                                  image_size=IMAGE_SIZE, patch_size=PATCH_SIZE),
        audio_qformer=_qformer(EMBED_DIM, AUDIO_QUERIES),
        with_imagebind_vision=True,
        llm=llama_config(hidden=LLM_WIDTH, intermediate=LLM_MLP, layers=LLM_LAYERS, heads=LLM_HEADS,
                         vocab_size=vocab_size, max_positions=LLM_MAX_POSITIONS),
        template="llama_2",
    )
