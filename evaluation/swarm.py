"""The robustness sweep through the real swarm (`rmio eval robustness --swarm`): the in-process
sweep's strategies, p_loss values and seed families, each run as a swarm of real processes on the
same episode seeds and loss masks, with communication and latency; and the AUC of the swarm's
curve."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from rmio.evaluation.robustness import SEED_STRIDE, score, seed_aucs
from rmio.runtime.launcher import Launcher, build_settings
from rmio.runtime.vocabulary import STRATEGIES

SWARM_STRATEGIES = STRATEGIES
"""The strategies a swarm can run (no-finetune is in-process only)."""


def swarm_sweep(
    bundle: Path,
    result: dict[str, Any],
    out_dir: Path,
    *,
    transport: str = "ipc",
    progress: Callable[[str, int], None] | None = None,
) -> list[dict[str, Any]]:
    """The same sweep through `rmio swarm launch` (real processes): one swarm per strategy, p_loss
    and seed family, on the same episode seeds; adds communication and latency. no-finetune has no
    swarm mode."""
    tick = progress or (lambda what, k: None)
    # the in-process sweep's loss model at each p_loss (build_settings derives it as the sweep did)
    loss = dict(result.get("loss") or {"model": result["loss_model"]})
    model = loss.pop("model")
    rows = []
    for strategy in [s for s in result["strategies"] if s in SWARM_STRATEGIES]:
        for p in result["p_loss"]:
            per_seed, returns, traffic, msgs, p50, p99, misses = [], [], [], [], [], [], 0
            fallbacks = 0
            for seed in range(result["seeds"]):
                settings = build_settings(
                    bundle,
                    steps=result["episode_limit"],
                    p_loss=p,
                    episodes=result["episodes"],
                    seed=seed * SEED_STRIDE,
                    recon=strategy,
                    wm_mode=result["wm_mode"],
                    transport=transport,
                    baselines=False,
                    loss_model=model,
                    **loss,
                )
                report = Launcher(settings, out_dir / f"{strategy}-p{p:g}-s{seed}").run()
                per_seed.append(score(report["episodes"], result["metric"]))
                returns.append([float(e["return"]) for e in report["episodes"]])
                proto = report["traffic_by_category"].get("protocol", {})
                traffic.append(proto.get("bytes_per_step", 0.0))
                msgs.append(proto.get("msgs_per_step", 0.0))
                rnd = report["latency"]["reconstruction_round (blind agent)"]
                if rnd["n"]:
                    p50.append(rnd["p50_ms"])
                    p99.append(rnd["p99_ms"])
                misses += int(report["events"].get("deadline_misses", 0))
                # a blind agent whose reconstruction missed its deadline acted on its last
                # observation: the swarm then differs from the in-process run, which never waits
                fallbacks += int(report["events"].get("agents.recon_miss", 0))
                tick(f"swarm {strategy}", 1)
            rows.append(
                {
                    "strategy": strategy,
                    "p_loss": p,
                    "mean": float(np.mean(per_seed)),
                    "std": float(np.std(per_seed)),
                    "per_seed": per_seed,
                    "episode_returns": returns,
                    "bytes_per_step": float(np.mean(traffic)),
                    "msgs_per_step": float(np.mean(msgs)),
                    "round_p50_ms": float(np.mean(p50)) if p50 else None,
                    "round_p99_ms": float(np.max(p99)) if p99 else None,
                    "deadline_misses": misses,
                    "recon_fallbacks": fallbacks,
                }
            )
    return rows


def swarm_auc(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The swarm's AUC per strategy, computed as the in-process one (``seed_aucs``: per seed
    family, normalised by that family's in-process random score, then mean and std), so identical
    returns give identical AUCs."""
    rows = result.get("swarm") or []
    random_rows = sorted(
        (r["seed"], score(r["episodes"], result["metric"]))
        for r in result["rows"]
        if r["strategy"] == "random"
    )
    random = [value for _, value in random_rows]
    out: dict[str, dict[str, Any]] = {}
    for strategy in sorted({r["strategy"] for r in rows}):
        curve = sorted((r["p_loss"], r["per_seed"]) for r in rows if r["strategy"] == strategy)
        p_loss = [p for p, _ in curve]
        per_seed = [[cells[s] for _, cells in curve] for s in range(len(random))]
        out[strategy] = seed_aucs(p_loss, per_seed, random)
    return out
