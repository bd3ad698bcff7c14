"""An agent's step records (``record: true``): what it acted on at each step, and every
reconstruction it got.

Written once at the end of a run to ``<out_dir>/records/a<i>-<inc>.npz``; the swarm tests compare
them with the env host's records and the in-process world model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def save_records(out_dir: str | Path, stem: str, records: list[tuple], obs_dim: int) -> None:
    """``records``: (ep, t, kind, obs, action) per action, and (ep, t, "recon", row, [start, epoch])
    per reconstruction received."""
    if not records:
        return
    out = Path(out_dir) / "records"
    out.mkdir(parents=True, exist_ok=True)
    recon = [r for r in records if r[2] == "recon"]
    acts = [r for r in records if r[2] != "recon"]
    np.savez(
        out / f"{stem}.npz",
        act_ep=np.array([r[0] for r in acts], np.int64),
        act_t=np.array([r[1] for r in acts], np.int64),
        act_kind=np.array([r[2] for r in acts]),
        act_obs=np.array([r[3] for r in acts], np.float32),
        recon_ep=np.array([r[0] for r in recon], np.int64),
        recon_t=np.array([r[1] for r in recon], np.int64),
        recon_obs=np.array([r[3] for r in recon], np.float32).reshape(len(recon), obs_dim),
        recon_start=np.array([r[4][0] for r in recon], np.int64),
        recon_epoch=np.array([r[4][1] for r in recon], np.int64),
    )
