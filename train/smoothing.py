"""Reward-trend smoothing of team rewards inside each episode (RMIOv2 Eq. 10-12, GAWM Eq. 4-5).

Modes:

* ``off``: the raw reward.
* ``fixed``: Gaussian smoothing with one window H and kernel width sigma (GAWM / DreamSmooth).
* ``adaptive``: the window H_t of each step follows the local reward variance (RMIOv2):
  sigma_t = Var(r_{t-H_base : t+H_base}) (Eq. 12), H_t = max(H_min, min(H_max, floor(alpha *
  sigma_t))) (Eq. 11), and the Gaussian kernel's width is H_t / 2 so that the window spans +-2
  standard deviations.

The paper writes Eq. 10 as a gather (r^_t is a weighted mean of r around t) and requires the total
reward to be preserved. With a window that changes from step to step, or one that is clipped at the
episode ends, a gather does not keep the sum. We therefore use the equivalent scatter: each reward
r_s is spread over [s - H_s, s + H_s] with normalised Gaussian weights, truncated to the episode and
renormalised over the steps that exist. In the interior with a constant window this is the same
number as Eq. 10 (the kernel is symmetric); everywhere, the episode's total reward is unchanged.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Literal

import numpy as np

SmoothingMode = Literal["off", "fixed", "adaptive"]


@dataclass
class SmoothingConfig:
    mode: SmoothingMode = "adaptive"
    """off, fixed (GAWM) or adaptive (RMIOv2)."""
    window: int = 3
    """fixed: half-width H of the window."""
    sigma: float = 1.5
    """fixed: standard deviation of the Gaussian kernel, in steps."""
    h_min: int = 1
    """adaptive: smallest half-width H_min (Eq. 11)."""
    h_max: int = 8
    """adaptive: largest half-width H_max (Eq. 11)."""
    h_base: int = 5
    """adaptive: half-width of the window whose reward variance sets H_t (Eq. 12)."""
    alpha: float = 4.0
    """adaptive: scale from local variance to window half-width (Eq. 11)."""


def _kernel(half_width: int, sigma: float) -> np.ndarray:
    offsets = np.arange(-half_width, half_width + 1)
    w = np.exp(-(offsets**2) / (2.0 * max(sigma, 1e-6) ** 2))
    return w / w.sum()


def adaptive_windows(rewards: np.ndarray, cfg: SmoothingConfig) -> np.ndarray:
    """H_t of every step of one episode (Eq. 11-12); variance windows are clipped to the episode."""
    T = len(rewards)
    windows = np.empty(T, dtype=np.int64)
    for t in range(T):
        local = rewards[max(0, t - cfg.h_base) : min(T, t + cfg.h_base + 1)]
        var = float(local.var()) if len(local) > 1 else 0.0
        windows[t] = max(cfg.h_min, min(cfg.h_max, int(np.floor(cfg.alpha * var))))
    return windows


def smooth_episode(rewards: np.ndarray, cfg: SmoothingConfig) -> np.ndarray:
    """Smoothed rewards of one episode; ``sum`` is preserved exactly (up to float rounding)."""
    rewards = np.asarray(rewards, dtype=np.float64)
    T = len(rewards)
    if cfg.mode == "off" or T <= 1:
        return rewards.astype(np.float32)
    windows = (
        np.full(T, cfg.window, dtype=np.int64)
        if cfg.mode == "fixed"
        else adaptive_windows(rewards, cfg)
    )
    out = np.zeros(T, dtype=np.float64)
    for s in range(T):
        H = int(windows[s])
        sigma = cfg.sigma if cfg.mode == "fixed" else max(H / 2.0, 0.5)
        k = _kernel(H, sigma)
        lo, hi = max(0, s - H), min(T, s + H + 1)
        weights = k[lo - (s - H) : hi - (s - H)]
        out[lo:hi] += rewards[s] * weights / weights.sum()
    return out.astype(np.float32)


def smooth_buffer_rewards(
    reward: np.ndarray, is_first: np.ndarray, cfg: SmoothingConfig
) -> np.ndarray:
    """Smooth a trajectory buffer's reward column episode by episode.

    Row 0 of an episode carries no reward (nothing led to the first observation), so only rows
    1..T are smoothed, and the smoothed reward never leaks across episodes.
    """
    out = reward.astype(np.float32).copy()
    starts = [*np.flatnonzero(is_first).tolist(), len(reward)]
    for a, b in itertools.pairwise(starts):
        if b - a > 1:
            out[a + 1 : b] = smooth_episode(reward[a + 1 : b], cfg)
    return out
