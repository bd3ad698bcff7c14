"""History windows: each agent's ring of recent steps, the coordinator's cache of everyone's, and
the window.

Steps are numbered from 0 at an episode's reset; a_t is the action taken on o_t. The window for a
reconstruction at step t is Algorithm 2's {o_h, a_h}: observations o_s..o_t with s = max(0, t - l)
and the actions that precede each of them, a_{s-1}..a_{t-1}, which is exactly what
``WorldModelRunner.replay`` consumes (a_{-1}, before the episode, is "no action": zeros, or -1 for
discrete tasks, which the world model encodes as the zero vector). Lost observations travel only
as a flag (the replay zeroes them anyway). An action that an agent cannot vouch for (it was dead
or restarted) is the env host's safe default, which is what the simulator really received then.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rmio.envs.base import EnvSpec


@dataclass(frozen=True)
class ActionCodec:
    """Shape and dtype of one agent's action, its "none" sentinel and the env host's safe
    default."""

    discrete: bool
    act_dim: int

    @classmethod
    def of(cls, spec: EnvSpec) -> ActionCodec:
        return cls(spec.discrete, spec.action_dim)

    @property
    def shape(self) -> tuple[int, ...]:
        return () if self.discrete else (self.act_dim,)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.int64 if self.discrete else np.float32)

    def none(self) -> np.ndarray:
        """a_{-1}: no action before the episode began."""
        return np.array(-1, np.int64) if self.discrete else np.zeros(self.act_dim, np.float32)

    def default(self) -> np.ndarray:
        """The safe action the env host applies for a late or dead agent (no-op / zeros)."""
        return np.array(0, np.int64) if self.discrete else np.zeros(self.act_dim, np.float32)

    def check(self, action: np.ndarray) -> np.ndarray:
        a = np.asarray(action, self.dtype).reshape(self.shape)
        return a.copy()


def window_start(t: int, window: int) -> int:
    return max(0, t - window)


def replay_plan(t: int, window: int, chain_t: int | None, incremental: bool) -> tuple[bool, int]:
    """How the reconstruction of step t is computed, the one rule that the coordinator, the
    in-process reference and the batched robustness sweep share (so the swarm reproduces them
    exactly): ``(continue, start)``. In incremental mode, a latent chain last advanced at step
    ``chain_t`` of the same episode continues when 0 < t - chain_t <= window, replaying steps
    chain_t + 1..t from its state; otherwise the window t - l..t (clipped at 0) is replayed from the
    initial state (Algorithm 2, line 31)."""
    cont = incremental and chain_t is not None and 0 < t - chain_t <= window
    return cont, (chain_t + 1 if cont and chain_t is not None else window_start(t, window))


class HistoryRing:
    """An agent's own last steps of the current episode: what it saw (or was given), and what it
    did."""

    def __init__(self, capacity: int, obs_dim: int, codec: ActionCodec) -> None:
        self.capacity = capacity
        self.obs_dim = obs_dim
        self.codec = codec
        self.ep = -1
        self.obs: dict[int, np.ndarray] = {}
        """Observation, or the reconstruction the agent acted on when it was blind."""
        self.seen: dict[int, bool] = {}
        self.act: dict[int, np.ndarray] = {}
        self.last_real: np.ndarray | None = None

    def reset(self, ep: int) -> None:
        self.ep = ep
        self.obs.clear()
        self.seen.clear()
        self.act.clear()
        self.last_real = None

    def put_obs(self, t: int, obs: np.ndarray | None, seen: bool) -> None:
        self.seen[t] = seen
        if obs is not None:
            self.obs[t] = obs
            if seen:
                self.last_real = obs
        if len(self.seen) > self.capacity:
            old = t - self.capacity
            for d in (self.obs, self.seen, self.act):
                for k in [k for k in d if k <= old]:
                    del d[k]

    def put_action(self, t: int, action: np.ndarray) -> None:
        self.act[t] = action

    def latest_obs(self) -> np.ndarray:
        """Hold-last fallback: the newest observation or reconstruction, zeros if the episode has
        none."""
        if not self.obs:
            return np.zeros(self.obs_dim, np.float32)
        return self.obs[max(self.obs)]

    def last_real_obs(self) -> np.ndarray:
        return self.last_real if self.last_real is not None else np.zeros(self.obs_dim, np.float32)

    def serve_step(self, t: int) -> tuple[list[bool], list[bool], np.ndarray, np.ndarray]:
        """``serve(t, t - 1, t)`` (what one streamed step carries: o_t and a_{t-1}), without the
        general case's list building: an agent sends this on every step while it streams."""
        obs = self.obs.get(t)
        seen = obs is not None and self.seen.get(t, False)
        rows = (
            obs.reshape(1, self.obs_dim).astype(np.float32)
            if seen
            else np.zeros((0, self.obs_dim), np.float32)
        )
        if t == 0:
            return [seen], [], rows, np.zeros((0, *self.codec.shape), self.codec.dtype)
        a = self.act.get(t - 1)
        act = (
            (self.codec.default() if a is None else a)
            .astype(self.codec.dtype)
            .reshape(1, *self.codec.shape)
        )
        return [seen], [a is not None], rows, act

    def serve(
        self, obs_from: int, act_from: int, upto: int
    ) -> tuple[list[bool], list[bool], np.ndarray, np.ndarray]:
        """Answer a gather: observed flags for obs_from..upto, the real observations of observed
        steps, and the actions of act_from..upto-1 with flags saying which ones this agent knows."""
        seen = [bool(self.seen.get(h, False)) and h in self.obs for h in range(obs_from, upto + 1)]
        rows = [self.obs[h] for h, s in zip(range(obs_from, upto + 1), seen, strict=True) if s]
        obs = np.stack(rows).astype(np.float32) if rows else np.zeros((0, self.obs_dim), np.float32)
        known, acts = [], []
        for h in range(act_from, upto):
            a = self.act.get(h)
            known.append(a is not None)
            acts.append(a if a is not None else self.codec.default())
        shape = (len(acts), *self.codec.shape)
        act = np.stack(acts).astype(self.codec.dtype) if acts else np.zeros(shape, self.codec.dtype)
        return seen, known, obs, act


class WindowCache:
    """Everything the coordinator holds of every agent's current episode, by step (Clone-style
    sequence numbers): it asks each agent only for the steps after the ones it already holds."""

    def __init__(self, n_agents: int, obs_dim: int, codec: ActionCodec, window: int) -> None:
        self.n, self.obs_dim, self.codec, self.l = n_agents, obs_dim, codec, window
        self.ep = -1
        self.obs: list[dict[int, np.ndarray | None]] = [{} for _ in range(n_agents)]
        self.act: list[dict[int, np.ndarray]] = [{} for _ in range(n_agents)]
        self.unknown: list[set[int]] = [set() for _ in range(n_agents)]
        self._pruned_at = -1
        self._cut = 0
        self._complete_at = [-1] * n_agents
        """Per agent, the last step whose window was found complete: entries are only deleted below
        ``_cut`` (or by a reset), so a later window needs only its newer steps checked."""

    def reset(self, ep: int) -> None:
        self.ep = ep
        self._pruned_at = -1
        self._cut = 0
        self._complete_at = [-1] * self.n
        for j in range(self.n):
            self.obs[j].clear()
            self.act[j].clear()
            self.unknown[j].clear()

    def need(self, j: int, t: int) -> tuple[int, int]:
        """(obs_from, act_from): the first window steps this cache lacks for agent j."""
        s = window_start(t, self.l)
        obs_from = s
        while obs_from <= t and obs_from in self.obs[j]:
            obs_from += 1
        act_from = max(0, s - 1)
        while act_from < t and act_from in self.act[j]:
            act_from += 1
        return min(obs_from, t), act_from

    def has(self, j: int, t: int) -> bool:
        """Whether agent j's window for step t is all here (nothing to ask for).

        Called for every waiting agent each time the coordinator wakes up, so it checks only the
        steps after the last complete window it found (a streamed step adds one of each).
        """
        s = window_start(t, self.l)
        ok = self._complete_at[j]
        if ok < 0 or t < ok or max(0, s - 1) < self._cut:
            obs_from, act_from = self.need(j, t)
            complete = obs_from == t and t in self.obs[j] and act_from == t
        else:
            obs, act = self.obs[j], self.act[j]
            complete = all(h in obs for h in range(max(ok + 1, s), t + 1)) and all(
                h in act for h in range(max(ok, s - 1, 0), t)
            )
        if complete and t > ok:
            self._complete_at[j] = t
        return complete

    def put(
        self,
        j: int,
        obs_from: int,
        act_from: int,
        upto: int,
        seen: list[bool],
        known: list[bool],
        obs: np.ndarray,
        act: np.ndarray,
    ) -> None:
        rows = iter(obs)
        for h, s in zip(range(obs_from, upto + 1), seen, strict=True):
            self.obs[j][h] = next(rows) if s else None
        for h, k, a in zip(range(act_from, upto), known, act, strict=True):
            self.act[j][h] = a
            if not k:
                self.unknown[j].add(h)
        self.prune(upto)

    def prune(self, t: int) -> None:
        if t <= self._pruned_at:  # once per step is enough: a stream puts one step per agent
            return
        self._pruned_at = t
        old = t - 2 * self.l - 4
        self._cut = max(self._cut, old)
        for j in range(self.n):
            for d in (self.obs[j], self.act[j]):
                for k in [k for k in d if k < old]:
                    del d[k]

    def window(
        self, t: int, start: int | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
        """(obs (T, n, d), prev actions (T, n, ...), masks (T, n), complete) for steps start..t.

        ``complete`` is False when some agent's data is missing or unvouched (filled with a lost
        mask or the default action); such a window is still reconstructed, but its latent state is
        not continued incrementally.
        """
        s = window_start(t, self.l) if start is None else start
        T = t - s + 1
        obs = np.zeros((T, self.n, self.obs_dim), np.float32)
        masks = np.zeros((T, self.n), np.float32)
        acts = np.zeros((T, self.n, *self.codec.shape), self.codec.dtype)
        complete = True
        for j in range(self.n):
            for k, h in enumerate(range(s, t + 1)):
                if h not in self.obs[j]:
                    complete = False
                    continue
                row = self.obs[j][h]
                if row is not None:
                    obs[k, j] = row
                    masks[k, j] = 1.0
            for k, h in enumerate(range(s - 1, t)):
                if h < 0:
                    acts[k, j] = self.codec.none()
                elif h in self.act[j]:
                    acts[k, j] = self.act[j][h]
                    complete &= h not in self.unknown[j]
                else:
                    acts[k, j] = self.codec.default()
                    complete = False
        return obs, acts, masks, complete
