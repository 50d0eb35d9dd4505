"""Evaluation reports: ``summary.json`` (everything), ``summary.md`` (tables), ``chart.png`` (bars).

The chart shows accuracy per question type and overall: the offline metric (answer contained,
or choice match where items have candidates), the judge's accuracy when a judge was used, and
chance level as a black tick where the benchmark states it. It is drawn with matplotlib's Agg
canvas directly, so no display and no global backend switch are needed.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

SUMMARY_JSON, SUMMARY_MD, CHART_PNG = "summary.json", "summary.md", "chart.png"
CHART_SIZE_IN = (8.0, 4.0)
CHART_DPI = 120
BAR_GROUP_WIDTH = 0.8
SHORT_HASH = 12


def write_reports(summary: dict[str, Any], out: Path) -> dict[str, Path]:
    """Write the three report files into ``out``; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / SUMMARY_JSON, "markdown": out / SUMMARY_MD, "chart": out / CHART_PNG}
    _write_text(paths["json"], json.dumps(summary, indent=2, default=str) + "\n")
    _write_text(paths["markdown"], render_markdown(summary))
    plot_chart(summary, paths["chart"])
    return paths


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _pct(value: float | None) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.1f}"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _num(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def describe_model(model: Any) -> str:
    if model is None:
        return "(not given)"
    if isinstance(model, dict):
        parts = [f"{k}={v}" for k, v in model.items() if isinstance(v, (str, int, float))]
        return ", ".join(parts)[:200] or json.dumps(model)[:200]
    return str(model)[:200]


def offline_metric(summary: dict[str, Any]) -> tuple[str, str]:
    """(key, label) of the headline offline metric."""
    if "choice_pct" in summary["offline"]:
        return "choice_pct", "choice match"
    return "contains_pct", "answer contained"


def render_markdown(summary: dict[str, Any]) -> str:
    counts, offline, judge = summary["counts"], summary["offline"], summary.get("judge")
    data = summary.get("data") or {}
    chance = summary.get("chance_pct") or {}
    lines = [f"# {summary['title']} ({summary.get('split', 'test')})", "", "| | |", "|---|---|",
             f"| model | {describe_model(summary.get('model'))} |"]
    if data:
        lines.append(f"| data | sha256 {str(data.get('sha256', ''))[:SHORT_HASH]}, {data.get('questions')} questions, "
                     f"layout {data.get('layout')} |")
    missing = counts.get("missing_videos")
    without = f" ({_plural(missing, 'question')} without a video)" if missing else ""
    lines.append(f"| answered | {counts['predicted']} of {counts['selected']} selected{without} |")
    if judge:
        lines += [f"| judge accuracy (%) | {_pct(judge['accuracy_pct'])} (yes {judge['yes']}, no {judge['no']}, "
                  f"{judge['failures']} failed) |",
                  f"| judge score (0-5) | {_num(judge['score'])} |",
                  f"| judge | {judge['model']} at {judge['url']} |"]
    lines += [f"| exact match (%) | {_pct(offline['exact_pct'])} |",
              f"| answer contained (%) | {_pct(offline['contains_pct'])} |"]
    if "choice_pct" in offline:
        lines.append(f"| choice match (%) | {_pct(offline['choice_pct'])} |")
    if chance:
        lines.append(f"| chance (%) | {_pct(chance.get('overall'))} |")
    if summary.get("published"):
        pub = summary["published"]
        lines.append(f"| published Video-LLaMA (Video-ChatGPT paper, GPT-3.5 judge) | "
                     f"{_pct(pub['accuracy_pct'])} % / {_num(pub['score'])} |")
    lines.append(f"| prompt | `{summary['protocol']['prompt_template']}`; decoding {summary['protocol']['decoding']} |")

    per_type = offline.get("per_type") or {}
    if per_type:
        judge_types = (judge or {}).get("per_type") or {}
        header = ["type", "n", "exact %", "contained %"]
        has_choice = any("choice_pct" in v for v in per_type.values())
        header += ["choice %"] if has_choice else []
        header += ["judge acc %", "judge score"] if judge else []
        header += ["chance %"] if chance else []
        lines += ["", "## Per question type", "", "| " + " | ".join(header) + " |",
                  "|" + "---|" * len(header)]
        for qtype, row in per_type.items():
            cells = [qtype, str(row["n"]), _pct(row["exact_pct"]), _pct(row["contains_pct"])]
            cells += [_pct(row.get("choice_pct"))] if has_choice else []
            if judge:
                jt = judge_types.get(qtype, {})
                cells += [_pct(jt.get("accuracy_pct")), _num(jt.get("score"))]
            cells += [_pct(chance.get(qtype))] if chance else []
            lines.append("| " + " | ".join(cells) + " |")
    if judge and judge.get("failure_reasons"):
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(judge["failure_reasons"].items()))
        lines += ["", f"Judge failures by reason: {reasons}."]
    return "\n".join(lines) + "\n"


def plot_chart(summary: dict[str, Any], path: Path) -> None:
    """Grouped bars per question type (plus overall): offline metric, judge accuracy, chance ticks."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    offline, judge = summary["offline"], summary.get("judge")
    chance = summary.get("chance_pct") or {}
    key, label = offline_metric(summary)
    per_type = offline.get("per_type") or {}
    groups = ["all", *per_type]
    series = [(label, [offline.get(key)] + [row.get(key) for row in per_type.values()])]
    if judge:
        jt = judge.get("per_type") or {}
        series.append(("judge accuracy", [judge.get("accuracy_pct")] + [jt.get(t, {}).get("accuracy_pct")
                                                                         for t in per_type]))
    fig = Figure(figsize=CHART_SIZE_IN, dpi=CHART_DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    width = BAR_GROUP_WIDTH / len(series)
    for s, (name, values) in enumerate(series):
        xs = [g + (s - (len(series) - 1) / 2) * width for g in range(len(groups))]
        ax.bar(xs, [v if v is not None else 0.0 for v in values], width=width, label=name)
    if chance:
        ticks = [(g, chance.get("overall" if name == "all" else name)) for g, name in enumerate(groups)]
        ticks = [(g, c) for g, c in ticks if c is not None]
        ax.hlines([c for _, c in ticks], [g - BAR_GROUP_WIDTH / 2 for g, _ in ticks],
                  [g + BAR_GROUP_WIDTH / 2 for g, _ in ticks], colors="black", linestyles="dashed", label="chance")
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([f"{g}\n(n={offline['n'] if g == 'all' else per_type[g]['n']})" for g in groups], fontsize=8)
    ax.set_ylim(0, 100)
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"{summary['title']}: {describe_model(summary.get('model'))[:60]}", fontsize=10)
    ax.legend(fontsize=8, loc="upper right")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, format="png")
    os.replace(tmp, path)
