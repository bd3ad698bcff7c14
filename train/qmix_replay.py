"""QMIX's data side: whole episodes in a replay buffer, and the epsilon-greedy runner that
collects them from vectorised environments.

Episodes are stored padded to the task's episode limit, as pymarl's ``EpisodeBatch`` does, with
their length, so a sampled batch can be unrolled by the GRU from each episode's first step. The
runner keeps one hidden state and one previous action per copy and resets both when that copy's
episode ends (the vector env auto-resets in the same step).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from rmio.envs.base import EnvSpec
from rmio.envs.vector import BatchStep, VectorEnv
from rmio.train.qmix_config import QMIXConfig
from rmio.train.qmix_nets import RNNAgent, masked_argmax

_FIELDS = ("obs", "state", "avail", "actions", "reward", "terminated", "length")


@dataclass
class Episode:
    """One finished episode as the runner recorded it (T steps, T + 1 observations)."""

    obs: list[np.ndarray] = field(default_factory=list)
    state: list[np.ndarray] = field(default_factory=list)
    avail: list[np.ndarray] = field(default_factory=list)
    actions: list[np.ndarray] = field(default_factory=list)
    reward: list[float] = field(default_factory=list)
    terminated: bool = False

    @property
    def ret(self) -> float:
        return float(np.sum(self.reward))


class EpisodeBuffer:
    """A ring of ``capacity`` episodes, sampled uniformly (pymarl's ``ReplayBuffer``)."""

    def __init__(self, capacity: int, spec: EnvSpec) -> None:
        lim, n = spec.episode_limit, spec.n_agents
        self.capacity, self.limit = capacity, lim
        # np.zeros leaves untouched pages unallocated, so a large capacity costs what it holds
        self.data: dict[str, np.ndarray] = {
            "obs": np.zeros((capacity, lim + 1, n, spec.obs_dim), np.float32),
            "state": np.zeros((capacity, lim + 1, spec.state_dim), np.float32),
            "avail": np.zeros((capacity, lim + 1, n, spec.action_dim), bool),
            "actions": np.zeros((capacity, lim, n), np.int64),
            "reward": np.zeros((capacity, lim), np.float32),
            "terminated": np.zeros((capacity, lim), bool),
            "length": np.zeros((capacity,), np.int64),
        }
        self.count = 0
        """Episodes held (at most capacity)."""
        self.added = 0
        """Episodes ever added; the next one goes to slot added % capacity."""

    def add(self, ep: Episode) -> None:
        steps = len(ep.actions)
        if not 1 <= steps <= self.limit:
            raise ValueError(f"an episode of {steps} steps does not fit the limit {self.limit}")
        slot = self.added % self.capacity
        d = self.data
        for key in _FIELDS:
            d[key][slot] = 0
        d["obs"][slot, : steps + 1] = np.stack(ep.obs)
        d["state"][slot, : steps + 1] = np.stack(ep.state)
        d["avail"][slot, : steps + 1] = np.stack(ep.avail)
        d["actions"][slot, :steps] = np.stack(ep.actions)
        d["reward"][slot, :steps] = ep.reward
        d["terminated"][slot, steps - 1] = ep.terminated
        d["length"][slot] = steps
        self.added += 1
        self.count = min(self.count + 1, self.capacity)

    def sample(
        self, batch: int, rng: np.random.Generator, device: torch.device
    ) -> dict[str, torch.Tensor]:
        """``batch`` distinct episodes as tensors cut to the longest of them, with ``filled``
        (B, T) True on real steps."""
        idx = np.sort(rng.choice(self.count, size=batch, replace=False))
        t = int(self.data["length"][idx].max())
        out = {
            "obs": self.data["obs"][idx, : t + 1],
            "state": self.data["state"][idx, : t + 1],
            "avail": self.data["avail"][idx, : t + 1],
            "actions": self.data["actions"][idx, :t],
            "reward": self.data["reward"][idx, :t],
            "terminated": self.data["terminated"][idx, :t],
            "filled": np.arange(t)[None, :] < self.data["length"][idx, None],
        }
        return {k: torch.as_tensor(v, device=device) for k, v in out.items()}

    def state_dict(self) -> dict[str, Any]:
        """The held episodes in insertion order (oldest first), for a checkpoint."""
        order = (np.arange(self.count) + (self.added - self.count)) % self.capacity
        return {
            "added": self.added,
            **{k: self.data[k][order].copy() for k in _FIELDS},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        held = len(state["length"])
        if held > self.capacity:
            raise ValueError(f"a saved replay of {held} episodes exceeds capacity {self.capacity}")
        self.added, self.count = int(state["added"]), held
        order = (np.arange(held) + (self.added - held)) % self.capacity
        for k in _FIELDS:
            self.data[k][order] = state[k]


def epsilon_at(q: QMIXConfig, env_steps: int) -> float:
    """Linear decay from epsilon_start to epsilon_finish over epsilon_anneal_steps (pymarl's
    ``DecayThenFlatSchedule``), flat afterwards."""
    if q.epsilon_anneal_steps == 0:
        return q.epsilon_finish
    frac = min(env_steps / q.epsilon_anneal_steps, 1.0)
    return q.epsilon_start + frac * (q.epsilon_finish - q.epsilon_start)


def epsilon_greedy(
    qvals: torch.Tensor, avail: np.ndarray, epsilon: float, rng: np.random.Generator
) -> np.ndarray:
    """One action per row of ``qvals`` (..., A): with probability ``epsilon`` uniform among the
    available actions, else the best available one. Unavailable actions are never chosen."""
    greedy = masked_argmax(qvals, torch.as_tensor(avail, device=qvals.device)).cpu().numpy()
    flat_avail = avail.reshape(-1, avail.shape[-1])
    scores = rng.random(flat_avail.shape) * flat_avail  # uniform among the available actions
    random = scores.argmax(-1).reshape(greedy.shape)
    explore = rng.random(greedy.shape) < epsilon
    return np.where(explore, random, greedy).astype(np.int64)


class Runner:
    """Steps every copy of a vector env with an epsilon-greedy recurrent agent and hands back the
    episodes that finish."""

    def __init__(
        self, venv: VectorEnv, agent: RNNAgent, rng: np.random.Generator, device: torch.device
    ) -> None:
        self.venv, self.agent, self.rng, self.device = venv, agent, rng, device
        self.n = venv.spec.n_agents
        self.ids = torch.arange(self.n, device=device).expand(venv.num_envs, self.n)

    def reset(self, seed: int) -> None:
        b = self.venv.reset(seed=seed)
        self.h = self.agent.init_hidden(self.venv.num_envs, self.n, device=self.device)
        self.prev = torch.full((self.venv.num_envs, self.n), -1, device=self.device)
        self.current = [self._begin(b, k) for k in range(self.venv.num_envs)]
        self.last = b

    def _begin(self, b: BatchStep, k: int) -> Episode:
        ep = Episode()
        ep.obs.append(b.obs[k])
        ep.state.append(b.state[k])
        ep.avail.append(_avail(b, k, self.venv.spec))
        return ep

    def step(self, epsilon: float) -> list[Episode]:
        """One step of every copy; the episodes that ended in it."""
        b, spec = self.last, self.venv.spec
        avail = (
            b.avail_actions
            if b.avail_actions is not None
            else np.ones((self.venv.num_envs, self.n, spec.action_dim), bool)
        )
        with torch.no_grad():
            obs = torch.as_tensor(b.obs, device=self.device)
            qvals, self.h = self.agent(self.agent.inputs(obs, self.prev, self.ids), self.h)
        actions = epsilon_greedy(qvals, avail, epsilon, self.rng)
        nb = self.venv.step(actions)
        self.prev = torch.tensor(actions, device=self.device)  # a copy: rows reset below
        finished = []
        for k in range(self.venv.num_envs):
            ep = self.current[k]
            ep.actions.append(actions[k].copy())
            ep.reward.append(float(nb.reward[k]))
            # an env running past its declared limit is cut there, as the buffer's rows are
            if nb.done[k] or len(ep.actions) >= spec.episode_limit:
                ep.obs.append(nb.final_obs[k])
                ep.state.append(nb.final_state[k] if nb.final_state is not None else ep.state[-1])
                # a truncated episode bootstraps on its last observation: its own available
                # actions (an unavailable action is never trained, so its Q must not be maxed
                # over); a vector env that cannot report them repeats the previous step's
                ep.avail.append(
                    nb.final_avail[k].astype(bool) if nb.final_avail is not None else ep.avail[-1]
                )
                ep.terminated = bool(nb.terminated[k])
                finished.append(ep)
                self.current[k] = self._begin(nb, k)
                self.h[k] = 0.0
                self.prev[k] = -1
            else:
                ep.obs.append(nb.obs[k])
                ep.state.append(nb.state[k])
                ep.avail.append(_avail(nb, k, spec))
        self.last = nb
        return finished


def _avail(b: BatchStep, k: int, spec: EnvSpec) -> np.ndarray:
    if b.avail_actions is None:
        return np.ones((spec.n_agents, spec.action_dim), bool)
    return b.avail_actions[k].astype(bool)
