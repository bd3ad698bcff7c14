"""Bundle validation with onnxruntime alone (no torch): what `rmio export --check` runs, and what a
deployment can run before it starts any process."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rmio.errors import RmioError
from rmio.runtime.bundle import load_manifest
from rmio.runtime.models import ActorRunner, WorldModelRunner


def check_bundle(bundle: str | Path) -> str:
    """Re-validate a bundle: manifest schema, files, graph signatures, and that the graphs run;
    returns a one-line description of the valid bundle, raises RmioError otherwise."""
    manifest = load_manifest(bundle)
    n, d = manifest.spec.n_agents, manifest.spec.obs_dim
    for role in ("wm_step", "wm_step_pretrain"):
        if role not in manifest.files:
            continue
        runner = WorldModelRunner(bundle, manifest, file=manifest.files[role])
        _, recon = runner.step(
            runner.initial_state(3),
            np.zeros((3, n, manifest.act_width), np.float32),
            np.zeros((3, n, d), np.float32),
            np.ones((3, n), np.float32),
        )
        if recon.shape != (3, n, d) or not np.isfinite(recon).all():
            raise RmioError(
                f"bundle '{bundle}': {manifest.files[role]} returns {recon.shape} or non-finite "
                "values"
            )
    if "actor" in manifest.files:
        ActorRunner(bundle, manifest)
    return (
        f"bundle {bundle} is valid: {manifest.spec.name}, {n} agents, window "
        f"{manifest.history_window}, files {', '.join(manifest.files.values())}"
    )
