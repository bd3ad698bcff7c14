"""SMAX adapter against the real jaxmarl simulator (no mocks); compiled envs are shared per
module."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("jaxmarl")

from rmio.envs.registry import EnvConfig, make_env
from rmio.envs.vector import make_vector_env
from rmio.errors import ConfigError, MissingExtraError

N_ENVS = 4
VEC_LIMIT = 10  # short episodes so auto-reset happens within a few steps


@pytest.fixture(scope="module")
def env_3m():
    env = make_env(EnvConfig(family="smax", scenario="3m"))
    yield env
    env.close()


@pytest.fixture(scope="module")
def venv_3m():
    venv = make_vector_env(EnvConfig(family="smax", scenario="3m", episode_limit=VEC_LIMIT), N_ENVS)
    yield venv
    venv.close()


def _random_batch(spec, rng: np.random.Generator, avail: np.ndarray) -> np.ndarray:
    return np.stack([spec.random_actions(rng, a) for a in avail])


@pytest.mark.parametrize(
    ("scenario", "n_agents", "obs_dim", "state_dim", "n_actions"),
    [("3m", 3, 75, 72, 8), ("2s3z", 5, 127, 120, 10)],
)
def test_spec_shapes(scenario: str, n_agents: int, obs_dim: int, state_dim: int, n_actions: int):
    spec = make_env(EnvConfig(family="smax", scenario=scenario)).spec
    assert spec.name == f"smax/{scenario}"
    assert spec.discrete and spec.n_agents == n_agents
    assert spec.obs_dim == obs_dim and spec.state_dim == state_dim
    assert spec.action_sizes == (n_actions,) * n_agents
    assert spec.episode_limit == 100  # jaxmarl's own max_steps


def test_reset_shapes_and_reproducibility(env_3m):
    spec = env_3m.spec
    a, b, c = env_3m.reset(seed=7), env_3m.reset(seed=7), env_3m.reset(seed=8)
    assert a.obs.shape == (spec.n_agents, spec.obs_dim) and a.obs.dtype == np.float32
    assert a.state.shape == (spec.state_dim,) and a.state.dtype == np.float32
    assert a.avail_actions.shape == (spec.n_agents, spec.action_dim)
    assert a.avail_actions.dtype == bool
    assert a.reward == 0.0 and not a.done
    np.testing.assert_array_equal(a.obs, b.obs)
    np.testing.assert_array_equal(a.state, b.state)
    assert not np.array_equal(a.obs, c.obs)


def test_seeded_trajectory_is_reproducible(env_3m):
    def rollout() -> list[np.ndarray]:
        rng = np.random.default_rng(0)
        ts = env_3m.reset(seed=11)
        out = [ts.obs]
        for _ in range(5):
            ts = env_3m.step(env_3m.spec.random_actions(rng, ts.avail_actions))
            out.append(ts.obs)
            if ts.done:
                break
        return out

    for x, y in zip(rollout(), rollout(), strict=True):
        np.testing.assert_array_equal(x, y)


def test_random_episodes_end_within_limit(env_3m):
    spec = env_3m.spec
    rng = np.random.default_rng(1)
    for episode in range(3):
        ts = env_3m.reset(seed=100 + episode)
        for _ in range(spec.episode_limit):
            avail = ts.avail_actions
            assert avail.shape == (spec.n_agents, spec.action_dim) and avail.dtype == bool
            assert avail.any(axis=1).all(), "every agent needs an available action"
            actions = spec.random_actions(rng, avail)
            assert avail[np.arange(spec.n_agents), actions].all()
            ts = env_3m.step(actions)
            assert isinstance(ts.reward, float) and np.isfinite(ts.reward)
            assert ts.obs.shape == (spec.n_agents, spec.obs_dim)
            if ts.done:
                break
            assert "won" not in ts.info
        assert ts.done, "episode must end by the step limit"
        assert ts.terminated != ts.truncated
        assert isinstance(ts.info["won"], bool)
        if ts.info["won"]:
            assert ts.terminated and ts.reward >= 1.0  # the won-battle bonus


def test_step_before_reset_and_bad_actions_raise(env_3m):
    with pytest.raises(RuntimeError):
        make_env(EnvConfig(family="smax", scenario="3m")).step(np.zeros(3, dtype=np.int64))
    env_3m.reset(seed=0)
    with pytest.raises(ValueError):
        env_3m.step(np.zeros(4, dtype=np.int64))


def test_vector_shapes_and_seeds_match_single_env(venv_3m, env_3m):
    spec = venv_3m.spec
    assert venv_3m.num_envs == N_ENVS and spec.episode_limit == VEC_LIMIT
    bs = venv_3m.reset(seed=5)
    assert bs.obs.shape == (N_ENVS, spec.n_agents, spec.obs_dim) and bs.obs.dtype == np.float32
    assert bs.state.shape == (N_ENVS, spec.state_dim) and bs.state.dtype == np.float32
    assert bs.avail_actions.shape == (N_ENVS, spec.n_agents, spec.action_dim)
    assert bs.avail_actions.dtype == bool
    assert bs.reward.shape == (N_ENVS,) and bs.reward.dtype == np.float32
    np.testing.assert_array_equal(bs.final_obs, bs.obs)
    for k in range(N_ENVS):  # copy k is seeded with seed + k
        np.testing.assert_allclose(bs.obs[k], env_3m.reset(seed=5 + k).obs, atol=1e-6)
    assert not np.array_equal(bs.obs[0], bs.obs[1])


def test_vector_auto_reset(venv_3m):
    spec = venv_3m.spec
    rng = np.random.default_rng(2)
    bs = venv_3m.reset(seed=0)
    steps = np.zeros(N_ENVS, dtype=int)
    ended = np.zeros(N_ENVS, dtype=bool)
    for _ in range(VEC_LIMIT):
        bs = venv_3m.step(_random_batch(spec, rng, bs.avail_actions))
        steps += 1
        assert bs.terminated.dtype == bool and bs.truncated.dtype == bool
        assert not (bs.terminated & bs.truncated).any()
        assert bs.avail_actions.any(axis=2).all()
        done = bs.done
        assert venv_3m.last_won.shape == (N_ENVS,) and not (venv_3m.last_won & ~bs.terminated).any()
        for k in np.flatnonzero(done):
            assert not np.array_equal(bs.final_obs[k], bs.obs[k])
            assert bs.truncated[k] == (steps[k] == VEC_LIMIT and not bs.terminated[k])
        np.testing.assert_array_equal(bs.final_obs[~done], bs.obs[~done])
        steps[done] = 0
        ended |= done
    assert ended.all(), f"every copy must end within {VEC_LIMIT} steps"


def test_vector_seed_reproducibility(venv_3m):
    def rollout() -> list[np.ndarray]:
        rng = np.random.default_rng(3)
        bs = venv_3m.reset(seed=42)
        out = [bs.obs]
        for _ in range(4):
            bs = venv_3m.step(_random_batch(venv_3m.spec, rng, bs.avail_actions))
            out += [bs.obs, bs.reward, bs.final_obs]
        return out

    for x, y in zip(rollout(), rollout(), strict=True):
        np.testing.assert_array_equal(x, y)


def test_vector_rejects_wrong_action_shape(venv_3m):
    venv_3m.reset(seed=0)
    with pytest.raises(ValueError):
        venv_3m.step(np.zeros((N_ENVS + 1, venv_3m.spec.n_agents), dtype=np.int64))


def test_unknown_map_raises_config_error():
    with pytest.raises(ConfigError, match="'4m'") as err:
        make_env(EnvConfig(family="smax", scenario="4m"))
    assert all(name in str(err.value) for name in ("3m", "2s3z", "27m_vs_30m"))


def test_missing_jaxmarl_raises_missing_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "jaxmarl", None)  # makes `import jaxmarl` fail
    with pytest.raises(MissingExtraError, match="smax"):
        make_env(EnvConfig(family="smax", scenario="3m"))


def test_module_import_is_lazy():
    code = (
        "import sys, rmio.envs.smax as m; "
        "assert m.SCENARIOS and not {'jax', 'jaxmarl', 'torch'} & set(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
