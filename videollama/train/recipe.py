"""The training recipe: one code path for 1 process and for ``torchrun`` (DDP or FSDP2), CPU or CUDA.

    videollama train configs/visionbranch_stage1_pretrain.yaml optim.batch_size=4
    torchrun --nproc_per_node 8 -m videollama train configs/visionbranch_stage1_pretrain.yaml

Steps, top to bottom: set up the process group -> build the model (from a model folder, from the
official files through the converter, or randomly from a preset) -> name its trainable parts ->
datasets (official formats) mixed one dataset per batch -> AdamW + linear-warmup cosine -> resume
from the latest checkpoint -> loop: forward, loss, backward, step, log, checkpoint -> export.

Loss normalisation: every rank sums the token losses of its slice of the global batch and divides by
the number of supervised tokens in the *global* batch, so the loss and the gradients of a run do not
depend on the number of processes (DDP averages gradients over ranks, hence the ``* world_size``).
"""

from __future__ import annotations

import math
import os
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader

from ..model import VideoLlama
from .checkpoint import capture_rng_state, load_latest, restore_rng_state, save_checkpoint
from .config import ModelSection, TrainConfig
from .data import build_datasets
from .logging import RunLogger
from .mixing import MixedDataset, MultiDatasetSampler
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


# ---------------------------------------------------------------------------------------------- model
def build_model(section: ModelSection, *, with_audio_vision: bool, cache_dir: Path, is_main: bool = True):
    """(model, tokenizer) for a run.

    - ``model_dir``: a folder written by ``videollama convert`` / ``export`` / ``save_pretrained``;
    - official files (``llm_path`` + ``vit_ckpt``/``qformer_ckpt``/``imagebind_ckpt``/``ckpt``/``ckpt_2``):
      converted once into ``cache_dir`` by ``videollama.convert``, then loaded;
    - neither: a randomly initialised ``preset`` with the tokenizer at ``tokenizer_path`` (tests, SynthAV).
    """
    from transformers import AutoTokenizer

    from ..presets import get_preset
    from ..processor import Processor

    if section.model_dir:
        model = VideoLlama.from_pretrained(section.model_dir, with_audio=section.with_audio or None)
        tokenizer = AutoTokenizer.from_pretrained(section.tokenizer_path or section.model_dir)
    elif section.llm_path and (section.vit_ckpt or section.qformer_ckpt or section.ckpt):
        folder = cache_dir / "base-model"
        if is_main and not (folder / "config.json").is_file():
            from ..convert.build import convert

            convert(folder, llm_dir=section.llm_path, eva_vit=section.vit_ckpt, blip2=section.qformer_ckpt,
                    imagebind=section.imagebind_ckpt if section.with_audio else None,
                    vl_ckpt=section.ckpt, al_ckpt=section.ckpt_2, dtype="fp32",
                    branches="both" if section.with_audio else "vl", llama_proj=section.llama_proj_ckpt)
        if dist.is_initialized():
            dist.barrier()
        model = VideoLlama.from_pretrained(folder)
        tokenizer = AutoTokenizer.from_pretrained(folder)
    else:
        path = section.tokenizer_path or section.llm_path
        if not path:
            raise ValueError("model: give model_dir, the official files (llm_path + checkpoints), or a tokenizer_path "
                             "for a randomly initialised preset")
        tokenizer = AutoTokenizer.from_pretrained(path)
        config = get_preset(section.preset)
        config.with_audio = section.with_audio
        config.with_imagebind_vision = section.with_audio and with_audio_vision
        config.llm["vocab_size"] = max(config.llm["vocab_size"], tokenizer.vocab_size)
        Processor(tokenizer, config)
        model = VideoLlama(config)
    Processor(tokenizer, model.config)  # checks the placeholder ids agree with the tokenizer
    return model, tokenizer


def _apply_lora(model: VideoLlama, cfg: TrainConfig) -> None:
    from peft import LoraConfig, get_peft_model

    lora = cfg.optim.lora
    model.language_model = get_peft_model(
        model.language_model,
        LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=list(lora.target_modules)),
    )
    model.trainable_parts = set(model.trainable_parts) | {"language_model"}  # adapters train, base stays frozen


def _wrap(model: VideoLlama, cfg: TrainConfig, d: Distributed) -> torch.nn.Module:
    if not d.enabled:
        return model
    if cfg.run.distributed == "fsdp":
        from torch.distributed.fsdp import fully_shard

        # Shard the big frozen LLM layer by layer and every trainable part as its own unit; the root
        # unit takes what is left (the small encoders and the query parameters).
        for layer in getattr(model.language_model.model, "layers", []):
            fully_shard(layer)
        for name in cfg.trainable:
            part = getattr(model, name)
            if isinstance(part, torch.nn.Module):
                fully_shard(part)
        fully_shard(model)
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
    return total, (shift_labels != IGNORE_INDEX).sum()


# ---------------------------------------------------------------------------------------------- data
def build_loader(cfg: TrainConfig, tokenizer, d: Distributed = Distributed()) -> tuple[DataLoader, MultiDatasetSampler]:
    """The run's batches: the configured datasets mixed one dataset per batch, this rank's slice of each.

    The audio branch's batches carry ``visual_audio_values`` (frames for ImageBind's vision path),
    the vision branch's ``pixel_values``. The sampler is returned too: it holds the data position
    that checkpoints save and resuming restores.
    """
    datasets = build_datasets(cfg, tokenizer)
    ratios = [spec.sample_ratio for spec in cfg.data.datasets.values()]
    sampler = MultiDatasetSampler([len(ds) for ds in datasets], ratios, cfg.optim.batch_size, seed=cfg.run.seed,
                                  rank=d.rank, world_size=d.world_size, num_steps=cfg.optim.total_steps)
    media_key = "visual_audio_values" if cfg.run.branch == "audio" else "pixel_values"
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    loader = DataLoader(
        MixedDataset(datasets), batch_sampler=sampler, num_workers=cfg.run.num_workers,
        collate_fn=lambda samples: collate(samples, pad_id=pad_id, mask_pad_by_length=cfg.data.mask_pad_by_length,
                                           media_key=media_key),
        persistent_workers=False,
    )
    return loader, sampler


def build_batches(cfg: TrainConfig, tokenizer, steps: int):
    """The first ``steps`` batches a single-process run of ``cfg`` trains on (for inspection and tests)."""
    loader, _ = build_loader(cfg, tokenizer)
    for step, batch in enumerate(loader):
        if step >= steps:
            return
        yield batch


# ---------------------------------------------------------------------------------------------- train
def train(cfg: TrainConfig) -> dict[str, Any]:
    """Run (or resume) a training run; returns the run summary (on every rank)."""
    d = setup_distributed()
    out = Path(cfg.run.output_dir)
    torch.manual_seed(cfg.run.seed)  # same initialisation on every rank
    model, tokenizer = build_model(cfg.model, with_audio_vision=cfg.run.branch == "audio", cache_dir=out,
                                   is_main=d.is_main)
    model.set_trainable(cfg.trainable)
    if cfg.optim.lora.enabled:
        _apply_lora(model, cfg)
    if cfg.optim.grad_checkpointing:
        model.language_model.gradient_checkpointing_enable()
    model.to(d.device).train()

    total_steps = cfg.optim.total_steps
    loader, sampler = build_loader(cfg, tokenizer, d)
    optimizer = build_optimizer(model.named_parameters(), lr=cfg.optim.init_lr, weight_decay=cfg.optim.weight_decay,
                                betas=tuple(cfg.optim.betas))
    scheduler = LinearWarmupCosineLR(optimizer, init_lr=cfg.optim.init_lr, min_lr=cfg.optim.min_lr,
                                     warmup_lr=cfg.optim.warmup_lr, warmup_steps=cfg.optim.warmup_steps,
                                     max_epoch=cfg.optim.max_epoch, iters_per_epoch=cfg.optim.iters_per_epoch)
    start_step = _resume(cfg, model, optimizer, scheduler, sampler, d) if cfg.run.resume else 0
    if d.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(cfg.to_yaml())
    wrapped = _wrap(model, cfg, d)

    logger = RunLogger(out, total_steps, d.rank, start_step=start_step, log_every=cfg.run.log_every,
                       tensorboard=cfg.run.tensorboard)
    autocast = _autocast(cfg, d)
    accum = cfg.optim.accum_grad_iters
    save_every = cfg.run.save_every or cfg.optim.iters_per_epoch
    step = start_step - 1
    for step_offset, batch in enumerate(loader):
        step = start_step + step_offset
        scheduler.step_global(step)
        logger.add_skip_reports(_gather_objects(batch.pop("skip_reports"), d))
        for key in ("dataset", "index", "step"):
            batch.pop(key, None)
        batch = {k: _to(v, d.device) for k, v in batch.items()}
        labels = batch.pop("labels")
        sync = (step + 1) % accum == 0 or step + 1 == total_steps
        with autocast, (nullcontext() if sync or not hasattr(wrapped, "no_sync") else wrapped.no_sync()):
            logits = wrapped(**batch).logits
            loss_sum, tokens = token_loss_sum(logits, labels)
            global_tokens = _all_reduce_sum(tokens.detach(), d).clamp(min=1)
            loss = loss_sum / global_tokens * d.world_size / accum
        loss.backward()
        if sync:
            if cfg.optim.grad_clip:
                torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], cfg.optim.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        mean_loss = float(_all_reduce_sum(loss_sum.detach(), d) / global_tokens)
        if not math.isfinite(mean_loss):
            raise FloatingPointError(f"loss became {mean_loss} at step {step}; the last checkpoint is intact")
        logger.log_step(step, loss=mean_loss, lr=scheduler.last_lr, samples=labels.shape[0] * d.world_size)
        stopping = cfg.run.stop_after is not None and step + 1 >= cfg.run.stop_after
        if (step + 1) % save_every == 0 or step + 1 == total_steps or stopping:
            _save(cfg, model, optimizer, scheduler, sampler, step + 1, d)
        if stopping:
            break
    summary = logger.finish({"world_size": d.world_size, "branch": cfg.run.branch})
    if d.is_main and cfg.run.export and step + 1 == total_steps:
        model.save_pretrained(out / EXPORT, tokenizer=tokenizer)
    if d.enabled:
        dist.barrier()
    return summary


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


def _save(cfg, model, optimizer, scheduler, sampler, next_step: int, d: Distributed) -> None:
    model_state = _trainable_state(model)  # collective under FSDP: every rank takes part
    rng = _gather_objects([capture_rng_state()], d)
    optim_state = optimizer.state_dict()
    if cfg.run.distributed == "fsdp" and d.enabled:
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, StateDictOptions

        optim_state = get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if d.is_main:
        save_checkpoint(Path(cfg.run.output_dir) / CHECKPOINTS, next_step, {
            "model": model_state, "optimizer": optim_state, "scheduler": scheduler.state_dict(),
            "data": {"sampler": sampler.state_dict(next_step)}, "config": cfg.to_yaml(), "rng": rng,
            "extra": {"world_size": d.world_size},
        }, keep_last_k=cfg.run.keep_last_k)
    if d.enabled:
        dist.barrier()


def _resume(cfg, model, optimizer, scheduler, sampler, d: Distributed) -> int:
    ckpt = load_latest(Path(cfg.run.output_dir) / CHECKPOINTS)
    if ckpt is None:
        return 0
    missing = [n for n, p in model.named_parameters() if p.requires_grad and n not in ckpt.model]
    unexpected = [n for n in ckpt.model if n not in dict(model.named_parameters())]
    if missing or unexpected:
        raise ValueError(f"{ckpt.path}: checkpoint does not match the trainable parts (missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]})")
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in ckpt.model.items():
            params[name].copy_(tensor)
    if ckpt.optimizer is not None:
        optimizer.load_state_dict(ckpt.optimizer)
    if ckpt.scheduler is not None:
        scheduler.load_state_dict(ckpt.scheduler)
    sampler.load_state_dict(ckpt.data["sampler"])
    if ckpt.rng and len(ckpt.rng) == d.world_size:
        restore_rng_state(ckpt.rng[d.rank])
    if d.is_main:
        print(f"resumed from {ckpt.path} at step {ckpt.step}")
    return ckpt.step


def export(run_dir: str | Path, out_dir: str | Path, *, step: int | None = None) -> Path:
    """Write a model folder from a run: its base model with the latest (or given) checkpoint's weights."""
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
    model, tokenizer = build_model(cfg.model, with_audio_vision=cfg.run.branch == "audio", cache_dir=run_dir)
    state = dict(model.named_parameters())
    unknown = [k for k in ckpt.model if k not in state]
    if unknown:
        raise ValueError(f"{ckpt.path}: weights not in the model: {unknown[:5]}")
    with torch.no_grad():
        for name, tensor in ckpt.model.items():
            state[name].copy_(tensor)
    model.save_pretrained(out_dir, tokenizer=tokenizer)
    return Path(out_dir)
