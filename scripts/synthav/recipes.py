"""Compare audio recipes over training seeds: each recipe's settings table and claims, and one plot.

    python -m scripts.synthav.recipes --recipe visual runs/s0/visual runs/s1/visual runs/s2/visual \\
        --recipe mixed runs/s0/mixed runs/s1/mixed runs/s2/mixed --out results/recipes

Each ``--recipe NAME RUN...`` names a recipe and its ``train-all`` folders (one training seed each);
:func:`videollama.synthav.evaluate.combine_runs` gathers their saved results. Writes ``recipes.json``
(per recipe: summary, claims, per-seed results) and ``recipes.png`` (per claim, one bar per recipe:
mean gap over seeds with its standard deviation, the target dashed), and prints the markdown tables
docs/synthav.md quotes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from videollama.synthav.evaluate import CLAIMS, claims, combine_runs, format_claims, format_table


def compare(recipes: dict[str, list[str]]) -> dict[str, Any]:
    """{recipe: {"summary", "claims", "per_seed", "questions"}} from each recipe's runs."""
    out = {}
    for name, runs in recipes.items():
        results = combine_runs(runs)
        out[name] = {"runs": runs, "questions": results["questions"], "summary": results["summary"],
                     "claims": claims(results), "per_seed": results["per_seed"]}
    return out


def plot(compared: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in CLAIMS if any(n in r["claims"] for r in compared.values())]
    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.8 / max(1, len(compared))
    for i, (recipe, r) in enumerate(compared.items()):
        xs = [k + (i - (len(compared) - 1) / 2) * width for k in range(len(names))]
        ax.bar(xs, [r["claims"].get(n, {}).get("gap_mean", 0.0) for n in names], width,
               yerr=[r["claims"].get(n, {}).get("gap_std", 0.0) for n in names], capsize=2, label=recipe)
    for k, n in enumerate(names):
        ax.hlines(CLAIMS[n][3], k - 0.45, k + 0.45, colors="black", linestyles="dashed", linewidth=1)
    ax.axhline(0, color="grey", linewidth=0.5)
    ax.set_xticks(range(len(names)), [n.split(": ")[1].replace(" - ", "\n- ") for n in names], fontsize=8)
    ax.set_ylabel("accuracy gap (held-out)")
    ax.set_title("SynthAV audio recipes: what each input adds over its control (dashed: target)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(str(path), dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", nargs="+", action="append", required=True, metavar=("NAME", "RUN"),
                        help="a recipe's name, then its train-all folders (one per seed)")
    parser.add_argument("--out", required=True, help="folder for recipes.json and recipes.png")
    args = parser.parse_args(argv)
    recipes = {}
    for name, *runs in args.recipe:
        if not runs:
            parser.error(f"--recipe {name}: give its train-all folders")
        recipes[name] = runs
    compared = compare(recipes)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "recipes.json").write_text(json.dumps(compared, indent=1) + "\n")
    plot(compared, out / "recipes.png")
    for name, r in compared.items():
        print(f"\n### {name} ({len(r['runs'])} seeds, {r['questions']} questions)\n")
        print(format_table(r))
        print()
        print(format_claims(r))
    print(f"\nwrote {out / 'recipes.json'} and {out / 'recipes.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
