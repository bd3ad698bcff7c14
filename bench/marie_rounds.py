"""Reconstruction rounds of a MARIE bundle against an RMIOv2 bundle in one bench run (issue 23).

    python bench/marie_rounds.py --marie BUNDLE [--marie-before BUNDLE] [--rmiov2 BUNDLE] \
        [--steps 200] [--repeats 2] [--graph-calls 300] [--placement both] [--md FILE]

Real swarms of the bundles (HalfCheetah 6x1, 6 agents, loopback tcp, Bernoulli p_loss 0.3) run in
alternation, so that load coming and going hits all alike: MARIE's window graph (no state: window
mode only), RMIOv2's step graph replayed over the window and continued incrementally, each with
the world model on the coordinating agent and on a world-model node. ``--marie-before`` adds the
rows of a second MARIE bundle (an export of the same run by older code, whose graph runs the
Transformer for every agent's row). Each row gives the blind agent's reconstruction round (its
STEP received to its RECON received) and the world-model call (the coordinator's own, or the
node's), p50 / p99 in ms, pooled over the repeats. A second table times each world-model graph
alone, one round of a 21-step window with 1 and with all 6 agents lost at t. Run it with the
background trainings paused (quiet_run on the development VM); other processes still show in
every number.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from rmio.models import find_bundle
from rmio.runtime.bundle import Manifest, load_manifest
from rmio.runtime.models import world_model_runner
from rmio.testing import launch

ROWS = (
    ("marie", "window", "on-agent"),
    ("marie-before", "window", "on-agent"),
    ("rmiov2", "window", "on-agent"),
    ("rmiov2", "incremental", "on-agent"),
    ("marie", "window", "node"),
    ("marie-before", "window", "node"),
    ("rmiov2", "window", "node"),
    ("rmiov2", "incremental", "node"),
)


def label(key: str, manifest: Manifest) -> str:
    """A row's world model: MARIE's graph says which rows its Transformer runs."""
    if manifest.wm_window is None:
        return key
    rows = "lost rows" if manifest.wm_window.get("rows") == "lost" else "every row"
    return f"marie ({rows})"


def graph_alone(bundle: Path, lost: int, calls: int) -> tuple[float, float, float]:
    """Wall p50 / p99 and CPU p50 ms of one round of the bundle's world model alone (one
    onnxruntime thread, bound buffers, as the coordinator runs it): a 21-step window of random
    observations, 30 % of the history lost, ``lost`` agents lost at t."""
    rng = np.random.default_rng(0)
    runner = world_model_runner(bundle)
    spec = runner.manifest.spec
    T, n = 21, spec.n_agents
    obs = rng.standard_normal((T, n, spec.obs_dim)).astype(np.float32)
    prev = rng.uniform(-1, 1, (T, n, spec.action_dim)).astype(np.float32)
    masks = (rng.random((T, n)) > 0.3).astype(np.float32)
    masks[-1] = 1.0
    masks[-1, :lost] = 0.0
    for _ in range(10):
        runner.replay(obs, prev, masks)
    wall, cpu = [], []
    for _ in range(calls):
        t0, c0 = time.perf_counter(), time.thread_time()
        runner.replay(obs, prev, masks)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.thread_time() - c0)
    w, c = np.array(wall) * 1e3, np.array(cpu) * 1e3
    return float(np.percentile(w, 50)), float(np.percentile(w, 99)), float(np.median(c))


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
    parser.add_argument(
        "--marie-before", type=Path, default=None, help="another MARIE bundle, e.g. an older export"
    )
    parser.add_argument("--rmiov2", default="halfcheetah_6x1", help="an RMIOv2 bundle or name")
    parser.add_argument("--graph-calls", type=int, default=300, help="calls per graph-alone row")
    parser.add_argument(
        "--placement",
        choices=("on-agent", "node", "both"),
        default="both",
        help="only these rows (each half of the bench in its own command: under 5 minutes each)",
    )
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--p-loss", type=float, default=0.3)
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "marie-rounds")
    parser.add_argument("--md", type=Path, default=None, help="also write the table here")
    parser.add_argument("--note", default="", help="a paragraph written under the table")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    bundles = {"marie": args.marie, "rmiov2": find_bundle(args.rmiov2)}
    if args.marie_before is not None:
        bundles["marie-before"] = args.marie_before
    mans = {k: load_manifest(v) for k, v in bundles.items()}
    if any(mans[k].wm_window is None for k in bundles if k != "rmiov2"):
        raise SystemExit("--marie and --marie-before must be MARIE bundles")
    if mans["rmiov2"].wm_window is not None:
        raise SystemExit("--rmiov2 must be an RMIOv2 bundle")
    load = os.getloadavg()[0]
    rows = [r for r in ROWS if r[0] in bundles and args.placement in (r[2], "both")]
    reports: dict[tuple[str, str, str], list[dict[str, Any]]] = {row: [] for row in rows}
    for k in range(args.repeats):
        for algo, mode, where in rows:
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
            f"| {label(algo, mans[algo])} | {mode} | {where} | {r[0]:.2f} / {r[1]:.2f} | "
            f"{wm[0]:.2f} / {wm[1]:.2f} | {r[2]} | {misses} | {recon_miss} |"
        )
    if args.graph_calls > 0:
        lines += [
            "",
            f"The world-model graph alone, {args.graph_calls} rounds of a 21-step window per row "
            f"(load {os.getloadavg()[0]:.1f} when timed):",
            "",
            "| world model | agents lost at t | wall p50 / p99 ms | CPU p50 ms |",
            "|---|---|---|---|",
        ]
        for key in sorted(bundles, key=lambda k: k == "rmiov2"):  # MARIE's rows first
            for lost in (1, mans[key].spec.n_agents):
                p50, p99, cpu = graph_alone(bundles[key], lost, args.graph_calls)
                results[f"{key}-graph-lost{lost}"] = {"wall": [p50, p99], "cpu_p50": cpu}
                lines.append(
                    f"| {label(key, mans[key])} | {lost} | {p50:.2f} / {p99:.2f} | {cpu:.2f} |"
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
