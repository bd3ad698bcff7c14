"""Registry of task families; adapters are imported lazily so a missing extra costs nothing."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

from rmio.envs.base import MultiAgentEnv
from rmio.errors import ConfigError


@dataclass
class EnvConfig:
    """Which task to run; one section of every scenario YAML."""

    family: str = "mamujoco"
    """Task family: mamujoco, smax, lbf, smac or pettingzoo (see `rmio scenarios`)."""
    scenario: str = "HalfCheetah-6x1"
    """Scenario id inside the family, e.g. HalfCheetah-6x1, 2s3z, Foraging-8x8-2p-2f-coop-v3;
    for pettingzoo, module:factory or an entry-point name."""
    episode_limit: int | None = None
    """Truncate episodes after this many steps; None keeps the task's own limit."""
    agent_obsk: int = 1
    """MaMuJoCo only: how many graph hops of neighbouring joints each agent observes."""
    options: dict[str, Any] = field(default_factory=dict)
    """Extra keyword arguments passed to the underlying simulator."""


@dataclass(frozen=True)
class Family:
    name: str
    module: str
    """Module with ``SCENARIOS`` and ``make(cfg: EnvConfig) -> MultiAgentEnv``."""
    scenarios: tuple[str, ...]
    extra: str | None
    """pip extra that provides the simulator, or None when it is a base dependency."""
    description: str


FAMILIES: dict[str, Family] = {
    "mamujoco": Family(
        "mamujoco",
        "rmio.envs.mamujoco",
        (
            "HalfCheetah-2x3",
            "HalfCheetah-6x1",
            "Ant-4x2",
            "Walker2d-2x3",
            "Hopper-3x1",
            "ManySegmentSwimmer-4x2",
            "ManySegmentSwimmer-10x2",
        ),
        None,
        "Multi-agent MuJoCo (gymnasium_robotics.mamujoco_v1); any <Robot>-<agent_conf> it accepts "
        "works",
    ),
    "smax": Family(
        "smax",
        "rmio.envs.smax",
        (
            "2s3z",
            "3s_vs_5z",
            "3m",
            "8m",
            "3s5z",
            "5m_vs_6m",
            "25m",
            "27m_vs_30m",
            "3s5z_vs_3s6z",
            "6h_vs_8z",
        ),
        "smax",
        "SMAX, the StarCraft-free reimplementation of SMAC in JAX (jaxmarl)",
    ),
    "lbf": Family(
        "lbf",
        "rmio.envs.lbf",
        ("Foraging-8x8-2p-2f-coop-v3", "Foraging-10x10-3p-3f-v3", "Foraging-2s-8x8-2p-2f-coop-v3"),
        "lbf",
        "Level-based foraging (lbforaging); any Foraging-* id it registers works",
    ),
    "smac": Family(
        "smac",
        "rmio.envs.smac",
        ("2s_vs_1sc", "3s_vs_3z", "2s3z", "3s_vs_4z", "3s_vs_5z", "1c3s5z", "8m", "corridor"),
        None,
        "StarCraft II SMAC (oxwhirl/smac + the StarCraft II binary, installed by the user)",
    ),
    "pettingzoo": Family(
        "pettingzoo",
        "rmio.envs.from_pettingzoo",
        (),
        "pettingzoo",
        "Any PettingZoo ParallelEnv: scenario is module:factory or a name registered in the "
        "rmio.pettingzoo entry-point group",
    ),
}


def get_family(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        known = ", ".join(FAMILIES)
        raise ConfigError(f"unknown environment family '{name}' (known: {known})") from None


def make_env(cfg: EnvConfig) -> MultiAgentEnv:
    """Build the environment a config names; bad names and missing extras raise RmioError."""
    family = get_family(cfg.family)
    module = importlib.import_module(family.module)
    return module.make(cfg)
