"""The training recipe: one code path for 1 process and for ``torchrun`` (DDP or FSDP2), CPU or CUDA.

    videollama train configs/visionbranch_stage1_pretrain.yaml optim.batch_size=4
    torchrun --nproc_per_node 8 -m videollama train configs/visionbranch_stage1_pretrain.yaml

Steps, top to bottom: set up the process group -> build the model (from a model folder, from the
official files through the converter, or randomly from a preset) -> name its trainable parts ->
datasets (official formats) mixed one dataset per batch -> wrap (DDP, or FSDP2 in place) -> AdamW over
the wrapped model's parameters + linear-warmup cosine -> resume from the latest checkpoint -> loop:
forward, loss, backward, step, log, checkpoint -> export (full tensors, LoRA adapters merged).

A step is one optimizer step over the global batch ``batch_size x processes x accum_grad_iters`` (one
dataset): each process reads its part of it in ``accum_grad_iters`` micro-batches of ``batch_size``
(:class:`AccumulationSampler`), and the schedule, logging, checkpoints and ``stop_after`` count steps.

Loss normalisation: every rank sums the token losses of its micro-batches and divides by the number of
supervised tokens in the whole *global* batch (all micro-batches of all ranks, counted from the labels
before the first forward), so the loss and the gradients of a step do not depend on the number of
processes or on how the global batch is split into micro-batches (DDP averages gradients over ranks,
hence the ``* world_size``).
"""

from __future__ import annotations

import math
import os
import shutil
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader

from ..media.windows import resolve_window_frames
from ..model import VideoLlama
from .base_model import apply_lora, build_model, merge_lora_state
from .checkpoint import (
    NoUsableCheckpoint,
    capture_rng_state,
    load_latest,
    remove_leftovers,
    restore_rng_state,
    save_checkpoint,
)
from .config import ConfigError, TrainConfig
from .data import DEFAULT_AUDIO_TOKENS, DEFAULT_VIDEO_TOKENS, DEFAULT_WINDOW_FRAMES, build_datasets
from .logging import CURVE_FILE, METRICS_FILE, SUMMARY_FILE, TENSORBOARD_DIR, RunLogger
from .mixing import AccumulationSampler, MixedDataset
from .optim import LinearWarmupCosineLR, build_optimizer
from .text import IGNORE_INDEX, collate

CHECKPOINTS = "checkpoints"
EXPORT = "export"


# ---------------------------------------------------------------------------------------------- processes
@dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed() -> Distributed:
    """Read torchrun's environment; start a process group (nccl on CUDA, gloo on CPU) when there are several."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Distributed(rank, world, local, device)


def _all_reduce_sum(value: torch.Tensor, d: Distributed) -> torch.Tensor:
    if d.enabled:
        value = value.clone()
        dist.all_reduce(value)
    return value


def _llm_layers(model: VideoLlama) -> list[torch.nn.Module]:
    lm = model.language_model
    base = lm.get_base_model() if hasattr(lm, "get_base_model") else lm  # under LoRA: peft's wrapper
    return list(getattr(getattr(base, "model", None), "layers", []))


def _wrap(model: VideoLlama, cfg: TrainConfig, d: Distributed) -> torch.nn.Module:
    """DDP, or FSDP2 in place. Under FSDP2 the module's parameters are *replaced* by sharded DTensors, so the
    optimizer must be built over ``model.parameters()`` after this call (never before)."""
    if not d.enabled:
        return model
    if cfg.run.distributed == "fsdp":
        from torch.distributed.fsdp import fully_shard

        trained = [getattr(model, name) for name in cfg.trainable]
        if cfg.run.fsdp_frozen == "shard":
            # Shard the big frozen LLM layer by layer and every trainable part as its own unit; the root
            # unit takes what is left (the frozen encoders and the query parameters).
            for layer in _llm_layers(model):
                fully_shard(layer)
            for part in trained:
                if isinstance(part, torch.nn.Module):
                    fully_shard(part)
            fully_shard(model)
        else:  # "replicate": the frozen parameters stay whole on every rank, outside FSDP
            for part in trained:
                if isinstance(part, torch.nn.Module):
                    fully_shard(part)
            frozen = {p for p in model.parameters() if not p.requires_grad}
            fully_shard(model, ignored_params=frozen)  # the root takes the remaining trainable ones (queries, LoRA)
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[d.device.index] if d.device.type == "cuda" else None)


# ---------------------------------------------------------------------------------------------- loss
def token_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of next-token cross-entropies over supervised positions, and their count."""
    shift_logits = logits[:, :-1].float()  # (B, L-1, V)
    shift_labels = labels[:, 1:].to(shift_logits.device)  # (B, L-1)
    total = F.cross_entropy(shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1),
                            ignore_index=IGNORE_INDEX, reduction="sum")
    return total, supervised_tokens(labels).to(total.device)


def supervised_tokens(labels: torch.Tensor) -> torch.Tensor:
    """Number of positions :func:`token_loss_sum` sums over (labels shifted by one, ``IGNORE_INDEX`` left out)."""
    return (labels[:, 1:] != IGNORE_INDEX).sum()


# ---------------------------------------------------------------------------------------------- data
def build_loader(cfg: TrainConfig, tokenizer, d: Distributed = Distributed(), *, window_frames: int = DEFAULT_WINDOW_FRAMES,
                 video_tokens: int = DEFAULT_VIDEO_TOKENS, audio_tokens: int = DEFAULT_AUDIO_TOKENS,
                 default_window_frames: int | None = None) -> tuple[DataLoader, AccumulationSampler]:
    """The run's micro-batches: the configured datasets mixed one dataset per step, this rank's part of
    each step's global batch in ``optim.accum_grad_iters`` micro-batches (:class:`AccumulationSampler`).

    The audio branch's batches carry ``visual_audio_values`` (frames for ImageBind's vision path) or,
    from the audio-text datasets, ``audio_values`` (real audio for ImageBind's audio encoder); the vision
    branch's carry ``pixel_values``; audio-visual samples (``with_audio``) carry ``pixel_values`` and
    ``audio_values`` on either branch. The sampler is returned too: it holds the data position that
    checkpoints save and resuming restores. ``window_frames`` / ``video_tokens`` / ``audio_tokens`` /
    ``default_window_frames``: the model's ``max_frames``, ``num_video_tokens``, ``num_audio_tokens`` and
    ``window_frames``.
    """
    datasets = build_datasets(cfg, tokenizer, window_frames=window_frames, video_tokens=video_tokens,
                              audio_tokens=audio_tokens, default_window_frames=default_window_frames)
    ratios = [spec.sample_ratio for spec in cfg.data.datasets.values()]
    sampler = AccumulationSampler([len(ds) for ds in datasets], ratios, cfg.optim.batch_size, seed=cfg.run.seed,
                                  rank=d.rank, world_size=d.world_size, accum=cfg.optim.accum_grad_iters,
                                  num_steps=cfg.optim.total_steps)
    media_key = "visual_audio_values" if cfg.run.branch == "audio" else "pixel_values"
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    # The loader's own generator: starting its iterator (the workers' base seed) draws nothing from the global
    # torch RNG, whose state a resume restores for dropout. Its first draw is the same in every process, so a
    # resumed run's workers get the uninterrupted run's seeds; augmentation itself is seeded per record.
    loader = DataLoader(
        MixedDataset(datasets), batch_sampler=sampler, num_workers=cfg.run.num_workers,
        collate_fn=lambda samples: collate(samples, pad_id=pad_id, mask_pad_by_length=cfg.data.mask_pad_by_length,
                                           media_key=media_key),
        persistent_workers=False, generator=torch.Generator().manual_seed(cfg.run.seed),
    )
    return loader, sampler


def trained_window_frames(cfg: TrainConfig, config) -> int | None:
    """The window length the exported model reads long videos in by default (``VideoLlamaConfig.window_frames``):
    that of the run's long-video datasets (``window_fps``) when they share one, else the model's as it was
    (None: its ``max_frames``)."""
    lengths = {resolve_window_frames(spec.window_frames, config.max_frames, config.window_frames)
               for spec in cfg.data.datasets.values() if spec.window_fps is not None}
    if len(lengths) != 1:
        return config.window_frames
    length = lengths.pop()
    return None if length == config.max_frames else length


def build_batches(cfg: TrainConfig, tokenizer, steps: int, **media):
    """The batches of the first ``steps`` steps of a single-process run of ``cfg`` (for inspection and tests):
    ``steps x optim.accum_grad_iters`` micro-batches, in the order the run reads them (``media``: as
    :func:`build_loader`)."""
    loader, _ = build_loader(cfg, tokenizer, **media)
    for index, batch in enumerate(loader):
        if index >= steps * cfg.optim.accum_grad_iters:
            return
        yield batch


def _steps(loader, accum: int):
    """Group the loader's micro-batches by step (``accum`` each)."""
    group = []
    for batch in loader:
        group.append(batch)
        if len(group) == accum:
            yield group
            group = []
    if group:
        raise RuntimeError(f"the data ended inside a step ({len(group)} of {accum} micro-batches)")


# ---------------------------------------------------------------------------------------------- train
def train(cfg: TrainConfig) -> dict[str, Any]:
    """Run (or resume) a training run; returns the run summary (on every rank)."""
    d = setup_distributed()
    out = Path(cfg.run.output_dir)
    _prepare_output(cfg, d)
    torch.manual_seed(cfg.run.seed)  # same initialisation on every rank
    model, tokenizer = build_model(cfg.model, with_audio_vision=cfg.needs_imagebind_vision, cache_dir=out,
                                   is_main=d.is_main)
    model.set_trainable(cfg.trainable)
    if cfg.optim.lora.enabled:
        apply_lora(model, cfg)
    model.to(d.device).train()
    if cfg.optim.grad_checkpointing:
        _enable_grad_checkpointing(model)

    total_steps = cfg.optim.total_steps
    loader, sampler = build_loader(cfg, tokenizer, d, window_frames=model.config.max_frames,
                                   video_tokens=model.config.num_video_tokens,
                                   audio_tokens=model.config.num_audio_tokens,
                                   default_window_frames=model.config.window_frames)
    model.config.window_frames = trained_window_frames(cfg, model.config)  # inference reads as this run trains
    wrapped = _wrap(model, cfg, d)
    # After _wrap: FSDP2 replaced the parameters by sharded ones, which are what the optimizer must step.
    optimizer = build_optimizer(model.named_parameters(), lr=cfg.optim.init_lr, weight_decay=cfg.optim.weight_decay,
                                betas=tuple(cfg.optim.betas))
    scheduler = LinearWarmupCosineLR(optimizer, init_lr=cfg.optim.init_lr, min_lr=cfg.optim.min_lr,
                                     warmup_lr=cfg.optim.warmup_lr, warmup_steps=cfg.optim.warmup_steps,
                                     max_epoch=cfg.optim.max_epoch, iters_per_epoch=cfg.optim.iters_per_epoch)
    start_step = _resume(cfg, model, optimizer, scheduler, sampler, d) if cfg.run.resume else 0
    if d.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(cfg.to_yaml())

    logger = RunLogger(out, total_steps, d.rank, start_step=start_step, log_every=cfg.run.log_every,
                       tensorboard=cfg.run.tensorboard)
    autocast = _autocast(cfg, d)
    accum = cfg.optim.accum_grad_iters
    save_every = cfg.run.save_every or cfg.optim.iters_per_epoch
    step = start_step - 1
    for step_offset, micro_batches in enumerate(_steps(loader, accum)):
        step = start_step + step_offset
        scheduler.step_global(step)  # the schedule advances per optimizer step
        reports = [r for batch in micro_batches for r in batch.pop("skip_reports")]
        logger.add_skip_reports(_gather_objects(reports, d))
        labels = [batch.pop("labels") for batch in micro_batches]
        # Supervised tokens of the whole global batch (every micro-batch of every rank), known before the
        # first forward: each micro-batch's token-loss sum is divided by it, so the accumulated gradient is
        # the gradient of the global batch's mean token loss, however the batch is split.
        global_tokens = _all_reduce_sum(sum(supervised_tokens(x) for x in labels).to(d.device), d).clamp(min=1)
        step_loss_sum = torch.zeros((), device=d.device)
        for micro, batch in enumerate(micro_batches):
            last = micro == accum - 1
            for key in ("dataset", "index", "step"):
                batch.pop(key, None)
            batch = {k: _to(v, d.device) for k, v in batch.items()}
            if hasattr(wrapped, "set_requires_gradient_sync"):  # FSDP2: reduce-scatter on the last micro-batch only
                wrapped.set_requires_gradient_sync(last)
            with nullcontext() if last or not hasattr(wrapped, "no_sync") else wrapped.no_sync():  # DDP
                with autocast:
                    logits = wrapped(**batch, use_cache=False).logits
                    loss_sum, _ = token_loss_sum(logits, labels[micro].to(d.device))
                (loss_sum / global_tokens * d.world_size).backward()
            step_loss_sum += loss_sum.detach()
            del logits, loss_sum
        if cfg.optim.grad_clip:
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], cfg.optim.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        mean_loss = float(_all_reduce_sum(step_loss_sum, d) / global_tokens)
        if not math.isfinite(mean_loss):
            raise FloatingPointError(f"loss became {mean_loss} at step {step}; the last checkpoint is intact")
        samples = sum(x.shape[0] for x in labels) * d.world_size
        logger.log_step(step, loss=mean_loss, lr=scheduler.last_lr, samples=samples)
        stopping = cfg.run.stop_after is not None and step + 1 >= cfg.run.stop_after
        if (step + 1) % save_every == 0 or step + 1 == total_steps or stopping:
            _save(cfg, model, optimizer, scheduler, sampler, step + 1, d)
        if stopping:
            break
    extra = {"world_size": d.world_size, "branch": cfg.run.branch}
    if cfg.run.distributed == "fsdp" and d.enabled:
        extra["fsdp"] = _fsdp_layout(model, cfg)
    summary = logger.finish(extra)
    if cfg.run.export and step + 1 == total_steps:
        state = _export_state(model, cfg, d)  # a collective under FSDP: every rank takes part
        if d.is_main:
            _write_model_folder(model, state, out / EXPORT, tokenizer)
    if d.enabled:
        dist.barrier()
    return summary


def _enable_grad_checkpointing(model: VideoLlama) -> None:
    """Activation checkpointing in the LLM's decoder layers (non-reentrant), effective although the LLM is frozen.

    transformers checkpoints a layer only in training mode, and a frozen part stays in eval mode
    (:meth:`VideoLlama.train`). So the layers transformers marked are flagged ``training`` themselves, their
    submodules staying in eval mode (no dropout): their activations are recomputed in the backward pass.
    ``use_reentrant=False`` lets the gradients reach the trained parts in front of the LLM (the soft tokens)
    and any LoRA adapters inside it, whatever requires grad among the layer inputs. Call after ``.train()``.
    """
    from transformers.modeling_layers import GradientCheckpointingLayer

    lm = model.language_model
    enable = getattr(lm, "activation_checkpointing_enable", None) or lm.gradient_checkpointing_enable
    enable({"use_reentrant": False})  # activation_/gradient_checkpointing_kwargs (positional in both)
    layers = [m for m in lm.modules() if isinstance(m, GradientCheckpointingLayer) and m.gradient_checkpointing]
    if not layers:
        raise ConfigError(f"optim.grad_checkpointing: {type(lm).__name__} has no layers transformers can checkpoint")
    for layer in layers:
        layer.training = True  # the flag only: its submodules keep eval mode


def _fsdp_layout(model: VideoLlama, cfg: TrainConfig) -> dict[str, Any]:
    """Parameter elements FSDP shards (DTensors) and keeps whole on every rank, trained and frozen."""
    counts = {"sharded_trained": 0, "sharded_frozen": 0, "replicated_trained": 0, "replicated_frozen": 0}
    for param in model.parameters():
        kind = "sharded" if hasattr(param, "device_mesh") else "replicated"
        counts[f"{kind}_{'trained' if param.requires_grad else 'frozen'}"] += param.numel()
    return {"frozen": cfg.run.fsdp_frozen, "parameters": counts}


def _autocast(cfg: TrainConfig, d: Distributed):
    if not cfg.optim.amp or cfg.optim.dtype == "fp32":
        return nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[cfg.optim.dtype]
    if d.device.type == "cpu" and dtype is torch.float16:
        return nullcontext()  # fp16 autocast is a CUDA feature
    return torch.autocast(d.device.type, dtype=dtype)


def _to(value, device):
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, list):
        return [_to(v, device) for v in value]
    return value


def _gather_objects(obj, d: Distributed) -> list:
    if not d.enabled:
        return list(obj)
    gathered: list = [None] * d.world_size
    dist.all_gather_object(gathered, obj)
    return [item for part in gathered for item in part]


def _trainable_state(model: VideoLlama) -> dict[str, torch.Tensor]:
    state = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            full = param.full_tensor() if hasattr(param, "full_tensor") else param  # FSDP2 DTensor -> full
            state[name] = full.detach().to("cpu").contiguous()
    return state


def _state_dict_options(**kwargs):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(**kwargs)


def _optimizer_state(model: VideoLlama, optimizer) -> dict:
    """The optimizer state keyed by parameter names, full tensors on the CPU (a collective under FSDP: the
    sharded moments are gathered; rank 0 gets them). The same format for 1 process, DDP and FSDP, so a
    checkpoint resumes under any of them."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=_state_dict_options(full_state_dict=True, cpu_offload=True))


def _load_optimizer_state(model: VideoLlama, optimizer, state: dict, path) -> None:
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    if any(isinstance(k, int) for k in state.get("state", {})) or any(
            isinstance(p, int) for g in state.get("param_groups", []) for p in g.get("params", [])):
        # Written by an older version (optimizer.state_dict(): parameters by position).
        if any(hasattr(p, "full_tensor") for p in model.parameters()):
            raise ConfigError(f"{path}: optimizer state in the old positional format cannot be loaded under FSDP; "
                             "resume it with DDP or one process once")
        optimizer.load_state_dict(state)
        return
    set_optimizer_state_dict(model, optimizer, optim_state_dict=state,
                             options=_state_dict_options(full_state_dict=True))


def _load_trainable(model: VideoLlama, tensors: dict[str, torch.Tensor]) -> None:
    """Copy full tensors into the parameters; FSDP2's sharded ones take their own shard (every rank calls)."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in tensors.items():
            param = params[name]
            if hasattr(param, "device_mesh"):  # DTensor
                from torch.distributed.tensor import distribute_tensor

                tensor = distribute_tensor(tensor.to(param.device, param.dtype), param.device_mesh, param.placements,
                                           src_data_rank=None)  # every rank holds the full tensor: no communication
            param.copy_(tensor)


def _export_state(model: VideoLlama, cfg: TrainConfig, d: Distributed) -> dict[str, torch.Tensor] | None:
    """The whole model's weights for a model folder (on the main process; None elsewhere): full tensors
    (gathered under FSDP), LoRA adapters merged into the LLM under the plain model's names."""
    if cfg.run.distributed == "fsdp" and d.enabled:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        state = get_model_state_dict(model, options=_state_dict_options(full_state_dict=True, cpu_offload=True))
    else:
        state = model.state_dict() if d.is_main else None
    if not d.is_main:
        return None
    if cfg.optim.lora.enabled:
        state = merge_lora_state(state, alpha=cfg.optim.lora.alpha, r=cfg.optim.lora.r)
    return state


def _write_model_folder(model: VideoLlama, state: dict[str, torch.Tensor], out_dir: Path, tokenizer) -> None:
    from types import SimpleNamespace

    from ..model.checkpoint import save_model_folder

    save_model_folder(SimpleNamespace(config=model.config, state_dict=lambda: state), out_dir, tokenizer=tokenizer)


def _save(cfg, model, optimizer, scheduler, sampler, next_step: int, d: Distributed) -> None:
    model_state = _trainable_state(model)  # collective under FSDP: every rank takes part
    rng = _gather_objects([capture_rng_state()], d)
    optim_state = _optimizer_state(model, optimizer)  # collective under FSDP too
    if d.is_main:
        save_checkpoint(Path(cfg.run.output_dir) / CHECKPOINTS, next_step, {
            "model": model_state, "optimizer": optim_state, "scheduler": scheduler.state_dict(),
            "data": {"sampler": sampler.state_dict(next_step)}, "config": cfg.to_yaml(), "rng": rng,
            "extra": {"world_size": d.world_size, "distributed": cfg.run.distributed if d.enabled else "none"},
        }, keep_last_k=cfg.run.keep_last_k)
    if d.enabled:
        dist.barrier()


# Written by a run into its output_dir (besides export/ and the converted base-model/): what starting over removes.
RUN_RECORDS = (CHECKPOINTS, METRICS_FILE, SUMMARY_FILE, CURVE_FILE, TENSORBOARD_DIR)


def _prepare_output(cfg: TrainConfig, d: Distributed) -> None:
    """Before the run reads or writes its output_dir (main process): with ``run.restart`` delete the earlier
    run's records, and remove the temp folders of saves that were killed mid-write."""
    if d.is_main:
        out = Path(cfg.run.output_dir)
        if cfg.run.restart:
            found = [out / name for name in RUN_RECORDS if (out / name).exists()]
            for path in found:
                if path.is_dir():
                    shutil.rmtree(path)
                else:
                    path.unlink()
            print(f"starting over at step 0 (run.restart): removed {', '.join(p.name for p in found) or 'nothing'} "
                  f"in {out}")
        for path in remove_leftovers(out / CHECKPOINTS):
            print(f"removed {path} (left by an interrupted save)")
    if d.enabled:
        dist.barrier()


def _resume(cfg, model, optimizer, scheduler, sampler, d: Distributed) -> int:
    """Restore the newest checkpoint that verifies into the (already wrapped) model and its optimizer, with every
    rank's RNG states; every rank reads the files. No checkpoint at all: step 0. Checkpoints that all fail
    verification: an error (never a silent restart that appends to the damaged run's metrics)."""
    try:
        ckpt = load_latest(Path(cfg.run.output_dir) / CHECKPOINTS)
    except NoUsableCheckpoint as err:
        raise NoUsableCheckpoint(f"cannot resume: {err}; pass --restart (run.restart=true) to start over at "
                                 "step 0") from None
    if ckpt is None:
        return 0
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in ckpt.model]
    unexpected = [n for n in ckpt.model if n not in params]
    if missing or unexpected:
        raise ConfigError(f"{ckpt.path}: checkpoint does not match the trainable parts (missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]})")
    _load_trainable(model, ckpt.model)
    if ckpt.optimizer is not None:
        _load_optimizer_state(model, optimizer, ckpt.optimizer, ckpt.path)
    if ckpt.scheduler is not None:
        scheduler.load_state_dict(ckpt.scheduler)
    sampler.load_state_dict(ckpt.data["sampler"])
    if ckpt.rng and len(ckpt.rng) == d.world_size:
        restore_rng_state(ckpt.rng[d.rank])
    elif d.is_main:
        saved = len(ckpt.rng) if ckpt.rng else 0
        print(f"warning: RNG states not restored ({saved} saved, {d.world_size} processes now): dropout draws new "
              "masks from here on, so the losses will differ from an uninterrupted run")
    if d.is_main:
        print(f"resumed from {ckpt.path} at step {ckpt.step}")
    return ckpt.step


def export(run_dir: str | Path, out_dir: str | Path, *, step: int | None = None) -> Path:
    """Write a model folder from a run: its base model with the latest (or given) checkpoint's weights
    (LoRA adapters merged into the LLM)."""
    import yaml

    from .checkpoint import list_checkpoints, load_checkpoint
    from .config import config_from_dict

    run_dir = Path(run_dir)
    if step is not None:
        found = dict(list_checkpoints(run_dir / CHECKPOINTS))
        if step not in found:
            raise FileNotFoundError(f"{run_dir}: no checkpoint of step {step} (have {sorted(found)})")
        ckpt = load_checkpoint(found[step])
    else:
        ckpt = load_latest(run_dir / CHECKPOINTS)
    if ckpt is None:
        raise FileNotFoundError(f"{run_dir}: no complete checkpoint under {CHECKPOINTS}/")
    cfg = config_from_dict(yaml.safe_load(ckpt.config))
    model, tokenizer = build_model(cfg.model, with_audio_vision=cfg.needs_imagebind_vision, cache_dir=run_dir)
    if cfg.optim.lora.enabled:
        apply_lora(model, cfg)
    state = dict(model.named_parameters())
    unknown = [k for k in ckpt.model if k not in state]
    if unknown:
        raise ConfigError(f"{ckpt.path}: weights not in the model: {unknown[:5]}")
    _load_trainable(model, ckpt.model)
    full = model.state_dict()
    if cfg.optim.lora.enabled:
        full = merge_lora_state(full, alpha=cfg.optim.lora.alpha, r=cfg.optim.lora.r)
    _write_model_folder(model, full, Path(out_dir), tokenizer)
    return Path(out_dir)
