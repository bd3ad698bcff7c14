"""Training runs side by side: learning curves, returns at a matched real-step budget, throughput.

Reads what `rmio train pretrain` / `rmio train mappo` leave in their run directories (eval.jsonl,
joint.jsonl, mappo.jsonl); writes a markdown table and an overlaid learning-curve PNG.

    python bench/training.py RUN_DIR... --budget 20000 --out bench/results/training_halfcheetah_6x1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from rmio.train.evaluate import plot_curves, run_label


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def summarise(run: Path, budget: int, metric: str) -> dict:
    evals = [r for r in _rows(run / "eval.jsonl") if metric in r]
    joint, mappo = _rows(run / "joint.jsonl"), _rows(run / "mappo.jsonl")
    train = joint or mappo
    within = [r for r in evals if r["step"] <= budget]
    out = {
        "run": run_label(run),
        "env_steps": evals[-1]["step"] if evals else 0,
        "final": evals[-1] if evals else None,
        "best": max(evals, key=lambda r: (r[metric], r["return_mean"])) if evals else None,
        "at_budget": within[-1] if within else None,
    }
    if joint:
        out["collect_steps_per_s"] = float(np.median([r["collect_steps_per_s"] for r in joint]))
        out["imagined_steps_per_s"] = float(np.median([r["imagined_steps_per_s"] for r in joint]))
        out["overall_steps_per_s"] = joint[-1]["real_steps_per_s"]
    elif mappo:
        out["overall_steps_per_s"] = mappo[-1]["env_steps_per_s"]
    if train:
        out["hours_per_100k"] = 100_000 / max(out["overall_steps_per_s"], 1e-9) / 3600
    return out


def _cell(row: dict | None, metric: str) -> str:
    if row is None:
        return "-"
    if metric == "win_rate":
        return f"{row['win_rate']:.2f} (return {row['return_mean']:.1f})"
    return f"{row['return_mean']:.1f} ± {row['return_std']:.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument(
        "--budget",
        type=int,
        required=True,
        help="Matched real-environment-step budget to compare at.",
    )
    ap.add_argument("--metric", choices=["return_mean", "win_rate"], default="return_mean")
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
    rows = [summarise(run, args.budget, args.metric) for run in args.runs]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    plot_curves(args.runs, args.out.with_suffix(".png"), args.metric)
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    lines = [
        f"Training runs: {machine}, {time.strftime('%Y-%m-%d')}. {args.note}".rstrip(),
        "",
        "Deterministic evaluation episodes in the real environment, complete observations. 'at "
        f"{args.budget:,}' is the last evaluation at or before that many real environment steps.",
        "",
        f"| run | real env steps | eval at {args.budget:,} | final eval | best eval | collection "
        "steps/s | imagined steps/s | overall real steps/s | wall h per 100k real steps |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def f(r: dict, k: str, d: int = 0) -> str:
        return "-" if k not in r else f"{r[k]:,.{d}f}"

    for r in rows:
        cells = [
            r["run"],
            f"{r['env_steps']:,}",
            _cell(r["at_budget"], args.metric),
            _cell(r["final"], args.metric),
            _cell(r["best"], args.metric),
            f(r, "collect_steps_per_s"),
            f(r, "imagined_steps_per_s"),
            f(r, "overall_steps_per_s"),
            f(r, "hours_per_100k", 2),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    groups: dict[str, list[float]] = {}
    for r in rows:
        if r["at_budget"] is not None:
            groups.setdefault(r["run"].split(" seed")[0], []).append(r["at_budget"][args.metric])
    lines += [
        "",
        f"Mean ± std over seeds at {args.budget:,} real steps: "
        + "; ".join(
            f"{algo} {np.mean(v):.2f} ± {np.std(v):.2f} ({len(v)} seeds)"
            for algo, v in groups.items()
        ),
    ]
    lines += ["", f"Command: `python bench/training.py {shlex.join(sys.argv[1:])}`", ""]
    args.out.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
