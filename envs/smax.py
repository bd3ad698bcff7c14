"""SMAX (jaxmarl's JAX reimplementation of SMAC) behind the common interface.

Only the allied team are our agents; the enemy team is jaxmarl's SMAC-like scripted heuristic
(``HeuristicEnemySMAX``). Reset and step are jitted; ``make_vector`` steps every copy in one
jitted, vmapped call with same-step auto-reset, which is why SMAX needs no worker processes.

Conventions taken from the simulator:

* reward: jaxmarl gives every ally the same team reward, so ``reward`` is ally 0's: the enemy
  health lost this step (each unit's loss normalised by its max health, summed, divided by the
  number of enemies) plus ``won_battle_bonus`` (1.0) on the step the battle is won;
* actions per ally: 0-3 move, 4 stop (the only action of a dead unit), 5+j attack enemy j;
* ``terminated``: one side is wiped out; ``truncated``: the step limit was reached first;
* ``info["won"]`` at episode end: all enemies dead and at least one ally alive (both teams dead
  is a draw, not a win);
* ``state``: jaxmarl's world state (every unit's health, position, cooldown, type, team).

JAX is kept on the CPU (``JAX_PLATFORMS=cpu`` and no GPU memory preallocation, unless the caller
set those already) so that it never competes with torch for an accelerator.
"""

from __future__ import annotations

import io
import logging
import os
import sys
from typing import Any

import numpy as np

from rmio.envs.base import EnvSpec, MultiAgentEnv, TimeStep
from rmio.envs.registry import FAMILIES, EnvConfig
from rmio.envs.vector import BatchStep, VectorEnv
from rmio.errors import ConfigError, MissingExtraError

log = logging.getLogger(__name__)

SCENARIOS = FAMILIES["smax"].scenarios
_SEED_MOD = 2**32  # jax keys take 32-bit seeds (higher bits are silently dropped)


def _import_jax() -> tuple[Any, Any]:
    """Import jax and jaxmarl lazily, on the CPU, keeping jaxmarl's import-time prints quiet.

    jaxmarl prints at import and resets ``sys.stdout`` to ``sys.__stdout__`` (its mabrax module),
    which would also break the caller's own redirection; so both are swapped and restored here.
    """
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    saved = sys.stdout, sys.stderr, sys.__stdout__
    sink = io.StringIO()
    try:
        sys.stdout = sys.__stdout__ = sink
        import jax
        import jaxmarl
    except ImportError as exc:
        raise MissingExtraError("SMAX", "smax", f"import failed: {exc}") from None
    finally:
        sys.stdout, sys.stderr, sys.__stdout__ = saved
    if sink.getvalue():
        log.debug("jaxmarl import output: %s", sink.getvalue().strip())
    return jax, jaxmarl


class _Core:
    """The simulator plus pure ``reset(key)``/``step(carry, actions)`` functions for jit/vmap.

    The carry is ``(env_state, key)``; the output tuple is
    ``(obs, state, avail, reward, terminated, truncated, won)``.
    """

    def __init__(self, cfg: EnvConfig) -> None:
        self.jax, jaxmarl = _import_jax()
        from jaxmarl.environments.smax import smax_env

        known = sorted(set(SCENARIOS) | set(smax_env.MAP_NAME_TO_SCENARIO))
        if cfg.scenario not in smax_env.MAP_NAME_TO_SCENARIO:
            raise ConfigError(f"unknown SMAX map '{cfg.scenario}' (known: {', '.join(known)})")
        kwargs = dict(cfg.options)
        if kwargs.get("action_type", "discrete") != "discrete":
            raise ConfigError("SMAX: only action_type='discrete' is supported")
        if cfg.episode_limit is not None:
            kwargs["max_steps"] = int(cfg.episode_limit)
        try:
            env = jaxmarl.make(
                "HeuristicEnemySMAX",
                scenario=smax_env.map_name_to_scenario(cfg.scenario),
                **kwargs,
            )
        except TypeError as exc:  # unknown keyword in cfg.options
            raise ConfigError(f"SMAX cannot build map '{cfg.scenario}': {exc}") from None
        self.env = env
        self.agents = list(env.agents)
        n = len(self.agents)
        self.spec = EnvSpec(
            name=f"smax/{cfg.scenario}",
            n_agents=n,
            obs_sizes=tuple(int(env.observation_spaces[a].shape[0]) for a in self.agents),
            state_dim=int(env.state_size),
            action_kind="discrete",
            action_sizes=tuple(int(env.action_spaces[a].n) for a in self.agents),
            episode_limit=int(env.max_steps),
            agent_names=tuple(self.agents),
        )

    def _outputs(self, obs: dict, env_state: Any, reward: Any) -> tuple:
        jnp = self.jax.numpy
        inner = env_state.state
        n = len(self.agents)
        allies_alive = inner.unit_alive[:n].any()
        enemies_alive = inner.unit_alive[n:].any()
        terminated = ~allies_alive | ~enemies_alive
        truncated = (inner.step >= self.spec.episode_limit) & ~terminated
        won = allies_alive & ~enemies_alive
        avail = self.env.get_avail_actions(env_state)
        width = self.spec.obs_dim
        padded = [jnp.pad(obs[a], (0, width - obs[a].shape[0])) for a in self.agents]
        return (
            jnp.stack(padded).astype(jnp.float32),
            obs["world_state"].astype(jnp.float32),
            jnp.stack([avail[a] for a in self.agents]).astype(bool),
            jnp.asarray(reward, jnp.float32),
            terminated,
            truncated,
            won,
        )

    def _strong(self, carry: tuple) -> tuple:
        """Drop weak types: reset and step must return identical carry types or jit recompiles."""
        lax = self.jax.lax
        return self.jax.tree.map(lambda x: lax.convert_element_type(x, x.dtype), carry)

    def reset(self, key: Any) -> tuple[tuple, tuple]:
        key, sub = self.jax.random.split(key)
        obs, env_state = self.env.reset(sub)
        return self._strong((env_state, key)), self._outputs(obs, env_state, 0.0)

    def step(self, carry: tuple, actions: Any) -> tuple[tuple, tuple]:
        env_state, key = carry
        key, sub = self.jax.random.split(key)
        act = {a: actions[i] for i, a in enumerate(self.agents)}
        obs, env_state, rewards, _, _ = self.env.step_env(sub, env_state, act)
        out = self._outputs(obs, env_state, rewards[self.agents[0]])
        return self._strong((env_state, key)), out

    def step_autoreset(self, carry: tuple, actions: Any) -> tuple[tuple, tuple, Any]:
        """Step; where the episode ended, swap in a fresh one (same-step auto-reset)."""
        jax = self.jax
        carry, out = self.step(carry, actions)
        fresh_carry, fresh = self.reset(carry[1])
        done = out[4] | out[5]
        pick = lambda new, old: jax.numpy.where(done, new, old)  # noqa: E731
        carry = jax.tree.map(pick, fresh_carry, carry)
        obs, state, avail = (pick(f, o) for f, o in zip(fresh[:3], out[:3], strict=True))
        return carry, (obs, state, avail, *out[3:]), out[:3]


def _seed_key(jax: Any, seed: int | None) -> Any:
    if seed is None:
        seed = int(np.random.SeedSequence().entropy % _SEED_MOD)
    return jax.random.PRNGKey(int(seed) % _SEED_MOD)


class SmaxEnv(MultiAgentEnv):
    """One SMAX battle; call ``reset`` again after an episode ends (no auto-reset)."""

    def __init__(self, cfg: EnvConfig) -> None:
        self._core = _Core(cfg)
        self.spec = self._core.spec
        jax = self._core.jax
        self._reset = jax.jit(self._core.reset)
        self._step = jax.jit(self._core.step)
        self._carry: tuple | None = None
        self._key = _seed_key(jax, None)

    def _timestep(self, out: tuple) -> TimeStep:
        obs, state, avail, reward, term, trunc, won = self._core.jax.device_get(out)
        info: dict[str, Any] = {}
        if term or trunc:
            info["won"] = bool(won)
        return TimeStep(
            obs=np.array(obs),
            state=np.array(state),
            reward=float(reward),
            terminated=bool(term),
            truncated=bool(trunc),
            avail_actions=np.array(avail),
            info=info,
        )

    def reset(self, seed: int | None = None) -> TimeStep:
        key = _seed_key(self._core.jax, seed) if seed is not None else self._key
        self._carry, out = self._reset(key)
        self._key = self._carry[1]  # an unseeded reset continues this key chain
        return self._timestep(out)

    def step(self, actions: np.ndarray) -> TimeStep:
        if self._carry is None:
            raise RuntimeError(f"{self.spec.name}: call reset() before step()")
        actions = self._check_actions(actions).astype(np.int32)
        self._carry, out = self._step(self._carry, actions)
        self._key = self._carry[1]
        return self._timestep(out)


class SmaxVectorEnv(VectorEnv):
    """``num_envs`` SMAX copies stepped in one jitted ``vmap`` call, with auto-reset.

    ``BatchStep`` has no info, so the win flag lives in ``last_won``: (B,) bool, True where an
    episode ended with a win in the latest ``step``.
    """

    def __init__(self, cfg: EnvConfig, num_envs: int) -> None:
        if num_envs < 1:
            raise ValueError("num_envs must be at least 1")
        self._core = _Core(cfg)
        self.spec = self._core.spec
        self.num_envs = num_envs
        jax = self._core.jax
        self._reset = jax.jit(jax.vmap(self._core.reset))
        self._step = jax.jit(jax.vmap(self._core.step_autoreset))
        self._carry: tuple | None = None
        self.last_won = np.zeros(num_envs, dtype=bool)

    def _batch(self, out: tuple, finals: tuple) -> BatchStep:
        """``finals``: the (obs, state, avail) of each copy before its auto-reset."""
        obs, state, avail, reward, term, trunc, won, final, final_state, final_avail = (
            self._core.jax.device_get((*out, *finals))
        )
        self.last_won = np.array(won, dtype=bool) & np.array(term, dtype=bool)
        return BatchStep(
            obs=np.array(obs),
            state=np.array(state),
            reward=np.array(reward, dtype=np.float32),
            terminated=np.array(term, dtype=bool),
            truncated=np.array(trunc, dtype=bool),
            final_obs=np.array(final),
            avail_actions=np.array(avail),
            final_state=np.array(final_state),
            final_avail=np.array(final_avail, dtype=bool),
        )

    def reset(self, seed: int | None = None) -> BatchStep:
        jax = self._core.jax
        if seed is None:
            seed = int(np.random.SeedSequence().entropy % _SEED_MOD)
        seeds = (np.arange(self.num_envs, dtype=np.int64) + int(seed)) % _SEED_MOD
        keys = jax.vmap(jax.random.PRNGKey)(seeds.astype(np.uint32))
        self._carry, out = self._reset(keys)
        return self._batch(out, out[:3])

    def step(self, actions: np.ndarray) -> BatchStep:
        if self._carry is None:
            raise RuntimeError(f"{self.spec.name}: call reset() before step()")
        actions = np.asarray(actions)
        if actions.shape != (self.num_envs, self.spec.n_agents):
            raise ValueError(
                f"{self.spec.name}: expected actions of shape "
                f"({self.num_envs}, {self.spec.n_agents}), got {actions.shape}"
            )
        self._carry, out, finals = self._step(self._carry, actions.astype(np.int32))
        return self._batch(out, finals)


def make(cfg: EnvConfig) -> MultiAgentEnv:
    return SmaxEnv(cfg)


def make_vector(cfg: EnvConfig, num_envs: int) -> VectorEnv:
    return SmaxVectorEnv(cfg, num_envs)
