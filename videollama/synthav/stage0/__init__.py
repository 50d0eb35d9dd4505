"""Stage 0: train the parts users normally download, on the SynthAV world, then freeze them.

The real Video-LLaMA starts from downloaded weights: an LLM with its tokenizer, BLIP-2's EVA ViT +
Q-Former, and ImageBind's vision and audio encoders. None can be downloaded here, so stage 0 trains
small stand-ins with the project's own model code on a generated SynthAV folder, one module per phase,
run in this order by :func:`run_stage0`:

1. ``world_data``: a tiny tokenizer trained on the world's text; the LLM's documents (captions, frame
   descriptions, instruction chats in the ``llama_2`` template).
2. ``attributes``: dense supervised pretraining of BLIP-2's ViT (every patch tells the object under it
   and its own row and column); the ViT is then frozen.
3. ``picture_reading``: BLIP-2-like generative pre-training: the image Q-Former's outputs go through a
   linear bridge into the LLM, which generates frame descriptions and answers the media chats of
   ``chats`` (one form per inference prompt). The LLM trains along, from random weights, with its own
   text loss; the first four query outputs are object slots (``labels.SlotReadout``). The bridge is kept
   (``llama_proj.safetensors``) to initialise VL stage 1's video projection, as MiniGPT-4's does.
4. ``attributes`` again, for the ImageBind-like vision trunk; then ``binding``: image<->text contrastive
   for that trunk, then audio<->image contrastive for the audio encoder against the frozen images.

Frames and audio windows are decoded once (``media_cache``); every phase runs ``loop.train_loop``.
docs/synthav.md describes the recipe and holds the measurements behind each choice (#diagnosis).

    from videollama.synthav.stage0 import Stage0Settings, run_stage0
    run_stage0("data/synthav", "output/synthav/stage0", Stage0Settings(seed=0))
"""

from .binding import audio_image_pairs, train_audio_encoder, train_imagebind_vision
from .chats import (
    CHAT_FORMS,
    PICTURE_PREAMBLES,
    VIDEO_FRAMES,
    ChatForm,
    ChatSampler,
    picture_chat,
    sound_frames,
    splice_prefix,
)
from .labels import PHRASES, SlotReadout, patch_labels, presence_labels, slot_targets
from .media_cache import FRAMES_PER_CLIP, MediaCache, decode_media, normalize_frames
from .picture_reading import PictureLosses, frame_queries, train_image_encoder, train_picture_reading
from .run import PROJECTION_FILE, load_bridge, run_stage0, save_bridge
from .settings import Stage0Result, Stage0Settings
from .world_data import POSITION_BINS, TRAIN_SYSTEM, WorldData, frame_description, position_bin

__all__ = [
    "CHAT_FORMS", "FRAMES_PER_CLIP", "PHRASES", "PICTURE_PREAMBLES", "POSITION_BINS", "PROJECTION_FILE", "TRAIN_SYSTEM",
    "VIDEO_FRAMES", "ChatForm", "ChatSampler", "MediaCache", "PictureLosses", "SlotReadout", "Stage0Result",
    "Stage0Settings", "WorldData", "audio_image_pairs", "decode_media", "frame_description", "frame_queries",
    "load_bridge", "normalize_frames", "patch_labels", "picture_chat", "position_bin", "presence_labels", "run_stage0",
    "save_bridge", "slot_targets", "sound_frames", "splice_prefix", "train_audio_encoder", "train_image_encoder",
    "train_imagebind_vision", "train_picture_reading",
]
