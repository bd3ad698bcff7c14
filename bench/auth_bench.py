"""The cost of message authentication (issue 19): the same swarm with and without the swarm's key,
side by side in one run, over tcp and udp.

    python bench/auth_bench.py             # 6 and 10 agents, 600 steps, 2 repeats per row
    python bench/auth_bench.py --quick     # 6 agents, 300 steps, 1 repeat

Each configuration runs keyed and insecure in alternation (so a change of the machine's load hits
both alike); a row gives the reconstruction round (blind agent: STEP received to RECON received)
p50/p99, the env host's decision latency p99 and steps per second, as the median over repeats.
Bundles: tiny random ones (rmio.testing.tiny_bundle, needs torch), HalfCheetah 6x1 and
ManySegmentSwimmer 10x2, history window 20. Results go to bench/results/auth.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from rmio.testing import launch, tiny_bundle

SCENARIOS = {6: "mamujoco/HalfCheetah-6x1", 10: "mamujoco/ManySegmentSwimmer-10x2"}


def one_run(bundle: Path, out: Path, transport: str, insecure: bool, steps: int) -> dict[str, Any]:
    report = launch(
        bundle,
        out,
        steps=steps,
        transport=transport,
        insecure=insecure,
        loss={"model": "bernoulli", "p_loss": 0.3},
        episodes=1,
        wm_mode="incremental",
    )
    lat = report["latency"]
    rnd = lat["reconstruction_round (blind agent)"]
    return {
        "p50": rnd["p50_ms"],
        "p99": rnd["p99_ms"],
        "decision_p99": lat["decision_observing (env host)"]["p99_ms"],
        "steps_s": report["env_steps"] / max(report["seconds"], 1e-9),
        "bad_auth": report["events"].get("dropped.bad_auth", 0),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "auth.md")
    args = parser.parse_args()
    sizes = [6] if args.quick else [6, 10]
    steps = 300 if args.quick else 600
    repeats = args.repeats or (1 if args.quick else 2)
    cache = Path(tempfile.gettempdir()) / "rmio-bench-bundles"
    rows = []
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            bundle = tiny_bundle(cache, SCENARIOS[n], 20)
            for transport in ("tcp", "udp"):
                runs: dict[bool, list[dict[str, Any]]] = {False: [], True: []}
                for k in range(repeats):
                    for insecure in (False, True) if k % 2 == 0 else (True, False):
                        out = Path(tmp) / f"{n}-{transport}-{insecure}-{k}"
                        runs[insecure].append(one_run(bundle, out, transport, insecure, steps))
                for insecure in (True, False):
                    med = {
                        key: statistics.median(r[key] for r in runs[insecure])
                        for key in runs[insecure][0]
                    }
                    rows.append((n, transport, "none" if insecure else "hmac", med))
    lines = [
        "# Message authentication: cost on this machine",
        "",
        f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs, load average {load:.1f} at the "
        f"start, {steps} steps per run, p_loss 0.3, incremental rounds, median of {repeats} "
        "run(s) per row; keyed and insecure runs alternate.",
        "",
        "| agents | transport | auth | round p50 ms | round p99 ms | decision p99 ms | steps/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for n, transport, auth, m in rows:
        lines.append(
            f"| {n} | {transport} | {auth} | {m['p50']:.2f} | {m['p99']:.2f} | "
            f"{m['decision_p99']:.2f} | {m['steps_s']:.0f} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
