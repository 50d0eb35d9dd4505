"""``videollama train CONFIG [key=value ...]`` (also under torchrun) and ``videollama export RUN --out DIR``."""

from __future__ import annotations


def register(sub, commands) -> None:
    p = sub.add_parser("train", help="train a stage from a YAML config (also under torchrun)")
    p.add_argument("config", help="YAML file, e.g. configs/visionbranch_stage1_pretrain.yaml")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. optim.batch_size=4 run.resume=true")
    start = p.add_mutually_exclusive_group()
    start.add_argument("--resume", action="store_true",
                       help="continue from the run's newest checkpoint that verifies (refuses when none does)")
    start.add_argument("--restart", action="store_true",
                       help="start over at step 0: delete the run's checkpoints, metrics.jsonl and logs first")
    commands["train"] = cmd_train

    p = sub.add_parser("export", help="write a model folder from a training run's checkpoint")
    p.add_argument("run_dir", help="the run's output_dir")
    p.add_argument("--out", required=True, help="model folder to write")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    commands["export"] = cmd_export


def cmd_train(args) -> int:
    import json

    from .config import load_train_config
    from .recipe import train

    overrides = list(args.overrides) + (["run.resume=true"] if args.resume else []) + (
        ["run.restart=true"] if args.restart else [])
    summary = train(load_train_config(args.config, overrides))
    if summary.get("world_size", 1) == 1 or __import__("os").environ.get("RANK", "0") == "0":
        print(json.dumps({k: v for k, v in summary.items() if k != "skipped"}, indent=2))
    return 0


def cmd_export(args) -> int:
    from .recipe import export

    print(export(args.run_dir, args.out, step=args.step))
    return 0
