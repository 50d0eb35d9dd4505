"""``videollama convert``: the released Video-LLaMA files -> one model folder.

    videollama convert --llm llama-2-7b-chat-hf \\
        --vl-ckpt VL_LLaMA_2_7B_Finetuned.pth --al-ckpt AL_LLaMA_2_7B_Finetuned.pth \\
        --eva-vit eva_vit_g.pth --blip2 blip2_pretrained_flant5xxl.pth \\
        --imagebind imagebind_huge.pth --out videollama2-7b

Registered by ``videollama/cli.py`` through :func:`register`. Problems with the inputs are printed as
the conversion report (``error: ...`` + the report) with exit status 2.
"""

from __future__ import annotations

import argparse
import sys

from .build import BRANCH_CHOICES, DEFAULT_DTYPE, DEFAULT_MAX_SHARD, DTYPES


def register(subparsers, commands: dict) -> None:
    p = subparsers.add_parser(
        "convert",
        help="convert the released Video-LLaMA weights into a model folder",
        description="Convert the released Video-LLaMA files (branch checkpoints, EVA ViT-g, BLIP-2, ImageBind, "
                    "LLaMA-2-chat/Vicuna) into one self-contained model folder. See docs/weights.md.",
    )
    p.add_argument("--llm", required=True, metavar="DIR", help="Hugging Face LLaMA-2-chat or Vicuna folder (with tokenizer)")
    p.add_argument("--vl-ckpt", metavar="FILE", help="vision-language checkpoint, e.g. VL_LLaMA_2_7B_Finetuned.pth")
    p.add_argument("--al-ckpt", metavar="FILE", help="audio-language checkpoint, e.g. AL_LLaMA_2_7B_Finetuned.pth")
    p.add_argument("--eva-vit", metavar="FILE", help="LAVIS eva_vit_g.pth (EVA ViT-g/14, 40 blocks; 39 are kept)")
    p.add_argument("--blip2", metavar="FILE", help="LAVIS blip2_pretrained_flant5xxl.pth (Q-Former, query tokens, ln_vision)")
    p.add_argument("--hf-blip2", metavar="DIR", help="instead of --eva-vit and --blip2: a Salesforce/blip2-* folder")
    p.add_argument("--imagebind", metavar="FILE", help="imagebind_huge.pth (audio encoder)")
    p.add_argument("--out", required=True, metavar="DIR", help="model folder to write")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=DEFAULT_DTYPE,
                   help=f"stored weight dtype (default {DEFAULT_DTYPE}, as the official code runs the LLM)")
    p.add_argument("--branches", choices=BRANCH_CHOICES, default="both",
                   help="both (default), vl (vision-language only: no audio, no ImageBind), "
                        "al (audio-language only: no EVA ViT-g/BLIP-2; videos are answered from their audio track)")
    p.add_argument("--template", choices=["llama_2", "vicuna_v0"], default=None,
                   help="conversation template (default: from the checkpoint names, else from the LLM)")
    p.add_argument("--imagebind-vision", action="store_true",
                   help="also store ImageBind's vision encoder (needed only to train the audio branch)")
    p.add_argument("--allow-missing", action="store_true",
                   help="print the report and go on when tensors are missing (they get a random init, listed in the card)")
    p.add_argument("--max-shard-size", default=DEFAULT_MAX_SHARD, help=f"largest output file (default {DEFAULT_MAX_SHARD})")
    p.add_argument("--overwrite", action="store_true", help="replace an existing non-empty --out folder")
    p.add_argument("--no-hash", action="store_true", help="skip the SHA-256 of the sources in the model card")
    commands["convert"] = cmd_convert


def cmd_convert(args: argparse.Namespace) -> int:
    """Run the conversion; print progress and the report on stderr."""
    from .build import convert

    def log(message: str) -> None:
        print(f"[convert] {message}", file=sys.stderr, flush=True)

    report = convert(
        args.out, llm_dir=args.llm, vl_ckpt=args.vl_ckpt, al_ckpt=args.al_ckpt, eva_vit=args.eva_vit,
        blip2=args.blip2, hf_blip2=args.hf_blip2, imagebind=args.imagebind, dtype=args.dtype,
        branches=args.branches, allow_missing=args.allow_missing, template=args.template,
        imagebind_vision=args.imagebind_vision, max_shard_size=args.max_shard_size, overwrite=args.overwrite,
        hash_sources=not args.no_hash, log=log,
    )
    print(report.format(), file=sys.stderr)
    if report.filled:
        print(f"WARNING: {len(report.filled)} tensors were missing and hold a random init (see {args.out}/README.md)",
              file=sys.stderr)
    media = "AUDIO_OR_VIDEO" if args.branches == "al" else "VIDEO"  # an audio-only model reads no frames
    print(f"done: videollama chat --model {args.out} {media} \"question\"")
    return 0
