"""The in-process baselines of a swarm report: the same bundle, seeds and loss masks evaluated in
one process with the world model, zero-fill and hold-last, so a reader sees what the swarm
reproduced (world model) and what reconstruction bought (the other two). Computed after the swarm
has exited, never by the env host."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from rmio.evaluation.reference import evaluate
from rmio.runtime.metrics import write_report
from rmio.runtime.settings import SwarmSettings
from rmio.runtime.vocabulary import STRATEGIES


def baselines(settings: SwarmSettings) -> dict[str, Any]:
    """Mean and per-episode returns of the in-process evaluation for each reconstruction
    strategy."""
    s = settings
    out = {}
    for recon in STRATEGIES:
        rows = evaluate(
            s.bundle,
            s.env_config(),
            s.loss_config(),
            episodes=s.episodes,
            seed=s.seed,
            recon=recon,
            wm_mode=s.wm_mode,
        )
        out[recon] = {
            "mean_return": float(np.mean([r["return"] for r in rows])),
            "returns": [r["return"] for r in rows],
        }
    return out


def add_baselines(
    report: dict[str, Any], settings: SwarmSettings, run_dir: str | Path
) -> dict[str, Any]:
    """Add ``baselines`` to a finished swarm's report and rewrite its report.json and report.md."""
    report["baselines"] = baselines(settings)
    write_report(report, run_dir)
    return report
