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
    action = ActorRunner(bundle, man).act(
        rng.normal(size=(batch, d)).astype(np.float32), np.arange(batch) % n
    )
    assert action.shape == (batch, man.spec.action_dim) and np.all(np.abs(action) <= 1.0)
    wm = WorldModelRunner(bundle, man)
    state, recon = wm.step(
        wm.initial_state(batch),
        np.zeros((batch, n, man.act_width), np.float32),
        rng.normal(size=(batch, n, d)).astype(np.float32),
        np.ones((batch, n), np.float32),
    )
    assert state.h.shape == (batch, n, man.deter) and state.z.shape == (batch, n, man.stoch)
    assert recon.shape == (batch, n, d) and np.isfinite(recon).all()
    assert np.allclose(state.z.sum(-1), man.stoch // 4)  # one-hot categoricals


def test_discrete_bundle(tmp_path: Path) -> None:
    """A discrete task too (LBF): the actor honours available actions; -1 ("no action") encodes as
    zeros."""
    pytest.importorskip("lbforaging")
    from rmio.testing import make_tiny_bundle

    path = make_tiny_bundle(tmp_path / "lbf", "lbf/Foraging-8x8-2p-2f-coop-v3", 4)
    man = load_manifest(path)
    avail = np.zeros((3, man.spec.action_dim), bool)
    avail[:, 2] = True
    assert (
        ActorRunner(path, man).act(
            np.zeros((3, man.spec.obs_dim), np.float32), np.array([0, 1, 0]), avail
        )
        == 2
    ).all()
    wm = WorldModelRunner(path, man)
    enc = wm.encode_actions(np.array([[-1, 3]]))
    assert enc.shape == (1, 2, man.act_width) and enc[0, 0].sum() == 0 and enc[0, 1, 3] == 1


def test_bound_single_calls_equal_plain_session_runs(bundle: Path) -> None:
    """An agent's own step and a round's batch-1 world-model step go through fixed IO-bound buffers:
    they must give exactly what a plain ``session.run`` gives, and a result must not change when the
    next call overwrites the buffers."""
    man = load_manifest(bundle)
    n, d = man.spec.n_agents, man.spec.obs_dim
    rng = np.random.default_rng(3)
    actor = ActorRunner(bundle, man)
    obs = rng.normal(size=(n, d)).astype(np.float32)
    first = actor.act(obs[0], 0)
    for i in range(n):
        plain = actor.session.run(["action"], {"obs": obs[i : i + 1], "agent_id": np.array([i])})[
            0
        ][0]
        assert np.array_equal(actor.act(obs[i], i), plain)
    assert np.array_equal(
        first, actor.session.run(["action"], {"obs": obs[:1], "agent_id": np.array([0])})[0][0]
    )

    wm = WorldModelRunner(bundle, man)
    state = wm.initial_state(1)
    for _ in range(3):
        prev = rng.normal(size=(1, n, man.act_width)).astype(np.float32)
        o = rng.normal(size=(1, n, d)).astype(np.float32)
        mask = (rng.random((1, n)) > 0.4).astype(np.float32)
        h, z, recon = wm.session.run(
            ["h_next", "z_next", "obs_recon"],
            {"h": state.h, "z": state.z, "prev_action": prev, "obs": o, "mask": mask},
        )
        kept = state
        state, got = wm.step(state, prev, o, mask)
        assert (
            np.array_equal(state.h, h) and np.array_equal(state.z, z) and np.array_equal(got, recon)
        )
        assert kept.h is not state.h and not np.shares_memory(got, state.h)


def test_bound_calls_never_broadcast_a_wrong_shape(bundle: Path) -> None:
    """A buffer write would broadcast a length-1 input over the whole row; such inputs must take the
    plain path, where onnxruntime rejects them."""
    man = load_manifest(bundle)
    n, d = man.spec.n_agents, man.spec.obs_dim
    with pytest.raises(Exception, match=r"(?i)dimension|shape|invalid"):
        ActorRunner(bundle, man).act(np.ones(1, np.float32), 0)
    wm = WorldModelRunner(bundle, man)
    ok = (
        np.zeros((1, n, man.act_width), np.float32),
        np.zeros((1, n, d), np.float32),
        np.ones((1, n), np.float32),
    )
    bad = {
        0: np.zeros((1, n, man.act_width + 1), np.float32),
        1: np.zeros((1, n, 1), np.float32),
        2: np.ones((1, 1), np.float32),
    }
    for k, wrong in bad.items():
        args = list(ok)
        args[k] = wrong
        with pytest.raises(Exception, match=r"(?i)dimension|shape|invalid"):
            wm.step(wm.initial_state(1), *args)
