"""The model card (``README.md``) of a converted folder: what it is, how to use it, where every tensor came from.

:func:`source_files` lists (and hashes) every file a conversion read; :func:`model_card` writes the card
from the :class:`~.build.BuildReport`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import VideoLlamaConfig
from ..hashing import file_sha256

if TYPE_CHECKING:
    from .build import BuildReport, Sources

CARD_NAME = "README.md"


@dataclass
class SourceFile:
    """One file a conversion read: the option it was given as, its size and (optionally) SHA-256."""

    option: str
    path: Path
    size: int
    sha256: str | None = None


def source_files(sources: Sources, llm, hash_sources: bool, say: Callable[[str], None]) -> list[SourceFile]:
    """Every file of the LLM folder and of each given source, with its size and SHA-256 unless not asked."""
    files: list[tuple[str, Path]] = [("--llm", p) for p in llm.weights.files]
    for slot, path in sources.checkpoints():
        option = sources.OPTIONS[slot]
        if path.is_dir():
            files += [(option, p) for p in sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin"))]
        else:
            files.append((option, path))
    out = []
    for option, path in files:
        if hash_sources:
            say(f"sha256 {path.name}")
        out.append(SourceFile(option, path, path.stat().st_size, file_sha256(path) if hash_sources else None))
    return out


def summarise_keys(keys: list[str]) -> list[str]:
    """Keys grouped by top-level part: ``part.* (count)``."""
    groups: dict[str, int] = {}
    for key in keys:
        group = ".".join(key.split(".")[:1])
        groups[group] = groups.get(group, 0) + 1
    return [f"{g}.* ({n})" if n > 1 else g for g, n in groups.items()]


def branches_included(cfg: VideoLlamaConfig) -> str:
    """The card's sentence on what the folder holds."""
    if cfg.with_vision and cfg.with_audio:
        return "vision-language and audio-language branches included"
    if cfg.with_vision:
        return "vision-language branch only (no audio branch: the audio track of a video is ignored)"
    return ("audio-language branch only (no vision branch: images are refused and a video is answered from its "
            "audio track)")


def model_card(report: BuildReport, *, dtype: str, branches: str) -> str:
    """README.md of the folder: what it is, how to use it, where every tensor came from."""
    from .. import __version__

    cfg = report.config
    llm = cfg.llm
    media, question = ("clip.mp4", "What is happening in this video?") if cfg.with_vision else \
        ("sound.wav", "What do you hear?")
    lines = [
        f"# Video-LLaMA ({llm.get('model_type', 'llm')} {llm.get('hidden_size')}-wide, "
        f"{llm.get('num_hidden_layers')} layers), converted",
        "",
        f"Converted by `videollama convert` (videollama {__version__}) from the released files listed below.",
        f"Branches: **{branches}**: {branches_included(cfg)}. "
        f"Weights: **{dtype}** safetensors. Template: `{cfg.template}`. "
        f"Placeholders: `<ImageHere>` = {cfg.image_token_id}, `<AudioHere>` = {cfg.audio_token_id} "
        f"(LLM vocabulary {llm.get('vocab_size')}, embedding not resized).",
        "",
        "## Use",
        "",
        "```",
        f"videollama chat --model {report.out_dir.name} {media} \"{question}\"",
        "```",
        "",
        "```python",
        "from videollama import Pipeline",
        f"pipe = Pipeline.from_pretrained(\"{report.out_dir.name}\")",
        f"print(pipe.chat(\"{media}\").ask(\"{question}\"))",
        "```",
        "",
        "## Sources",
        "",
        "| option | file | bytes | sha256 |",
        "|---|---|---:|---|",
    ]
    lines += [f"| `{s.option}` | `{s.path.name}` | {s.size:,} | `{s.sha256 or 'not computed'}` |" for s in report.sources]
    lines += ["", "## Conversion report", "", "```", *[r.format() for r in report.reports], "```"]
    if report.filled:
        lines += ["", "## NOT from a checkpoint", "",
                  f"{len(report.filled)} tensors were missing from every source and hold a fresh random init "
                  "(`--allow-missing`). Answers that depend on them are meaningless:", ""]
        lines += [f"- `{group}`" for group in summarise_keys(report.filled)]
    lines += ["", "## Notes", ""] + [f"- {note}" for note in report.notes]
    return "\n".join(lines) + "\n"
