"""Training runs side by side: learning curves, returns at a matched real-step budget, throughput.

Reads what `rmio train pretrain` / `mappo` / `qmix` / `mmsa` leave in their run directories
(eval.jsonl, joint.jsonl, mappo.jsonl, qmix.jsonl, mmsa.jsonl); writes a markdown table and an
overlaid learning-curve PNG, and for joint pre-training runs a second table of the diagnostics
logged at each evaluation (rmio.train.joint_diag): open-loop errors, imagined minus real return,
saturated actions, the policy's spread. ``--wall-per`` sets the step count the wall-time column is
given for (100k by default; 1M suits LBF's budgets).
Joint runs are labelled with their recipe (``rmiov2/tuned``), so recipes never pool into one mean.

    python bench/training.py RUN_DIR... --budget 20000 --out bench/results/training_halfcheetah_6x1
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from rmio.config import load_config
from rmio.train.evaluate import plot_curves, run_label
from rmio.train.ppo_config import RECIPES

DIAG_COLUMNS = (
    ("diag_obs_err_1", "obs err 1", 3),
    ("diag_obs_err_5", "obs err 5", 3),
    ("diag_obs_err_15", "obs err 15", 3),
    ("diag_reward_err_1", "reward err 1", 3),
    ("diag_reward_err_15", "reward err 15", 3),
    ("diag_imagined_return", "imagined H-return", 2),
    ("diag_real_return", "real H-return", 2),
    ("diag_return_gap", "gap", 2),
    ("diag_saturated", "saturated", 3),
    ("diag_std", "std", 3),
    ("diag_entropy", "entropy", 3),
)


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _label(run: Path) -> str:
    """run_label, with a joint run's recipe after the algorithm and any of the recipe's keys the
    run set otherwise (e.g. ``rmiov2/tuned+return_scaling=batch``)."""
    label = run_label(run)
    if (run / "joint.jsonl").exists() and (run / "config.yaml").exists():
        im = load_config(run / "config.yaml").policy.imagination
        changed = [
            f"+{k}={getattr(im, k)}"
            for k, v in RECIPES.get(im.recipe, {}).items()
            if getattr(im, k) != v
        ]
        label = label.replace("rmiov2 seed", f"rmiov2/{im.recipe}{''.join(changed)} seed", 1)
    return label


# The logs whose step axis is real environment steps; a run directory's TensorBoard also holds
# fine-tuning processes (wm_finetune, mmsa_wm...) that count updates instead.
POLICY_LOGS = {"joint", "mappo", "qmix", "mmsa", "eval"}


def wall_hours_per_100k(run: Path) -> float | None:
    """Wall hours per 100k real steps from the TensorBoard event times: each events file is one
    process (a resume starts a new one), and its span from first to last logged step counts, so
    the time between sessions never does (start-up before the first row is left out). None
    without event files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    steps = wall = 0.0
    for events in sorted((run / "tb").glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        points = [
            (e.step, e.wall_time)
            for tag in acc.Tags()["scalars"]
            if tag.split("/")[0] in POLICY_LOGS
            for e in acc.Scalars(tag)
        ]
        if len(points) > 1:
            step_span = max(p[0] for p in points) - min(p[0] for p in points)
            if step_span > 0:
                steps += step_span
                wall += max(p[1] for p in points) - min(p[1] for p in points)
    return 100_000 * wall / steps / 3600 if steps else None


def summarise(run: Path, budgets: list[int], metric: str) -> dict:
    evals = [r for r in _rows(run / "eval.jsonl") if metric in r]
    rows = _rows(run / "joint.jsonl")
    joint = [r for r in rows if "collect_steps_per_s" in r]  # iterations, not diagnostics
    diag = [r for r in rows if any(k.startswith("diag_") for k in r)]
    model_free = next(  # a trainer logging its own real-step rate
        (logged for name in ("mappo", "qmix", "mmsa") if (logged := _rows(run / f"{name}.jsonl"))),
        [],
    )
    train = joint or model_free
    updates = [r for r in train if "approx_kl" in r]
    out = {
        "run": _label(run),
        "diag_final": diag[-1] if diag else None,
        "env_steps": evals[-1]["step"] if evals else 0,
        "final": evals[-1] if evals else None,
        "best": max(evals, key=lambda r: (r[metric], r["return_mean"])) if evals else None,
        "at_budget": {},
        "diag_at_budget": {},
    }
    for budget in budgets:
        # a run that has not reached the budget has no figure at it: its last evaluation would
        # otherwise stand in for a budget it never trained to
        reached = bool(evals) and evals[-1]["step"] >= budget
        within = [r for r in evals if r["step"] <= budget] if reached else []
        diag_within = [r for r in diag if r["step"] <= budget] if reached else []
        out["at_budget"][budget] = within[-1] if within else None
        out["diag_at_budget"][budget] = diag_within[-1] if diag_within else None
    out["updates"] = _update_strength(updates, budgets)
    if joint:
        out["collect_steps_per_s"] = float(np.median([r["collect_steps_per_s"] for r in joint]))
        out["imagined_steps_per_s"] = float(np.median([r["imagined_steps_per_s"] for r in joint]))
        wm_rate = [r["wm_updates_per_s"] for r in joint if "wm_updates_per_s" in r]
        if wm_rate:  # runs from before it was logged have none
            out["wm_updates_per_s"] = float(np.median(wm_rate))
        out["overall_steps_per_s"] = joint[-1]["real_steps_per_s"]
    elif model_free:
        out["overall_steps_per_s"] = model_free[-1]["env_steps_per_s"]
    hours = wall_hours_per_100k(run)
    if hours is not None:  # the logged rate of a resumed joint run counted earlier sessions' steps
        out["hours_per_100k"] = hours
        out["overall_steps_per_s"] = 100_000 / (hours * 3600)
    elif train:  # no event files: the last logged rate
        out["hours_per_100k"] = 100_000 / max(out["overall_steps_per_s"], 1e-9) / 3600
    return out


def _cell(row: dict | None, metric: str, missing: str = "-") -> str:
    if row is None:
        return missing
    if metric == "win_rate":
        return f"{row['win_rate']:.2f} (return {row['return_mean']:.1f})"
    return f"{row['return_mean']:.1f} ± {row['return_std']:.1f}"


UPDATE_COLUMNS = (("approx_kl", 4), ("clip_frac", 3), ("entropy", 3))


def _update_strength(updates: list[dict], budgets: list[int]) -> dict[str, dict[str, float]]:
    """Median PPO update statistics over the iterations between consecutive budgets (after the
    last one: "later"). They tell a policy that barely moves (tiny KL and clip fraction, entropy
    not falling) from a model that misleads it, which the diagnostics cannot."""
    edges = [0, *budgets, float("inf")]
    out: dict[str, dict[str, float]] = {}
    for lo, hi in itertools.pairwise(edges):
        rows = [r for r in updates if lo < r["step"] <= hi]
        if rows:
            name = f"{lo:,}-{hi:,}" if hi != float("inf") else f"after {lo:,}"
            out[name] = {k: float(np.median([r[k] for r in rows])) for k, _ in UPDATE_COLUMNS}
    return out


def _update_table(rows: list[dict]) -> list[str]:
    picked = [(r["run"], span, u) for r in rows for span, u in r["updates"].items()]
    if not picked:
        return []
    lines = [
        "",
        "The policy updates (median over the PPO updates logged in each span of real steps; joint "
        "pre-training: PPO in imagination, one row per iteration holding its last imagination "
        "round; MAPPO: on real rollouts): approximate KL between the old and the new policy, "
        "fraction of clipped ratios, policy entropy.",
        "",
        "| run | real steps | " + " | ".join(k for k, _ in UPDATE_COLUMNS) + " |",
        "|---|---|" + "---|" * len(UPDATE_COLUMNS),
    ]
    for run, span, u in picked:
        cells = [f"{u[k]:.{p}f}" for k, p in UPDATE_COLUMNS]
        lines.append(f"| {run} | {span} | " + " | ".join(cells) + " |")
    return lines


def _diag_table(rows: list[dict], budgets: list[int]) -> list[str]:
    """Joint runs' diagnostics at each budget and at the end (a row logged once is shown once;
    columns no run logged are left out)."""
    picked = []
    for r in rows:
        seen: list[dict] = []
        whens = [(f"at {b:,}", r["diag_at_budget"][b]) for b in budgets]
        for when, d in [*whens, ("final", r["diag_final"])]:
            if d is not None and not any(d is x for x in seen):
                seen.append(d)
                picked.append((r["run"], when, d))
    if not picked:
        return []
    cols = [c for c in DIAG_COLUMNS if any(c[0] in d for _, _, d in picked)]
    lines = [
        "",
        "Diagnostics of joint pre-training at its evaluations (rmio.train.joint_diag): open-loop "
        "error K steps ahead on the newest real episodes (obs: MSE in normalised units; reward: "
        "absolute), imagined and real discounted return over the imagination horizon from the "
        "same real starts and their gap, share of saturated actions, the policy's std or entropy.",
        "",
        "| run | when | step | " + " | ".join(c[1] for c in cols) + " |",
        "|---|---|---|" + "---|" * len(cols),
    ]
    for run, when, d in picked:
        cells = [f"{d[k]:.{p}f}" if k in d else "-" for k, _, p in cols]
        lines.append(f"| {run} | {when} | {d['step']:,} | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument(
        "--budget",
        type=int,
        action="append",
        required=True,
        help="Matched real-environment-step budget to compare at; repeat for several.",
    )
    ap.add_argument("--metric", choices=["return_mean", "win_rate"], default="return_mean")
    ap.add_argument(
        "--wall-per",
        type=int,
        default=100_000,
        help="Real steps the wall-time column is given for (default 100k; e.g. 1000000 for LBF).",
    )
    ap.add_argument(
        "--note",
        default="",
        help="Conditions worth stating (e.g. other processes sharing the CPU).",
    )
    ap.add_argument(
        "--out",
        type=Path,
        required=True,
        help="Output path without suffix (.md and .png are written).",
    )
    args = ap.parse_args()
    budgets = sorted(set(args.budget))
    rows = [summarise(run, budgets, args.metric) for run in args.runs]
    at = " and ".join(f"{b:,}" for b in budgets)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    plot_curves(args.runs, args.out.with_suffix(".png"), args.metric)
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    lines = [
        f"Training runs: {machine}, {time.strftime('%Y-%m-%d')}. {args.note}".rstrip(),
        "",
        "Deterministic evaluation episodes in the real environment, complete observations. 'at "
        f"{at}' is the last evaluation at or before that many real environment steps, "
        "for runs that have trained that far ('not reached' otherwise, and left out of the means). "
        f"Wall hours per {args.wall_per:,} real steps: from the TensorBoard event times of each "
        "training process "
        "(first to last logged step, evaluations included, start-up and pauses between resumes "
        "not).",
        "",
        "| run | real env steps | "
        + "".join(f"eval at {b:,} | " for b in budgets)
        + "final eval | best eval | collection steps/s | world-model updates/s | imagined steps/s "
        f"| overall real steps/s | wall h per {args.wall_per:,} real steps |",
        "|---|---|" + "---|" * len(budgets) + "---|---|---|---|---|---|---|",
    ]

    def f(r: dict, k: str, d: int = 0) -> str:
        return "-" if k not in r else f"{r[k]:,.{d}f}"

    scale = args.wall_per / 100_000
    for r in rows:
        cells = [
            r["run"],
            f"{r['env_steps']:,}",
            *(_cell(r["at_budget"][b], args.metric, "not reached") for b in budgets),
            _cell(r["final"], args.metric),
            _cell(r["best"], args.metric),
            f(r, "collect_steps_per_s"),
            f(r, "wm_updates_per_s", 2),
            f(r, "imagined_steps_per_s"),
            f(r, "overall_steps_per_s", 1),
            "-" if "hours_per_100k" not in r else f"{r['hours_per_100k'] * scale:,.2f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for b in budgets:
        groups: dict[str, list[float]] = {}
        for r in rows:
            if r["at_budget"][b] is not None:
                groups.setdefault(r["run"].split(" seed")[0], []).append(
                    r["at_budget"][b][args.metric]
                )
        lines.append(
            f"Mean ± std over seeds at {b:,} real steps: "
            + "; ".join(
                f"{algo} {np.mean(v):.2f} ± {np.std(v):.2f} ({len(v)} seed{'s' * (len(v) != 1)})"
                for algo, v in groups.items()
            )
            + "  "
        )
    lines += _diag_table(rows, budgets)
    lines += _update_table(rows)
    lines += ["", f"Command: `python bench/training.py {shlex.join(sys.argv[1:])}`", ""]
    args.out.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
