"""The test fixture bundle honours the contract: both graphs run with batch 1 and 3."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rmio.runtime.bundle import load_manifest
from rmio.runtime.models import ActorRunner, WorldModelRunner

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("batch", [1, 3])
def test_graphs_run_with_any_batch(bundle: Path, batch: int) -> None:
    man = load_manifest(bundle, expect_scenario="mamujoco/HalfCheetah-6x1")
    n, d = man.spec.n_agents, man.spec.obs_dim
    rng = np.random.default_rng(0)
    action = ActorRunner(bundle, man).act(rng.normal(size=(batch, d)).astype(np.float32), np.arange(batch) % n)
    assert action.shape == (batch, man.spec.action_dim) and np.all(np.abs(action) <= 1.0)
    wm = WorldModelRunner(bundle, man)
    state, recon = wm.step(wm.initial_state(batch), np.zeros((batch, n, man.act_width), np.float32),
                           rng.normal(size=(batch, n, d)).astype(np.float32), np.ones((batch, n), np.float32))
    assert state.h.shape == (batch, n, man.deter) and state.z.shape == (batch, n, man.stoch)
    assert recon.shape == (batch, n, d) and np.isfinite(recon).all()
    assert np.allclose(state.z.sum(-1), man.stoch // 4)  # one-hot categoricals


def test_discrete_bundle(tmp_path: Path) -> None:
    """A discrete task too (LBF): the actor honours available actions; -1 ("no action") encodes as zeros."""
    pytest.importorskip("lbforaging")
    from tiny_bundle import make_tiny_bundle

    path = make_tiny_bundle(tmp_path / "lbf", "lbf/Foraging-8x8-2p-2f-coop-v3", 4)
    man = load_manifest(path)
    avail = np.zeros((3, man.spec.action_dim), bool)
    avail[:, 2] = True
    assert (ActorRunner(path, man).act(np.zeros((3, man.spec.obs_dim), np.float32), np.array([0, 1, 0]), avail)
            == 2).all()
    wm = WorldModelRunner(path, man)
    enc = wm.encode_actions(np.array([[-1, 3]]))
    assert enc.shape == (1, 2, man.act_width) and enc[0, 0].sum() == 0 and enc[0, 1, 3] == 1
