"""Reconstruction rounds of a MARIE bundle against an RMIOv2 bundle in one bench run (issue 23).

    python bench/marie_rounds.py --marie BUNDLE [--rmiov2 BUNDLE] [--steps 200] [--repeats 2] \
        [--md bench/results/marie_rounds.md]

Real swarms of the two bundles (HalfCheetah 6x1, 6 agents, loopback tcp, Bernoulli p_loss 0.3)
run in alternation, so that load coming and going hits both alike: MARIE's window graph (no state:
window mode only), RMIOv2's step graph replayed over the window and continued incrementally, each
with the world model on the coordinating agent and on a world-model node. Each row gives the blind
agent's reconstruction round (its STEP received to its RECON received) and the world-model call
(the coordinator's own, or the node's), p50 / p99 in ms, pooled over the repeats. Run it with the
background trainings paused (quiet_run on the development VM); other processes still
show in every number.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from rmio.models import find_bundle
from rmio.runtime.bundle import load_manifest
from rmio.testing import launch

ROWS = (
    ("marie", "window", "on-agent"),
    ("rmiov2", "window", "on-agent"),
    ("rmiov2", "incremental", "on-agent"),
    ("marie", "window", "node"),
    ("rmiov2", "window", "node"),
    ("rmiov2", "incremental", "node"),
)


def pooled(reports: list[dict[str, Any]], key: str) -> tuple[float, float, int]:
    """p50 / p99 ms of a latency pooled over runs from their per-run rows (a run's own p50/p99 and
    count); exact pooling needs the samples, so the row reports the median of the runs' p50s and
    the largest p99."""
    rows = [r["latency"][key] for r in reports if r["latency"][key]["n"]]
    if not rows:
        return float("nan"), float("nan"), 0
    return (
        float(np.median([r["p50_ms"] for r in rows])),
        float(max(r["p99_ms"] for r in rows)),
        int(sum(r["n"] for r in rows)),
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--marie", type=Path, required=True, help="a MARIE bundle (HalfCheetah)")
    parser.add_argument("--rmiov2", default="halfcheetah_6x1", help="an RMIOv2 bundle or name")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--p-loss", type=float, default=0.3)
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "marie-rounds")
    parser.add_argument("--md", type=Path, default=None, help="also write the table here")
    parser.add_argument("--note", default="", help="a paragraph written under the table")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    bundles = {"marie": args.marie, "rmiov2": find_bundle(args.rmiov2)}
    mans = {k: load_manifest(v) for k, v in bundles.items()}
    if mans["marie"].wm_window is None or mans["rmiov2"].wm_window is not None:
        raise SystemExit("--marie must be a MARIE bundle and --rmiov2 an RMIOv2 one")
    load = os.getloadavg()[0]
    reports: dict[tuple[str, str, str], list[dict[str, Any]]] = {row: [] for row in ROWS}
    for k in range(args.repeats):
        for algo, mode, where in ROWS:
            rep = launch(
                bundles[algo],
                args.out / f"{algo}-{mode}-{where}-{k}",
                steps=args.steps,
                transport="tcp",
                wm_mode=mode,
                world_model=where,
                loss={"model": "bernoulli", "p_loss": args.p_loss},
            )
            reports[(algo, mode, where)].append(rep)
    w = mans["marie"].wm_window
    lines = [
        f"# Reconstruction rounds: MARIE ({w['preset']} preset, window {w['steps']}, K "
        f"{w['tokens']}) against RMIOv2 ({args.rmiov2}), one bench run",
        "",
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.system()}, {os.cpu_count()} cores, "
        f"load {load:.1f} at start; HalfCheetah 6x1, 6 agents, tcp, Bernoulli p_loss "
        f"{args.p_loss}, {args.steps} steps per run, {args.repeats} runs per row in alternation; "
        "p50 is the median of the runs' p50s, p99 the largest of their p99s.",
        "",
        "| world model | mode | placement | round p50 / p99 ms | world-model call p50 / p99 ms "
        "| blind-agent rounds | deadline misses | recon misses |",
        "|---|---|---|---|---|---|---|---|",
    ]
    results = {}
    for (algo, mode, where), reps in reports.items():
        r = pooled(reps, "reconstruction_round (blind agent)")
        wm = pooled(reps, "world_model")
        misses = sum(x["events"].get("deadline_misses", 0) for x in reps)
        recon_miss = sum(x["events"].get("agents.recon_miss", 0) for x in reps)
        results[f"{algo}-{mode}-{where}"] = {
            "round": r,
            "wm": wm,
            "deadline_misses": misses,
            "recon_misses": recon_miss,
        }
        lines.append(
            f"| {algo} | {mode} | {where} | {r[0]:.2f} / {r[1]:.2f} | {wm[0]:.2f} / {wm[1]:.2f} | "
            f"{r[2]} | {misses} | {recon_miss} |"
        )
    if args.note:
        lines += ["", args.note]
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    if args.md is not None:
        args.md.parent.mkdir(parents=True, exist_ok=True)
        args.md.write_text(text)


if __name__ == "__main__":
    main()
