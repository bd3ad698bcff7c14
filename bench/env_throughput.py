"""Environment steps per second, single and vectorised, with random actions.

    python bench/env_throughput.py [--steps 2000] [--scenarios mamujoco/HalfCheetah-6x1,smax/3m]

Prints a markdown table. Action sampling is done before timing, so the numbers are the simulator
plus rmio's adapter (padding, dict packing, subprocess pipes or the jitted vmap), nothing else.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np

from rmio.envs import EnvConfig, make_env
from rmio.envs.vector import make_vector_env

DEFAULT = ",".join(
    [
        "mamujoco/HalfCheetah-6x1",
        "mamujoco/Ant-4x2",
        "mamujoco/ManySegmentSwimmer-10x2",
        "lbf/Foraging-8x8-2p-2f-coop-v3",
        "smax/2s3z",  # SMAX last: forking after JAX has started is unsafe
    ]
)


def _actions(
    spec, rng: np.random.Generator, count: int, batch: int | None, avail
) -> list[np.ndarray]:
    if batch is None:
        return [spec.random_actions(rng, avail) for _ in range(count)]
    return [
        np.stack(
            [spec.random_actions(rng, None if avail is None else avail[b]) for b in range(batch)]
        )
        for _ in range(count)
    ]


def single(cfg: EnvConfig, steps: int) -> float:
    rng = np.random.default_rng(0)
    with make_env(cfg) as env:
        ts = env.reset(seed=0)
        for _ in range(20):  # warm-up (and JIT compile for SMAX)
            ts = env.step(env.spec.random_actions(rng, ts.avail_actions))
            if ts.done:
                ts = env.reset()
        start = time.perf_counter()
        for _ in range(steps):
            ts = env.step(env.spec.random_actions(rng, ts.avail_actions))
            if ts.done:
                ts = env.reset()
        return steps / (time.perf_counter() - start)


def vectorised(cfg: EnvConfig, num_envs: int, steps: int, mode: str = "auto") -> float:
    rng = np.random.default_rng(0)
    with make_vector_env(cfg, num_envs, mode) as venv:
        b = venv.reset(seed=0)
        for _ in range(5):
            b = venv.step(_actions(venv.spec, rng, 1, num_envs, b.avail_actions)[0])
        iters = max(steps // num_envs, 10)
        start = time.perf_counter()
        for _ in range(iters):
            # available actions change every step, so sampling has to happen inside the loop for
            # discrete tasks
            b = venv.step(_actions(venv.spec, rng, 1, num_envs, b.avail_actions)[0])
        return iters * num_envs / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--scenarios", default=DEFAULT)
    args = parser.parse_args()
    rows = []
    for item in args.scenarios.split(","):
        family, scenario = item.split("/", 1)
        cfg = EnvConfig(family, scenario)
        try:
            one = single(cfg, args.steps)
        except Exception as exc:  # a missing extra skips the row, with the reason
            rows.append(f"| {item} | skipped: {str(exc).splitlines()[0][:80]} | | |")
            continue
        if family == "smax":
            cells = [
                f"{vectorised(cfg, n, args.steps):,.0f} ({n} copies, one vmapped call)"
                for n in (64, 256)
            ]
        else:
            cells = [
                f"{vectorised(cfg, 4, args.steps, mode):,.0f} (4 copies, {mode})"
                for mode in ("sync", "subproc")
            ]
        rows.append(f"| {item} | {one:,.0f} | " + " | ".join(cells) + " |")
    cores = os.cpu_count()
    print(
        f"Environment throughput, random actions: {platform.processor() or platform.machine()}, "
        f"{cores} cores, Python {sys.version.split()[0]}, {time.strftime('%Y-%m-%d')}"
    )
    print()
    print("| scenario | single env steps/s | vectorised steps/s | vectorised steps/s |")
    print("|---|---|---|---|")
    for row in rows:
        print(row)


if __name__ == "__main__":
    main()
