"""Open-loop error against horizon of RMIOv2 and MARIE world models on the same held-out episodes
(issue 23, item 3; the shape of MARIE's Fig. 7), for BENCHMARKS.md.

    python bench/open_loop.py [LABEL=]RUN_DIR... [--data RUN_DIR] [--root RUNS] [--note TEXT]

Every run is scored on the held-out windows of ``--data`` (default: the first run), in that run's
normalised units (rmio.train.open_loop says how). Writes bench/results/open_loop_<scenario>.md,
.json and .png; runs are named by their label or their path under ``--root`` (never a machine
path). Run it niced, on one thread: it is CPU work of seconds per model (MARIE's cpu preset: about
a minute for 256 windows).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch

from rmio.config import load_config
from rmio.train import open_loop_report
from rmio.train.open_loop import evaluate_open_loop

HERE = Path(__file__).resolve().parent


def scenario_name(run: Path) -> str:
    """The config's name as the committed results use it: halfcheetah_6x1, smax_2s3z."""
    env = load_config(run / "config.yaml").env
    name = env.scenario.lower().replace("-", "_")
    return name if env.family == "mamujoco" else f"{env.family}_{name}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="[LABEL=]RUN_DIR, RMIOv2 or MARIE runs of one task")
    ap.add_argument("--data", type=Path, default=None, help="the run whose held-out data is used")
    ap.add_argument("--root", type=Path, default=None, help="runs are named RUNS/<path under it>")
    ap.add_argument("--context", type=int, default=5)
    ap.add_argument("--horizon", type=int, default=15)
    ap.add_argument("--windows", type=int, default=256)
    ap.add_argument("--checkpoint", choices=["pretrain", "finetune"], default="pretrain")
    ap.add_argument("--sample", action="store_true", help="MARIE draws its tokens (not argmax)")
    ap.add_argument("--note", default="", help="what else the machine was doing, for the header")
    ap.add_argument("--remark", default="", help="a paragraph after the tables (what to read)")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args()
    torch.set_num_threads(1)

    def named(path: Path) -> str:
        if args.root is not None and path.resolve().is_relative_to(args.root.resolve()):
            return f"RUNS/{path.resolve().relative_to(args.root.resolve())}"
        return path.name

    labels, dirs = [], []
    for item in args.runs:
        label, _, path = item.rpartition("=")
        dirs.append(Path(path))
        labels.append(label or named(Path(path)))
    t0 = time.perf_counter()
    result = evaluate_open_loop(
        dirs,
        args.data,
        context=args.context,
        horizon=args.horizon,
        windows=args.windows,
        checkpoint=args.checkpoint,
        labels=labels,
        sample=args.sample,
    )
    data = args.data or dirs[0]
    result["data"] = named(data)
    scenario = scenario_name(data)
    command = " ".join(
        ["python bench/open_loop.py"]
        + [f"{lab}={named(d)}" for lab, d in zip(labels, dirs, strict=True)]
        + (["--data", named(args.data)] if args.data else [])
        + [f"--context {args.context} --horizon {args.horizon} --windows {args.windows}"]
        + ([f"--checkpoint {args.checkpoint}"] if args.checkpoint != "pretrain" else [])
        + (["--sample"] if args.sample else [])
    )
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    note = f"; {args.note}" if args.note else ""
    title = (
        f"Open-loop error against horizon, {scenario} ({platform.machine()}, {os.cpu_count()} "
        f"cores, Python {sys.version.split()[0]}, {when}; one torch thread, "
        f"{time.perf_counter() - t0:.0f} s{note})"
    )
    result["command"] = command
    paths = open_loop_report.write(result, args.out, f"open_loop_{scenario}", title, scenario)
    md = paths["md"].read_text().splitlines()
    md[1:1] = ["", f"Command: `{command}`"]
    if args.remark:
        md += ["", args.remark]
    paths["md"].write_text("\n".join(md) + "\n")
    print(paths["md"].read_text())
    print(f"wrote {paths['md']}, {paths['json']} and {paths['png']}")


if __name__ == "__main__":
    main()
