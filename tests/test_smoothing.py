"""Reward-trend smoothing (RMIOv2 Eq. 10-12): window bounds, variance response, total reward
preserved."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from rmio.train.smoothing import (
    SmoothingConfig,
    adaptive_windows,
    smooth_buffer_rewards,
    smooth_episode,
)

ADAPTIVE = SmoothingConfig(mode="adaptive", h_min=1, h_max=6, h_base=4, alpha=2.0)


@settings(max_examples=60, deadline=None)
@given(
    rewards=arrays(np.float64, st.integers(1, 120), elements=st.floats(-50, 50)),
    mode=st.sampled_from(["off", "fixed", "adaptive"]),
)
def test_total_reward_is_preserved(rewards: np.ndarray, mode: str) -> None:
    cfg = SmoothingConfig(mode=mode, window=4, sigma=2.0, h_min=1, h_max=6, h_base=3, alpha=1.0)
    out = smooth_episode(rewards, cfg)
    assert out.shape == rewards.shape
    assert out.sum() == pytest.approx(rewards.sum(), rel=1e-5, abs=1e-3)


@settings(max_examples=40, deadline=None)
@given(rewards=arrays(np.float64, st.integers(1, 80), elements=st.floats(-20, 20)))
def test_adaptive_windows_stay_in_bounds(rewards: np.ndarray) -> None:
    w = adaptive_windows(rewards, ADAPTIVE)
    assert (w >= ADAPTIVE.h_min).all() and (w <= ADAPTIVE.h_max).all()


def test_windows_grow_with_local_variance() -> None:
    rng = np.random.default_rng(0)
    calm = np.full(60, 1.0) + rng.normal(0, 0.01, 60)
    wild = rng.normal(0, 3.0, 60)
    rewards = np.concatenate([calm, wild])
    w = adaptive_windows(rewards, ADAPTIVE)
    assert w[5:50].max() == ADAPTIVE.h_min  # stable region keeps detail
    assert np.median(w[70:115]) == ADAPTIVE.h_max  # volatile region looks at the trend


def test_fixed_mode_is_the_gaussian_average_inside_the_episode() -> None:
    rng = np.random.default_rng(1)
    r = rng.normal(size=50)
    cfg = SmoothingConfig(mode="fixed", window=3, sigma=1.5)
    out = smooth_episode(r, cfg)
    offsets = np.arange(-3, 4)
    k = np.exp(-(offsets**2) / (2 * 1.5**2))
    k /= k.sum()
    for t in range(6, 44):  # where no contributing step is clipped, scatter == gather (Eq. 10)
        assert out[t] == pytest.approx(float((k * r[t - 3 : t + 4]).sum()), abs=1e-5)


def test_smoothing_reduces_spikes_and_off_is_identity() -> None:
    r = np.zeros(30)
    r[15] = 10.0
    assert smooth_episode(r, SmoothingConfig(mode="fixed", window=3, sigma=1.5)).max() < 5.0
    np.testing.assert_array_equal(smooth_episode(r, SmoothingConfig(mode="off")), r)


def test_buffer_smoothing_never_crosses_episodes() -> None:
    reward = np.array([0, 1, 1, 1, 0, 5, 5], dtype=np.float32)
    is_first = np.array([1, 0, 0, 0, 1, 0, 0], dtype=bool)
    out = smooth_buffer_rewards(
        reward, is_first, SmoothingConfig(mode="fixed", window=2, sigma=1.0)
    )
    assert out[0] == 0 and out[4] == 0  # rows that start an episode carry no reward
    assert out[1:4].sum() == pytest.approx(3.0) and out[5:7].sum() == pytest.approx(10.0)
