"""Writing a robustness sweep: JSON (everything), a markdown table (mean ± spread, AUC) and a PNG
of the curves."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from rmio.evaluation.swarm import swarm_auc
from rmio.runtime.metrics import jsonable


def _pm(mean: float, std: float, digits: int) -> str:
    if not math.isfinite(mean):
        return "n/a"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def loss_text(result: dict[str, Any]) -> str:
    """The sweep's loss model in words, with its settings (p_loss is the long-run lost
    fraction)."""
    loss = result.get("loss") or {"model": result["loss_model"]}
    settings = ", ".join(f"{k.replace('_', ' ')} {v:g}" for k, v in loss.items() if k != "model")
    rate = "; p_loss sets the start rate" if loss["model"] == "blackout" else ""
    return f"{loss['model']} loss" + (f": {settings}" if settings else "") + rate


def markdown(result: dict[str, Any]) -> str:
    metric = result["metric"]
    scale = max(
        abs(c["mean"]) for s in result["strategies"] for c in result["summary"][s]["curve"]
    )  # LBF's returns are fractions of the food: one decimal would hide them
    digits = 2 if metric == "win_rate" or scale < 10 else 1
    strategies = result["strategies"]
    summary = result["summary"]
    length = result["episode_limit"] or "as the environment ends it"
    lines = [
        f"# Robustness: {result['scenario']}",
        "",
        f"{metric.replace('_', ' ')} against p_loss ({loss_text(result)}), mean ± std "
        f"over {result['seeds']} seed families of {result['episodes']} episodes each; world model "
        f"in {result['wm_mode']} mode, episode length {length}. Measured on "
        f"{result.get('machine', '?')}, {result.get('date', '?')}.",
        "",
        "| p_loss | " + " | ".join(strategies) + " |",
        "|---|" + "---|" * len(strategies),
    ]
    for i, p in enumerate(result["p_loss"]):
        cells = [
            _pm(summary[s]["curve"][i]["mean"], summary[s]["curve"][i]["std"], digits)
            for s in strategies
        ]
        lines.append(f"| {p:g} | " + " | ".join(cells) + " |")
    lo, hi = result["auc_range"]
    lines.append(
        f"| **AUC** ({lo:g}-{hi:g}) | "
        + " | ".join(
            f"**{_pm(summary[s]['auc_mean'], summary[s]['auc_std'], 1)}**" for s in strategies
        )
        + " |"
    )
    rnd = summary["random"]
    lines += [
        "",
        f"Random policy: {_pm(rnd['mean'], rnd['std'], digits)}. AUC = 100 x trapezoid over p_loss "
        "of (R(p) - R_random) / (R(0) - R_random), per seed family, then mean ± std "
        "(docs/ARCHITECTURE.md).",
        "At p_loss 0 nothing is lost, so every strategy is the plain policy (run once).",
    ]
    if "also" in summary:
        lines += ["", f"Also measured ({summary['also']['metric'].replace('_', ' ')}):", ""]
        lines += ["| p_loss | " + " | ".join(strategies) + " |", "|---|" + "---|" * len(strategies)]
        also = summary["also"]
        for i, p in enumerate(result["p_loss"]):
            cells = [_pm(also[s][i]["mean"], also[s][i]["std"], 1) for s in strategies]
            lines.append(f"| {p:g} | " + " | ".join(cells) + " |")
    if result.get("swarm"):
        aucs = swarm_auc(result)
        lines += [
            "",
            "## Through the swarm (real processes)",
            "",
            "AUC through the swarm: "
            + ", ".join(
                f"{s} {_pm(aucs[s]['auc_mean'], aucs[s]['auc_std'], 1)}"
                for s in strategies
                if s in aucs
            )
            + f" (p_loss {lo:g}-{hi:g}, per seed family then mean ± std, as above).",
            "",
            "| strategy | p_loss | "
            + metric.replace("_", " ")
            + " | protocol bytes/step | msgs/step | "
            "recon round p50 / p99 ms | deadline misses |",
            "|---|---|---|---|---|---|---|",
        ]
        for row in result["swarm"]:
            lines.append(
                f"| {row['strategy']} | {row['p_loss']:g} | {_pm(row['mean'], row['std'], digits)} "
                f"| {row['bytes_per_step']:.0f} | {row['msgs_per_step']:.2f} | {_ms(row, 'p50')} / "
                f"{_ms(row, 'p99')} | {row['deadline_misses']} |"
            )
    return "\n".join(lines) + "\n"


def _ms(row: dict[str, Any], key: str) -> str:
    value = row.get(f"round_{key}_ms")
    return "-" if value is None else f"{value:.2f}"


def plot(result: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    p = np.asarray(result["p_loss"])
    for strategy in result["strategies"]:
        s = result["summary"][strategy]
        mean = np.array([c["mean"] for c in s["curve"]])
        std = np.array([c["std"] for c in s["curve"]])
        label = (
            f"{strategy} (AUC {s['auc_mean']:.1f})" if math.isfinite(s["auc_mean"]) else strategy
        )
        ax.plot(p, mean, marker="o", label=label)
        ax.fill_between(p, mean - std, mean + std, alpha=0.15)
    for row in result.get("swarm") or []:
        ax.errorbar(
            [row["p_loss"]], [row["mean"]], yerr=[row["std"]], fmt="x", color="black", capsize=3
        )
    if result.get("swarm"):
        ax.plot([], [], "x", color="black", label="through the swarm")
    ax.axhline(
        result["summary"]["random"]["mean"], color="grey", ls="--", lw=1, label="random policy"
    )
    ax.set_xlabel("observation-loss probability p_loss")
    ax.set_ylabel(result["metric"].replace("_", " "))
    ax.set_title(f"{result['scenario']} ({loss_text(result)})", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write(result: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": out_dir / "robustness.json",
        "md": out_dir / "robustness.md",
        "png": out_dir / "robustness.png",
    }
    paths["json"].write_text(json.dumps(result, indent=1, default=jsonable))
    paths["md"].write_text(markdown(result))
    plot(result, paths["png"])
    return paths


def _finite(x: Any) -> Any:
    return x if not isinstance(x, float) or math.isfinite(x) else None


def summary_json(result: dict[str, Any], files: dict[str, Path]) -> dict[str, Any]:
    """The sweep in one machine-readable document (``--json``): per strategy the curve and the
    AUC, the swarm's AUC when it ran, and the files written; an undefined AUC is null."""
    summary = result["summary"]
    out: dict[str, Any] = {
        "scenario": result["scenario"],
        "metric": result["metric"],
        "loss": result.get("loss") or {"model": result["loss_model"]},
        "p_loss": result["p_loss"],
        "episodes": result["episodes"],
        "seeds": result["seeds"],
        "random": summary["random"],
        "strategies": {
            s: {
                "curve": [
                    {k: c[k] for k in ("p_loss", "mean", "std")} for c in summary[s]["curve"]
                ],
                "auc_mean": _finite(summary[s]["auc_mean"]),
                "auc_std": _finite(summary[s]["auc_std"]),
            }
            for s in result["strategies"]
        },
        "files": {k: str(v) for k, v in files.items()},
    }
    if result.get("swarm"):
        out["swarm"] = [
            {k: _finite(v) for k, v in row.items() if k != "per_seed"} for row in result["swarm"]
        ]
        out["swarm_auc"] = {
            s: {"auc_mean": _finite(a["auc_mean"]), "auc_std": _finite(a["auc_std"])}
            for s, a in swarm_auc(result).items()
        }
    return out
