"""Policy-relevant reconstruction metrics (issue 25): the deployed actor applied to true and to
reconstructed observations of lost agents, beside L_rec, for the world model, hold-last and
zero-fill."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from rmio.runtime.models import ActorRunner
from rmio.testing import make_tiny_bundle
from rmio.train.policy_metrics import PolicyProbe


def test_continuous_actor_disagreement_is_the_mean_absolute_action_error(tmp_path: Path) -> None:
    bundle = make_tiny_bundle(tmp_path / "b", "mamujoco/HalfCheetah-6x1")
    probe, runner = PolicyProbe(bundle), ActorRunner(bundle)
    rng = np.random.default_rng(0)
    true = rng.normal(size=(50, 9)).astype(np.float32)
    recon = true + rng.normal(scale=0.5, size=true.shape).astype(np.float32)
    ids = rng.integers(0, 6, size=50)
    assert set(probe.compare(true, true, ids)) == {"action_mae"}
    assert not probe.compare(true, true, ids)["action_mae"].any()
    got = probe.compare(true, recon, ids, chunk=16)["action_mae"]  # several chunks
    want = np.abs(runner.act(true, ids) - runner.act(recon, ids)).reshape(50, -1).mean(-1)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert got.mean() > 0


def test_discrete_actor_disagreement_is_whether_the_action_changes(tmp_path: Path) -> None:
    bundle = make_tiny_bundle(tmp_path / "b", "lbf/Foraging-8x8-2p-2f-v3")
    probe, runner = PolicyProbe(bundle), ActorRunner(bundle)
    spec = probe.manifest.spec
    rng = np.random.default_rng(1)
    true = rng.normal(size=(200, spec.obs_dim)).astype(np.float32)
    recon = rng.normal(size=true.shape).astype(np.float32)
    ids = rng.integers(0, spec.n_agents, size=200)
    avail = np.ones((200, spec.action_dim), bool)
    same = probe.compare(true, true, ids, avail)
    assert not same["action_changed"].any()
    got = probe.compare(true, recon, ids, avail)["action_changed"]
    want = runner.act(true, ids, avail) != runner.act(recon, ids, avail)
    np.testing.assert_array_equal(got, want.astype(float))
