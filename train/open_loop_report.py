"""The open-loop evaluation's table (markdown), JSON and plot (error against horizon, one line per
model), shared by `rmio eval open-loop` and bench/open_loop.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

LABELS = {
    "obs_l1": "observation L1 per feature (normalised)",
    "obs_mse": "observation squared error per feature (normalised)",
    "reward_abs": "reward |error| (true reward)",
    "reward_abs_target": "reward |error| (its training target)",
}


def shown_horizons(horizon: int) -> list[int]:
    """Every horizon up to 10, else 1, 2, 3, 5 and the multiples of 5 (and the last)."""
    if horizon <= 10:
        return list(range(1, horizon + 1))
    return sorted({1, 2, 3, *range(5, horizon + 1, 5), horizon})


def budget_text(b: dict[str, Any]) -> str:
    """One run's training budget in words."""
    parts = []
    if b.get("preset"):
        ctx = "" if b.get("context_token") is None else (", c_s" if b["context_token"] else "")
        parts.append(f"preset {b['preset']}{ctx}")
    if b.get("updates") is not None:
        parts.append(f"{b['updates']:,} updates of {b['batch']} x {b['rows']} rows")
    if b.get("env_steps") is not None:
        parts.append(f"{b['env_steps']:,} env steps of data")
    if b.get("seconds") is not None:
        parts.append(f"{b['seconds'] / 60:.1f} min")
    return ", ".join(parts)


def markdown(result: dict[str, Any], title: str | None = None) -> str:
    """Tables of open-loop and teacher-forced errors per run at selected horizons."""
    hs = shown_horizons(result["horizon"])
    lines = [f"# {title}", ""] if title else []
    lines += [
        f"Held-out data: {result['data']} ({result['scenario']}, {result['holdout_episodes']} "
        f"episodes collected by {result.get('data_policy') or 'unknown policy'}); "
        f"{result['windows']} windows of {result['context']} context rows + "
        f"{result['horizon']} predicted rows, each inside one episode. Open loop: real actions, "
        "the model's own predictions fed back; teacher-forced: the real observations fed back "
        f"(one-step error). MARIE's tokens: {result['marie_tokens']}. Observation error in the "
        "normalised units of the held-out data's run (per agent and feature std of its training "
        "data), averaged over real features and agents; lower is better.",
        "",
        "| run | training budget | eval s |",
        "|---|---|---|",
    ]
    for r in result["runs"]:
        lines.append(f"| {r['label']} | {budget_text(r['budget'])} | {r['eval_seconds']:.1f} |")
    for metric in ("obs_l1", "reward_abs", "obs_mse", "reward_abs_target"):
        lines += [
            "",
            f"{LABELS[metric]} at horizon k:",
            "",
            "| run | feed | " + " | ".join(f"k={h}" for h in hs) + " |",
            "|---|---|" + "---|" * len(hs),
        ]
        for r in result["runs"]:
            for mode, name in (("open_loop", "open loop"), ("teacher_forced", "teacher-forced")):
                vals = r[mode][metric]
                cells = [f"{vals[h - 1]:.4f}" for h in hs]
                lines.append(f"| {r['label']} | {name} | " + " | ".join(cells) + " |")
    floors = [r for r in result["runs"] if "tokenizer_floor_l1" in r]
    if floors:
        lines += [
            "",
            "MARIE's tokenizer floor, the observation L1 of decode(encode(o)) on the same rows "
            "(what predicting every code id right would score): "
            + ", ".join(f"{r['label']} {r['tokenizer_floor_l1']:.4f}" for r in floors)
            + ".",
        ]
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path, title: str) -> None:
    """Observation L1 and reward error against horizon: a solid line per model (open loop), its
    teacher-forced floor dashed in the same colour, MARIE's tokenizer floor dotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = list(range(1, result["horizon"] + 1))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for i, r in enumerate(result["runs"]):
        colour = f"C{i}"
        for ax, metric in zip(axes, ("obs_l1", "reward_abs"), strict=True):
            ax.plot(ks, r["open_loop"][metric], marker="o", ms=3, color=colour, label=r["label"])
            ax.plot(ks, r["teacher_forced"][metric], ls="--", color=colour, alpha=0.6)
        if "tokenizer_floor_l1" in r:  # every code id predicted right
            axes[0].axhline(r["tokenizer_floor_l1"], ls=":", color=colour, alpha=0.6)
    for ax, metric in zip(axes, ("obs_l1", "reward_abs"), strict=True):
        ax.set_xlabel("prediction horizon k (steps)")
        ax.set_ylabel(LABELS[metric])
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(
        f"{title}: open loop (solid), teacher-forced (dashed), MARIE's tokenizer floor (dotted)",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(
    result: dict[str, Any], out: Path, stem: str, title: str, plot_title: str | None = None
) -> dict[str, Path]:
    """``out/<stem>.json``, ``.md`` (headed ``title``) and ``.png`` (``plot_title`` or title)."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {k: out / f"{stem}.{k}" for k in ("json", "md", "png")}
    paths["json"].write_text(json.dumps(result, indent=2))
    paths["md"].write_text(markdown(result, title))
    plot(result, paths["png"], plot_title or title)
    return paths


def print_table(result: dict[str, Any], console: Console) -> None:
    """The observation L1 of each run at selected horizons, open loop and teacher-forced."""
    hs = shown_horizons(result["horizon"])
    table = Table(title="open-loop observation L1 per feature (normalised; lower is better)")
    table.add_column("run")
    table.add_column("feed")
    for h in hs:
        table.add_column(f"k={h}", justify="right")
    for r in result["runs"]:
        for mode in ("open_loop", "teacher_forced"):
            vals = r[mode]["obs_l1"]
            table.add_row(r["label"], mode.replace("_", " "), *[f"{vals[h - 1]:.4f}" for h in hs])
    console.print(table)
