"""``videollama synthav generate|stage0|train-all|evaluate|ship|generate-long|train-long|evaluate-long``: the SynthAV world and its reproducible chain.

    videollama synthav generate --out data/synthav --clips 2000 --seed 0
    videollama synthav stage0 --data data/synthav --out output/synthav/stage0
    videollama synthav train-all --out output/synthav --seed 0 [--quick]
    videollama synthav evaluate --run output/s0 --run output/s1 --run output/s2 --out results/
    videollama synthav evaluate --model DIR --data data/synthav --out results/   # one model (no ablation setting)
    videollama synthav ship --run output/synthav          # becomes the default model + examples
    videollama synthav generate-long --out data/synthav_long --clips 400 --test-clips 60 --seed 0
    videollama synthav train-long --run output/synthav --long-data data/synthav_long --seed 0 [--quick]
    videollama synthav evaluate-long --model DIR --data data/synthav_long --out results/long/

Each command parses its options once into the settings its library function takes
(:class:`~.stage0.Stage0Settings`, :class:`~.chain.ChainSettings`). The research tools (probe, spread,
clip reading) live outside the package, in ``scripts/synthav/``.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable
from dataclasses import asdict, replace
from typing import TYPE_CHECKING

from ..errors import UsageError

AUDIO_RECIPE_NAMES = ("visual", "audiotext", "mixed")  # chain.AUDIO_RECIPES' keys, without importing torch
DEFAULT_AUDIO_RECIPE = "audiotext"

if TYPE_CHECKING:
    from .stage0 import Stage0Settings


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def cmd_generate(args) -> int:
    from .generate import format_summary, generate

    summary = generate(args.out, args.clips, args.seed, test_clips=args.test_clips, instruct_clips=args.instruct_clips,
                       images=args.images, audio_clips=args.audio_clips, workers=args.workers, wav=args.wav, overwrite=args.overwrite,
                       progress=True)
    print(format_summary(summary))
    return 0


def add_stage0_args(p: argparse.ArgumentParser) -> None:
    """The stage-0 options of ``stage0`` and ``train-all``; :func:`stage0_settings` reads them."""
    p.add_argument("--seed", type=int, default=0, help="training seed")
    p.add_argument("--quick", action="store_true", help="a few steps of everything on tiny data (CI, same code path)")
    p.add_argument("--stage0-threads", type=_non_negative, default=0,
                   help="torch threads of stage 0 (default 0: every core; 1 when runs share the machine)")


def stage0_settings(args: argparse.Namespace) -> Stage0Settings:
    """:class:`Stage0Settings` from :func:`add_stage0_args`' options."""
    from .stage0 import Stage0Settings

    base = Stage0Settings.quick(args.seed) if args.quick else Stage0Settings(seed=args.seed)
    return replace(base, threads=args.stage0_threads)


def cmd_stage0(args: argparse.Namespace) -> int:
    from .stage0 import run_stage0

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    result = run_stage0(args.data, args.out, stage0_settings(args))
    print(json.dumps(asdict(result), indent=1))
    return 0


def cmd_train_all(args: argparse.Namespace) -> int:
    from .chain import ChainSettings, run_chain

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    settings = ChainSettings.quick(args.seed) if args.quick else ChainSettings()
    settings = replace(settings, stage0=stage0_settings(args), audio_recipe=args.audio_recipe)
    result = run_chain(args.out, args.seed, settings, data_seed=args.data_seed, data_dir=args.data,
                       stage0_dir=args.stage0, vision_from=args.vision_from, evaluate=not args.no_eval)
    print(json.dumps({"model_dir": result.model_dir, "seconds": result.seconds}, indent=1))
    return 0


def cmd_evaluate(args) -> int:
    from .evaluate import combine_runs, evaluate_synthav, format_claims, format_table, save_results

    if bool(args.run) == bool(args.model):
        raise UsageError("give either --run (train-all folders, one per seed) or --model with --data")
    if args.model:
        if not args.data:
            raise UsageError("--model needs --data (a SynthAV folder with qa/test.json)")
        results = evaluate_synthav(args.model, args.data, ablation_dirs=args.ablation_model, limit=args.limit)
    else:
        results = combine_runs(args.run, limit=args.limit)
    json_path, png_path = save_results(results, args.out)
    print(format_table(results))
    print(format_claims(results))
    print(f"wrote {json_path} and {png_path}")
    return 0


def cmd_ship(args) -> int:
    from .ship import ship

    manifest = ship(args.run)
    for example in manifest["examples"]:
        print(f"{example['file']}: {example['question']} -> {example['reply']!r} ({example['chosen']})")
    return 0


def _long_settings(args):
    from .long import LongSettings

    return LongSettings(min_seconds=args.min_seconds, max_seconds=args.max_seconds,
                        min_scene_seconds=args.min_scene_seconds, max_scene_seconds=args.max_scene_seconds,
                        fps=args.fps, max_windows=args.max_windows)


def cmd_generate_long(args) -> int:
    from .long import format_long_summary, generate_long, rewrite_training_questions

    if args.questions_only:
        counts = rewrite_training_questions(args.out, args.train_questions)
        print(f"{args.out}/long/long_instruct.json: {counts['train_turns']} questions on {counts['clips']} training clips")
        return 0
    summary = generate_long(args.out, args.clips, args.seed, test_clips=args.test_clips,
                            settings=_long_settings(args), workers=args.workers, overwrite=args.overwrite,
                            train_questions=args.train_questions)
    print(format_long_summary(summary))
    return 0


def cmd_train_long(args) -> int:
    from .chain import run_long_variant

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    folder = run_long_variant(args.run, args.long_data, args.seed, args.steps, batch_size=args.batch_size,
                              quick=args.quick, out_dir=args.out)
    print(json.dumps({"model_dir": str(folder)}))
    return 0


def cmd_evaluate_long(args) -> int:
    from pathlib import Path

    from .long import LongSettings
    from .long_eval import evaluate_long, format_long_table

    settings = LongSettings(fps=args.fps, max_windows=args.max_windows)
    results = evaluate_long(args.model, args.data, limit=args.limit, settings=settings,
                            window_frames=args.window_frames)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "long_results.json").write_text(json.dumps(results, indent=1) + "\n")
    print(format_long_table(results))
    print(f"wrote {out / 'long_results.json'}")
    return 0


def _add_long_reading(p: argparse.ArgumentParser) -> None:
    p.add_argument("--fps", type=float, default=1.0, help="frames per second the windows are read at (default 1)")
    p.add_argument("--max-windows", type=int, default=4, help="most windows (frames spread uniformly past them)")


def register(subparsers, commands: dict[str, Callable]) -> None:
    """Add ``synthav`` with its subcommands to the ``videollama`` parser."""
    parser = subparsers.add_parser("synthav", help="generate the SynthAV world; train the SynthAV model from scratch")
    sub = parser.add_subparsers(dest="synthav_command", required=True)

    p = sub.add_parser("generate", help="render clips, stills and annotations in the official data formats")
    p.add_argument("--out", required=True)
    p.add_argument("--clips", type=int, default=2000, help="WebVid-style caption clips")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--test-clips", type=int, default=300)
    p.add_argument("--instruct-clips", type=int, default=None, help="default: clips // 2")
    p.add_argument("--images", type=int, default=None, help="stills per image dataset; default: clips // 2")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--wav", action="store_true", help="also write a .wav beside every clip")
    p.add_argument("--audio-clips", type=int, default=0,
                   help="soundtracks for audio captions (WavCaps format) and audio-only instruction QA; default 0: none")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(synthav_func=cmd_generate)

    p = sub.add_parser("stage0", help="train the LLM, image encoder + Q-Former and ImageBind-like pair on a world")
    p.add_argument("--data", required=True, help="a SynthAV folder written by `videollama synthav generate`")
    p.add_argument("--out", required=True, help="output folder (model/, llama_proj.safetensors, stage0.json)")
    add_stage0_args(p)
    p.set_defaults(synthav_func=cmd_stage0)

    p = sub.add_parser("train-all", help="the whole chain: data, stage 0, stages 1-2 of both branches, evaluation")
    p.add_argument("--out", required=True, help="output folder (data, stages, model/, results/)")
    add_stage0_args(p)
    p.add_argument("--data-seed", type=int, default=0, help="world seed of the generated data")
    p.add_argument("--data", default=None, help="reuse a generated SynthAV folder")
    p.add_argument("--stage0", default=None, help="reuse a stage-0 folder: the frozen parts shared across seeds")
    p.add_argument("--audio-recipe", choices=AUDIO_RECIPE_NAMES, default=DEFAULT_AUDIO_RECIPE,
                   help="what the audio branch trains on: visual (the paper: frames through ImageBind's vision "
                        "encoder), audiotext (the world's sounds with captions and audio questions), mixed (both); "
                        f"default {DEFAULT_AUDIO_RECIPE}")
    p.add_argument("--vision-from", default=None,
                   help="a finished train-all folder (same stage 0 and seed) whose vision branch and ablation are "
                        "reused: only the audio branch is trained (compare audio recipes)")
    p.add_argument("--no-eval", action="store_true", help="skip the evaluation")
    p.set_defaults(synthav_func=cmd_train_all)

    p = sub.add_parser("evaluate", help="the claims table over several train-all runs (one training seed each)")
    p.add_argument("--run", action="append", default=[], help="a train-all output folder; repeat per seed")
    p.add_argument("--model", default=None, help="instead of --run: one model folder (e.g. the shipped default)")
    p.add_argument("--data", default=None, help="with --model: the SynthAV folder whose qa/test.json is asked")
    p.add_argument("--ablation-model", default=None, help="with --model: the model trained without frame positions")
    p.add_argument("--out", required=True, help="folder for results.json and results.png")
    p.add_argument("--limit", type=int, default=None, help="only the first N held-out questions")
    p.set_defaults(synthav_func=cmd_evaluate)

    p = sub.add_parser("ship", help="make a chain's model the package default and pick example clips")
    p.add_argument("--run", required=True, help="a train-all output folder (with model/ and data/)")
    p.set_defaults(synthav_func=cmd_ship)

    p = sub.add_parser("generate-long", help="long clips (scenes one after another) with long-video questions")
    p.add_argument("--out", required=True, help="folder (may be a SynthAV folder: only long/ and qa/long_* are written)")
    p.add_argument("--clips", type=int, default=400, help="training clips (VideoChat-style QA)")
    p.add_argument("--test-clips", type=int, default=60, help="held-out clips (one question per type each)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--min-seconds", type=float, default=60.0, help="shortest clip (seconds)")
    p.add_argument("--max-seconds", type=float, default=120.0, help="longest clip before its last scene ends")
    p.add_argument("--min-scene-seconds", type=int, default=4)
    p.add_argument("--max-scene-seconds", type=int, default=8)
    _add_long_reading(p)
    p.add_argument("--train-questions", type=int, default=1,
                   help="questions of each time-located type per training clip (held-out clips: one per type)")
    p.add_argument("--questions-only", action="store_true",
                   help="rewrite an existing folder's long/long_instruct.json with --train-questions, rendering nothing")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(synthav_func=cmd_generate_long)

    p = sub.add_parser("train-long", help="train the stage-2 long-input variant from a finished train-all folder")
    p.add_argument("--run", required=True, help="a train-all output folder (model/, chain.json)")
    p.add_argument("--long-data", required=True, help="a folder written by generate-long")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=None, help="default: the YAML's iters_per_epoch")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--out", default=None, help="default: RUN/long_variant/seed_<seed>")
    p.add_argument("--quick", action="store_true", help="2 steps of 2 samples (CI, same code path)")
    p.set_defaults(synthav_func=cmd_train_long)

    p = sub.add_parser("evaluate-long", help="long-video questions: windows vs uniform 8 frames, per type")
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True, help="a folder with qa/long_test.json")
    p.add_argument("--out", required=True, help="folder for long_results.json")
    p.add_argument("--limit", type=int, default=None, help="only the first N held-out questions")
    _add_long_reading(p)
    p.add_argument("--window-frames", type=int, default=None,
                   help="frames per window (default: the model's own: its config's window_frames, else max_frames)")
    p.set_defaults(synthav_func=cmd_evaluate_long)

    commands["synthav"] = lambda args: args.synthav_func(args)


__all__ = ["register"]
