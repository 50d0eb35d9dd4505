"""``videollama eval TASK --data DIR --model DIR``: the harness of ``runner.py`` driven by the model.

Questions are answered in batches through ``Pipeline.answer_batch`` (greedy by default). Under
``torchrun`` each process loads the model on its own device and answers its shard of the questions.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from ..errors import UsageError


def register(sub, commands) -> None:
    from ..cli import add_generation_args, add_media_args, add_model_args
    from .runner import add_arguments

    p = sub.add_parser("eval", help="zero-shot video QA: msvd-qa, msrvtt-qa, activitynet-qa, synthav")
    add_arguments(p)
    add_model_args(p)
    add_media_args(p)
    add_generation_args(p)
    p.set_defaults(greedy_default=True)
    p.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    commands["eval"] = cmd_eval


def model_fingerprint(directory: Path) -> str:
    """Identifies the weights cheaply: config.json content plus the weight files' names and sizes."""
    h = hashlib.sha256((directory / "config.json").read_bytes())
    for path in sorted(directory.glob("*.safetensors")):
        h.update(f"{path.name}:{path.stat().st_size}".encode())
    return h.hexdigest()[:16]


def cmd_eval(args) -> int:
    import json

    import torch

    from ..cli import generation_config, load_pipeline, media_options
    from ..inference import BatchItem
    from .runner import main_eval, options_from_args

    args.greedy = not args.sample
    if "LOCAL_RANK" in os.environ and args.device_map is not None:
        raise UsageError("--device-map auto spreads one model over all GPUs, but under torchrun each process loads "
                         "its own copy; run without torchrun, or use --load-in to fit one copy per GPU")
    if args.device == "cpu" and "LOCAL_RANK" in os.environ and torch.cuda.is_available():
        args.device = f"cuda:{os.environ['LOCAL_RANK']}"
    gen = generation_config(args)
    pipe, resolved = load_pipeline(args)
    options = media_options(args)

    def answerer(items):
        batch = [BatchItem(media=item.video_path, question=item.prompt, options=options) for item in items]
        return pipe.answer_batch(batch, gen, batch_size=len(batch))

    decoding = "greedy" if not gen.do_sample else f"sample(t={gen.temperature}, top_p={gen.top_p}, seed={gen.seed})"
    summary = main_eval(answerer=answerer, model_fingerprint=model_fingerprint(resolved.path), decoding=decoding,
                        **options_from_args(args))
    if summary and int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({k: v for k, v in summary.items() if not isinstance(v, (dict, list))}, indent=2))
    return 0
