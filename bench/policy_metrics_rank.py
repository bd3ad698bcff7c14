"""Which reconstruction number predicts return? (issue 25, part 1)

For each bundle, the robustness sweep runs world-model, hold-last and zero-fill at p_loss 0.2-0.8
and measures on every lost agent-step both the observation error (what L_rec measures: mean
absolute error of the observation the agent acted on, raw units, real features) and the policy
error (the actor's action on that observation against its action on the true one: mean absolute
difference for continuous actions, the changed-action rate for discrete ones). It then prints the
rank correlation (Spearman) of each number, negated, with the return: over all (strategy, p_loss)
cells, and within each p_loss across the three strategies (the choice a user makes), averaged.

    python bench/policy_metrics_rank.py halfcheetah_6x1 smax_2s3z --seeds 3 --episodes 3

Writes bench/results/policy_metrics_rank.md and .json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from rmio.evaluation import robustness
from rmio.models import find_bundle

STRATEGIES = ["world-model", "hold-last", "zero-fill"]
P_LOSS = [0.2, 0.4, 0.6, 0.8]
NUMBERS = ("obs_mae", "action_error", "action_kl")
"""action_kl: discrete actors whose graph exports action_probs only."""


def ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks (ties share the mean of their positions)."""
    order = np.argsort(x, kind="mergesort")
    r = np.empty(len(x))
    r[order] = np.arange(len(x), dtype=np.float64)
    for v in np.unique(x):
        tie = x == v
        r[tie] = r[tie].mean()
    return r


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = ranks(np.asarray(a, float)), ranks(np.asarray(b, float))
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def cells(result: dict) -> list[dict]:
    """Per (strategy, p_loss): mean return and mean errors over seed families."""
    out = []
    for s in STRATEGIES:
        for p in P_LOSS:
            rows = [r for r in result["rows"] if r["strategy"] == s and r["p_loss"] == p]
            rets = [e["return"] for r in rows for e in r["episodes"]]
            cell = {"strategy": s, "p_loss": p, "return": float(np.mean(rets))}
            for key in NUMBERS:
                if all(key in r for r in rows):
                    cell[key] = float(np.mean([r[key] for r in rows]))
            out.append(cell)
    return out


def correlations(cs: list[dict]) -> dict:
    ret = np.array([c["return"] for c in cs])
    out = {}
    for key in [k for k in NUMBERS if all(k in c for c in cs)]:
        err = -np.array([c[key] for c in cs])
        within = [
            spearman(
                [c["return"] for c in cs if c["p_loss"] == p],
                [-c[key] for c in cs if c["p_loss"] == p],
            )
            for p in P_LOSS
        ]
        out[key] = {"all_cells": spearman(ret, err), "within_p_mean": float(np.nanmean(within))}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bundles", nargs="+", help="bundle directories or shipped bundle names")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--episodes", type=int, default=3)
    ap.add_argument("--steps", type=int, default=None, help="episode length (default the env's)")
    ap.add_argument("--out", type=Path, default=Path("bench/results/policy_metrics_rank"))
    args = ap.parse_args()
    report = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "date": time.strftime("%Y-%m-%d"),
        "seeds": args.seeds,
        "episodes": args.episodes,
        "steps": args.steps,
        "tasks": {},
    }
    lines = [
        "# Which reconstruction number predicts return (issue 25)",
        "",
        f"{report['machine']}, {report['date']}; Bernoulli loss at p_loss {P_LOSS}; "
        f"{args.seeds} seed families x {args.episodes} episodes per cell; command: "
        f"`python bench/policy_metrics_rank.py {' '.join(args.bundles)} --seeds {args.seeds} "
        f"--episodes {args.episodes}" + (f" --steps {args.steps}" if args.steps else "") + "`.",
        "obs_mae: mean absolute error of the observation a lost agent acted on (what L_rec "
        "measures); action_error: its action against the one it would have taken on the true "
        "observation (mean absolute difference, or the changed-action rate for discrete actions); "
        "action_kl (discrete actors): KL(pi(.|o) || pi(.|o^)) between its action distributions "
        "on the true observation and on what it acted on. "
        "Spearman rho of the negated error with the return: over all 12 (strategy, p_loss) cells, "
        "and within each p_loss across the three strategies, averaged.",
        "",
    ]
    for name in args.bundles:
        bundle = find_bundle(name)
        began = time.perf_counter()
        result = robustness.sweep(
            bundle,
            p_loss=P_LOSS,
            episodes=args.episodes,
            seeds=args.seeds,
            strategies=STRATEGIES,
            episode_limit=args.steps,
            policy_metrics=True,
        )
        cs = cells(result)
        corr = correlations(cs)
        keys = [k for k in NUMBERS if k in cs[0]]
        report["tasks"][name] = {
            "scenario": result["scenario"],
            "cells": cs,
            "spearman": corr,
            "seconds": time.perf_counter() - began,
        }
        lines += [
            f"## {name} ({result['scenario']})",
            "",
            "| strategy | p_loss | return | " + " | ".join(keys) + " |",
            "|---" * (3 + len(keys)) + "|",
            *[
                f"| {c['strategy']} | {c['p_loss']:g} | {c['return']:.2f} | "
                + " | ".join(f"{c[k]:.4f}" for k in keys)
                + " |"
                for c in cs
            ],
            "",
            "| number | rho over all cells | mean rho within a p_loss |",
            "|---|---|---|",
            *[
                f"| {k} | {v['all_cells']:.2f} | {v['within_p_mean']:.2f} |"
                for k, v in corr.items()
            ],
            "",
        ]
        print("\n".join(lines[-(len(cs) + 10) :]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=1))
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}.md and .json")


if __name__ == "__main__":
    main()
