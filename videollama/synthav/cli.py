"""``videollama synthav generate|stage0|train-all|evaluate|probe|spread|ship``: the SynthAV world and its reproducible chain.

    videollama synthav generate --out data/synthav --clips 2000 --seed 0
    videollama synthav stage0 --data data/synthav --out output/synthav/stage0
    videollama synthav train-all --out output/synthav --seed 0 [--quick]
    videollama synthav evaluate --run output/s0 --run output/s1 --run output/s2 --out results/
    videollama synthav evaluate --model DIR --data data/synthav --out results/   # one model (no ablation setting)
    videollama synthav spread --model output/synthav/model --data data/synthav  # do the soft tokens vary by clip?
    videollama synthav ship --run output/synthav          # becomes the default model + examples

(The held-out evaluation is ``videollama eval synthav``, wired to
:func:`videollama.synthav.evaluate.evaluate_synthav`.)
"""

from __future__ import annotations

from collections.abc import Callable


def cmd_generate(args) -> int:
    from .generate import format_summary, generate

    summary = generate(args.out, args.clips, args.seed, test_clips=args.test_clips, instruct_clips=args.instruct_clips,
                       images=args.images, audio_clips=args.audio_clips, workers=args.workers, wav=args.wav, overwrite=args.overwrite,
                       progress=True)
    print(format_summary(summary))
    return 0


def cmd_stage0(args) -> int:
    from .stage0 import main

    argv = ["--data", args.data, "--out", args.out, "--seed", str(args.seed)] + (["--quick"] if args.quick else [])
    main(argv + (["--clip-steps", str(args.clip_steps)] if args.clip_steps is not None else []))
    return 0


def cmd_train_all(args) -> int:
    from .chain import main

    argv = ["--out", args.out, "--seed", str(args.seed), "--data-seed", str(args.data_seed)]
    argv += (["--data", args.data] if args.data else []) + (["--quick"] if args.quick else [])
    argv += ["--stage0", args.stage0] if args.stage0 else []
    argv += ["--no-eval"] if args.no_eval else []
    argv += ["--stage0-threads", str(args.stage0_threads)]
    argv += ["--clip-steps", str(args.clip_steps)] if args.clip_steps is not None else []
    main(argv)
    return 0


def cmd_evaluate(args) -> int:
    from .evaluate import combine_runs, evaluate_synthav, format_table, save_results

    if bool(args.run) == bool(args.model):
        raise ValueError("give either --run (train-all folders, one per seed) or --model with --data")
    if args.model:
        if not args.data:
            raise ValueError("--model needs --data (a SynthAV folder with qa/test.json)")
        results = evaluate_synthav(args.model, args.data, ablation_dirs=args.ablation_model, limit=args.limit)
    else:
        results = combine_runs(args.run, limit=args.limit)
    json_path, png_path = save_results(results, args.out)
    print(format_table(results))
    print(f"wrote {json_path} and {png_path}")
    return 0


def cmd_spread(args) -> int:
    from .spread import branch_spread, format_spread

    print(format_spread(branch_spread(args.model, args.data, clips=args.clips)))
    return 0


def cmd_probe(args) -> int:
    from .probe import format_probe, run_probe, save_probe

    result = run_probe(args.stage0, args.data, clips=args.clips)
    print(format_probe(result))
    if args.out:
        save_probe(result, args.out)
        print(f"wrote {args.out}")
    return 0


def cmd_ship(args) -> int:
    from .ship import ship

    manifest = ship(args.run)
    for example in manifest["examples"]:
        print(f"{example['file']}: {example['question']} -> {example['reply']!r} ({example['chosen']})")
    return 0


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
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--clip-steps", type=int, default=None,
                   help="steps of stage 0's optional clip-reading phase (default 0: off; 400 in docs/synthav.md)")
    p.set_defaults(synthav_func=cmd_stage0)

    p = sub.add_parser("train-all", help="the whole chain: data, stage 0, stages 1-2 of both branches, evaluation")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0, help="training seed")
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--data", default=None, help="reuse a generated SynthAV folder")
    p.add_argument("--stage0", default=None, help="reuse a stage-0 folder: the frozen parts shared across seeds")
    p.add_argument("--quick", action="store_true", help="minutes, for CI")
    p.add_argument("--no-eval", action="store_true")
    p.add_argument("--stage0-threads", type=int, default=0,
                   help="torch threads of stage 0 (default 0: every core; 1 when runs share the machine)")
    p.add_argument("--clip-steps", type=int, default=None,
                   help="steps of stage 0's optional clip-reading phase (default 0: off; 400 in docs/synthav.md)")
    p.set_defaults(synthav_func=cmd_train_all)

    p = sub.add_parser("evaluate", help="the claims table over several train-all runs (one training seed each)")
    p.add_argument("--run", action="append", default=[], help="a train-all output folder; repeat per seed")
    p.add_argument("--model", default=None, help="instead of --run: one model folder (e.g. the shipped default)")
    p.add_argument("--data", default=None, help="with --model: the SynthAV folder whose qa/test.json is asked")
    p.add_argument("--ablation-model", default=None, help="with --model: the model trained without frame positions")
    p.add_argument("--out", required=True, help="folder for results.json and results.png")
    p.add_argument("--limit", type=int, default=None, help="only the first N held-out questions")
    p.set_defaults(synthav_func=cmd_evaluate)

    p = sub.add_parser("probe", help="what the frozen stage-0 parts know: linear probes, caption loss by token kind")
    p.add_argument("--stage0", required=True, help="a stage-0 folder (model/ + llama_proj.safetensors)")
    p.add_argument("--data", required=True, help="the SynthAV folder it was trained on (held-out clips are its last)")
    p.add_argument("--clips", type=int, default=300, help="held-out WebVid clips to probe on")
    p.add_argument("--out", default=None, help="also write the numbers to this JSON file")
    p.set_defaults(synthav_func=cmd_probe)

    p = sub.add_parser("spread", help="how much each representation of a trained model varies from clip to clip")
    p.add_argument("--model", required=True, help="a model folder (e.g. a train-all run's model/)")
    p.add_argument("--data", required=True, help="the SynthAV folder whose held-out clips are encoded")
    p.add_argument("--clips", type=int, default=64, help="distinct held-out clips")
    p.set_defaults(synthav_func=cmd_spread)

    p = sub.add_parser("ship", help="make a chain's model the package default and pick example clips")
    p.add_argument("--run", required=True, help="a train-all output folder (with model/ and data/)")
    p.set_defaults(synthav_func=cmd_ship)

    commands["synthav"] = lambda args: args.synthav_func(args)


__all__ = ["register"]
