"""Typed training configuration: YAML files under ``configs/`` -> :class:`TrainConfig`.

A run is described by four sections (``model``, ``data``, ``optim``, ``run``), each a dataclass
whose fields carry the official defaults. ``load_train_config(path, overrides)`` reads the YAML,
applies dotted ``key=value`` overrides (values parsed with ``yaml.safe_load``, so ``3e-5``,
``[a, b]`` and ``null`` work), and converts the result into typed dataclasses. Unknown keys and
values of the wrong type raise :class:`ConfigError` naming the dotted key and the file.

    cfg = load_train_config("configs/visionbranch_stage1_pretrain.yaml",
                            ["optim.batch_size=4", "data.datasets.webvid.annotations=/data/webvid/ann"])

Trainable modules are named (``run.trainable``), never integer flags: the official ``train_flag``
0/1 becomes ``branch: vision|audio`` plus the list of top-level model parts to train.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from ..errors import VideoLlamaError
from ..typed import from_dict

__all__ = [
    "ConfigError",
    "LoraSection",
    "ModelSection",
    "DatasetSpec",
    "DataSection",
    "OptimSection",
    "RunSection",
    "TrainConfig",
    "VISION_TRAINABLE",
    "ONE_TURN_TYPES",
    "AUDIO_TRAINABLE",
    "DATASET_TYPES",
    "AUDIO_DATASET_TYPES",
    "load_train_config",
    "apply_overrides",
    "config_from_dict",
]

# Official trainable sets (``frozen_* : False`` in the official YAMLs), by our module names.
VISION_TRAINABLE = ("video_qformer", "video_query_tokens", "frame_position_embedding", "video_projection")
AUDIO_TRAINABLE = ("audio_qformer", "audio_query_tokens", "audio_position_embedding", "audio_projection")
ONE_TURN_TYPES = ("videochat_instruct", "audio_instruct")  # datasets whose chats `turns: one` can split
# Media tokens per sample: video Q-Former queries (vision branch) / audio Q-Former queries (audio).
VISION_PLACEHOLDERS = 32
AUDIO_PLACEHOLDERS = 8

# Real audio for the audio branch (through ImageBind's audio encoder): videollama.train.audio_data.
AUDIO_DATASET_TYPES = ("audiocaps", "clotho", "wavcaps", "audio_instruct")
DATASET_TYPES = ("webvid", "cc_sbu_align", "llava_instruct", "videochat_instruct", "webdataset") + AUDIO_DATASET_TYPES


class ConfigError(VideoLlamaError, ValueError):
    """A training config is invalid; the message names the dotted key (and file when known)."""


# ---------------------------------------------------------------------------------------------- sections
@dataclass
class LoraSection:
    """Optional LoRA adapters on the LLM through ``peft`` (beyond the paper; off by default)."""

    enabled: bool = False
    r: int = 8  # adapter rank
    alpha: int = 16  # scaling numerator (lora_alpha)
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])


@dataclass
class ModelSection:
    """Which model to build and which weights to load into it."""

    preset: str = "videollama2-7b"  # a name in ``videollama.presets`` (ignored when model_dir is set)
    model_dir: str | None = None  # a ``from_pretrained`` folder to start from
    llm_path: str | None = None  # Hugging Face LLM folder (weights + tokenizer)
    tokenizer_path: str | None = None  # defaults to llm_path / model_dir
    vit_ckpt: str | None = None  # eva_vit_g.pth
    qformer_ckpt: str | None = None  # blip2_pretrained_flant5xxl.pth (image Q-Former, queries, ln_vision)
    imagebind_ckpt: str | None = None  # imagebind_huge.pth
    llama_proj_ckpt: str | None = None  # MiniGPT-4 pretrained_minigpt4.pth (VL stage 1 projection init)
    ckpt: str | None = None  # VL branch (official ``ckpt``): a VL .pth or a stage's export/ folder
    ckpt_2: str | None = None  # AL branch (official ``ckpt_2``, AL stage 2): an AL .pth or an export/ folder
    with_audio: bool = False  # build the audio branch (official ``equip_audio_branch``)
    # The LLM's context (``max_position_embeddings``) for this run and its export; None: as loaded. RoPE LLMs
    # compute positions on the fly, so a longer one is a number, but positions beyond those the LLM was
    # trained on need prompts that long in the data (long videos in short windows, docs/long-video.md).
    llm_context: int | None = None
    # Linear RoPE position interpolation (Chen et al. 2023): positions are divided by this factor, so a context
    # this many times longer reuses the positions the LLM was trained on instead of extrapolating past them
    # (e.g. 4 with llm_context 2048 for a 512-position LLM). Written into the export's LLM config. None: as loaded.
    llm_rope_factor: float | None = None


@dataclass
class DatasetSpec:
    """One training dataset. Path fields by ``type``:

    * ``webvid``: ``annotations`` = folder of ``*.csv`` (videoid,name,page_dir); ``media_root`` =
      videos folder (``media_root/page_dir/videoid.mp4``).
    * ``cc_sbu_align``: ``annotations`` = the storage folder holding ``filter_cap.json``;
      ``media_root`` defaults to ``annotations/image`` (``{image_id}.jpg``).
    * ``llava_instruct``: ``annotations`` = ``llava_instruct_150k.json``; ``media_root`` = COCO
      ``train2014/`` (files ``COCO_train2014_{image}``).
    * ``videochat_instruct``: ``annotations`` = ``videochat_instruct_11k.json``; ``media_root`` =
      videos folder (``media_root/{video}``). Long videos (ours, ``docs/long-video.md``): with
      ``window_fps`` a video sampled at that rate beyond the model's ``max_frames`` becomes several
      windows, as inference reads it (``max_windows`` caps the frames at ``max_windows x max_frames``,
      spread uniformly; ``window_frames`` shortens the windows, as inference's ``--window-frames``);
      a video that fits one window is read exactly as without these keys. With
      ``with_audio`` (ours) each sample is audio-visual: the clip's (or each window's) sound too,
      with inference's audio+video prompt; its frames go through the vision branch and its sound
      through the audio branch on either branch's run.
    * ``webdataset``: ``shards`` = tar files (globs and ``{000..099}`` brace ranges allowed),
      members ``<key>.mp4|jpg`` + ``<key>.txt|json``.

    Real audio (audio branch only; file naming in :mod:`videollama.train.audio_data`):

    * ``audiocaps``: ``annotations`` = CSV ``audiocap_id,youtube_id,start_time,caption``;
      ``media_root`` = clip folder.
    * ``clotho``: ``annotations`` = CSV ``file_name,caption_1..caption_5``; ``media_root`` = audio
      folder; ``captions``: ``each`` caption a record, or one drawn per draw (``sample``).
    * ``wavcaps``: ``annotations`` = JSON ``{"data": [{"id", "caption"}]}``; ``media_root`` = audio folder.
    * ``audio_instruct``: ``annotations`` = JSON list of ``{"audio", "conversations"|"QA"}``;
      ``media_root`` = audio folder (``media_root/{audio}``).

    ``turns`` (``videochat_instruct``, ``audio_instruct``; ours): ``all`` (official) makes a record's
    whole chat one sample; ``one`` makes each draw one question-answer pair of it, drawn with the
    sample's generator, the media message opening it. In a whole chat a later question can often be
    answered from an earlier answer ("What is making the sound?" -> "a bell", then "Is there a drum
    sound?") without reading the media; one pair per sample takes that shortcut away.
    """

    type: str = ""  # one of DATASET_TYPES; defaults to the dataset's name in the YAML mapping
    annotations: str = ""
    media_root: str = ""
    shards: list[str] = field(default_factory=list)
    sample_ratio: float = 1.0  # mixing weight; stage 2 sets none -> uniform
    num_frames: int = 8
    sampling: Literal["uniform", "headtail"] = "uniform"
    num_placeholders: int | None = None  # media tokens; None -> 32 (vision) / 8 (audio)
    template: Literal["vicuna_v0", "llama_2"] | None = None  # conversation template; None -> data.template
    data_type: str = "video"  # official ``data_type``; 'cn' in it drops the timestamp message
    max_bad_fraction: float = 0.5  # stop with an error when more records than this fail
    captions: Literal["each", "sample"] = "each"  # clotho: every caption a record, or one drawn per draw
    turns: Literal["all", "one"] = "all"  # instruct chats: the whole chat per sample, or one Q-A pair per draw
    prompts: list[str] | None = None  # caption prompts of this dataset; None -> data.prompts
    window_fps: float | None = None  # videochat_instruct: long videos read in windows at this rate (None: off)
    max_windows: int | None = None  # with window_fps: at most this many windows (frames spread uniformly past it)
    window_frames: int | None = None  # with window_fps: frames per window (None: the model's own, as inference)
    with_audio: bool = False  # videochat_instruct: the clip's (each window's) sound too, audio-visual prompt


@dataclass
class DataSection:
    """Datasets and how their text is built."""

    datasets: dict[str, DatasetSpec] = field(default_factory=dict)
    template: Literal["vicuna_v0", "llama_2"] = "llama_2"  # conversation template (instruct data)
    end_sym: str = "\n"  # appended to captions: "\n" (stage 1), "###" (vicuna) or "</s>" (llama-2)
    prompt_template: str = ""  # caption prompt template, e.g. '###Human: {} ###Assistant: '
    # Caption prompts, each with one <ImageHere> marker; "alignment_image" = the official 4 lines,
    # "audio_caption" = the official audio message + a request to describe the sound (text.py).
    prompts: list[str] = field(default_factory=list)
    image_size: int = 224
    conversation_max_len: int = 512  # official instruct datasets truncate at 512 tokens
    mask_pad_by_length: bool = True  # attention mask from lengths (False: official ids != pad)


@dataclass
class OptimSection:
    """AdamW + linear-warmup cosine schedule (official ``optims.py``) and numerics."""

    init_lr: float = 1e-4
    min_lr: float = 8e-5
    warmup_lr: float = 1e-6
    warmup_steps: int = 2500
    weight_decay: float = 0.05
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    max_epoch: int = 5
    iters_per_epoch: int = 2500
    batch_size: int = 32  # per process (official batch_size_train, run on 8 GPUs)
    accum_grad_iters: int = 1
    max_txt_len: int = 32  # caption-side token limit (caption mode)
    amp: bool = True  # autocast where supported
    dtype: Literal["bf16", "fp16", "fp32"] = "bf16"  # autocast dtype
    grad_checkpointing: bool = False
    grad_clip: float | None = None  # the official runner does not clip
    lora: LoraSection = field(default_factory=LoraSection)

    @property
    def total_steps(self) -> int:
        return self.max_epoch * self.iters_per_epoch


@dataclass
class RunSection:
    """Output, seeding, checkpointing, logging and distribution."""

    output_dir: str = "output/run"
    seed: int = 42
    keep_last_k: int = 2  # checkpoints kept on disk
    save_every: int = 0  # steps between checkpoints; 0 -> at the end of every epoch
    log_every: int = 10  # steps between TensorBoard/metrics writes
    num_workers: int = 4  # DataLoader workers per process
    distributed: Literal["ddp", "fsdp"] = "ddp"  # strategy under torchrun
    # FSDP only: "shard" the frozen encoders/LLM too (layer by layer), or "replicate" them whole on every
    # rank (only the trained parts sharded; more memory per rank, no all-gathers of the frozen weights)
    fsdp_frozen: Literal["shard", "replicate"] = "shard"
    branch: Literal["vision", "audio"] = "vision"
    trainable: list[str] | None = None  # top-level model parts; None -> the branch's official set
    resume: bool = False  # continue from output_dir's newest checkpoint that verifies (refuses if none verifies)
    restart: bool = False  # start over at step 0: delete output_dir's checkpoints, metrics and logs first
    export: bool = True  # write output_dir/export (a from_pretrained model folder) at the end
    stop_after: int | None = None  # stop (with a checkpoint) once this global step is done; resume later
    tensorboard: bool = True


@dataclass
class TrainConfig:
    """A whole training run."""

    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    run: RunSection = field(default_factory=RunSection)

    def __post_init__(self) -> None:
        self._validate()

    # Derived values -----------------------------------------------------------------------
    @property
    def media_placeholder(self) -> str:
        """Placeholder token of the branch being trained."""
        from videollama.tokenizer import AUDIO_PLACEHOLDER, IMAGE_PLACEHOLDER

        return IMAGE_PLACEHOLDER if self.run.branch == "vision" else AUDIO_PLACEHOLDER

    def num_placeholders(self, dataset: str) -> int:
        spec = self.data.datasets[dataset]
        if spec.num_placeholders is not None:
            return spec.num_placeholders
        return VISION_PLACEHOLDERS if self.run.branch == "vision" else AUDIO_PLACEHOLDERS

    def template(self, dataset: str) -> str:
        return self.data.datasets[dataset].template or self.data.template

    @property
    def needs_imagebind_vision(self) -> bool:
        """The audio branch reads some dataset's frames through ImageBind's vision encoder (the paper's
        visual-only training); runs on real audio and audio-visual samples alone do not build that encoder."""
        return self.run.branch == "audio" and any(
            spec.type not in AUDIO_DATASET_TYPES and not spec.with_audio for spec in self.data.datasets.values())

    @property
    def trainable(self) -> list[str]:
        return list(self.run.trainable)  # filled in by _validate

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)

    # Validation ----------------------------------------------------------------------------
    def _validate(self) -> None:
        for name, spec in self.data.datasets.items():
            where = f"data.datasets.{name}"
            if not spec.type:
                spec.type = name
            if spec.type not in DATASET_TYPES:
                raise ConfigError(f"{where}.type: unknown dataset type {spec.type!r}; choose one of {DATASET_TYPES}")
            if spec.sample_ratio <= 0:
                raise ConfigError(f"{where}.sample_ratio must be > 0, got {spec.sample_ratio}")
            if not 0 < spec.max_bad_fraction <= 1:
                raise ConfigError(f"{where}.max_bad_fraction must be in (0, 1], got {spec.max_bad_fraction}")
            if spec.num_frames < 1:
                raise ConfigError(f"{where}.num_frames must be >= 1, got {spec.num_frames}")
            if spec.type in AUDIO_DATASET_TYPES and self.run.branch != "audio":
                raise ConfigError(f"{where}: {spec.type!r} is real audio for the audio branch; set run.branch: audio")
            if spec.captions != "each" and spec.type != "clotho":
                raise ConfigError(f"{where}.captions applies to clotho only (this dataset is {spec.type!r})")
            if spec.turns != "all" and spec.type not in ONE_TURN_TYPES:
                raise ConfigError(f"{where}.turns applies to {' and '.join(ONE_TURN_TYPES)} (this dataset is {spec.type!r})")
            if spec.prompts is not None:
                spec.prompts = _named_prompts(spec.prompts)
            self._validate_windows(where, spec)
        self.data.prompts = _named_prompts(self.data.prompts)
        o = self.optim
        for key in ("init_lr", "min_lr", "warmup_lr", "weight_decay"):
            if getattr(o, key) < 0:
                raise ConfigError(f"optim.{key} must be >= 0, got {getattr(o, key)}")
        for key in ("max_epoch", "iters_per_epoch", "batch_size", "accum_grad_iters", "max_txt_len"):
            if getattr(o, key) < 1:
                raise ConfigError(f"optim.{key} must be >= 1, got {getattr(o, key)}")
        if len(o.betas) != 2:
            raise ConfigError(f"optim.betas must have two values, got {o.betas}")
        if self.run.trainable is None:
            self.run.trainable = list(VISION_TRAINABLE if self.run.branch == "vision" else AUDIO_TRAINABLE)
        if not self.run.trainable and not o.lora.enabled:
            raise ConfigError("run.trainable is empty and LoRA is off: nothing would be trained")
        if self.run.branch == "audio" and not self.model.with_audio:
            raise ConfigError("run.branch is 'audio' but model.with_audio is false")
        if self.run.keep_last_k < 1:
            raise ConfigError(f"run.keep_last_k must be >= 1, got {self.run.keep_last_k}")
        if self.run.resume and self.run.restart:
            raise ConfigError("run.resume and run.restart exclude each other: continue the run or start it over")

    def _validate_windows(self, where: str, spec: DatasetSpec) -> None:
        """The long-video and audio-visual keys: videochat_instruct only, sensible numbers. On the audio
        branch, windows need ``with_audio`` (frames alone there go through ImageBind's vision encoder)."""
        if spec.with_audio:
            if spec.type != "videochat_instruct":
                raise ConfigError(f"{where}.with_audio applies to videochat_instruct datasets (this one is {spec.type!r})")
            if not self.model.with_audio:
                raise ConfigError(f"{where}.with_audio needs the audio branch: set model.with_audio: true")
        if spec.window_fps is None:
            for key in ("max_windows", "window_frames"):
                if getattr(spec, key) is not None:
                    raise ConfigError(f"{where}: {key} needs window_fps (the rate windows are read at)")
            return
        if spec.type != "videochat_instruct" or (self.run.branch != "vision" and not spec.with_audio):
            raise ConfigError(f"{where}.window_fps applies to videochat_instruct datasets of the vision branch, or of "
                              f"the audio branch with with_audio (this one is {spec.type!r} on the {self.run.branch} branch)")
        if not (math.isfinite(spec.window_fps) and spec.window_fps > 0):
            raise ConfigError(f"{where}.window_fps must be a positive number of frames per second, got {spec.window_fps}")
        if spec.max_windows is not None and spec.max_windows < 1:
            raise ConfigError(f"{where}.max_windows must be >= 1, got {spec.max_windows}")
        if spec.window_frames is not None and spec.window_frames < 1:
            raise ConfigError(f"{where}.window_frames must be >= 1, got {spec.window_frames}")


def _named_prompts(prompts: list[str]) -> list[str]:
    """A one-item list naming a prompt set (``alignment_image``, ``audio_caption``) -> its prompts."""
    from videollama.train.text import NAMED_PROMPTS

    if len(prompts) == 1 and prompts[0] in NAMED_PROMPTS:
        return list(NAMED_PROMPTS[prompts[0]])
    return list(prompts)


# ---------------------------------------------------------------------------------------------- loading
def load_train_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """Read a training YAML, apply ``key=value`` overrides and return the typed config."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except OSError as err:
        raise ConfigError(f"{path}: cannot read config ({err.strerror or err})") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML: {' '.join(str(err).split())}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(raw).__name__}")
    try:
        apply_overrides(raw, overrides)
        return config_from_dict(raw)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


# What YAML reads as null on purpose; any other text that parses to None (a '#' comment) stays a string.
NULL_WORDS = ("null", "Null", "NULL", "~")


def apply_overrides(raw: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Apply dotted ``a.b.c=value`` overrides in place; list items are addressed by index."""
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError:
            value = text  # not YAML: keep the raw string
        if value is None and text.strip() not in NULL_WORDS:
            value = text  # '###' or 'a # b': YAML read a comment; the user meant the text
        parts = key.split(".")
        node: Any = raw
        for depth, part in enumerate(parts[:-1]):
            node = _child(node, part, ".".join(parts[: depth + 1]), create=True)
        last = parts[-1]
        if isinstance(node, list):
            node[_list_index(node, last, key)] = value
        elif isinstance(node, dict):
            node[last] = value
        else:
            raise ConfigError(f"override {key!r}: {'.'.join(parts[:-1])} is not a section")
    return raw


def _child(node: Any, part: str, where: str, create: bool) -> Any:
    if isinstance(node, list):
        return node[_list_index(node, part, where)]
    if not isinstance(node, dict):
        raise ConfigError(f"override {where!r}: parent is a value, not a section")
    if part not in node or node[part] is None:
        if not create:
            raise ConfigError(f"unknown key {where!r}")
        node[part] = {}
    return node[part]


def _list_index(node: list, part: str, where: str) -> int:
    try:
        index = int(part)
    except ValueError:
        raise ConfigError(f"override {where!r}: {part!r} is not a list index") from None
    if not -len(node) <= index < len(node):
        raise ConfigError(f"override {where!r}: index {index} out of range (list has {len(node)} items)")
    return index


def config_from_dict(raw: dict[str, Any]) -> TrainConfig:
    """Typed conversion of a plain dict (YAML) into :class:`TrainConfig` (raises ConfigError).

    A dataset set to null is left out, so an override can drop one from a mix
    (``data.datasets.webvid=null``)."""
    data = raw.get("data")
    if isinstance(data, dict) and isinstance(data.get("datasets"), dict):
        kept = {name: spec for name, spec in data["datasets"].items() if spec is not None}
        raw = {**raw, "data": {**data, "datasets": kept}}
    return from_dict(TrainConfig, raw, error=ConfigError)
