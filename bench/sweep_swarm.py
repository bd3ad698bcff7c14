"""Every world model of a sweep through the real swarm (issue 21: one row per world model).

For each variant of one training seed of an `rmio ablate` sweep (its exported ``bundle``), runs the
robustness sweep in-process and through `rmio swarm launch` (real processes, the same episode
seeds and loss masks) and prints the returns side by side: they must be equal, so the in-process
table above it is what a deployment gets.

    python bench/sweep_swarm.py runs/ablation-fig8_halfcheetah_6x1 --seed 0 --p-loss 0.3 \\
        --episodes 2 --out bench/results/swarm_fig8_halfcheetah_6x1

or any bundles, each named: ``--bundle mmsa=runs/mmsa-robustness/mmsa_bundle --bundle ...``.

Writes OUT.md and OUT.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from rmio.evaluation import robustness
from rmio.evaluation import swarm as through_swarm


def variants(sweep: Path, seed: int) -> list[tuple[str, Path]]:
    """The sweep's variants of ``seed`` that have a bundle, in the table's order."""
    table = json.loads((sweep / "ablation.json").read_text())
    found = []
    for row in table["rows"]:
        for run in row.get("runs", []):
            bundle = sweep / run / "bundle"
            if run.startswith(f"seed{seed}/") and (bundle / "manifest.json").is_file():
                found.append((row["variant"], bundle))
    return found


def _returns(per_seed: list[list[float]]) -> str:
    return ", ".join(f"{x:.2f}" for seed in per_seed for x in seed)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("sweep", type=Path, nargs="?", help="an `rmio ablate` output directory")
    ap.add_argument(
        "--bundle", action="append", default=[], metavar="LABEL=DIR",
        help="a bundle to run instead of a sweep's (repeatable)",
    )  # fmt: skip
    ap.add_argument("--seed", type=int, default=0, help="training seed whose bundles run")
    ap.add_argument("--p-loss", type=float, default=0.3)
    ap.add_argument("--episodes", type=int, default=2)
    ap.add_argument("--steps", type=int, default=None, help="episode length (default: the env's)")
    ap.add_argument("--transport", default="ipc", choices=["ipc", "tcp", "udp"])
    ap.add_argument("--out", type=Path, required=True, help="OUT.md and OUT.json are written")
    args = ap.parse_args()
    rows = []
    if (args.sweep is None) == (not args.bundle):
        raise SystemExit("give a sweep directory or --bundle LABEL=DIR, not both")
    if args.bundle:
        found = [(b.split("=", 1)[0], Path(b.split("=", 1)[-1])) for b in args.bundle]
    else:
        found = variants(args.sweep, args.seed)
    if not found:
        raise SystemExit(f"{args.sweep}: no exported bundle of seed {args.seed} in ablation.json")
    name = args.sweep.name if args.sweep else ", ".join(label for label, _ in found)
    with tempfile.TemporaryDirectory() as tmp:
        for label, bundle in found:
            start = time.perf_counter()
            result = robustness.sweep(
                bundle,
                p_loss=[args.p_loss],
                episodes=args.episodes,
                seeds=1,
                strategies=["world-model"],
                episode_limit=args.steps,
            )
            swarm = through_swarm.swarm_sweep(
                bundle, result, Path(tmp) / label, transport=args.transport
            )
            (point,) = [
                c for c in result["summary"]["world-model"]["curve"] if c["p_loss"] == args.p_loss
            ]
            inproc = point["per_seed"]
            (through,) = [r for r in swarm if r["p_loss"] == args.p_loss]
            diff = float(np.max(np.abs(np.subtract(inproc, through["per_seed"]))))
            # every episode's return as well: on SMAX the win rate alone is 0 or 1 per episode
            inproc_returns = [
                [float(e["return"]) for e in row["episodes"]]
                for row in sorted(result["rows"], key=lambda r: r["seed"])
                if row["strategy"] == "world-model" and row["p_loss"] == args.p_loss
            ]
            return_diff = float(
                np.max(np.abs(np.subtract(inproc_returns, through["episode_returns"])))
            )
            rows.append(
                {
                    "variant": label,
                    "bundle": (bundle.relative_to(args.sweep) if args.sweep else bundle).as_posix(),
                    "metric": result["metric"],
                    "in_process": inproc,
                    "swarm": through["per_seed"],
                    "max_abs_diff": diff,
                    "episode_returns_in_process": inproc_returns,
                    "episode_returns_swarm": through["episode_returns"],
                    "episode_return_max_abs_diff": return_diff,
                    "round_p50_ms": through["round_p50_ms"],
                    "round_p99_ms": through["round_p99_ms"],
                    "deadline_misses": through["deadline_misses"],
                    "recon_fallbacks": through["recon_fallbacks"],
                    "seconds": time.perf_counter() - start,
                }
            )
            print(
                f"{label}: in-process {inproc} swarm {through['per_seed']} diff {diff:g}; "
                f"episode returns {inproc_returns} and {through['episode_returns']}"
            )
    what = f"Every world model of `{name}` (training seed {args.seed})" if args.sweep else name
    head = (
        f"# {what} through the real swarm: {platform.machine()}, "
        f"{len(os.sched_getaffinity(0))} cores, "
        f"{time.strftime('%Y-%m-%d')}"
    )
    metric = rows[0]["metric"]
    lines = [
        head,
        "",
        f"Bernoulli p_loss {args.p_loss:g}, {args.episodes} episodes, world model in window mode, "
        f"transport {args.transport}; in-process = `rmio eval robustness` on the same seeds and "
        "masks. Command: `python bench/sweep_swarm.py "
        + (f"SWEEP_OUT --seed {args.seed}" if args.sweep else "--bundle LABEL=DIR ...")
        + f" --p-loss {args.p_loss:g} --episodes {args.episodes}"
        + (f" --steps {args.steps}" if args.steps else "")
        + f" --transport {args.transport}`. Step deadline misses: actions the env host did not "
        "get in time; reconstruction fallbacks: blind agents whose reconstruction missed its "
        "deadline and who acted on their last observation (either makes the swarm differ from "
        "the in-process run, which never waits).",
        "",
        f"| world model | {metric} in-process | {metric} through the swarm | max abs diff | "
        "episode returns in-process / through the swarm | max abs diff | round p50 / p99 ms | "
        "step deadline misses | reconstruction fallbacks |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        p50, p99 = r["round_p50_ms"], r["round_p99_ms"]
        lines.append(
            f"| {r['variant']} | {np.mean(r['in_process']):.2f} | {np.mean(r['swarm']):.2f} | "
            f"{r['max_abs_diff']:g} | {_returns(r['episode_returns_in_process'])} / "
            f"{_returns(r['episode_returns_swarm'])} | {r['episode_return_max_abs_diff']:g} | "
            + ("- / -" if p50 is None else f"{p50:.2f} / {p99:.2f}")
            + f" | {r['deadline_misses']} | {r['recon_fallbacks']} |"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    args.out.with_suffix(".json").write_text(json.dumps({"rows": rows}, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
