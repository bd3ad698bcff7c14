"""Run directories named scenario/algo/seed/time (cleanrl style), so runs never overwrite each
other; and how a path of one is written into a manifest or a result (no machine path)."""

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


def portable_path(value: str | None) -> str | None:
    """A path as a manifest may record it: relative ones as they are; an absolute one relative to
    the working directory when it lies under it, else from its last ``runs`` folder on (the
    repository's convention), else its file name. A manifest must name no path of the machine that
    wrote it."""
    if not value:
        return value
    path = Path(value)
    if not path.is_absolute():
        return value
    try:
        return path.relative_to(Path.cwd()).as_posix()
    except ValueError:
        pass
    if "runs" in path.parts:
        at = len(path.parts) - 1 - path.parts[::-1].index("runs")
        return Path(*path.parts[at:]).as_posix()
    return path.name
