"""Robustness under observation loss, in-process: return (or win rate) against p_loss for each
strategy.

This is the paper's headline measurement (RMIOv2 Fig. 8, Tables 1-2) with the metric of
docs/ARCHITECTURE.md. It runs the bundle's own ONNX graphs with onnxruntime, exactly what the swarm
runs, but batched: the ``episodes`` of a seed family step in lockstep, one actor call serves every
agent of every environment, and one world-model call per window step serves every environment that
has a blind agent. The semantics are the swarm's (rmio.evaluation.reference): episode k of seed
family s uses env seed ``s * SEED_STRIDE + k`` and the loss masks that seed implies, and a
reconstruction replays the last ``l`` steps from zeros (``window``) or continues the previous chain
(``incremental``). Numbers therefore line up with ``rmio swarm launch`` run on the same seeds.
"""

from __future__ import annotations

import logging
import math
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from rmio.defaults import DEFAULT_P_LOSS as DEFAULT_P_LOSS
from rmio.envs.loss import LossConfig, at_lost_fraction, describe
from rmio.envs.registry import EnvConfig
from rmio.errors import RmioError
from rmio.evaluation.lockstep import SEED_STRIDE, BatchedPolicy, Episode, Lockstep, random_policy
from rmio.runtime.models import ActorRunner, world_model_runner
from rmio.runtime.settings import env_config_for
from rmio.runtime.validate import verify_bundle
from rmio.runtime.vocabulary import EVAL_STRATEGIES

log = logging.getLogger(__name__)

__all__ = ["SEED_STRIDE", "BatchedPolicy", "Episode", "Lockstep", "random_policy", "sweep"]

STRATEGIES = EVAL_STRATEGIES
"""What a blind agent acts on: the fine-tuned world model's reconstruction, its last real
observation, zeros, or the reconstruction of the world model before masked fine-tuning."""


def score(episodes: list[dict[str, Any]], metric: str) -> float:
    if metric == "win_rate":
        return float(np.mean([bool(e["won"]) for e in episodes]))
    return float(np.mean([e["return"] for e in episodes]))


def auc(p_loss: list[float], values: list[float], at_zero: float, random: float) -> float:
    """docs/ARCHITECTURE.md: R~(p) = (R(p) - R_random) / (R(0) - R_random); trapezoid over p,
    times 100.

    NaN when the policy is no better than random at p_loss 0 (the normalisation is undefined)."""
    span = at_zero - random
    if not math.isfinite(span) or abs(span) < 1e-9:
        return float("nan")
    norm = (np.asarray(values) - random) / span
    return float(np.trapezoid(norm, np.asarray(p_loss)) * 100.0)


def seed_aucs(
    p_loss: list[float], per_seed: list[list[float]], random: list[float]
) -> dict[str, Any]:
    """The one AUC of every report: each seed family's AUC (its curve over ``p_loss``, normalised
    by its own R(0) and random score), then their mean and population std over the finite ones. No
    AUC without p_loss 0 in the grid."""
    aucs = (
        [auc(p_loss, curve, curve[0], rnd) for curve, rnd in zip(per_seed, random, strict=True)]
        if p_loss and p_loss[0] == 0.0
        else []
    )
    finite = [a for a in aucs if math.isfinite(a)]
    return {
        "auc_per_seed": aucs,
        "auc_mean": float(np.mean(finite)) if finite else float("nan"),
        "auc_std": float(np.std(finite)) if finite else float("nan"),
    }


def resolve_bundle(path: Path, console: Any = None) -> Path:
    """A bundle directory as is; a training run directory: its ``bundle/`` (exported first if
    missing)."""
    path = Path(path)
    if (path / "manifest.json").is_file():
        return path
    if (path / "config.yaml").is_file():
        bundle = path / "bundle"
        if not (bundle / "manifest.json").is_file():
            try:
                from rich.console import Console

                from rmio.train.export import export_run
            except ImportError as exc:
                raise RmioError(
                    f"'{path}' is a run directory; exporting it needs the train extra ({exc})"
                ) from None
            export_run(path, bundle, console or Console(stderr=True))
        return bundle
    raise RmioError(
        f"'{path}' is neither a model bundle (manifest.json) nor a training run (config.yaml)"
    )


def sweep(
    bundle: Path,
    *,
    p_loss: list[float],
    episodes: int,
    seeds: int,
    strategies: list[str],
    loss_model: str = "bernoulli",
    wm_mode: str = "window",
    episode_limit: int | None = None,
    progress: Callable[[str, int], None] | None = None,
    loss: LossConfig | None = None,
    policy_metrics: bool = False,
) -> dict[str, Any]:
    """Every strategy at every p_loss for every seed family; returns the JSON-ready result.
    ``loss`` (default: ``loss_model`` with its default settings) is the model whose long-run lost
    fraction sweeps p_loss (``at_lost_fraction``); the result records it under ``loss``."""
    manifest = verify_bundle(bundle)
    base = loss if loss is not None else LossConfig(loss_model)
    for s in strategies:
        if s not in STRATEGIES:
            raise RmioError(f"unknown strategy '{s}' (known: {', '.join(STRATEGIES)})")
    if "actor" not in manifest.files:
        raise RmioError(f"bundle '{bundle}' has no actor.onnx: export a run that trained a policy")
    if "no-finetune" in strategies and "wm_step_pretrain" not in manifest.files:
        raise RmioError(
            f"bundle '{bundle}' has no pre-fine-tuning world model (wm_step_pretrain.onnx), which "
            "the no-finetune strategy needs: re-export a run that has both wm_pretrain.pt and "
            "wm_finetune.pt"
        )
    if any(not 0.0 <= p <= 1.0 for p in p_loss):
        raise RmioError(f"p_loss values must lie in [0, 1], got {p_loss}")
    p_loss = sorted(set(p_loss))
    at_p = {p: at_lost_fraction(base, p) for p in p_loss}
    for cfg in at_p.values():  # an unreachable point is refused before anything runs
        cfg.validate(manifest.spec.n_agents)
    env_cfg = EnvConfig(**env_config_for(manifest, episode_limit))
    actor = ActorRunner(bundle, manifest)
    models = {
        "world-model": world_model_runner(bundle, manifest) if "world-model" in strategies else None
    }
    if "no-finetune" in strategies:
        models["no-finetune"] = world_model_runner(
            bundle, manifest, file=manifest.files["wm_step_pretrain"]
        )
    metric = (
        "win_rate"
        if manifest.spec.discrete and manifest.spec.name.split("/")[0] in ("smax", "smac")
        else "return"
    )
    rows: list[dict[str, Any]] = []
    tick = progress or (lambda what, k: None)
    timing: dict[str, float] = {}
    with Lockstep(env_cfg, episodes) as envs:
        for seed in range(seeds):
            began = time.perf_counter()
            eps = envs.run(random_policy(envs.spec, seed), LossConfig("none"), seed)
            rows.append(_row("random", 0.0, seed, eps, time.perf_counter() - began))
            tick("random", 1)
            for p in p_loss:
                loss = at_p[p]
                plain: dict[str, Any] | None = None
                for strategy in strategies:
                    # nothing is lost: every strategy is the plain policy
                    if p == 0.0 and plain is not None:
                        rows.append(
                            {**plain, "strategy": strategy, "shared_with": plain["strategy"]}
                        )
                        tick(strategy, 1)
                        continue
                    policy = BatchedPolicy(actor, manifest, strategy, models.get(strategy), wm_mode)
                    policy.truth = envs if policy_metrics else None
                    policy.reset(episodes)
                    began = time.perf_counter()
                    eps = envs.run(policy.act, loss, seed)
                    row = _row(strategy, p, seed, eps, time.perf_counter() - began)
                    row["reconstructions"] = policy.recon_calls
                    row["recon_ms_per_env_step"] = (
                        1e3 * policy.recon_seconds / max(1, sum(e.steps for e in eps))
                    )
                    if policy_metrics and policy.errors["lost"]:
                        # per lost agent-step: what the agent acted on vs the truth (raw units),
                        # and its action vs the one it would have taken on the truth
                        k = policy.errors["lost"]
                        row["obs_mae"] = policy.errors["obs_mae"] / k
                        row["action_error"] = policy.errors["action"] / k
                        if "action_kl" in policy.errors:
                            row["action_kl"] = policy.errors["action_kl"] / k
                    rows.append(row)
                    timing[strategy] = timing.get(strategy, 0.0) + row["seconds"]
                    plain = plain or (row if p == 0.0 else None)
                    tick(strategy, 1)
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    return summarise(
        {
            "bundle": str(bundle),
            "scenario": manifest.spec.name,
            "metric": metric,
            "machine": machine,
            "date": time.strftime("%Y-%m-%d"),
            "p_loss": p_loss,
            "episodes": episodes,
            "seeds": seeds,
            "strategies": strategies,
            "loss_model": base.model,
            "loss": sweep_record(base),
            "wm_mode": wm_mode,
            "episode_limit": env_cfg.episode_limit,
            "rows": rows,
            "seconds_by_strategy": timing,
        }
    )


def sweep_record(loss: LossConfig) -> dict[str, Any]:
    """What a sweep's results record of its loss model: the model and the settings it reads, less
    those the swept lost fraction sets (p_loss, and a blackout's start rate)."""
    set_by_p = {"p_loss", *(("blackout_rate",) if loss.model == "blackout" else ())}
    return {k: v for k, v in describe(loss).items() if k not in set_by_p}


def _row(strategy: str, p: float, seed: int, eps: list[Episode], seconds: float) -> dict[str, Any]:
    return {
        "strategy": strategy,
        "p_loss": p,
        "seed": seed,
        "seconds": seconds,
        "episodes": [
            {
                "seed": e.seed,
                "return": e.ret,
                "steps": e.steps,
                "won": e.won,
                "lost_fraction": e.lost_fraction,
            }
            for e in eps
        ],
    }


def summarise(result: dict[str, Any]) -> dict[str, Any]:
    """Per strategy: the curve (mean and spread over seed families) and the AUC (mean and
    spread)."""
    metric, p_loss, rows = result["metric"], result["p_loss"], result["rows"]
    seeds = sorted({r["seed"] for r in rows})
    value = {(r["strategy"], r["p_loss"], r["seed"]): score(r["episodes"], metric) for r in rows}
    random = {s: value[("random", 0.0, s)] for s in seeds}
    summary: dict[str, Any] = {
        "random": {
            "mean": float(np.mean(list(random.values()))),
            "std": float(np.std(list(random.values()))),
        }
    }
    for strategy in result["strategies"]:
        curve = []
        for p in p_loss:
            vals = [value[(strategy, p, s)] for s in seeds]
            curve.append(
                {
                    "p_loss": p,
                    "mean": float(np.mean(vals)),
                    "std": float(np.std(vals)),
                    "per_seed": vals,
                }
            )
        summary[strategy] = {
            "curve": curve,
            **seed_aucs(
                p_loss,
                [[value[(strategy, p, s)] for p in p_loss] for s in seeds],
                [random[s] for s in seeds],
            ),
        }
    if metric == "win_rate":  # the dense return as well: it moves where the win rate sits at 0 or 1
        ret = {k: score(r["episodes"], "return") for k, r in zip(value, rows, strict=True)}
        summary["also"] = {
            "metric": "return",
            **{
                strategy: [
                    {
                        "p_loss": p,
                        "mean": float(np.mean([ret[(strategy, p, s)] for s in seeds])),
                        "std": float(np.std([ret[(strategy, p, s)] for s in seeds])),
                    }
                    for p in p_loss
                ]
                for strategy in result["strategies"]
            },
        }
    result["summary"] = summary
    result["auc_range"] = [p_loss[0], p_loss[-1]]
    return result
