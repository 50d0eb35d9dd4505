"""Model presets: numbers only.

``videollama2-7b`` / ``videollama2-13b`` are the official Video-LLaMA-2 architectures (LLaMA-2-chat
7B/13B); ``tiny`` is a few-hundred-thousand-parameter model with the same structure, for tests and
for the offline demo before a trained model is available.
"""

from __future__ import annotations

from .config import ImageBindConfig, QFormerConfig, VideoLlamaConfig, VisionConfig

LLAMA2_VOCAB = 32000
LLAMA2_CONTEXT = 4096


def llama_config(*, hidden: int, intermediate: int, layers: int, heads: int, kv_heads: int | None = None,
                 vocab_size: int = LLAMA2_VOCAB, max_positions: int = LLAMA2_CONTEXT) -> dict:
    """A LLaMA ``config.json`` dict (LLaMA-2's norm, RoPE, activation and special-token ids) at the given sizes;
    ``kv_heads`` defaults to ``heads`` (no grouped-query attention, as in LLaMA-2 7B/13B)."""
    return {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "vocab_size": vocab_size,
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": heads if kv_heads is None else kv_heads,
        "max_position_embeddings": max_positions,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
        "tie_word_embeddings": False,
    }


def videollama2_7b() -> VideoLlamaConfig:
    return VideoLlamaConfig(llm=llama_config(hidden=4096, intermediate=11008, layers=32, heads=32), template="llama_2")


def videollama2_13b() -> VideoLlamaConfig:
    return VideoLlamaConfig(llm=llama_config(hidden=5120, intermediate=13824, layers=40, heads=40), template="llama_2")


def tiny(vocab_size: int = 512) -> VideoLlamaConfig:
    """Same structure as the 7B model at toy widths (every branch, every kind of layer)."""
    vision = VisionConfig(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2, image_size=224, patch_size=14)
    return VideoLlamaConfig(
        vision=vision,
        image_qformer=QFormerConfig(num_layers=2, hidden_size=32, num_heads=2, intermediate_size=64,
                                    encoder_width=32, cross_attention_every=2, num_queries=32),
        video_qformer=QFormerConfig(num_layers=2, hidden_size=32, num_heads=2, intermediate_size=64,
                                    encoder_width=32, cross_attention_every=1, num_queries=32),
        imagebind=ImageBindConfig(embed_dim=48, audio_width=32, audio_layers=2, audio_heads=2,
                                  vision_width=32, vision_layers=2, vision_heads=2),
        audio_qformer=QFormerConfig(num_layers=2, hidden_size=32, num_heads=2, intermediate_size=64,
                                    encoder_width=48, cross_attention_every=1, num_queries=8),
        with_imagebind_vision=True,
        llm=llama_config(hidden=64, intermediate=128, layers=2, heads=4, kv_heads=2, vocab_size=vocab_size,
                         max_positions=2048),
        template="llama_2",
    )


PRESETS = {
    "videollama2-7b": videollama2_7b,
    "videollama2-13b": videollama2_13b,
    "tiny": tiny,
}


def get_preset(name: str) -> VideoLlamaConfig:
    try:
        return PRESETS[name]()
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None
