"""Model presets: numbers only.

``videollama2-7b`` / ``videollama2-13b`` are the official Video-LLaMA-2 architectures (LLaMA-2-chat
7B/13B); ``tiny`` is a few-hundred-thousand-parameter model with the same structure, for tests and
for the offline demo before a trained model is available.
"""

from __future__ import annotations

from .config import ImageBindConfig, QFormerConfig, VideoLlamaConfig, VisionConfig


def _llama2_config(hidden: int, intermediate: int, layers: int, heads: int) -> dict:
    return {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "vocab_size": 32000,
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": heads,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
        "tie_word_embeddings": False,
    }


def videollama2_7b() -> VideoLlamaConfig:
    return VideoLlamaConfig(llm=_llama2_config(4096, 11008, 32, 32), template="llama_2")


def videollama2_13b() -> VideoLlamaConfig:
    return VideoLlamaConfig(llm=_llama2_config(5120, 13824, 40, 40), template="llama_2")


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
        llm={
            "model_type": "llama",
            "architectures": ["LlamaForCausalLM"],
            "vocab_size": vocab_size,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 2048,
            "rms_norm_eps": 1e-5,
            "hidden_act": "silu",
            "bos_token_id": 1,
            "eos_token_id": 2,
            "pad_token_id": 0,
            "tie_word_embeddings": False,
        },
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
