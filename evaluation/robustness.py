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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rmio.defaults import DEFAULT_P_LOSS as DEFAULT_P_LOSS
from rmio.envs.loss import LossConfig, LossyEnv, at_lost_fraction, describe, make_loss_model
from rmio.envs.registry import EnvConfig, make_env
from rmio.errors import RmioError
from rmio.runtime.bundle import Manifest
from rmio.runtime.history import ActionCodec, replay_plan
from rmio.runtime.models import ActorRunner, LatentState, WorldModelRunner
from rmio.runtime.settings import env_config_for
from rmio.runtime.validate import verify_bundle
from rmio.runtime.vocabulary import EVAL_STRATEGIES

log = logging.getLogger(__name__)

SEED_STRIDE = 1000
"""Seed family s runs episodes with env seeds s*SEED_STRIDE + k."""
STRATEGIES = EVAL_STRATEGIES
"""What a blind agent acts on: the fine-tuned world model's reconstruction, its last real
observation, zeros, or the reconstruction of the world model before masked fine-tuning."""


@dataclass
class Episode:
    seed: int
    ret: float
    steps: int
    won: bool | None
    lost_fraction: float


class BatchedPolicy:
    """The joint policy of ``n_envs`` environments under loss, one strategy, batched over
    environments."""

    def __init__(
        self,
        actor: ActorRunner,
        manifest: Manifest,
        strategy: str,
        wm: WorldModelRunner | None = None,
        wm_mode: str = "window",
    ) -> None:
        if strategy in ("world-model", "no-finetune") and wm is None:
            raise ValueError(f"strategy {strategy} needs a world model")
        self.actor, self.manifest, self.strategy, self.wm, self.wm_mode = (
            actor,
            manifest,
            strategy,
            wm,
            wm_mode,
        )
        self.spec = manifest.spec
        self.codec = ActionCodec.of(self.spec)
        self.l = manifest.history_window
        self.recon_calls = 0
        self.recon_seconds = 0.0
        self.truth: Any = None
        """A Lockstep whose true observations to measure against: then, on every lost agent-step,
        how far the observation the agent acted on is from the true one and how far its action is
        from the one it would have taken on the truth (issue 25); ``errors`` holds the sums."""
        self.errors = {"lost": 0.0, "obs_mae": 0.0, "action": 0.0}

    def reset(self, n_envs: int) -> None:
        n, d = self.spec.n_agents, self.spec.obs_dim
        self.obs: list[np.ndarray] = []  # per step: (E, n, d), lost rows zero
        self.masks: list[np.ndarray] = []  # per step: (E, n) bool
        self.acts: list[np.ndarray] = []  # per step: (E, n, ...) executed joint actions
        self.last_real = np.zeros((n_envs, n, d), np.float32)
        self.chain_t = np.full(n_envs, -(10**9))
        self.chain: LatentState | None = None
        self.none = np.stack([self.codec.none()] * n)

    def _prev_actions(self, start: int, t: int, envs: np.ndarray) -> np.ndarray:
        rows = [
            self.acts[h][envs]
            if h >= 0
            else np.broadcast_to(self.none, (len(envs), *self.none.shape))
            for h in range(start - 1, t)
        ]
        return np.stack(rows)

    def _reconstruct(self, t: int, envs: np.ndarray, out: np.ndarray) -> None:
        """Reconstructions of step t for ``envs`` into ``out`` (E, n, d), grouped by window
        start."""
        assert self.wm is not None
        incremental = self.wm_mode == "incremental"
        if incremental and self.chain is None:
            self.chain = self.wm.initial_state(len(self.last_real))
        plans = [
            replay_plan(t, self.l, int(c) if c >= 0 else None, incremental)
            for c in self.chain_t[envs]
        ]
        cont = np.array([c for c, _ in plans], bool)
        starts = np.array([s for _, s in plans], np.int64)
        began = time.perf_counter()
        for start in np.unique(starts):
            sel = starts == start
            group = envs[sel]
            obs = np.stack([o[group] for o in self.obs[start : t + 1]])
            masks = np.stack([m[group] for m in self.masks[start : t + 1]]).astype(np.float32)
            prev = self._prev_actions(int(start), t, group)
            state = None
            if incremental and cont[sel].all():
                assert self.chain is not None
                state = LatentState(self.chain.h[group], self.chain.z[group])
            final, recons = self.wm.replay_batch(obs, prev, masks, state)
            out[group] = recons[-1]
            self.recon_calls += len(group)
            if incremental:
                assert self.chain is not None
                self.chain.h[group], self.chain.z[group] = final.h, final.z
                self.chain_t[group] = t
        self.recon_seconds += time.perf_counter() - began

    def act(
        self, obs: np.ndarray, observed: np.ndarray, avail: np.ndarray | None, active: np.ndarray
    ) -> np.ndarray:
        """Joint actions (E, n, ...) for step t; rows of inactive (finished) environments are
        ignored."""
        t = len(self.obs)
        seen = np.asarray(obs, np.float32) * observed[..., None]
        self.obs.append(seen)
        self.masks.append(observed.copy())
        self.last_real = np.where(observed[..., None], seen, self.last_real)
        inputs = seen.copy()
        blind_envs = np.flatnonzero(active & ~observed.all(axis=1))
        if len(blind_envs) and self.strategy != "zero-fill":
            if self.strategy == "hold-last":
                fill = self.last_real
            else:
                fill = np.zeros_like(seen)
                self._reconstruct(t, blind_envs, fill)
            inputs = np.where(observed[..., None], seen, fill)
        E, n = observed.shape
        ids = np.tile(np.arange(n, dtype=np.int64), E)
        flat_avail = None if avail is None else avail.reshape(E * n, -1)
        actions = self.actor.act(inputs.reshape(E * n, -1), ids, flat_avail)
        joint = actions.reshape(E, n, *actions.shape[1:])
        self.acts.append(joint)
        if self.truth is not None:
            envs = active & ~observed.all(axis=1)
            self._measure(self.truth.true_obs, inputs, joint, avail, envs, observed)
        return joint

    def _measure(
        self,
        obs: np.ndarray,
        inputs: np.ndarray,
        joint: np.ndarray,
        avail: np.ndarray | None,
        envs: np.ndarray,
        observed: np.ndarray,
    ) -> None:
        lost = envs[:, None] & ~observed  # (E, n)
        if not lost.any():
            return
        e, i = np.nonzero(lost)
        fm = np.asarray(self.spec.obs_feature_mask, np.float32)[i]
        true = np.asarray(obs, np.float32)[e, i]
        err = (np.abs(inputs[e, i] - true) * fm).sum(-1) / np.maximum(fm.sum(-1), 1.0)
        on_truth = self.actor.act(true, i.astype(np.int64), None if avail is None else avail[e, i])
        taken = joint[e, i]
        if self.spec.discrete:
            act_err = (on_truth.reshape(-1) != taken.reshape(-1)).astype(np.float64)
        else:
            act_err = np.abs(on_truth - taken).reshape(len(e), -1).mean(-1)
        self.errors["lost"] += len(e)
        self.errors["obs_mae"] += float(err.sum())
        self.errors["action"] += float(act_err.sum())


@dataclass
class Lockstep:
    """``episodes`` environments of one scenario, stepped together; reused across the sweep."""

    env_cfg: EnvConfig
    episodes: int
    envs: list[Any] = field(default_factory=list)
    true_obs: Any = None
    """The current step's true observations (E, n, d), for measurements only."""

    def __enter__(self) -> Lockstep:
        self.envs = [make_env(self.env_cfg) for _ in range(self.episodes)]
        return self

    def __exit__(self, *exc: Any) -> None:
        for env in self.envs:
            env.close()

    @property
    def spec(self) -> Any:
        return self.envs[0].spec

    def run(
        self,
        act: Callable[[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray], np.ndarray],
        loss: LossConfig,
        seed_family: int,
    ) -> list[Episode]:
        """One episode per environment; env k uses seed ``seed_family * SEED_STRIDE + k``."""
        n = self.spec.n_agents
        lossy = [LossyEnv(env, make_loss_model(loss, n, seed_family)) for env in self.envs]
        seeds = [seed_family * SEED_STRIDE + k for k in range(self.episodes)]
        steps = [env.reset(seed=s) for env, s in zip(lossy, seeds, strict=True)]
        active = np.ones(self.episodes, bool)
        ret, length, lost = (
            np.zeros(self.episodes),
            np.zeros(self.episodes, int),
            np.zeros(self.episodes),
        )
        won: list[bool | None] = [None] * self.episodes
        while active.any():
            obs = np.stack([ts.obs for ts in steps])
            # what the agents would have seen: only measurements read it, never a policy
            self.true_obs = np.stack([ts.true_obs for ts in steps])
            observed = np.stack([np.asarray(ts.observed, bool) for ts in steps])
            avail = (
                None
                if steps[0].avail_actions is None
                else np.stack([ts.avail_actions for ts in steps])
            )
            actions = act(obs, observed, avail, active)
            for k in np.flatnonzero(active):
                lost[k] += int((~observed[k]).sum())
                ts = lossy[k].step(actions[k])
                ret[k] += ts.reward
                length[k] += 1
                steps[k] = ts
                if ts.done:
                    active[k] = False
                    w = ts.info.get("won")
                    won[k] = None if w is None else bool(w)
        return [
            Episode(
                seeds[k], float(ret[k]), int(length[k]), won[k], float(lost[k] / (length[k] * n))
            )
            for k in range(self.episodes)
        ]


def random_policy(spec: Any, seed: int) -> Callable[..., np.ndarray]:
    """Uniform random joint actions: the R_random of the normalised robustness score."""
    rng = np.random.default_rng(seed)

    def act(
        obs: np.ndarray, observed: np.ndarray, avail: np.ndarray | None, active: np.ndarray
    ) -> np.ndarray:
        return np.stack(
            [spec.random_actions(rng, None if avail is None else avail[k]) for k in range(len(obs))]
        )

    return act


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
        "world-model": WorldModelRunner(bundle, manifest) if "world-model" in strategies else None
    }
    if "no-finetune" in strategies:
        models["no-finetune"] = WorldModelRunner(
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
