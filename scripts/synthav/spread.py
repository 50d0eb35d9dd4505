"""How much each representation of a trained model varies from clip to clip: where the media gets lost.

A branch whose soft tokens are nearly the same for every clip gives the LLM nothing to answer from, and
the LLM falls back on the question's prior. For held-out clips, this measures the *relative spread*
of each representation on the way to the LLM,

    spread(X) = mean_i |x_i - mean(x)| / mean_i |x_i|        (x_i: one clip's representation, flattened)

0 when every clip gives the same, about 1 for independent random vectors:

- vision-language branch: the image Q-Former's frame queries, then the video soft tokens;
- audio-language branch: the ImageBind-like audio embeddings and the audio soft tokens from the
  soundtrack; the ImageBind-like vision embeddings and the audio soft tokens from the frames (the
  branch's training input).

    python -m scripts.synthav.spread --model runs/synthav/seed0/model --data runs/synthav/seed0/data
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import Tensor

from videollama.synthav.evaluate import NUM_FRAMES, load_test_items
from videollama.synthav.stage0 import frame_queries


def relative_spread(x: Tensor) -> float:
    """Mean distance of the rows of ``x`` (N, ...) to their mean, over their mean norm."""
    x = x.flatten(1).float()  # (N, F)
    return float((x - x.mean(0, keepdim=True)).norm(dim=1).mean() / x.norm(dim=1).mean().clamp_min(1e-12))


def branch_spread(model_dir: str | Path, data_dir: str | Path, clips: int = 64) -> dict[str, float]:
    """Relative spread of each representation over the first ``clips`` distinct held-out clips."""
    from videollama.inference import Pipeline
    from videollama.media import load_audio
    from videollama.media.video import load_video

    pipe = Pipeline.from_pretrained(model_dir)
    model = pipe.model
    videos = list(dict.fromkeys(it.video for it in load_test_items(data_dir)))[:clips]
    if len(videos) < 2:
        raise ValueError(f"{data_dir}: need at least 2 held-out clips to measure a spread, found {len(videos)}")
    device, dtype = model.device, model.dtype
    out: dict[str, float] = {}
    with torch.inference_mode():
        frames = torch.stack([load_video(v, NUM_FRAMES, image_size=pipe.image_size).frames for v in videos])
        frames = frames.to(device, dtype)  # (N, T, 3, S, S)
        flat = frames.flatten(0, 1)  # (N*T, 3, S, S)
        if model.config.with_vision:
            out["frame_queries"] = relative_spread(frame_queries(model, flat).view(len(videos), -1))  # (N, T*Q*W)
            out["video_tokens"] = relative_spread(model.encode_video(frames))
        if model.config.with_audio:
            mel = torch.stack([load_audio(v) for v in videos]).to(device, dtype)  # (N, S, 1, M, F)
            _, embeddings = model.audio_encoder(mel)  # (N, S, E)
            out["audio_embeddings"] = relative_spread(embeddings)
            out["audio_tokens"] = relative_spread(model.encode_audio(mel))
            if hasattr(model, "imagebind_vision"):
                out["vision_embeddings"] = relative_spread(model.imagebind_vision(flat).view(len(videos), -1))
                out["audio_tokens_from_frames"] = relative_spread(model.encode_visual_for_audio_branch(frames))
    return out


def format_spread(spread: dict[str, float]) -> str:
    lines = ["| representation | relative spread over clips |", "|---|---|"]
    lines += [f"| {name} | {value:.3f} |" for name, value in spread.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="a model folder (e.g. a train-all run's model/)")
    parser.add_argument("--data", required=True, help="the SynthAV folder whose held-out clips are encoded")
    parser.add_argument("--clips", type=int, default=64, help="distinct held-out clips")
    args = parser.parse_args(argv)
    print(format_spread(branch_spread(args.model, args.data, clips=args.clips)))


if __name__ == "__main__":
    main()
