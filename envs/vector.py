"""Batched stepping of several copies of one task, for data collection.

Two implementations share one interface: ``SubprocVectorEnv`` runs each copy in its own process
(MuJoCo, LBF, SMAC), and a family can offer a native batched version instead (SMAX steps all copies
in one jitted, vmapped JAX call). Episodes reset automatically in the same ``step`` call that ends
them: ``obs`` is then the first observation of the next episode and ``final_obs`` the last one of
the finished episode.
"""

from __future__ import annotations

import abc
import contextlib
import importlib
import multiprocessing as mp
import os
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from rmio.envs.base import EnvSpec, TimeStep
from rmio.envs.registry import EnvConfig, get_family, make_env


@dataclass
class BatchStep:
    """A ``TimeStep`` for ``num_envs`` copies at once (leading axis B)."""

    obs: np.ndarray
    """(B, n_agents, obs_dim) float32; after an auto-reset, the new episode's first observation."""
    state: np.ndarray
    """(B, state_dim) float32."""
    reward: np.ndarray
    """(B,) float32 team reward of the transition."""
    terminated: np.ndarray
    """(B,) bool."""
    truncated: np.ndarray
    """(B,) bool."""
    final_obs: np.ndarray
    """(B, n_agents, obs_dim): the last observation of an episode that ended now, else ``obs``."""
    avail_actions: np.ndarray | None = None
    """(B, n_agents, n_actions) bool for discrete tasks."""
    final_state: np.ndarray | None = None
    """(B, state_dim): the global state that goes with ``final_obs``."""
    final_avail: np.ndarray | None = None
    """(B, n_agents, n_actions) bool: the available actions that go with ``final_obs`` (discrete
    tasks), which a value learner bootstrapping on a truncated episode's last observation needs."""

    @property
    def done(self) -> np.ndarray:
        return self.terminated | self.truncated


class VectorEnv(abc.ABC):
    spec: EnvSpec
    num_envs: int

    @abc.abstractmethod
    def reset(self, seed: int | None = None) -> BatchStep:
        """Reset every copy; copy k is seeded with ``seed + k``."""

    @abc.abstractmethod
    def step(self, actions: np.ndarray) -> BatchStep:
        """Step every copy with ``actions`` (B, ...) and auto-reset those that finished."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release workers."""

    def __enter__(self) -> VectorEnv:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def stack_steps(steps: list[TimeStep], finals: list[TimeStep]) -> BatchStep:
    avail = None
    if steps[0].avail_actions is not None:
        avail = np.stack([s.avail_actions for s in steps]).astype(bool)
    return BatchStep(
        obs=np.stack([s.obs for s in steps]).astype(np.float32),
        state=np.stack([s.state for s in steps]).astype(np.float32),
        reward=np.array([s.reward for s in steps], dtype=np.float32),
        terminated=np.array([s.terminated for s in steps], dtype=bool),
        truncated=np.array([s.truncated for s in steps], dtype=bool),
        final_obs=np.stack([f.obs for f in finals]).astype(np.float32),
        final_state=np.stack([f.state for f in finals]).astype(np.float32),
        avail_actions=avail,
        final_avail=None
        if avail is None
        else np.stack([f.avail_actions for f in finals]).astype(bool),
    )


def _worker(conn: Connection, cfg: EnvConfig) -> None:
    """Owns one environment copy; answers ("reset", seed), ("step", action) and ("close", None)."""
    env = None
    try:
        env = make_env(cfg)
        conn.send(("ok", env.spec))
        next_seed: int | None = None
        while True:
            cmd, arg = conn.recv()
            if cmd == "reset":
                next_seed = None if arg is None else arg + 100_003  # later auto-resets stay seeded
                ts = env.reset(seed=arg)
                conn.send(("ok", (ts, ts)))
            elif cmd == "step":
                ts = env.step(arg)
                final = ts
                if ts.done:
                    fresh = env.reset(seed=next_seed)
                    if next_seed is not None:
                        next_seed += 1
                    fresh.reward, fresh.terminated, fresh.truncated = (
                        ts.reward,
                        ts.terminated,
                        ts.truncated,
                    )
                    fresh.info = ts.info  # the finished episode's info (e.g. "won")
                    ts = fresh
                conn.send(("ok", (ts, final)))
            elif cmd == "close":
                conn.send(("ok", None))
                return
            else:
                conn.send(("error", f"unknown command {cmd!r}"))
    except (KeyboardInterrupt, EOFError):
        return
    except Exception:  # report to the parent rather than dying silently
        with contextlib.suppress(BrokenPipeError, OSError):
            conn.send(("error", traceback.format_exc()))
    finally:
        if env is not None:
            env.close()


class SubprocVectorEnv(VectorEnv):
    """``num_envs`` copies, each stepped in its own process.

    Workers are forked (where the OS can): they only run the simulator, and unlike spawn or
    forkserver, fork does not re-import the caller's ``__main__``, so a plain script without an
    ``if __name__ == "__main__"`` guard works.
    """

    def __init__(self, cfg: EnvConfig, num_envs: int, timeout_s: float = 120.0) -> None:
        if num_envs < 1:
            raise ValueError("num_envs must be at least 1")
        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        self.num_envs = num_envs
        self.timeout_s = timeout_s
        self._conns: list[Connection] = []
        self._procs: list[Any] = []
        for _ in range(num_envs):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker, args=(child, cfg), daemon=True)
            proc.start()
            child.close()
            self._conns.append(parent)
            self._procs.append(proc)
        specs = [self._recv(c) for c in self._conns]
        self.spec = specs[0]

    def _recv(self, conn: Connection) -> Any:
        if not conn.poll(self.timeout_s):
            self.close()
            raise TimeoutError(f"environment worker did not answer within {self.timeout_s} s")
        try:
            status, payload = conn.recv()
        except EOFError:
            self.close()
            raise RuntimeError("an environment worker exited unexpectedly") from None
        if status != "ok":
            self.close()
            raise RuntimeError(f"environment worker failed:\n{payload}")
        return payload

    def reset(self, seed: int | None = None) -> BatchStep:
        for k, conn in enumerate(self._conns):
            conn.send(("reset", None if seed is None else seed + k))
        results = [self._recv(c) for c in self._conns]
        return stack_steps([r[0] for r in results], [r[1] for r in results])

    def step(self, actions: np.ndarray) -> BatchStep:
        if len(actions) != self.num_envs:
            raise ValueError(
                f"expected actions for {self.num_envs} environments, got {len(actions)}"
            )
        for conn, act in zip(self._conns, actions, strict=True):
            conn.send(("step", act))
        results = [self._recv(c) for c in self._conns]
        return stack_steps([r[0] for r in results], [r[1] for r in results])

    def close(self) -> None:
        for conn in self._conns:
            with contextlib.suppress(BrokenPipeError, OSError):
                conn.send(("close", None))
        for proc in self._procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=5)
        for conn in self._conns:
            conn.close()
        self._conns, self._procs = [], []


class SyncVectorEnv(VectorEnv):
    """``num_envs`` copies stepped one after the other in this process.

    On a 2-core machine this beats subprocesses for MuJoCo and LBF: a step costs well under a
    millisecond, less than the pipe round trip to a worker (see bench/env_throughput.py).
    """

    def __init__(self, cfg: EnvConfig, num_envs: int) -> None:
        if num_envs < 1:
            raise ValueError("num_envs must be at least 1")
        self.num_envs = num_envs
        self.envs = [make_env(cfg) for _ in range(num_envs)]
        self.spec = self.envs[0].spec
        self._next_seed: list[int | None] = [None] * num_envs

    def reset(self, seed: int | None = None) -> BatchStep:
        steps = []
        for k, env in enumerate(self.envs):
            s = None if seed is None else seed + k
            self._next_seed[k] = (
                None if s is None else s + 100_003
            )  # same seeding as the subprocess workers
            steps.append(env.reset(seed=s))
        return stack_steps(steps, steps)

    def step(self, actions: np.ndarray) -> BatchStep:
        if len(actions) != self.num_envs:
            raise ValueError(
                f"expected actions for {self.num_envs} environments, got {len(actions)}"
            )
        steps, finals = [], []
        for k, (env, act) in enumerate(zip(self.envs, actions, strict=True)):
            ts = env.step(act)
            finals.append(ts)
            if ts.done:
                fresh = env.reset(seed=self._next_seed[k])
                if self._next_seed[k] is not None:
                    self._next_seed[k] += 1
                fresh.reward, fresh.terminated, fresh.truncated = (
                    ts.reward,
                    ts.terminated,
                    ts.truncated,
                )
                fresh.info = ts.info
                ts = fresh
            steps.append(ts)
        return stack_steps(steps, finals)

    def close(self) -> None:
        for env in self.envs:
            env.close()
        self.envs = []


def make_vector_env(cfg: EnvConfig, num_envs: int, mode: str = "auto") -> VectorEnv:
    """The family's native batched stepping when it has one (``make_vector``, e.g. SMAX's vmap);
    otherwise copies in subprocesses (``subproc``) or in this process (``sync``). ``auto`` picks
    subprocesses only where there are more than 2 cores to spread them over."""
    family = get_family(cfg.family)
    module = importlib.import_module(family.module)
    native = getattr(module, "make_vector", None)
    if native is not None:
        return native(cfg, num_envs)
    if mode == "auto":
        mode = "subproc" if (os.cpu_count() or 1) > 2 and num_envs > 1 else "sync"
    if mode == "sync":
        return SyncVectorEnv(cfg, num_envs)
    if mode == "subproc":
        return SubprocVectorEnv(cfg, num_envs)
    raise ValueError(f"unknown vector mode {mode!r} (auto, sync, subproc)")
