"""A cooperative PettingZoo ParallelEnv that knows nothing of rmio: walkers on a line meet.

It stands for a third-party task in tests/test_pettingzoo.py, which puts this folder (not rmio) on
the path of a real `rmio train mappo` process and names ``rendezvous:make`` in a config."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from gymnasium import spaces
from pettingzoo import ParallelEnv


class Rendezvous(ParallelEnv):
    """n walkers on positions 0..size-1; each step -1, 0 or +1; the reward is minus the spread."""

    metadata: ClassVar[dict] = {"name": "rendezvous_v0", "render_modes": []}

    def __init__(self, n_agents: int = 3, size: int = 7, max_cycles: int = 30) -> None:
        self.possible_agents = [f"walker_{i}" for i in range(n_agents)]
        self.size, self.max_cycles = size, max_cycles
        self.render_mode = None
        self.agents = []

    def observation_space(self, agent):
        return spaces.Box(0.0, 1.0, (len(self.possible_agents) + 1,), np.float32)

    def action_space(self, agent):
        return spaces.Discrete(3)

    def _obs(self):
        pos = self.pos / (self.size - 1)
        return {
            a: np.append(pos, i / len(pos)).astype(np.float32) for i, a in enumerate(self.agents)
        }

    def state(self):
        return (self.pos / (self.size - 1)).astype(np.float32)

    def reset(self, seed=None, options=None):
        self.rng = np.random.default_rng(seed)
        self.pos = self.rng.integers(0, self.size, len(self.possible_agents))
        self.t = 0
        self.agents = list(self.possible_agents)
        return self._obs(), {a: {} for a in self.agents}

    def step(self, actions):
        for i, a in enumerate(self.possible_agents):
            self.pos[i] = np.clip(self.pos[i] + int(actions[a]) - 1, 0, self.size - 1)
        self.t += 1
        spread = float(self.pos.max() - self.pos.min())
        met = spread == 0
        obs = self._obs()
        rew = {a: -spread / self.size for a in self.agents}
        term = {a: met for a in self.agents}
        trunc = {a: self.t >= self.max_cycles and not met for a in self.agents}
        infos = {a: {} for a in self.agents}
        if met or self.t >= self.max_cycles:
            self.agents = []
        return obs, rew, term, trunc, infos


def make(n_agents: int = 3, size: int = 7, max_cycles: int = 30) -> Rendezvous:
    """The factory a config names."""
    return Rendezvous(n_agents, size, max_cycles)
