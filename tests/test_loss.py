"""Loss models: statistical rates and burst lengths, reproducibility, schedules, the lossy
wrapper."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rmio.envs.loss import (
    BernoulliLoss,
    BlackoutLoss,
    BurstLoss,
    LossConfig,
    LossyEnv,
    ScheduleLoss,
    make_loss_model,
)
from rmio.errors import ConfigError


def _masks(model, steps: int, episode_len: int | None = None) -> np.ndarray:
    model.reset()
    out = []
    for t in range(steps):
        if episode_len and t and t % episode_len == 0:
            model.reset()
        out.append(model.sample())
    return np.stack(out)


def _runs(lost: np.ndarray) -> list[int]:
    """Lengths of maximal runs of True in a 1-D bool array."""
    runs, n = [], 0
    for x in lost:
        if x:
            n += 1
        elif n:
            runs.append(n)
            n = 0
    if n:
        runs.append(n)
    return runs


@pytest.mark.parametrize("p", [0.0, 0.2, 0.5, 0.9, 1.0])
def test_bernoulli_rate_and_independence(p: float) -> None:
    n, steps = 6, 20_000
    lost = ~_masks(BernoulliLoss(n, p, seed=1), steps)
    rate = lost.mean()
    sigma = np.sqrt(max(p * (1 - p), 1e-12) / (n * steps))
    assert abs(rate - p) < 5 * sigma + 1e-12
    if 0 < p < 1:
        corr = np.corrcoef(lost.T.astype(float))
        assert np.abs(corr[~np.eye(n, dtype=bool)]).max() < 0.05  # agents are independent
        # and steps are independent: mean run length of losses is 1 / (1 - p)
        runs = [r for a in range(n) for r in _runs(lost[:, a])]
        assert np.mean(runs) == pytest.approx(1 / (1 - p), rel=0.08)


@pytest.mark.parametrize(("p", "burst"), [(0.2, 4.0), (0.5, 10.0), (0.3, 1.5)])
def test_burst_rate_and_mean_burst_length(p: float, burst: float) -> None:
    n, steps = 4, 50_000
    lost = ~_masks(BurstLoss(n, p, burst, seed=3), steps)
    assert lost.mean() == pytest.approx(p, abs=0.025)
    runs = [r for a in range(n) for r in _runs(lost[:, a])]
    assert np.mean(runs) == pytest.approx(burst, rel=0.1)


def test_burst_extremes() -> None:
    assert (~_masks(BurstLoss(3, 1.0, 4.0, seed=0), 200)).all()
    assert _masks(BurstLoss(3, 0.0, 4.0, seed=0), 200).all()


def test_blackout_hits_every_agent_for_its_length() -> None:
    masks = _masks(BlackoutLoss(5, length=7, rate=0.05, seed=2), 20_000)
    lost_any, lost_all = ~masks.any(axis=1), ~masks.all(axis=1)
    np.testing.assert_array_equal(lost_any, lost_all)  # all agents together, never a subset
    runs = _runs(lost_all)
    assert len(runs) > 100
    assert all(r % 7 == 0 for r in runs)  # back-to-back blackouts merge into multiples
    # a blackout starts with probability rate on each free step: stationary fraction
    # rate*L/(1+rate*L)
    assert lost_all.mean() == pytest.approx(0.05 * 7 / (1 + 0.05 * 7), rel=0.1)


@pytest.mark.parametrize(
    "cfg",
    [
        LossConfig("bernoulli", 0.4),
        LossConfig("burst", 0.4, 6.0),
        LossConfig("blackout", blackout_rate=0.1),
    ],
)
def test_same_seed_same_masks_different_seed_different(cfg: LossConfig) -> None:
    a = _masks(make_loss_model(cfg, 6, seed=11), 500, episode_len=100)
    b = _masks(make_loss_model(cfg, 6, seed=11), 500, episode_len=100)
    c = _masks(make_loss_model(cfg, 6, seed=12), 500, episode_len=100)
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()
    m = make_loss_model(cfg, 6, seed=0)
    m.reset(seed=5)
    first = [m.sample() for _ in range(50)]
    m.reset(seed=5)
    np.testing.assert_array_equal(first, [m.sample() for _ in range(50)])


@settings(max_examples=40, deadline=None)
@given(p=st.floats(0.0, 1.0), seed=st.integers(0, 2**31 - 1), n=st.integers(1, 12))
def test_bernoulli_masks_are_well_formed(p: float, seed: int, n: int) -> None:
    m = make_loss_model(LossConfig("bernoulli", p), n, seed)
    m.reset()
    for _ in range(20):
        mask = m.sample()
        assert mask.shape == (n,) and mask.dtype == bool
        if p == 0.0:
            assert mask.all()
        if p == 1.0:
            assert not mask.any()


def test_schedule_file(tmp_path: Path) -> None:
    path = tmp_path / "sched.yaml"
    path.write_text(
        '- {steps: 2, agents: [0]}\n- {steps: "4-6", agents: [1, 2]}\n- {steps: "9-", agents: '
        "all}\n"
    )
    model = make_loss_model(LossConfig("schedule", schedule=str(path)), 3)
    for _ in range(2):  # the same in every episode
        lost = ~_masks(model, 12)
        expected = np.zeros((12, 3), bool)
        expected[2, 0] = True
        expected[4:7, 1:3] = True
        expected[9:, :] = True
        np.testing.assert_array_equal(lost, expected)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("steps: 3\n", "must be a list"),
        ("- {steps: 3}\n", "exactly the keys"),
        ("- {steps: 'x-y', agents: all}\n", "steps must be"),
        ("- {steps: '5-2', agents: all}\n", "bad step range"),
        ("- {steps: 1, agents: [7]}\n", r"agent indices in \[0, 3\)"),
        ("- {steps: [1, agents: all}\n", "malformed YAML at line 1"),
    ],
)
def test_schedule_errors(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        ScheduleLoss.from_file(path, 3)


def test_config_validation() -> None:
    with pytest.raises(ConfigError, match=r"p_loss must be in \[0, 1\]"):
        LossConfig(p_loss=-0.1).validate()
    with pytest.raises(ConfigError, match="unreachable"):
        LossConfig("burst", p_loss=0.9, mean_burst_length=2.0).validate()
    with pytest.raises(ConfigError, match="names no file"):
        LossConfig("schedule").validate()
    with pytest.raises(ConfigError, match="does not exist"):
        make_loss_model(LossConfig("schedule", schedule="/nonexistent.yaml"), 2)


def test_lossy_env_zeroes_lost_agents_and_keeps_truth() -> None:
    from rmio.envs import EnvConfig, make_env

    env = LossyEnv(
        make_env(EnvConfig(scenario="HalfCheetah-6x1", episode_limit=20)),
        make_loss_model(LossConfig("bernoulli", 0.5), 6, seed=0),
    )
    rng = np.random.default_rng(0)
    ts = env.reset(seed=3)
    seen_lost = 0
    for _ in range(20):
        assert ts.observed is not None and ts.true_obs is not None
        np.testing.assert_array_equal(ts.obs[~ts.observed], 0.0)
        np.testing.assert_array_equal(ts.obs[ts.observed], ts.true_obs[ts.observed])
        assert np.abs(ts.true_obs[~ts.observed]).sum() > 0 or not (~ts.observed).any()
        seen_lost += int((~ts.observed).sum())
        if ts.done:
            break
        ts = env.step(env.spec.random_actions(rng))
    assert seen_lost > 0
    env.close()
