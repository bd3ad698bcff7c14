"""MARIE against RMIOv2 from one `rmio ablate marie_*` sweep (issue 23's first acceptance line):
L_rec of lost agents, GPE and GCI at every test-time p_mask, and the robustness curves, mean and
spread over the training seeds, in one table and one figure.

    python bench/marie_compare.py runs/ablation-marie_smax_2s3z --out bench/results/marie_smax_2s3z

Reads what the sweep wrote (each seed's ``<variant>/eval_reconstruction.json`` and the sweep's
``ablation.json``); trains and evaluates nothing. Both variants of a seed are scored on that seed's
held-out episodes with the same masks, so their rows and the baselines' compare cell by cell; the
script refuses a seed whose two runs saw different held-out data. Writes OUT.md, OUT.json, OUT.png.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from rmio.train.wm_eval_report import BASELINES, finetuned_row

METRICS = {
    "lrec_masked": "L_rec lost agents",
    "gpe": "GPE",
    "gci": "GCI",
    "action_changed": "actor's action changed",
    "action_mae": "actor's action MAE",
}
"""What each table shows; a metric no row has (action_changed on continuous actions,
action_mae on discrete ones) gets no table."""


def _spread(values: list[float]) -> str:
    """Mean ± std over the seeds; one seed has no spread to show."""
    if not values:
        return "-"
    mean = f"{np.mean(values):.4f}"
    return mean if len(values) == 1 else f"{mean} ± {np.std(values):.4f}"


def collect(sweep: Path, variants: list[str]) -> dict[str, Any]:
    """Per row (variant's fine-tuned model, then the baselines), metric and p_mask: the values
    of every seed that has them."""
    seeds = sorted(
        int(d.name[4:]) for d in sweep.glob("seed*") if d.name[4:].isdigit() and d.is_dir()
    )
    rows: dict[str, dict[str, list[list[float]]]] = {}
    p_masks: list[float] | None = None
    used: list[int] = []
    for seed in seeds:
        results = {}
        for v in variants:
            path = sweep / f"seed{seed}" / v / "eval_reconstruction.json"
            if path.exists():
                results[v] = json.loads(path.read_text())
        if len(results) != len(variants):
            continue
        held = {(r["holdout_episodes"], r["holdout_rows"], r["seeds"]) for r in results.values()}
        if len(held) != 1:
            sys.exit(f"seed {seed}: the variants were scored on different held-out data ({held})")
        used.append(seed)
        for v, res in results.items():
            if p_masks is None:
                p_masks = res["p_masks"]
            elif res["p_masks"] != p_masks:
                sys.exit(f"seed {seed}, {v}: p_masks {res['p_masks']} differ from {p_masks}")
            named = {f"{v} fine-tuned": res["strategies"][finetuned_row(res["strategies"])]}
            if v == variants[0]:
                named.update({b: res["strategies"][b] for b in BASELINES if b in res["strategies"]})
            for label, row in named.items():
                cell = rows.setdefault(label, {})
                for key in METRICS:
                    if key in row:
                        for k, value in enumerate(row[key]):
                            cell.setdefault(key, [[] for _ in row[key]])[k].append(value)
    if not used:
        sys.exit(f"{sweep}: no seed has eval_reconstruction.json for every one of {variants}")
    return {"seeds": used, "p_masks": p_masks, "rows": rows}


def _models_first(data: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The rows, world models before baselines (the tables and the plot keep one order)."""
    return sorted(data["rows"].items(), key=lambda item: item[0] in BASELINES)


def _metric_table(data: dict[str, Any], key: str) -> list[str]:
    if not any(key in cell for cell in data["rows"].values()):
        return []
    masks = [k for k, p in enumerate(data["p_masks"]) if p > 0]
    head = " | ".join(f"p_mask {data['p_masks'][k]:g}" for k in masks)
    lines = [f"| {METRICS[key]} | {head} |", "|---" * (len(masks) + 1) + "|"]
    for label, cell in _models_first(data):
        if key in cell:
            values = [[v for v in cell[key][k] if v is not None] for k in masks]
            lines.append(f"| {label} | " + " | ".join(_spread(v) for v in values) + " |")
    return lines


def robustness(sweep: Path, variants: list[str]) -> dict[str, Any] | None:
    """The sweep's robustness rows (AUC and curve per variant, then the no-world-model baselines'
    where the sweep ran them), as `rmio ablate` wrote them."""
    path = sweep / "ablation.json"
    if not path.exists():
        return None
    table = json.loads(path.read_text())
    keep = ("auc_mean", "auc_std", "curve", "metric", "lrec_lost", "lrec_lost_std")
    rows = {
        r["variant"]: {k: r[k] for k in keep if k in r}
        for r in table["rows"]
        if r["variant"] in variants or r["variant"].endswith("(no world model)")
    }
    return {"p_loss": table["robustness"]["p_loss"], "rows": rows, "budget": table["budget"]}


def report(sweep: Path, variants: list[str]) -> tuple[str, dict[str, Any]]:
    data = collect(sweep, variants)
    rob = robustness(sweep, variants)
    lines = [
        f"Training seeds {', '.join(map(str, data['seeds']))}; ± is the std over them. Every "
        "model is scored on its seed's held-out episodes with the same masks (3 mask seeds per "
        "p_mask); lower is better. RMIOv2's GCI is its state-consistency term, MARIE's the "
        "disagreement of its reward and discount heads: the two GCIs are not one measure.",
        "",
    ]
    for key in METRICS:
        table = _metric_table(data, key)
        lines += [*table, ""] if table else []
    if rob is not None:
        lines += [
            f"Budget of both: {', '.join(rob['budget']['set'])}; fine-tuning updates "
            f"{rob['budget']['finetune_updates']}.",
            "",
            "| world model | AUC | " + " | ".join(f"p_loss {p:g}" for p in rob["p_loss"]) + " |",
            "|---" * (len(rob["p_loss"]) + 2) + "|",
        ]
        for v, r in rob["rows"].items():
            curve = " | ".join(f"{x:.2f}" for x in r["curve"])
            lines.append(f"| {v} | {r['auc_mean']:.1f} ± {r['auc_std']:.1f} | {curve} |")
        lines.append("")
    return "\n".join(lines), {**data, "robustness": rob}


def plot(data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rob = data["robustness"]
    names: dict[str, str] = {}  # one colour per model or baseline, the same in both panels

    def colour(label: str) -> str:
        key = label.removesuffix(" fine-tuned").removesuffix(" (no world model)")
        return names.setdefault(key, f"C{len(names)}")

    fig, axes = plt.subplots(1, 2 if rob else 1, figsize=(10 if rob else 5, 3.6), squeeze=False)
    ax = axes[0][0]
    masks = [k for k, p in enumerate(data["p_masks"]) if p > 0]
    xs = [data["p_masks"][k] for k in masks]
    for label, cell in _models_first(data):
        vals = [[v for v in cell["lrec_masked"][k] if v is not None] for k in masks]
        mean, std = [np.mean(v) for v in vals], [np.std(v) for v in vals]
        ax.errorbar(xs, mean, std, label=label, color=colour(label))
    ax.set(xlabel="test-time p_mask", ylabel="L_rec lost agents", title="reconstruction")
    ax.legend(fontsize=8)
    if rob:
        ax = axes[0][1]
        for v, r in rob["rows"].items():
            label = f"{v} (AUC {r['auc_mean']:.1f})"
            ax.plot(rob["p_loss"], r["curve"], marker="o", label=label, color=colour(v))
        ax.set(xlabel="p_loss", ylabel=next(iter(rob["rows"].values())).get("metric", "return"))
        ax.set_title("robustness, same actor")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("sweep", type=Path, help="an `rmio ablate marie_*` output directory")
    ap.add_argument("--variants", nargs="+", default=["rmiov2", "marie"])
    ap.add_argument("--out", type=Path, required=True, help="OUT.md, OUT.json, OUT.png")
    args = ap.parse_args()
    text, data = report(args.sweep, args.variants)
    text += f"\n![L_rec against p_mask and the robustness curves]({args.out.name}.png)\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text(text)
    args.out.with_suffix(".json").write_text(json.dumps(data, indent=1))
    plot(data, args.out.with_suffix(".png"))
    print(text)


if __name__ == "__main__":
    main()
