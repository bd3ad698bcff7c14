"""rmio's Python API: what the CLI does, for scripts and notebooks. Every name here is re-exported
from ``rmio`` (``import rmio; rmio.launch_swarm(...)``) and none of it needs torch.

* :func:`load_bundle` opens a bundle (a directory or a shipped name such as ``halfcheetah_6x1``) and
  gives its manifest, spec and ONNX runners;
* :func:`evaluate` runs it in-process, with the swarm's exact semantics, under a loss model;
* :func:`robustness_sweep` scores strategies over a p_loss grid with the AUC (``rmio eval
  robustness``);
* :func:`launch_swarm` runs the real swarm, one OS process per agent (``rmio swarm launch``), and
  returns its report;
* :func:`parallel_env` gives any rmio task, under any loss model, as a PettingZoo ``ParallelEnv``.

Errors a caller can fix (a missing bundle, a bad option) raise :class:`rmio.errors.RmioError`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rmio.defaults import DEFAULT_P_LOSS
from rmio.envs.base import EnvSpec
from rmio.envs.loss import LossConfig, resolve_loss
from rmio.envs.registry import EnvConfig, make_env
from rmio.envs.to_pettingzoo import parallel_env
from rmio.errors import ConfigError, RmioError
from rmio.evaluation.baselines import add_baselines
from rmio.evaluation.reference import evaluate as _reference_evaluate
from rmio.evaluation.robustness import resolve_bundle, sweep
from rmio.models import find_bundle
from rmio.runtime.bundle import Manifest, load_manifest
from rmio.runtime.launcher import Launcher
from rmio.runtime.models import ActorRunner, WorldModel, world_model_runner
from rmio.runtime.settings import SwarmSettings, env_config_for
from rmio.runtime.validate import check_bundle

__all__ = [
    "Bundle",
    "EnvConfig",
    "LossConfig",
    "check_bundle",
    "evaluate",
    "launch_swarm",
    "load_bundle",
    "make_env",
    "parallel_env",
    "robustness_sweep",
]


@dataclass
class Bundle:
    """An opened bundle: where it is, its manifest, and its graphs run by onnxruntime (lazily)."""

    path: Path
    manifest: Manifest
    _actor: ActorRunner | None = field(default=None, repr=False)

    @property
    def spec(self) -> EnvSpec:
        return self.manifest.spec

    @property
    def actor(self) -> ActorRunner:
        """``actor.onnx``: ``actor.act(obs, agent_id, avail=None)`` for one agent or a batch; a
        recurrent actor (``manifest.actor_state``) takes ``actor.step(obs, agent_id, avail,
        state)`` and returns ``(action, next_state)``, from ``actor.initial_state(batch)``."""
        if self._actor is None:
            self._actor = ActorRunner(self.path, self.manifest)
        return self._actor

    def act(
        self, obs: np.ndarray, agent_id: np.ndarray | int, avail: np.ndarray | None = None
    ) -> np.ndarray:
        """The greedy action of agent(s) ``agent_id`` on raw observation(s) ``obs``."""
        return self.actor.act(obs, agent_id, avail)

    def world_model(self, pretrain: bool = False, device: str = "cpu") -> WorldModel:
        """``wm_step.onnx`` (or the pre-fine-tuning one): ``step``, ``replay`` over a window; a
        MARIE bundle's window graph: ``replay`` only (rmio.runtime.models.WindowModelRunner)."""
        role = "wm_step_pretrain" if pretrain else "wm_step"
        if role not in self.manifest.files:
            raise RmioError(f"bundle '{self.path}' has no {role} graph")
        return world_model_runner(self.path, self.manifest, device, self.manifest.files[role])

    def env_config(self, episode_limit: int | None = None) -> EnvConfig:
        """The task the bundle was trained on, as ``make_env`` and ``parallel_env`` take it."""
        return EnvConfig(**env_config_for(self.manifest, episode_limit))

    def check(self) -> str:
        """Re-validate the bundle with onnxruntime (``rmio export --check``); one line if valid."""
        return check_bundle(self.path)


def load_bundle(bundle: str | Path, *, check: bool = False) -> Bundle:
    """A bundle directory, a shipped bundle's name, or a training run directory (exported to its
    ``bundle/`` first, which needs the train extra); ``check`` validates the graphs too."""
    path = resolve_bundle(find_bundle(bundle) if not Path(bundle).is_dir() else Path(bundle))
    opened = Bundle(path, load_manifest(path))
    if check:
        opened.check()
    return opened


def _loss(loss: LossConfig | dict[str, Any] | None, p_loss: float | None) -> LossConfig:
    if loss is not None and p_loss is not None:
        raise ConfigError("give loss or p_loss, not both")
    if loss is None:
        cfg = LossConfig("bernoulli", p_loss=p_loss or 0.0)
    elif isinstance(loss, LossConfig):
        cfg = loss
    else:
        unknown = sorted(set(loss) - set(LossConfig.__dataclass_fields__))
        if unknown:
            raise ConfigError(f"unknown loss key(s): {', '.join(unknown)}")
        cfg = LossConfig(**loss)
    cfg.validate()
    return cfg


def evaluate(
    bundle: str | Path | Bundle,
    *,
    episodes: int = 1,
    loss: LossConfig | dict[str, Any] | None = None,
    p_loss: float | None = None,
    seed: int = 0,
    recon: str = "world-model",
    wm_mode: str = "window",
    episode_limit: int | None = None,
) -> list[dict[str, Any]]:
    """Episodes of the bundle in this process under a loss model (``p_loss`` is Bernoulli), with
    the swarm's exact semantics; one row per episode (return, steps, lost fraction)."""
    opened = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    return _reference_evaluate(
        opened.path,
        opened.env_config(episode_limit),
        _loss(loss, p_loss),
        episodes=episodes,
        seed=seed,
        recon=recon,
        wm_mode=wm_mode,
    )


def robustness_sweep(
    bundle: str | Path | Bundle,
    *,
    p_loss: Sequence[float] = DEFAULT_P_LOSS,
    episodes: int = 5,
    seeds: int = 3,
    strategies: Sequence[str] = ("world-model", "hold-last", "zero-fill"),
    loss_model: str = "bernoulli",
    wm_mode: str = "window",
    episode_limit: int | None = None,
    **loss_options: Any,
) -> dict[str, Any]:
    """``rmio eval robustness``: every strategy at every p_loss for every seed family; the result
    has the rows, and ``summary[strategy]`` the curve and the AUC (mean and spread over seeds).
    ``loss_model`` is a name or a YAML file, and ``loss_options`` its settings, as on the command
    line (``mean_burst_length=5``, ``blackout_length=3``)."""
    opened = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    loss = resolve_loss(loss_model, swept=True, **loss_options)
    return sweep(
        opened.path,
        p_loss=[float(p) for p in p_loss],
        episodes=episodes,
        seeds=seeds,
        strategies=list(strategies),
        loss_model=loss.model,
        wm_mode=wm_mode,
        episode_limit=episode_limit,
        loss=loss,
    )


def launch_swarm(
    bundle: str | Path | Bundle,
    *,
    steps: int | None = None,
    episodes: int = 1,
    loss: LossConfig | dict[str, Any] | None = None,
    p_loss: float | None = None,
    out_dir: str | Path = "results",
    baselines: bool = False,
    **settings: Any,
) -> dict[str, Any]:
    """``rmio swarm launch``: the real swarm, one process per agent plus the env host, until
    ``episodes`` episodes of at most ``steps`` steps are done; returns the report (also written as
    ``report.json`` and ``report.md`` in ``report["run_dir"]``, under ``out_dir``). Other keywords
    are :class:`rmio.runtime.settings.SwarmSettings` fields (``transport="udp"``,
    ``world_model="node"``, ``step_deadline_ms=...``). ``baselines`` adds the in-process
    world-model, zero-fill and hold-last runs on the same seeds."""
    opened = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    unknown = sorted(set(settings) - set(SwarmSettings.__dataclass_fields__))
    if unknown:
        raise ConfigError(f"unknown swarm setting(s): {', '.join(unknown)}")
    stamp = f"swarm-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir, suffix = Path(out_dir) / stamp, 1
    while run_dir.exists():  # two launches within a second keep both reports
        suffix += 1
        run_dir = Path(out_dir) / f"{stamp}-{suffix}"
    cfg = SwarmSettings(
        bundle=str(opened.path.resolve()),
        n_agents=opened.spec.n_agents,
        env=env_config_for(opened.manifest, steps),
        loss=_loss(loss, p_loss).__dict__.copy(),
        episodes=episodes,
        baselines=baselines,
        out_dir=str(out_dir),
        **settings,
    )
    report = Launcher(cfg, run_dir).run()
    if baselines:
        add_baselines(report, cfg, run_dir)
    report["run_dir"] = str(run_dir)
    return report
