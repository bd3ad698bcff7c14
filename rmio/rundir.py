"""Run directories named scenario/algo/seed/time (cleanrl style), so runs never overwrite each
other."""

from __future__ import annotations

import time
from pathlib import Path

from rmio.config import Config


def scenario_slug(cfg: Config) -> str:
    return f"{cfg.env.family}-{cfg.env.scenario}".replace("/", "_")


def new_run_dir(cfg: Config, algo: str, root: str | Path | None = None) -> Path:
    """A fresh directory ``<runs_dir>/<family-scenario>/<algo>/seed<seed>/<YYYYmmdd-HHMMSS>``."""
    base = Path(root if root is not None else cfg.run.runs_dir)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = base / scenario_slug(cfg) / algo / f"seed{cfg.run.seed}" / stamp
    suffix = 1
    while path.exists():
        suffix += 1
        path = path.with_name(f"{stamp}-{suffix}")
    path.mkdir(parents=True)
    return path
