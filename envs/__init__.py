"""rmio.envs: one torch-free interface for every task, vectorised stepping and observation-loss
models."""

from __future__ import annotations

from rmio.envs.base import EnvSpec, MultiAgentEnv, TimeStep
from rmio.envs.registry import FAMILIES, EnvConfig, make_env

__all__ = ["FAMILIES", "EnvConfig", "EnvSpec", "MultiAgentEnv", "TimeStep", "make_env"]
