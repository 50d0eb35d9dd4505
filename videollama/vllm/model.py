"""Video-LLaMA as a vLLM model: our media encoders in front of vLLM's own implementation of the LLM.

The encoders (EVA ViT, image and video Q-Formers, ImageBind audio, audio Q-Former, both projections)
are our ``VideoLlama`` modules built without a language model and loaded from the folder's tensors
under the same names; the language model is whatever vLLM registers for the folder's ``llm``
architecture (``LlamaForCausalLM`` for Video-LLaMA-2), so it gets paged attention, continuous
batching and tensor parallelism. The processor (``processing.py``) puts each item's placeholder ids in
the prompt; :meth:`embed_multimodal` returns per item what ``Pipeline`` scatters into them: 32 video
tokens for a video or an image, 8 audio tokens for an audio clip, and 8 audio then 32 video tokens for
a video with sound. A video read in windows (``processing.py``) is encoded window by window, as
``long_video.encode_video_file`` does (each window's frames through the ViT and both Q-Formers with frame
positions 0..k-1, its 8 clips through the audio branch): every window's 8 audio tokens, then every
window's 32 video tokens, the order its placeholders take in the prompt.

A video whose frames merge to fit its window budget arrives as its file (``media.MergedVideo``) and is read
here by ``Pipeline``'s own code (``long_video.encode_video_file``: window by window, the image-Q-Former
features through the merging memory, then the video Q-Former; each window's sound by its span). Its prompt
holds zero time labels, because the labels depend on what merged: :meth:`_read_merged` returns the token
embeddings of the real labels' digits at their places. The processor decoded every sampled frame first, so
the reading cannot fail here; a window whose span holds no sound (a track shorter than the video) hears
silence (``encode_window_audio(missing=...)``), where ``Pipeline`` would drop the sound and change the prompt,
which the engine cannot.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn
from vllm.config import VllmConfig
from vllm.model_executor.models.interfaces import MultiModalEmbeddings, SupportsMultiModal, SupportsPP
from vllm.model_executor.models.utils import init_vllm_registered_model, maybe_prefix
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.sequence import IntermediateTensors

from ..long_video import encode_video_file, encode_window_audio
from ..media import MediaError, audio_to_clips
from ..media.audio import CLIP_SECONDS, SAMPLE_RATE
from ..media.transforms import normalize
from ..media.windows import VideoSampling, WindowSpan
from ..model.checkpoint import ModelFolderError
from ..model.hf_config import VideoLlamaHFConfig
from ..model.videollama import VideoLlama
from ..tokenizer import AUDIO_PLACEHOLDER, IMAGE_PLACEHOLDER
from .media import merge_from_row
from .prompt import LABEL_DIGITS
from .processing import VideoLlamaDummyInputsBuilder, VideoLlamaMultiModalProcessor, VideoLlamaProcessingInfo

logger = logging.getLogger(__name__)

LANGUAGE_MODEL_PREFIX = "language_model."
INFERENCE_ONLY_PARTS = ("imagebind_vision",)  # trains the audio branch; never used to answer


@MULTIMODAL_REGISTRY.register_processor(VideoLlamaMultiModalProcessor, info=VideoLlamaProcessingInfo,
                                        dummy_inputs=VideoLlamaDummyInputsBuilder)
class VideoLlamaForConditionalGeneration(nn.Module, SupportsMultiModal, SupportsPP):
    @classmethod
    def get_placeholder_str(cls, modality: str, i: int) -> str | None:
        if modality in ("image", "video"):
            return IMAGE_PLACEHOLDER
        if modality == "audio":
            return AUDIO_PLACEHOLDER
        raise ValueError(f"Video-LLaMA reads image, video and audio inputs, not {modality!r}")

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = ""):
        super().__init__()
        hf_config: VideoLlamaHFConfig = vllm_config.model_config.hf_config
        # ImageBind's vision trunk only trains the audio branch: leave it out.
        self.config = dataclasses.replace(hf_config.model, with_imagebind_vision=False)
        modalities = set()  # the modalities the encoders serve (as VideoLlamaProcessingInfo's limits)
        if self.config.with_vision:
            modalities |= {"image", "video"}
        if self.config.with_audio:
            modalities.add("audio")
        with self._mark_tower_model(vllm_config, modalities):
            self.encoders = VideoLlama(self.config, with_language_model=False).eval()
        with self._mark_language_model(vllm_config):
            self.language_model = init_vllm_registered_model(
                vllm_config=vllm_config, hf_config=hf_config.text_config,
                prefix=maybe_prefix(prefix, "language_model"))
        self.make_empty_intermediate_tensors = self.language_model.make_empty_intermediate_tensors
        if self.config.image_token_id is None or self.config.audio_token_id is None:
            raise ValueError("config.json lacks image_token_id / audio_token_id: save the folder with a tokenizer")
        self.configure_mm_token_handling(hf_config.text_config.vocab_size,
                                         [self.config.image_token_id, self.config.audio_token_id])

    # ---------------------------------------------------------------- media -> embeddings
    @torch.inference_mode()
    def embed_multimodal(self, **kwargs: object) -> MultiModalEmbeddings:
        """One (tokens, D) tensor per item, in prompt order (one item per prompt, several prompts)."""
        out: list[torch.Tensor] = []
        if (images := kwargs.get("image_pixel_values")) is not None:
            out += [self.encoders.encode_video(self._cast(pixels)[None])[0] for pixels in images]
        if (videos := kwargs.get("video_pixel_values")) is not None:
            for frames, sizes, audio, file, merge, digit_ids in zip(
                    videos, kwargs["video_window_frames"], kwargs["video_audio_values"], kwargs["video_file"],
                    kwargs["video_merge"], kwargs["video_label_digit_ids"]):
                if (reading := merge_from_row(merge)) is not None:  # its frames merge: read the file here
                    out.append(self._read_merged_safely(file, *reading, digit_ids))
                    continue
                # frames (F, 3, S, S) uint8 -> windows of (k, 3, S, S), CLIP-normalised as the reader does
                seen = [self.encoders.encode_video(self._cast(normalize(window))[None])[0]  # (32, D) each
                        for window in frames.split(sizes.tolist())]
                heard = [self.encoders.encode_audio(self._cast(clips)[None])[0] for clips in audio]  # (8, D) each
                out.append(torch.cat(heard + seen))
        if (audios := kwargs.get("audio_values")) is not None:
            out += [self.encoders.encode_audio(self._cast(audio)[None])[0] for audio in audios]
        return out

    def _cast(self, values: torch.Tensor) -> torch.Tensor:
        return values.to(self.encoders.device, self.encoders.dtype)

    def _read_merged_safely(self, file: torch.Tensor, sampling: VideoSampling, heard: bool,
                            digit_ids: torch.Tensor) -> torch.Tensor:
        """:meth:`_read_merged`, or zero embeddings (logged as an error) if it fails: an exception here would stop
        the engine and every request in it. The processor decoded every frame first, so this is for bugs."""
        try:
            return self._read_merged(file, sampling, heard, digit_ids)
        except Exception:  # noqa: BLE001
            logger.exception("a merged video could not be read in the engine: its request is answered from zero "
                             "embeddings in place of the video")
            windows = sampling.max_windows
            count = windows * (LABEL_DIGITS + self.config.num_video_tokens)
            count += windows * (LABEL_DIGITS + self.config.num_audio_tokens) if heard else 0
            return torch.zeros(count, self.config.llm_hidden_size, device=self.encoders.device,
                               dtype=self.encoders.dtype)

    def _read_merged(self, file: torch.Tensor, sampling: VideoSampling, heard: bool,
                     digit_ids: torch.Tensor) -> torch.Tensor:
        """A video whose frames merge, from its file's bytes (uint8) as ``Pipeline`` reads it -> the embeddings of
        its item: with sound, each window's label digits (12) and 8 audio tokens, for every window; then each
        window's label digits and 32 video tokens."""
        with tempfile.TemporaryDirectory(prefix="videollama-vllm-") as workdir:
            path = Path(workdir) / "video"
            path.write_bytes(file.cpu().numpy().tobytes())
            encoded = encode_video_file(self.encoders, path, sampling, image_size=self.config.vision.image_size)
            windows = encoded.timeline.windows
            heard_rows = self._hear_windows(path, windows) if heard else []  # (W, 8, D)
        digits = torch.tensor([[int(c) for c in w.label if c.isdigit()] for w in windows])  # (W, 12)
        token_ids = digit_ids.to(self.encoders.device)[digits.to(self.encoders.device)]  # (W, 12)
        labels = self.language_model.embed_input_ids(token_ids.flatten()).view(*token_ids.shape, -1)  # (W, 12, D)
        labels = labels.to(encoded.video.dtype)
        parts = [part for label, row in zip(labels, heard_rows) for part in (label, row)]
        parts += [part for label, row in zip(labels, encoded.video) for part in (label, row)]
        return torch.cat(parts)

    def _hear_windows(self, path: Path, windows: list[WindowSpan]) -> torch.Tensor:
        """Each window's 8 audio tokens from the sound of its span (``Pipeline``'s ``encode_window_audio``) ->
        (W, 8, D); silence for a span past the end of the track, or for every window if the track will not
        decode after all."""
        try:
            return encode_window_audio(self.encoders, path, windows, missing=_silence())
        except MediaError as err:  # NoAudioError included: the processor saw a sound track
            logger.warning("a merged video's sound does not decode (%s): its windows hear silence", err)
            return self.encoders.encode_audio(self._cast(_silence())[None]).expand(len(windows), -1, -1)

    # ---------------------------------------------------------------- the language model
    def forward(self, input_ids: torch.Tensor | None, positions: torch.Tensor,
                intermediate_tensors: IntermediateTensors | None = None,
                inputs_embeds: torch.Tensor | None = None, **kwargs: object) -> torch.Tensor | IntermediateTensors:
        if intermediate_tensors is not None:
            inputs_embeds = None
        return self.language_model.model(input_ids, positions, intermediate_tensors, inputs_embeds=inputs_embeds)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        return self.language_model.compute_logits(hidden_states)

    # ---------------------------------------------------------------- weights
    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """The folder's tensors: ``language_model.*`` to vLLM's LLM, the rest to our encoders by name."""
        llm_weights: list[tuple[str, torch.Tensor]] = []
        expected = self.encoders.state_dict()
        loaded: set[str] = set()
        unexpected, mismatched = [], []
        for name, tensor in weights:
            if name.startswith(LANGUAGE_MODEL_PREFIX):
                llm_weights.append((name[len(LANGUAGE_MODEL_PREFIX):], tensor))
                continue
            if name.split(".")[0] in INFERENCE_ONLY_PARTS:
                continue
            if name not in expected:
                unexpected.append(name)
                continue
            if tuple(tensor.shape) != tuple(expected[name].shape):
                mismatched.append(f"{name}: file {tuple(tensor.shape)} vs model {tuple(expected[name].shape)}")
                continue
            with torch.no_grad():
                expected[name].copy_(tensor)
            loaded.add(name)
        missing = sorted(set(expected) - loaded)
        if missing or unexpected or mismatched:
            lines = ["the folder's encoder tensors do not match the model built from config.json"]
            for title, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mismatched)):
                if items:
                    lines.append(f"  {title} ({len(items)}): " + ", ".join(items[:20]))
            raise ModelFolderError("\n".join(lines))
        llm_loaded = self.language_model.load_weights(llm_weights)
        return {f"encoders.{n}" for n in loaded} | {LANGUAGE_MODEL_PREFIX + n for n in llm_loaded}

    def get_language_model(self) -> nn.Module:
        return self.language_model


def _silence() -> torch.Tensor:
    """The 8 clips of a silent 2-s track (what the official loader gives for silence) -> (8, 1, 128, 204)."""
    return audio_to_clips(torch.zeros(1, int(CLIP_SECONDS * SAMPLE_RATE)))
