"""Training: configs, datasets, text/labels, mixing, optimizer + schedule, checkpoints, logging.

Modules (one component each; the trainer loop lives in ``recipe.py``):

* ``config``     -- ``TrainConfig`` dataclasses, ``load_train_config(path, overrides)``
* ``base_model`` -- where a run starts from (model folder, official files, fresh preset); LoRA
* ``data``       -- datasets for WebVid CSV, cc_sbu_align, LLaVA-Instruct, VideoChat-Instruct, WebDataset
* ``text``       -- caption/conversation rendering, official label masks, ``collate``
* ``mixing``     -- ``MultiDatasetSampler`` (one dataset per batch ∝ sample_ratio) + ``MixedDataset``
* ``optim``      -- AdamW param groups (official no-decay rule), ``LinearWarmupCosineLR``
* ``checkpoint`` -- atomic, checksummed ``save_checkpoint`` / verified ``load_latest`` with keep-last-K
* ``logging``    -- ``RunLogger``: progress bar, TensorBoard, loss curve, summary.json
"""

from .checkpoint import (
    LoadedCheckpoint,
    NoUsableCheckpoint,
    TrainingCheckpointError,
    capture_rng_state,
    load_checkpoint,
    load_latest,
    remove_leftovers,
    restore_rng_state,
    save_checkpoint,
)
from .config import ConfigError, TrainConfig, load_train_config
from .data import DatasetError, SkipStats, build_datasets, merge_skip_reports
from .logging import RunLogger
from .mixing import MixedDataset, MultiDatasetSampler, SampleKey
from .optim import LinearWarmupCosineLR, build_optimizer, param_groups
from .text import IGNORE_INDEX, Turn, collate, encode_caption, encode_conversation

__all__ = [
    "TrainingCheckpointError",
    "ConfigError",
    "DatasetError",
    "IGNORE_INDEX",
    "LinearWarmupCosineLR",
    "LoadedCheckpoint",
    "MixedDataset",
    "MultiDatasetSampler",
    "NoUsableCheckpoint",
    "RunLogger",
    "SampleKey",
    "SkipStats",
    "TrainConfig",
    "Turn",
    "build_datasets",
    "build_optimizer",
    "capture_rng_state",
    "collate",
    "encode_caption",
    "encode_conversation",
    "load_checkpoint",
    "load_latest",
    "load_train_config",
    "merge_skip_reports",
    "param_groups",
    "remove_leftovers",
    "restore_rng_state",
    "save_checkpoint",
]
