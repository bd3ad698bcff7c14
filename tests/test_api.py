"""The documented Python API (rmio.api, re-exported from rmio) at tiny scale: open a bundle and run
its graphs, evaluate it in-process, sweep p_loss, and launch the real swarm (real processes)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import psutil
import pytest

import rmio
from rmio.envs.registry import make_env
from rmio.errors import ConfigError, RmioError
from rmio.testing import make_tiny_bundle


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bundle(
        tmp_path_factory.mktemp("api") / "halfcheetah6", "mamujoco/HalfCheetah-6x1", 4
    )


def test_importing_rmio_loads_no_api_until_asked() -> None:
    code = (
        "import sys, rmio, rmio.runtime.wire\n"
        "assert 'rmio.api' not in sys.modules and 'rmio.evaluation.robustness' not in sys.modules\n"
        "assert rmio.load_bundle is __import__('rmio.api').api.load_bundle\n"
        "assert 'torch' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    assert set(rmio.__all__) >= {"load_bundle", "evaluate", "robustness_sweep", "launch_swarm"}


def test_load_bundle_runs_its_graphs(bundle: Path) -> None:
    b = rmio.load_bundle(bundle, check=True)
    spec = b.spec
    assert spec.name == "mamujoco/HalfCheetah-6x1" and b.manifest.history_window == 4
    obs = np.random.default_rng(0).normal(size=(spec.n_agents, spec.obs_dim)).astype(np.float32)
    batch = b.act(obs, np.arange(spec.n_agents))
    assert batch.shape == (spec.n_agents, spec.action_dim)
    np.testing.assert_allclose(b.act(obs[2], 2), batch[2], atol=1e-6)  # one agent = its batch row
    assert np.all(batch >= np.asarray(spec.action_low) - 1e-6)
    wm = b.world_model()
    _state, recon = wm.step(
        wm.initial_state(1),
        np.zeros((1, spec.n_agents, b.manifest.act_width), np.float32),
        obs[None],
        np.ones((1, spec.n_agents), np.float32),
    )
    assert recon.shape == (1, spec.n_agents, spec.obs_dim)
    assert "is valid" in b.check()
    with pytest.raises(RmioError, match="wm_step_pretrain"):
        b.world_model(pretrain=True)
    with pytest.raises(RmioError, match="no bundle"):
        rmio.load_bundle("no_such_bundle_anywhere")
    assert rmio.load_bundle("halfcheetah_6x1").spec.n_agents == 6  # a shipped bundle by name


def test_evaluate_matches_a_rollout_of_the_actor(bundle: Path) -> None:
    """With no loss, evaluate() is the greedy actor on the real env: the same return."""
    b = rmio.load_bundle(bundle)
    rows = rmio.evaluate(b, episodes=1, p_loss=0.0, seed=3, episode_limit=15)
    env = make_env(b.env_config(15))
    ts, ret = env.reset(seed=3), 0.0
    while not ts.done:
        ts = env.step(b.act(ts.obs, np.arange(b.spec.n_agents)))
        ret += ts.reward
    env.close()
    assert rows[0]["steps"] == 15 and rows[0]["return"] == pytest.approx(ret, abs=1e-5)
    lossy = rmio.evaluate(
        bundle, episodes=1, loss={"model": "burst", "p_loss": 0.5}, seed=3, episode_limit=15
    )
    assert lossy[0]["lost_fraction"] > 0.1


def test_robustness_sweep(bundle: Path) -> None:
    result = rmio.robustness_sweep(bundle, p_loss=[0.0, 0.5], episodes=1, seeds=1, episode_limit=15)
    assert result["p_loss"] == [0.0, 0.5]
    for strategy in ("world-model", "hold-last", "zero-fill"):
        assert np.isfinite(result["summary"][strategy]["auc_mean"])
    # seed family 0, episode 0 is env seed 0: the same episode as evaluate(seed=0) with no loss
    at_zero = next(
        r for r in result["rows"] if r["strategy"] == "world-model" and r["p_loss"] == 0.0
    )
    rows = rmio.evaluate(bundle, episodes=1, p_loss=0.0, seed=0, episode_limit=15)
    assert at_zero["episodes"][0]["return"] == pytest.approx(rows[0]["return"], abs=1e-5)
    burst = rmio.robustness_sweep(
        bundle, p_loss=[0.0, 0.5], episodes=1, seeds=1, episode_limit=15,
        strategies=["hold-last"], loss_model="burst", mean_burst_length=6,
    )  # fmt: skip
    assert burst["loss"] == {"model": "burst", "mean_burst_length": 6}
    with pytest.raises(ConfigError):  # a setting the model does not read, as on the command line
        rmio.robustness_sweep(bundle, p_loss=[0.0], loss_model="bernoulli", blackout_length=3)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_launch_swarm_returns_the_report(bundle: Path, tmp_path: Path) -> None:
    report = rmio.launch_swarm(
        bundle, steps=20, p_loss=0.3, out_dir=tmp_path, step_deadline_ms=1000.0, seed=5
    )
    run_dir = Path(report["run_dir"])
    assert run_dir.parent == tmp_path
    written = json.loads((run_dir / "report.json").read_text())
    assert written["mean_return"] == pytest.approx(report["mean_return"])
    assert [ep["steps"] for ep in report["episodes"]] == [20]
    # the swarm's exact semantics: the in-process reference on the same seeds gives its return
    rows = rmio.evaluate(bundle, episodes=1, p_loss=0.3, seed=5, episode_limit=20)
    assert report["episodes"][0]["return"] == pytest.approx(rows[0]["return"], abs=1e-5)
    assert not [
        p
        for p in psutil.Process().children(recursive=True)
        if p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    ]
    with pytest.raises(RmioError, match="unknown swarm setting"):
        rmio.launch_swarm(bundle, steps=5, out_dir=tmp_path, deadline=3)
