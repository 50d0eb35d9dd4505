"""The whole SynthAV chain, reproducible from nothing: data -> stage 0 -> stages 1-2 -> model -> results.

    videollama synthav train-all --out output/synthav --seed 0           # full (under an hour on 2 CPU cores)
    videollama synthav train-all --out /tmp/sav --seed 0 --quick         # minutes: CI, same code path

    from videollama.synthav.chain import ChainSettings, run_chain
    run_chain("output/synthav", seed=0, settings=ChainSettings.quick(0))

Steps (each writes under ``--out``; ``chain.json`` records the settings and every step's seconds):

1. ``data/``: ``generate`` a SynthAV world (data seed ``--data-seed``, default 0) in the official
   formats (WebVid CSV, cc_sbu, LLaVA-Instruct, VideoChat) plus the held-out QA set.
2. ``stage0/``: the parts users normally download, trained on the world and frozen (the ``stage0`` package).
3. ``vl_stage1/``, ``vl_stage2/``: the vision-language branch, through the project's real training
   recipe (``videollama.train.recipe.train``) and loaders, with ``configs/synthav/vl_stage*.yaml``.
4. ``al_stage1/``, ``al_stage2/``: the audio-language branch, by the chosen *audio recipe*
   (:data:`AUDIO_RECIPES`): ``visual``, the paper's, on the same visual data through the ImageBind-like
   *vision* encoder only (``configs/synthav/al_stage{1,2}.yaml``: no audio in training); ``audiotext``, on
   the world's soundtracks and their captions and audio questions through the *audio* encoder, and in
   stage 2 the VideoChat clips with their sound beside the frozen vision branch (``av_instruct``)
   (``al_stage{1,2}_audiotext.yaml`` without their visual entries); ``mixed``, both, by the YAMLs' weights.
5. ``ablation/``: stage 0 with ``use_frame_position=False`` and the vision branch trained again.
6. ``model/``: the final folder (vision branch + audio branch + frozen parts), fp16 if it would
   exceed the size limit; ``results/``: ``evaluate_synthav`` JSON + PNG.

``vision_from`` (another chain run of the same stage 0 and seed) reuses that run's vision branch and
ablation, so several audio recipes are compared on one vision branch: only steps 4 and 6 run, and the
settings that never hear the audio branch (:data:`VISION_ONLY_SETTINGS`) are copied from that run's results;
when the audio stages train LoRA adapters on the LLM (``al_stage2_audiotext.yaml``), the final model's LLM is
not that run's, and only the ablation's setting (:data:`ABLATION_SETTINGS`) is copied.

Afterwards, :func:`run_long_variant` trains the stage-2 variant on long inputs from a finished run's
``model/`` (``configs/synthav/vl_stage2_long.yaml``, long clips of :mod:`videollama.synthav.long`).

``--seed`` is the *training* seed (stage 0 and stages 1-2); the world is the same for every
training seed unless ``--data-seed`` changes, so results over seeds measure training variation.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from ..errors import UsageError
from .stage0 import PROJECTION_FILE, Stage0Settings, run_stage0
from .stopwatch import Stopwatch

logger = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "synthav"
MAX_MODEL_BYTES = 30 * 1024 * 1024
STAGES = ("vl_stage1", "vl_stage2", "al_stage1", "al_stage2")
# Audio recipe -> (the YAML of each audio stage, the datasets it drops from them).
AUDIO_RECIPES: dict[str, tuple[tuple[str, str], tuple[str, ...]]] = {
    "visual": (("al_stage1", "al_stage2"), ()),  # the paper: frames through ImageBind's vision encoder only
    "audiotext": (("al_stage1_audiotext", "al_stage2_audiotext"),
                  ("webvid", "cc_sbu_align", "llava_instruct", "webvid_instruct")),  # real audio (+ AV clips) only
    "mixed": (("al_stage1_audiotext", "al_stage2_audiotext"), ()),  # real audio + the paper's visual data
}
# Evaluation settings that never run the audio branch: the same for every audio recipe on one vision branch,
# as long as the audio stages leave the LLM alone; with LoRA in an audio stage only the ablation's stay the same.
VISION_ONLY_SETTINGS = ("video", "one_frame", "no_frame_pos")
ABLATION_SETTINGS = ("no_frame_pos",)
# Where each dataset of configs/synthav/*.yaml lies in a generated world (``generate``'s layout).
DATASET_PATHS: dict[str, dict[str, str]] = {
    "webvid": {"annotations": "webvid/annotations", "media_root": "webvid/videos"},
    "cc_sbu_align": {"annotations": "cc_sbu"},
    "llava_instruct": {"annotations": "llava/llava_instruct.json", "media_root": "llava/images"},
    "webvid_instruct": {"annotations": "videochat/videochat_instruct.json", "media_root": "videochat/videos"},
    "av_instruct": {"annotations": "videochat/videochat_instruct.json", "media_root": "videochat/videos"},
    "audio_captions": {"annotations": "audio_captions/audio_captions.json", "media_root": "audio_captions/audio"},
    "audio_instruct": {"annotations": "audio_instruct/audio_instruct.json", "media_root": "audio_instruct/audio"},
}


@dataclass
class StageSteps:
    """Optimisation steps and batch size of one stage-1/2 run."""

    steps: int
    batch_size: int
    warmup_steps: int = 30


@dataclass
class ChainSettings:
    """Everything that sizes a chain run (defaults: the full run)."""

    clips: int = 2000  # WebVid-style caption clips
    instruct_clips: int = 1000  # VideoChat-style instruction clips
    images: int = 1000  # stills for each of cc_sbu and LLaVA
    test_clips: int = 300  # held-out QA clips (about 3.3 questions each)
    workers: int = 2  # render processes
    stage0: Stage0Settings = field(default_factory=Stage0Settings)
    stages: dict[str, StageSteps] = field(default_factory=lambda: {
        "vl_stage1": StageSteps(250, 16),
        "vl_stage2": StageSteps(260, 16),
        "al_stage1": StageSteps(200, 16),
        "al_stage2": StageSteps(200, 16),
    })
    ablation: bool = True
    audio_recipe: str = "audiotext"  # a key of AUDIO_RECIPES: what the audio branch is trained on (docs/synthav.md)
    num_workers: int = 1  # DataLoader workers per stage
    eval_limit: int | None = None  # None: every held-out question

    def __post_init__(self) -> None:
        if self.audio_recipe not in AUDIO_RECIPES:
            raise UsageError(f"unknown audio recipe {self.audio_recipe!r}; choose from {', '.join(AUDIO_RECIPES)}")

    @property
    def audio_clips(self) -> int:
        """Soundtracks the world needs for each audio-text set (0 for the paper's visual-only recipe)."""
        return 0 if self.audio_recipe == "visual" else self.clips

    @classmethod
    def quick(cls, seed: int = 0) -> "ChainSettings":
        tiny = StageSteps(2, 2, warmup_steps=1)
        return cls(clips=24, instruct_clips=12, images=12, test_clips=6, stage0=Stage0Settings.quick(seed),
                   stages={s: tiny for s in STAGES}, num_workers=0, eval_limit=8)


@dataclass
class ChainResult:
    out_dir: str
    model_dir: str
    data_dir: str = ""
    stage0_dir: str = ""
    seconds: dict[str, float] = field(default_factory=dict)
    results: dict[str, Any] | None = None


# ------------------------------------------------------------------------------------------------ stages 1-2
def stage_overrides(stage: str, data: Path, model_dir: Path, output: Path, seed: int, steps: StageSteps,
                    num_workers: int, projection: Path | None = None, config: str | None = None,
                    drop: tuple[str, ...] = ()) -> list[str]:
    """``key=value`` overrides pointing a ``configs/synthav`` YAML (``config``, default ``stage``) at one chain run.

    Every dataset of the YAML is pointed at ``data`` (:data:`DATASET_PATHS`); those in ``drop`` are left out
    of the mix. ``projection``: stage 0's Q-Former -> LLM bridge (``llama_proj.*``), which initialises VL
    stage 1's video projection as MiniGPT-4's projection does in the official recipe.
    """
    import yaml

    over = [
        f"model.model_dir={model_dir}",
        f"run.output_dir={output}",
        f"run.seed={seed}",
        f"run.num_workers={num_workers}",
        "optim.max_epoch=1",
        f"optim.iters_per_epoch={steps.steps}",
        f"optim.batch_size={steps.batch_size}",
        f"optim.warmup_steps={min(steps.warmup_steps, steps.steps)}",
    ]
    if stage == "vl_stage1" and projection is not None:
        over.append(f"model.llama_proj_ckpt={projection}")  # stage 0's bridge, as MiniGPT-4's llama_proj
    datasets = yaml.safe_load((CONFIG_DIR / f"{config or stage}.yaml").read_text())["data"]["datasets"]
    for name in datasets:
        if name in drop:
            over.append(f"data.datasets.{name}=null")
            continue
        if name not in DATASET_PATHS:
            raise UsageError(f"{config or stage}.yaml: dataset {name!r} has no place in a SynthAV world")
        over += [f"data.datasets.{name}.{key}={data / rel}" for key, rel in DATASET_PATHS[name].items()]
    return over


def load_stage_config(config: str, overrides: list[str]):
    from ..train.config import load_train_config

    return load_train_config(CONFIG_DIR / f"{config}.yaml", overrides)


def train_stage(config: str, overrides: list[str]) -> Path:
    """Run one stage (``configs/synthav/{config}.yaml``) through the project's training recipe; returns the
    exported model folder."""
    from ..train.recipe import EXPORT, train

    cfg = load_stage_config(config, overrides)
    if not cfg.run.export:
        raise UsageError(f"{config}: run.export is off; the chain needs each stage's exported model folder")
    train(cfg)
    folder = Path(cfg.run.output_dir) / EXPORT
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{config}: the run finished without writing {folder}")
    return folder


def without_frame_position(src: Path, dst: Path) -> Path:
    """Copy a model folder with ``use_frame_position`` switched off (the ablation's stage-0 start)."""
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    config_path = dst / "config.json"
    config = json.loads(config_path.read_text())
    config["videollama"]["use_frame_position"] = False
    config_path.write_text(json.dumps(config, indent=2) + "\n")
    return dst


def finalize_model(src: Path, dst: Path, max_bytes: int = MAX_MODEL_BYTES) -> Path:
    """Copy the final folder to ``dst``; re-save in fp16 when the weights exceed ``max_bytes``."""
    from ..model import VideoLlama

    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    weights = sum(p.stat().st_size for p in dst.glob("*.safetensors"))
    if weights > max_bytes:
        from transformers import AutoTokenizer

        model = VideoLlama.from_pretrained(src, dtype=torch.float16)
        shutil.rmtree(dst)
        model.save_pretrained(dst, tokenizer=AutoTokenizer.from_pretrained(str(src)))
        weights = sum(p.stat().st_size for p in dst.glob("*.safetensors"))
        if weights > max_bytes:
            raise UsageError(f"{dst}: {weights / 2**20:.1f} MiB of weights even in fp16 (limit {max_bytes / 2**20:.0f})")
    return dst


# ------------------------------------------------------------------------------------------------ driver
def audio_stages_train_llm(configs: tuple[str, ...]) -> bool:
    """Whether these stage YAMLs put LoRA adapters on the LLM (merged at export, so the LLM changes)."""
    return any(load_stage_config(config, []).optim.lora.enabled for config in configs)


def reused_vision(run: str | Path) -> tuple[Path, Path | None, dict[str, Any]]:
    """What ``vision_from`` takes from a finished chain run: (its VL-stage-2 model, its ablation model or None,
    its saved results or {}); raises when the run has no vision branch."""
    run = Path(run).resolve()
    vision = run / "vl_stage2" / "export"
    if not (vision / "config.json").is_file():
        raise UsageError(f"{run}: no vl_stage2/export; --vision-from needs a finished chain run")
    ablation = run / "ablation" / "vl_stage2" / "export"
    saved = run / "results" / "results.json"
    return (vision, ablation if (ablation / "config.json").is_file() else None,
            json.loads(saved.read_text()) if saved.is_file() else {})


def run_chain(out_dir: str | Path, seed: int = 0, settings: ChainSettings | None = None, *, data_seed: int = 0,
              data_dir: str | Path | None = None, stage0_dir: str | Path | None = None,
              vision_from: str | Path | None = None, evaluate: bool = True) -> ChainResult:
    """Run every step; ``data_dir`` reuses an existing SynthAV folder instead of generating one, and
    ``stage0_dir`` an existing stage 0 (a ``stage0/`` folder of another run, or ``videollama synthav stage0``'s
    output): the frozen parts are then shared, as downloaded weights are, and only stages 1-2 vary with ``seed``.
    ``vision_from``: a finished run (same stage 0 and seed) whose vision branch and ablation are reused; only the
    audio branch (``settings.audio_recipe``) is trained and evaluated.
    """
    from .evaluate import SETTINGS, evaluate_synthav, format_claims, format_table, save_results, summarize
    from .generate import format_summary, generate

    settings = settings or ChainSettings(stage0=Stage0Settings(seed=seed))
    settings.stage0 = replace(settings.stage0, seed=seed)
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    data = out / "data" if data_dir is None else Path(data_dir).resolve()
    result = ChainResult(out_dir=str(out), model_dir=str(out / "model"), data_dir=str(data))
    watch = Stopwatch(result.seconds)
    (al_configs, drop) = AUDIO_RECIPES[settings.audio_recipe]

    def lap(name: str) -> None:
        watch.lap(name)
        logger.info("synthav chain: %s done in %.0f s", name, result.seconds[name])
        (out / "chain.json").write_text(json.dumps({"seed": seed, "data_seed": data_seed, **asdict(result),
                                                    "settings": asdict(settings)}, indent=1) + "\n")

    if data_dir is None:
        summary = generate(data, settings.clips, data_seed, test_clips=settings.test_clips,
                           instruct_clips=settings.instruct_clips, images=settings.images,
                           audio_clips=settings.audio_clips, workers=settings.workers, overwrite=True)
        logger.info("%s", format_summary(summary))
        lap("generate")
    elif settings.audio_clips and not (data / "audio_captions" / "audio_captions.json").is_file():
        raise UsageError(f"{data}: no audio_captions/; the {settings.audio_recipe!r} audio recipe needs a world "
                         "generated with --audio-clips")

    if stage0_dir is None:
        stage0_dir = out / "stage0"
        run_stage0(data, stage0_dir, settings.stage0)
        lap("stage0")
    stage0_dir = Path(stage0_dir).resolve()
    result.stage0_dir = str(stage0_dir)
    for needed in ("model/config.json", PROJECTION_FILE):
        if not (stage0_dir / needed).is_file():
            raise FileNotFoundError(f"{stage0_dir}: no {needed}; not a stage-0 folder (run `videollama synthav stage0`)")

    def branch(start: Path, prefix: str, stages: tuple[str, ...], configs: tuple[str, ...] | None = None,
               drop: tuple[str, ...] = ()) -> Path:
        model = start
        for stage, config in zip(stages, configs or stages):
            over = stage_overrides(stage, data, model, out / f"{prefix}{stage}", seed, settings.stages[stage],
                                   settings.num_workers, projection=stage0_dir / PROJECTION_FILE, config=config,
                                   drop=drop)
            model = train_stage(config, over)
            lap(f"{prefix}{stage}")
        return model

    copied: dict[str, Any] = {}
    if vision_from is None:
        vision = branch(stage0_dir / "model", "", ("vl_stage1", "vl_stage2"))
    else:
        vision, ablation, saved = reused_vision(vision_from)
        same = ABLATION_SETTINGS if audio_stages_train_llm(al_configs) else VISION_ONLY_SETTINGS
        copied = {s: r for s, r in saved.get("per_seed", {}).get(str(seed), {}).items() if s in same}
    model = branch(vision, "", ("al_stage1", "al_stage2"), al_configs, drop)
    final = finalize_model(model, out / "model")
    if vision_from is None:
        ablation = None
        if settings.ablation:
            start = without_frame_position(stage0_dir / "model", out / "ablation" / "stage0")
            ablation = branch(start, "ablation/", ("vl_stage1", "vl_stage2"))
    lap("export")

    if evaluate:
        settings_to_run = [s for s in SETTINGS if s not in copied]
        results = evaluate_synthav({seed: final}, data, settings_to_run, seeds=[seed],
                                   ablation_dirs={seed: ablation} if ablation else None, limit=settings.eval_limit)
        if copied:  # the same vision branch answered these: its run's replies, not a second pass
            merged = {**copied, **results["per_seed"][str(seed)]}
            results["per_seed"][str(seed)] = {s: merged[s] for s in SETTINGS if s in merged}
            results["settings"] = list(results["per_seed"][str(seed)])
            results["summary"] = summarize(results["per_seed"])
            if ablation:
                results["ablations"] = {str(seed): str(ablation)}
        save_results(results, out / "results")
        logger.info("\n%s\n%s", format_table(results), format_claims(results))
        result.results = results["summary"]
        lap("evaluate")
    result.seconds["total"] = round(sum(v for k, v in result.seconds.items() if k != "total"), 1)
    lap("done")
    return result


# ------------------------------------------------------------------------------------------------ long inputs
LONG_STAGE = "vl_stage2_long"
LONG_QUICK = StageSteps(2, 2, warmup_steps=1)


def long_overrides(run_dir: Path, data: Path, long_data: Path, output: Path, seed: int, steps: StageSteps,
                   num_workers: int) -> list[str]:
    """``key=value`` overrides pointing ``vl_stage2_long.yaml`` at a chain run and a long-clip folder."""
    over = stage_overrides("vl_stage2", data, run_dir / "model", output, seed, steps, num_workers)
    return over + [f"data.datasets.long_instruct.annotations={long_data / 'long/long_instruct.json'}",
                   f"data.datasets.long_instruct.media_root={long_data / 'long/videos'}"]


def run_long_variant(run_dir: str | Path, long_data_dir: str | Path, seed: int = 0, steps: int | None = None, *,
                     batch_size: int | None = None, quick: bool = False, out_dir: str | Path | None = None,
                     num_workers: int | None = None, extra: list[str] | None = None) -> Path:
    """Train the stage-2 long-input variant from a finished chain run; returns its exported model folder.

    Starts from ``run_dir/model`` (both branches: the windows' sound is read by the audio branch), mixes the
    run's stage-2 data (``chain.json``'s ``data_dir``, else ``run_dir/data``) with ``long_data_dir``'s
    training clips, and writes ``out_dir`` (default ``run_dir/long_variant/seed_<seed>``). ``quick``: 2 steps
    of 2 samples, no DataLoader workers (tests); ``steps`` / ``batch_size`` default to the YAML's.
    """
    run = Path(run_dir).resolve()
    if not (run / "model" / "config.json").is_file():
        raise UsageError(f"{run}: no model/config.json; give a finished `videollama synthav train-all` folder")
    chain = json.loads((run / "chain.json").read_text()) if (run / "chain.json").is_file() else {}
    data = Path(chain.get("data_dir") or run / "data")
    long_data = Path(long_data_dir).resolve()
    if not (long_data / "long" / "long_instruct.json").is_file():
        raise UsageError(f"{long_data}: no long/long_instruct.json (write it with `videollama synthav generate-long`)")
    base = load_stage_config(LONG_STAGE, [])
    plan = LONG_QUICK if quick else StageSteps(base.optim.iters_per_epoch, base.optim.batch_size,
                                               base.optim.warmup_steps)
    plan = StageSteps(steps or plan.steps, batch_size or plan.batch_size, plan.warmup_steps)
    workers = (0 if quick else base.run.num_workers) if num_workers is None else num_workers
    output = Path(out_dir) if out_dir is not None else run / "long_variant" / f"seed_{seed}"
    over = long_overrides(run, data, long_data, output, seed, plan, workers) + list(extra or [])
    return train_stage(LONG_STAGE, over)
