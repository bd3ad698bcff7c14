"""MMSA on the real environment (`rmio train mmsa`): QMIX's off-policy loop (train/qmix.py's
``train_value``: replay, epsilon-greedy runners, evaluation, logs, checkpoints, resume by
re-running) with MMSA's learner (train/mmsa_learner.py).

The run directory holds ``mmsa.jsonl``/``mmsa.csv``/TensorBoard (QMIX's columns plus each
world-model and SALE loss), ``eval.jsonl``, ``ckpt_mmsa.pt`` and, at the end, ``mmsa.pt``.
Settings: the config's ``qmix:`` section for everything MMSA shares with QMIX and its ``mmsa:``
section for the rest (train/mmsa_config.py). Discrete-action tasks only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console

from rmio.config import Config, build_dataclass
from rmio.envs.base import EnvSpec
from rmio.errors import RmioError
from rmio.train.mmsa_learner import MMSALearner
from rmio.train.mmsa_nets import MMSAAgent
from rmio.train.qmix import check_value_task, train_value
from rmio.train.runlog import load_checkpoint


def _check_mixer(cfg: Config) -> None:
    if cfg.qmix.mixer != "qmix":
        raise RmioError(
            f"MMSA feeds its roll-out state to QMIX's hypernetwork mixer; qmix.mixer is "
            f"{cfg.qmix.mixer!r} (set qmix.mixer=qmix)"
        )


def check_mmsa(cfg: Config) -> None:
    """Refuse what MMSA cannot train (a mixer other than QMIX's, continuous actions) with one
    RmioError line; `rmio train mmsa` calls it before it makes the run directory."""
    _check_mixer(cfg)
    check_value_task(cfg, "MMSA")


def train_mmsa(cfg: Config, run_dir: Path, device: str, console: Console) -> Path:
    """Train until ``qmix.env_steps``; writes ``mmsa.pt`` (the final networks and evaluation)."""
    _check_mixer(cfg)
    return train_value(
        cfg,
        run_dir,
        device,
        console,
        "MMSA",
        lambda spec, dev: MMSALearner(spec, cfg.qmix, cfg.mmsa, dev),
    )


def load_mmsa_agent(path: Path, device: str = "cpu") -> tuple[MMSAAgent, dict[str, Any]]:
    """The trained Q-agent of an ``mmsa.pt`` or ``ckpt_mmsa.pt``, in eval mode (its fixed SALE
    encoders included: they are part of its Q-function)."""
    ckpt = load_checkpoint(path, device)
    cfg = build_dataclass(Config, ckpt["config"], str(path))
    agent = MMSAAgent(EnvSpec.from_dict(ckpt["spec"]), cfg.qmix, cfg.mmsa).to(device)
    agent.load_state_dict(ckpt["learner"]["agent"])
    return agent.eval(), ckpt
