"""The tables of `rmio ablate`: one row per variant, aggregated over training seeds, as markdown
beside the JSON (train/ablation.py writes both)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def aggregate(label: str, seed_rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One table row: the mean and the spread over training seeds (each seed's AUC is itself a mean
    over the robustness sweep's seed families)."""

    def stats(key: str) -> tuple[float, float]:
        v = np.array([r[key] for r in seed_rows], dtype=np.float64)
        return float(v.mean()), float(v.std()) if len(v) > 1 else 0.0

    def curve(rows: list[dict[str, Any]]) -> dict[str, Any]:
        v = np.array([r["auc_mean"] for r in rows], dtype=np.float64)
        # one training seed: the spread over its evaluation seed families
        std = float(v.std()) if len(v) > 1 else float(rows[0]["auc_std"])
        mean_curve = np.mean([r["curve"] for r in rows], axis=0).tolist()
        return {"auc_mean": float(v.mean()), "auc_std": std, "curve": mean_curve}

    lrec, lrec_std = stats("lrec_lost")
    first = seed_rows[0]
    row = {
        "variant": label,
        "runs": [r["run"] for r in seed_rows],
        "lrec_lost": lrec,
        "lrec_lost_std": lrec_std,
        "lrec_p_mask": first["lrec_p_mask"],
        **curve(seed_rows),
        "p_loss": first["p_loss"],
        "metric": first["metric"],
        "per_seed": seed_rows,
    }
    if all("by_loss" in r for r in seed_rows):
        row["by_loss"] = {m: curve([r["by_loss"][m] for r in seed_rows]) for m in first["by_loss"]}
    if all("policy_value" in r for r in seed_rows):
        row["policy_metric"] = first["policy_metric"]
        row["policy_value"] = stats("policy_value")[0]
    return row


def _budget_line(result: dict[str, Any]) -> list[str]:
    budget = result.get("budget")
    if not budget:
        return []
    updates = budget.get("finetune_updates") or "the config's"
    sets = ", ".join(budget["set"])
    return [f"Budget of every variant and seed: {sets}; fine-tuning updates {updates}.", ""]


def _partial(result: dict[str, Any]) -> str:
    planned = result.get("seeds_planned", result.get("seeds", [0]))
    return (
        ""
        if planned == result.get("seeds", [0])
        else f" (of {planned} planned: the sweep is still running)"
    )


def markdown(result: dict[str, Any]) -> str:
    rows = result["rows"]
    p_loss = rows[0]["p_loss"]
    lines = [
        f"# {result['name']}",
        "",
        f"{result['scenario']}, varying {result['vary']}; policy {result['policy']}. L_rec: lost "
        f"agents, held-out episodes, test-time p_mask {rows[0]['lrec_p_mask']:g} (lower is "
        "better). AUC: world-model strategy, over training seeds "
        f"{result.get('seeds', [0])}{_partial(result)}; each seed's AUC is the mean over "
        f"{result['robustness']['seeds']} evaluation seed families. ± is the std over training "
        "seeds, or over the evaluation seed families when there is one training seed.",
        "",
        *_budget_line(result),
    ]
    models = list(rows[0].get("by_loss") or {})
    extra = [m for m in models[1:] if all(m in r.get("by_loss", {}) for r in rows)]
    policy = rows[0].get("policy_metric") if all("policy_value" in r for r in rows) else None
    if models:
        burst = result["robustness"].get("mean_burst_length")
        lines += [
            f"Robustness under {', '.join(models)} loss"
            + (f" (mean burst {burst:g} steps)" if "burst" in models and burst else "")
            + f"; the curve columns are {models[0]}'s.",
            "",
        ]
    paper = result.get("paper")
    if paper:
        lines += [
            f"Paper: {paper['source']} (its AUC / L_rec beside ours; - where it has none).",
            "",
        ]
    head = ["variant", "L_rec lost agents"] + ([policy] if policy else []) + ["AUC"]
    head += [f"AUC ({m})" for m in extra] + (["paper AUC / L_rec"] if paper else [])
    head += [f"{rows[0]['metric']} @ {p:g}" for p in p_loss]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lrec = f"{r['lrec_lost']:.4f}" + (
            f" ± {r['lrec_lost_std']:.4f}" if r.get("lrec_lost_std") else ""
        )
        cells = [r["variant"], lrec] + ([f"{r['policy_value']:.4f}"] if policy else [])
        cells += [_auc(r)] + [_auc(r["by_loss"][m]) for m in extra]
        if paper:
            cells.append(_paper_cell(paper["rows"].get(r["variant"])))
        cells += [f"{v:.2f}" for v in r["curve"]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _auc(r: dict[str, Any]) -> str:
    if not math.isfinite(r["auc_mean"]):
        return "n/a"
    return f"{r['auc_mean']:.1f} ± {r['auc_std']:.1f}"


def _paper_cell(row: dict[str, Any] | None) -> str:
    if not row:
        return "-"
    auc, lrec = row.get("auc"), row.get("lrec")
    return (
        f"{'-' if auc is None else format(auc, 'g')} / {'-' if lrec is None else format(lrec, 'g')}"
    )
