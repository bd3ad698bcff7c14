"""Every MaMuJoCo scenario of the spec, against the real simulator."""

from __future__ import annotations

import numpy as np
import pytest

from rmio.envs import EnvConfig, make_env
from rmio.envs.registry import FAMILIES
from rmio.errors import ConfigError

SCENARIOS = FAMILIES["mamujoco"].scenarios
EXPECTED_AGENTS = {
    "HalfCheetah-2x3": 2,
    "HalfCheetah-6x1": 6,
    "Ant-4x2": 4,
    "Walker2d-2x3": 2,
    "Hopper-3x1": 3,
    "ManySegmentSwimmer-4x2": 4,
    "ManySegmentSwimmer-10x2": 10,
}


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_scenario_spec_and_random_steps(scenario: str) -> None:
    from gymnasium_robotics import mamujoco_v1

    robot, conf = scenario.split("-")
    raw = mamujoco_v1.parallel_env(robot, conf, agent_obsk=1)
    true_sizes = tuple(raw.observation_space(a).shape[0] for a in raw.possible_agents)
    true_actions = tuple(raw.action_space(a).shape[0] for a in raw.possible_agents)
    raw.close()

    with make_env(EnvConfig("mamujoco", scenario, episode_limit=30)) as env:
        spec = env.spec
        assert spec.n_agents == EXPECTED_AGENTS[scenario]
        assert spec.obs_sizes == true_sizes
        assert spec.action_sizes == true_actions
        assert spec.action_kind == "continuous" and not spec.discrete
        rng = np.random.default_rng(0)
        ts = env.reset(seed=0)
        steps = 0
        for _ in range(31):
            assert ts.obs.shape == (spec.n_agents, spec.obs_dim) and ts.obs.dtype == np.float32
            assert ts.state.shape == (spec.state_dim,)
            assert np.isfinite(ts.obs).all() and np.isfinite(ts.reward)
            np.testing.assert_array_equal(ts.obs[~spec.obs_feature_mask], 0.0)  # padding is zero
            assert ts.avail_actions is None
            if ts.done:
                break
            ts = env.step(spec.random_actions(rng))
            steps += 1
        assert ts.done and (ts.truncated != ts.terminated)
        if ts.truncated:
            assert steps == 30  # the episode limit, not earlier


def test_reset_is_reproducible_and_seed_matters() -> None:
    cfg = EnvConfig("mamujoco", "Ant-4x2", episode_limit=10)
    with make_env(cfg) as a, make_env(cfg) as b:
        np.testing.assert_array_equal(a.reset(seed=5).obs, b.reset(seed=5).obs)
        assert not np.array_equal(a.reset(seed=5).obs, a.reset(seed=6).obs)
        a.reset(seed=5)
        b.reset(seed=5)
        act = np.full((4, 2), 0.3, np.float32)
        np.testing.assert_array_equal(a.step(act).obs, b.step(act).obs)


def test_team_reward_matches_the_single_agent_reward() -> None:
    """The team reward is the (shared) MuJoCo reward, not a sum over agents."""
    from gymnasium_robotics import mamujoco_v1

    raw = mamujoco_v1.parallel_env("HalfCheetah", "6x1", agent_obsk=1)
    raw.reset(seed=1)
    _, rew, *_ = raw.step({a: np.full(1, 0.5, np.float32) for a in raw.possible_agents})
    with make_env(EnvConfig("mamujoco", "HalfCheetah-6x1")) as env:
        env.reset(seed=1)
        ts = env.step(np.full((6, 1), 0.5, np.float32))
    assert ts.reward == pytest.approx(float(rew["agent_0"]))
    raw.close()


def test_bad_scenarios_and_actions() -> None:
    with pytest.raises(ConfigError, match="HalfCheetah-7x9"):
        make_env(EnvConfig("mamujoco", "HalfCheetah-7x9"))
    with pytest.raises(ConfigError, match="not of the form"):
        make_env(EnvConfig("mamujoco", "HalfCheetah"))
    with make_env(EnvConfig("mamujoco", "Hopper-3x1")) as env:
        env.reset(seed=0)
        with pytest.raises(ValueError, match="expected actions of shape"):
            env.step(np.zeros((2, 1), np.float32))
