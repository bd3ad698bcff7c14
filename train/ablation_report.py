"""The tables of `rmio ablate`: one row per variant, aggregated over training seeds, as markdown
beside the JSON (train/ablation.py writes both)."""

from __future__ import annotations

import itertools
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
            f"Paper: {paper['source']} (its AUC / L_rec beside ours; - where it has none). Its "
            "L_rec is in its own units: compare orderings, not values.",
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
    for m in extra:  # the first loss model's curve is in the table above
        lines += ["", f"{rows[0]['metric']} under {m} loss, by p_loss:", ""]
        lines += ["| variant | " + " | ".join(f"@ {p:g}" for p in p_loss) + " |"]
        lines += ["|" + "---|" * (len(p_loss) + 1)]
        for r in rows:
            curve = " | ".join(f"{v:.2f}" for v in r["by_loss"][m]["curve"])
            lines.append(f"| {r['variant']} | {curve} |")
    wins = recipe_checks(result)
    if wins:
        lines += ["", "Where each recipe stands, on the means above (p_loss > 0):", ""]
        lines += [f"- {w}" for w in wins]
    claims = orderings(result)
    if claims:
        one = len(result.get("seeds", [0])) == 1
        lines += [
            "",
            "The paper's orderings (from its SMAC tables), checked on the means above; "
            '"within the spread" means the gap is no larger than the sum of the two rows\' '
            "standard deviations"
            + (
                " (one training seed: AUC's over evaluation seed families, L_rec has none)."
                if one
                else " over training seeds."
            ),
            "",
        ]
        lines += [f"- {c}" for c in claims]
    return "\n".join(lines) + "\n"


FUSION = {
    "rmiov2": "full",
    "rmiov2-no-obs-fusion": "(a)",
    "rmiov2-no-action-fusion": "(b)",
    "rmiov2-no-fusion": "(c)",
}
"""Table 1's columns: RMIOv2 and its three fusion ablations."""


def _verdict(ok: bool, a: dict[str, Any], b: dict[str, Any], key: str) -> str:
    """Holds or not, and whether the gap is inside the spread (the sum of the two rows' stds)."""
    if not (math.isfinite(a[key]) and math.isfinite(b[key])):
        return "n/a"
    std = {"auc_mean": "auc_std", "lrec_lost": "lrec_lost_std"}[key]
    gap = abs(a[key] - b[key])
    spread = a.get(std, 0.0) + b.get(std, 0.0)
    within = " (within the spread)" if spread and gap <= spread else ""
    return ("holds" if ok else "does not hold") + within


def _steps(values: list[float], up: bool) -> bool:
    """Every step strictly up (or down)."""
    return all((b > a) if up else (b < a) for a, b in itertools.pairwise(values))


def orderings(result: dict[str, Any]) -> list[str]:
    """RMIOv2's claims for its Table 1 (AUC: full > (a), (b) > (c); L_rec the other way: all four
    of its maps) and Table 2 (AUC and L_rec improve with p_mask up to 0.5 and level off there; at
    0.75 L_rec worsens in all four maps and AUC drops in three), each said to hold or not on this
    table's means; empty for other tables."""
    by = {r["variant"]: r for r in result["rows"]}
    if result["vary"] == "algo" and set(FUSION) <= set(by):
        t = {FUSION[k]: by[k] for k in FUSION}
        out = []
        for hi, lo in (("full", "(a)"), ("full", "(b)"), ("(a)", "(c)"), ("(b)", "(c)")):
            a, b = t[hi], t[lo]
            auc = _verdict(a["auc_mean"] > b["auc_mean"], a, b, "auc_mean")
            lrec = _verdict(a["lrec_lost"] < b["lrec_lost"], a, b, "lrec_lost")
            out.append(
                f"{hi} > {lo} on AUC ({a['auc_mean']:.1f} vs {b['auc_mean']:.1f}): {auc}; "
                f"{hi} < {lo} on L_rec ({a['lrec_lost']:.4f} vs {b['lrec_lost']:.4f}): {lrec}"
            )
        return out
    if result["vary"] != "p_mask":
        return []
    rows = {float(k.removeprefix("p_mask ")): v for k, v in by.items() if k.startswith("p_mask ")}
    if not {0.0, 0.5, 0.75} <= set(rows):
        return []
    ps = sorted(rows)
    auc = [rows[p]["auc_mean"] for p in ps]
    best = rows[ps[int(np.argmax(auc))]]
    half, high = rows[0.5], rows[0.75]
    upto = [rows[p] for p in ps if p <= 0.5]
    seq = ", ".join(f"{p:g}: {a:.1f}" for p, a in zip(ps, auc, strict=True))
    lrecs = ", ".join(f"{p:g}: {rows[p]['lrec_lost']:.4f}" for p in ps)
    rising = _steps([r["auc_mean"] for r in upto], up=True)
    falling = _steps([r["lrec_lost"] for r in upto], up=False)
    plateau = best is half or best["auc_mean"] - half["auc_mean"] <= (
        best["auc_std"] + half["auc_std"]
    )
    said = {True: "holds", False: "does not hold"}
    return [
        f"AUC by p_mask: {seq}; L_rec by p_mask: {lrecs}",
        f"AUC rises at every step from p_mask 0 to 0.5: {said[rising]}",
        f"L_rec falls at every step from p_mask 0 to 0.5: {said[falling]}",
        "AUC levels off near 0.5 (0.5's within the spread of the best): "
        + said[bool(plateau)]
        + f" (best at p_mask {ps[int(np.argmax(auc))]:g})",
        "L_rec worse at 0.75 than at 0.5 (all four of the paper's maps): "
        + _verdict(high["lrec_lost"] > half["lrec_lost"], half, high, "lrec_lost"),
        "AUC lower at 0.75 than at 0.5 (three of the paper's four maps): "
        + _verdict(high["auc_mean"] < half["auc_mean"], half, high, "auc_mean"),
    ]


PRETRAINED = "pre-trained (no fine-tuning)"
BASELINES = ("hold-last (no world model)", "zero-fill (no world model)")


def _at(p_loss: list[float], where: list[bool]) -> str:
    return ", ".join(f"{p:g}" for p, w in zip(p_loss, where, strict=True) if w)


def recipe_checks(result: dict[str, Any]) -> list[str]:
    """Issue 21's goal for a fine-tuning recipe, under every loss model of the sweep: never below
    the pre-trained model it started from, and above both hold-last and zero-fill, at every
    p_loss > 0 (at 0 nothing is lost: every row is the same run)."""
    if result["vary"] != "recipe":
        return []
    by = {r["variant"]: r for r in result["rows"]}
    if not all(k in by and "by_loss" in by[k] for k in (PRETRAINED, *BASELINES)):
        return []
    p_loss = result["rows"][0]["p_loss"]
    out = []
    for r in result["rows"]:
        if r["variant"] in (PRETRAINED, *BASELINES) or "by_loss" not in r:
            continue
        parts = []
        for m, mine in r["by_loss"].items():
            pre = by[PRETRAINED]["by_loss"][m]["curve"]
            hold, zero = (by[b]["by_loss"][m]["curve"] for b in BASELINES)
            base = [max(h, z) for h, z in zip(hold, zero, strict=True)]
            below = [p > 0 and a < b for p, a, b in zip(p_loss, mine["curve"], pre, strict=True)]
            beaten = [p > 0 and a <= b for p, a, b in zip(p_loss, mine["curve"], base, strict=True)]
            parts.append(
                f"{m}: "
                + (f"below the pre-trained model at p_loss {_at(p_loss, below)}" if any(below)
                   else "never below the pre-trained model")
                + "; "
                + (f"not above hold-last and zero-fill at p_loss {_at(p_loss, beaten)}"
                   if any(beaten) else "above hold-last and zero-fill everywhere")
            )  # fmt: skip
        out.append(f"{r['variant']}: " + "; ".join(parts))
    return out


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
