"""PettingZoo interop, both ways, against the real pettingzoo package: rmio's tasks (with a loss
model) as ParallelEnvs checked by PettingZoo's own API test, and a ParallelEnv defined outside rmio
trained by a real `rmio train mappo` process through `family: pettingzoo`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

pytest.importorskip("pettingzoo")

from pettingzoo.test import parallel_api_test

from rmio.envs.loss import LossConfig, LossyEnv, make_loss_model
from rmio.envs.registry import EnvConfig, make_env
from rmio.envs.to_pettingzoo import parallel_env
from rmio.errors import ConfigError

EXT = Path(__file__).parent / "pettingzoo_ext"
BURST = {"model": "burst", "p_loss": 0.4, "mean_burst_length": 3.0}


def test_halfcheetah_with_burst_loss_passes_pettingzoo_api_test() -> None:
    env = parallel_env("mamujoco/HalfCheetah-6x1", BURST, seed=5, episode_limit=40)
    parallel_api_test(env, num_cycles=120)
    obs, _infos = env.reset(seed=11)
    assert env.agents == env.possible_agents and len(env.agents) == 6
    assert all(o.shape == (env.spec.obs_dim,) and o.dtype == np.float32 for o in obs.values())
    env.close()


def test_lost_observations_are_zeros_flagged_as_rmio_loses_them() -> None:
    """Same seeds and actions: the same masks, zeros and rewards as rmio's own LossyEnv."""
    spec_cfg = EnvConfig(family="mamujoco", scenario="HalfCheetah-6x1", episode_limit=30)
    pz = parallel_env(spec_cfg, BURST, seed=3, observed_feature=True)
    base = make_env(spec_cfg)
    ref = LossyEnv(base, make_loss_model(LossConfig(**BURST), base.spec.n_agents, 3))
    rng = np.random.default_rng(0)
    obs, infos = pz.reset(seed=21)
    ts = ref.reset(seed=21)
    lost_seen = 0
    for _ in range(30):
        for i, a in enumerate(pz.possible_agents):
            assert infos[a]["observed"] == bool(ts.observed[i])
            np.testing.assert_array_equal(obs[a][:-1], ts.obs[i])
            assert obs[a][-1] == float(ts.observed[i])
            if not ts.observed[i]:
                lost_seen += 1
                assert not obs[a][:-1].any()  # a lost observation is all zeros
        joint = base.spec.random_actions(rng)
        obs, rew, _term, trunc, infos = pz.step(
            {a: joint[i] for i, a in enumerate(pz.possible_agents)}
        )
        ts = ref.step(joint)
        assert all(r == pytest.approx(ts.reward) for r in rew.values())
        if ts.done:
            assert pz.agents == [] and all(trunc.values())
            break
    assert lost_seen > 10  # p_loss 0.4 over 6 agents: the comparison covered lost steps
    pz.close()
    ref.close()


def test_lbf_gives_action_masks() -> None:
    pytest.importorskip("lbforaging")
    env = parallel_env("lbf/Foraging-8x8-2p-2f-coop-v3", {"model": "bernoulli", "p_loss": 0.5})
    parallel_api_test(env, num_cycles=60)
    _, infos = env.reset(seed=0)
    assert all(
        info["action_mask"].shape == (6,) and info["action_mask"][0] for info in infos.values()
    )


def test_round_trip_through_the_pettingzoo_family() -> None:
    """rmio env -> ParallelEnv -> `family: pettingzoo` gives back the same task, step for step."""
    native = make_env(EnvConfig(family="mamujoco", scenario="HalfCheetah-6x1", episode_limit=15))
    wrapped = make_env(
        EnvConfig(
            family="pettingzoo",
            scenario="rmio.envs.to_pettingzoo:parallel_env",
            episode_limit=15,
            options={"scenario": "mamujoco/HalfCheetah-6x1", "team_reward": "mean"},
        )
    )
    assert wrapped.spec.name == "pettingzoo/rmio.envs.to_pettingzoo:parallel_env"
    for key in ("n_agents", "obs_dim", "action_dim", "action_low", "action_high", "agent_names"):
        assert getattr(wrapped.spec, key) == getattr(native.spec, key), key
    a, b = native.reset(seed=4), wrapped.reset(seed=4)
    np.testing.assert_array_equal(a.obs, b.obs)
    np.testing.assert_array_equal(a.state, b.state)
    rng = np.random.default_rng(1)
    for _ in range(15):
        joint = native.spec.random_actions(rng)
        a, b = native.step(joint), wrapped.step(joint)
        np.testing.assert_allclose(a.obs, b.obs, atol=1e-6)
        assert a.reward == pytest.approx(b.reward, abs=1e-6)
        assert (a.terminated, a.truncated) == (b.terminated, b.truncated)
        if a.done:
            break
    assert a.truncated  # the limit of 15 steps ended both
    native.close()
    wrapped.close()


def test_external_env_maps_onto_rmio_interface(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(EXT))
    env = make_env(
        EnvConfig(family="pettingzoo", scenario="rendezvous:make", options={"n_agents": 4})
    )
    spec = env.spec
    assert (spec.n_agents, spec.obs_sizes, spec.action_kind, spec.action_sizes) == (
        4,
        (5,) * 4,
        "discrete",
        (3,) * 4,
    )
    assert spec.episode_limit == 30  # the env's own max_cycles
    assert spec.state_dim == 4  # its state()
    ts = env.reset(seed=0)
    assert ts.avail_actions.all() and ts.state.shape == (4,)
    steps = 0
    while not ts.done:
        ts = env.step(np.full(4, 2, np.int64))  # everyone walks right: they meet at the end
        steps += 1
    assert ts.terminated and not ts.truncated and steps <= 7
    assert ts.reward == 0.0  # met: no spread


def test_entry_point_name_and_bad_references(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A package that registers its factory in the rmio.pettingzoo group is named by that name."""
    dist = tmp_path / "rendezvous_pkg-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: rendezvous-pkg\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[rmio.pettingzoo]\nrendezvous = rendezvous:make\n")
    monkeypatch.syspath_prepend(str(EXT))
    monkeypatch.syspath_prepend(str(tmp_path))
    env = make_env(EnvConfig(family="pettingzoo", scenario="rendezvous"))
    assert env.spec.name == "pettingzoo/rendezvous" and env.spec.n_agents == 3
    for bad, says in (
        ("no_such_name", "rendezvous"),  # the error lists what is registered
        ("no_such_module_xyz:make", "cannot import"),
        ("rendezvous:nothing", "has no 'nothing'"),
    ):
        with pytest.raises(ConfigError, match=says):
            make_env(EnvConfig(family="pettingzoo", scenario=bad))
    with pytest.raises(ConfigError, match="team_reward"):
        make_env(
            EnvConfig(family="pettingzoo", scenario="rendezvous", options={"team_reward": "max"})
        )


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_external_pettingzoo_env_trains_with_rmio_train_mappo(tmp_path: Path) -> None:
    """A real `rmio train mappo` process, with the env's folder (not rmio) on its path."""
    config = tmp_path / "rendezvous.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "env": {
                    "family": "pettingzoo",
                    "scenario": "rendezvous:make",
                    "options": {"n_agents": 3, "size": 6},
                },
                "run": {"runs_dir": str(tmp_path / "runs")},
            }
        )
    )
    env = {**os.environ, "PYTHONPATH": str(EXT)}
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "rmio.cli",
            "train",
            "mappo",
            str(config),
            "--debug",
            "--set",
            "policy.mappo.env_steps=150",
            "--set",
            "policy.mappo.eval_every=100",
            "--run-dir",
            str(run_dir),
        ],
        capture_output=True,
        text=True,
        timeout=280,
        cwd=tmp_path,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert (run_dir / "policy.pt").is_file()
    recorded = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert recorded["env"]["family"] == "pettingzoo"
    evals = [json.loads(line) for line in (run_dir / "eval.jsonl").read_text().splitlines()]
    assert evals and all(np.isfinite(e["return_mean"]) for e in evals)
    steps = [json.loads(line) for line in (run_dir / "mappo.jsonl").read_text().splitlines()]
    assert steps[-1]["step"] >= 150


def test_rmio_scenarios_lists_the_family() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "rmio.cli", "scenarios"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "pettingzoo" in proc.stdout and "module:factory" in proc.stdout
