"""One question family, question type by question type: accuracy under two settings and what was answered.

    python -m scripts.synthav.by_type --model runs/s0/audiotext/model --data runs/world --family audio \\
        --setting audio --setting other_audio

The results table of ``videollama synthav evaluate`` is per family; this splits a family by question type
(``qa/test.json``'s ``type``) and counts the choices the replies name, which shows whether a gap between
two settings comes from reading the input or from an answer prior (e.g. "yes" to every yes/no question).
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from videollama.synthav.evaluate import SETTINGS, answer_items, load_test_items, match_choice


def by_type(model: str | Path, data: str | Path, family: str, settings: list[str]) -> dict:
    """{type: {"items", "answers": {choice: n}, setting: {"accuracy", "replies": {choice or None: n}}}}."""
    from videollama.inference import Pipeline

    items = load_test_items(data)
    chosen = [it for it in items if it.family == family]
    pipe = Pipeline.from_pretrained(model)
    replies = {s: answer_items(pipe, chosen, s, clips=[it.video for it in items]) for s in settings}
    out: dict = {}
    for qtype in sorted({it.qtype for it in chosen}):
        idx = [i for i, it in enumerate(chosen) if it.qtype == qtype]
        row: dict = {"items": len(idx), "answers": dict(Counter(chosen[i].answer for i in idx).most_common())}
        for s in settings:
            named = [match_choice(replies[s][i], chosen[i].choices) for i in idx]
            row[s] = {"accuracy": round(sum(n == chosen[i].answer for n, i in zip(named, idx)) / len(idx), 4),
                      "replies": {str(k): v for k, v in Counter(named).most_common()}}
        out[qtype] = row
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True, help="the SynthAV folder whose qa/test.json is asked")
    parser.add_argument("--family", required=True, choices=("static", "temporal", "audio", "audio_visual"))
    parser.add_argument("--setting", action="append", choices=SETTINGS, required=True,
                        help="repeat: e.g. --setting audio --setting other_audio")
    parser.add_argument("--out", default=None, help="write the result as JSON here")
    args = parser.parse_args(argv)
    result = by_type(args.model, args.data, args.family, args.setting)
    for qtype, row in result.items():
        print(f"{qtype} ({row['items']} items; answers {row['answers']})")
        for s in args.setting:
            print(f"  {s:<18} accuracy {row[s]['accuracy']:.3f}  replies {row[s]['replies']}")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
