"""LBF adapter against the real lbforaging package (skipped when the ``lbf`` extra is absent)."""

from __future__ import annotations

import sys

import numpy as np
import pytest

pytest.importorskip("lbforaging")

from rmio.envs.registry import EnvConfig, make_env
from rmio.errors import ConfigError, MissingExtraError

SCENARIO = "Foraging-8x8-2p-2f-coop-v3"


def _make(scenario: str = SCENARIO, **kw: object) -> object:
    return make_env(EnvConfig(family="lbf", scenario=scenario, **kw))


def test_spec_shapes() -> None:
    with _make() as env:
        spec = env.spec
        assert spec.name == f"lbf/{SCENARIO}"
        assert spec.n_agents == 2
        # 2 foods and 2 players, (row, col, level) each
        assert spec.obs_sizes == (12, 12)
        assert spec.state_dim == 24
        assert spec.discrete and spec.action_sizes == (6, 6)
        assert spec.episode_limit == 50
        ts = env.reset(seed=0)
        assert ts.obs.shape == (2, 12) and ts.obs.dtype == np.float32
        assert ts.state.shape == (24,) and ts.state.dtype == np.float32
        np.testing.assert_array_equal(ts.state, ts.obs.reshape(-1))
        assert ts.avail_actions.shape == (2, 6) and ts.avail_actions.dtype == bool
        assert ts.avail_actions[:, 0].all()  # NONE is always available
        assert ts.reward == 0.0 and not ts.done


def test_reset_is_reproducible_with_a_seed() -> None:
    with _make() as a, _make() as b:
        first, second = a.reset(seed=123), b.reset(seed=123)
        np.testing.assert_array_equal(first.obs, second.obs)
        np.testing.assert_array_equal(first.avail_actions, second.avail_actions)
        again = a.reset(seed=123)
        np.testing.assert_array_equal(first.obs, again.obs)
        starts = {a.reset(seed=s).obs.tobytes() for s in range(5)}
        assert len(starts) > 1


def _run_episode(env: object, rng: np.random.Generator, seed: int, prefer_load: bool) -> tuple:
    n = env.spec.n_agents
    ts = env.reset(seed=seed)
    total, steps = 0.0, 0
    while not ts.done:
        avail = ts.avail_actions
        actions = env.spec.random_actions(rng, avail)
        assert avail[np.arange(n), actions].all()
        if prefer_load:  # loading whenever possible makes coop pickups (and rewards) happen
            actions[avail[:, 5]] = 5
        ts = env.step(actions)
        steps += 1
        assert ts.obs.shape == (n, env.spec.obs_dim) and np.isfinite(ts.obs).all()
        assert ts.state.shape == (env.spec.state_dim,)
        assert np.isfinite(ts.reward) and ts.reward >= 0.0
        assert ts.avail_actions.shape == (n, 6)
        assert not (ts.terminated and ts.truncated)
        total += ts.reward
    return steps, total, ts


@pytest.mark.parametrize(
    ("scenario", "episodes"),
    # 8x8 coop: random play rarely clears the field; 5x5 with one food: it usually does
    [(SCENARIO, 40), ("Foraging-5x5-2p-1f-coop-v3", 20)],
)
def test_random_episodes_to_the_end(scenario: str, episodes: int) -> None:
    rng = np.random.default_rng(0)
    with _make(scenario) as env:
        returns, cleared = [], 0
        for seed in range(episodes):
            steps, total, last = _run_episode(env, rng, seed, prefer_load=True)
            assert 1 <= steps <= env.spec.episode_limit
            # normalised rewards: the return is the fraction of food collected
            assert 0.0 <= total <= 1.0 + 1e-6
            if last.terminated:  # a true end means the field was cleared
                assert total == pytest.approx(1.0)
                cleared += 1
            else:
                assert last.truncated and steps == env.spec.episode_limit
            returns.append(total)
        assert max(returns) > 0, "no food was ever collected"
        if scenario != SCENARIO:
            assert cleared > 0, "no episode ever cleared the field"


def test_episode_limit_override_truncates() -> None:
    with _make(episode_limit=7) as env:
        assert env.spec.episode_limit == 7
        rng = np.random.default_rng(1)
        steps, _, last = _run_episode(env, rng, seed=3, prefer_load=False)
        assert steps <= 7
        assert last.terminated or last.truncated


def test_max_episode_steps_option_sets_the_env_limit() -> None:
    # gymnasium.make would otherwise wrap a TimeLimit around lbforaging's own 50-step limit
    with _make(options={"max_episode_steps": 80}) as env:
        assert env.spec.episode_limit == 80
        env.reset(seed=0)
        steps = 0
        ts = env.step(np.zeros(2, dtype=np.int64))
        while not ts.done:
            ts = env.step(np.zeros(2, dtype=np.int64))  # NONE: nothing is ever collected
            steps += 1
        assert steps + 1 == 80 and ts.truncated and not ts.terminated


def test_missing_lbforaging_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "lbforaging", None)  # makes `import lbforaging` fail
    with pytest.raises(MissingExtraError) as err:
        _make()
    assert err.value.extra == "lbf" and "'.[lbf]'" in str(err.value)


def test_bad_actions_are_rejected() -> None:
    with _make() as env:
        env.reset(seed=0)
        with pytest.raises(ValueError):
            env.step(np.array([0, 6]))
        with pytest.raises(ValueError):
            env.step(np.array([0, 0, 0]))


def test_unknown_scenario_raises_config_error() -> None:
    with pytest.raises(ConfigError) as err:
        _make("Foraging-8x8-2p-2f-coop-v99")
    msg = str(err.value)
    assert "Foraging-8x8-2p-2f-coop-v99" in msg and SCENARIO in msg
    with pytest.raises(ConfigError):
        _make("CartPole-v1")  # a real gymnasium id, but not an LBF task
