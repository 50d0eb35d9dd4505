"""Long-video results over training seeds: mean ± std per setting and question type, and the target's gap.

    python -m scripts.synthav.long_seeds runs/lora/eval_s0_300 runs/lora/eval_s1_300 runs/lora/eval_s2_300 \\
        --out docs/synthav_long_seeds.json

Each folder holds the ``long_results.json`` of ``videollama synthav evaluate-long`` for one trained variant.
The gap of #22's target (windows - uniform 8 frames on the time-located questions) is taken seed by seed,
then averaged, as ``evaluate.claims`` pairs the short-clip gaps.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from videollama.synthav.long import LONG_TYPES

GROUPS = (*LONG_TYPES, "time_located", "all")
TARGET_GAP = 0.20  # trained windows - uniform 8 frames, time-located questions


def summarize(results: list[dict]) -> dict:
    """{"seeds", "settings": {setting: {group: {"mean", "std", "chance"}}}, "gap": {"per_seed", "mean", "std",
    "target", "met"}} from one ``long_results.json`` per seed."""
    settings = list(results[0]["settings"])
    table: dict = {}
    for setting in settings:
        table[setting] = {}
        for group in GROUPS:
            rows = [r["settings"][setting]["types"][group] for r in results if group in r["settings"][setting]["types"]]
            if rows:
                acc = np.array([row["accuracy"] for row in rows])
                table[setting][group] = {"mean": round(float(acc.mean()), 4), "std": round(float(acc.std()), 4),
                                         "chance": round(rows[0]["chance"], 4)}
    per_seed = [r["settings"]["windows"]["types"]["time_located"]["accuracy"]
                - r["settings"]["uniform8"]["types"]["time_located"]["accuracy"] for r in results]
    gap = {"per_seed": [round(g, 4) for g in per_seed], "mean": round(float(np.mean(per_seed)), 4),
           "std": round(float(np.std(per_seed)), 4), "target": TARGET_GAP}
    gap["met"] = gap["mean"] >= TARGET_GAP
    return {"seeds": len(results), "models": [r["model_dir"] for r in results], "settings": table, "gap": gap}


def format_summary(summary: dict) -> str:
    """Markdown: one row per setting (mean ± std over seeds), chance in the header, then the gap line."""
    settings = summary["settings"]
    groups = [g for g in GROUPS if any(g in row for row in settings.values())]
    chance = {g: next(row[g]["chance"] for row in settings.values() if g in row) for g in groups}
    lines = ["| setting | " + " | ".join(f"{g} (chance {chance[g]:.2f})" for g in groups) + " |",
             "|---" * (len(groups) + 1) + "|"]
    for setting, row in settings.items():
        cells = [f"{row[g]['mean']:.3f} ± {row[g]['std']:.3f}" if g in row else "-" for g in groups]
        lines.append(f"| {setting} | " + " | ".join(cells) + " |")
    gap = summary["gap"]
    verdict = "met" if gap["met"] else f"short by {gap['target'] - gap['mean']:.2f}"
    lines.append(f"\nwindows - uniform8, time-located, paired by seed: {gap['mean']:+.3f} ± {gap['std']:.3f} "
                 f"(per seed {', '.join(f'{g:+.3f}' for g in gap['per_seed'])}); target {gap['target']:+.2f}: "
                 f"{verdict}; {summary['seeds']} seeds")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path, help="evaluate-long --out folders, one per seed")
    parser.add_argument("--out", type=Path, help="write the summary JSON here")
    args = parser.parse_args(argv)
    results = [json.loads((folder / "long_results.json").read_text()) for folder in args.folders]
    summary = summarize(results)
    print(format_summary(summary))
    if args.out:
        args.out.write_text(json.dumps(summary, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
