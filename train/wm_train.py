"""World-model pre-training (Algorithm 1, lines 2-9) and masked fine-tuning (Algorithm 2, lines
20-27).

Both phases share one loop; they differ in the starting weights, the learning rate, p_mask and the
stopping rule. A run directory holds everything: resolved config, data, logs, checkpoints. Running
the same command on the same directory resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console

from rmio.config import Config, load_config
from rmio.config import validate as validate_config
from rmio.envs.collect import collect
from rmio.envs.loss import LossConfig
from rmio.envs.trajectory import TrajectoryBuffer
from rmio.errors import RmioError
from rmio.models import find_bundle, resolve_model_path
from rmio.rundir import portable_path
from rmio.runtime.bundle import load_manifest
from rmio.runtime.models import ActorRunner
from rmio.train.common import (
    begin_training,
    build_model,
    checkpoint_meta,
    load_actor,
    load_model,
    progress,
    resolve_device,
    seed_everything,
)
from rmio.train.correction import train_correction
from rmio.train.masks import sample_mixed_masks
from rmio.train.plateau import Plateau
from rmio.train.policy import actor_policy
from rmio.train.policy_aware import PolicyAwareTerm, load_frozen_actor
from rmio.train.resume import Resumable
from rmio.train.runlog import MetricLog, load_checkpoint, save_checkpoint
from rmio.train.wm_data import SequenceSampler, observation_stats, sample_masks, world_model_loss
from rmio.train.world_model import RMIOWorldModel

log = logging.getLogger(__name__)

PRETRAIN, FINETUNE = "pretrain", "finetune"
HOLDOUT_SEED_OFFSET = 10_000_000
"""Held-out episodes use seeds far from any collection seed, so they are never training episodes."""


# -------------------------------------------------------------------------------------------- data


def ensure_data(
    cfg: Config, run_dir: Path, console: Console
) -> tuple[TrajectoryBuffer, TrajectoryBuffer]:
    """Real trajectories for training and a held-out set (other seeds); collected once, then
    reused."""
    data_dir = run_dir / "data"
    train_path, holdout_path = data_dir / "train.npz", data_dir / "holdout.npz"
    no_loss = LossConfig(model="none")  # pre-training sees complete observations (paper section 5)
    policy = _data_policy(cfg, console)
    if not train_path.exists():
        steps = cfg.run.collect_steps
        with progress(console, "collecting real trajectories", steps) as (bar, task):
            buf, stats = collect(
                cfg.env,
                no_loss,
                steps=steps,
                num_envs=cfg.run.num_envs,
                vector_mode=cfg.run.vector_mode,
                seed=cfg.run.seed,
                policy=policy,
                progress=lambda k: bar.advance(task, k),
            )
        buf.meta["policy"] = cfg.run.data_policy or "uniform-random"
        buf.meta["steps_per_second"] = stats.steps_per_second
        buf.meta["env_steps"] = stats.env_steps
        buf.save(train_path)
        console.print(
            f"collected {stats.env_steps} env steps ({stats.episodes} episodes) at "
            f"{stats.steps_per_second:.0f} steps/s"
        )
    if not holdout_path.exists():
        collect_holdout(cfg, policy).save(holdout_path)
    return TrajectoryBuffer.load(train_path), TrajectoryBuffer.load(holdout_path)


def collect_holdout(cfg: Config, policy: Any = None) -> TrajectoryBuffer:
    """``holdout_episodes`` whole episodes of ``policy`` (None: random) on the held-out seeds,
    complete observations."""
    buf, _ = collect(
        cfg.env,
        LossConfig(model="none"),
        steps=cfg.world_model.train.holdout_episodes * (cfg.env.episode_limit or 1000),
        num_envs=1,
        seed=cfg.run.seed + HOLDOUT_SEED_OFFSET,
        policy=policy,
    )
    return buf


def eval_holdout(run_dir: Path, cfg: Config, console: Console) -> tuple[TrajectoryBuffer, str]:
    """The held-out episodes a run's world models are scored on, and what collected them.

    A world-model run's held-out set was collected by its data policy, like its training data.
    Joint pre-training (Algorithm 1) collected its held-out set with the random warm-up policy,
    far from the states its trained actor visits; so once the run has its final actor
    (``policy.pt``) the held-out episodes are that actor's, sampling as it did when it collected
    the training data, collected into ``data/holdout_actor.npz`` and again whenever policy.pt
    changes."""
    data_dir = run_dir / "data"
    own, cached = run_dir / "policy.pt", data_dir / "holdout_actor.npz"
    ckpt = load_checkpoint(own) if own.exists() else None
    if ckpt is None or ckpt.get("algo") != "rmiov2":  # not a finished joint pre-training run
        path = data_dir / "holdout.npz"
        if not path.exists():
            raise RmioError(f"'{run_dir}' has no held-out data; train a world model in it first")
        return TrajectoryBuffer.load(path), portable_path(cfg.run.data_policy) or "uniform-random"
    digest = hashlib.sha256(own.read_bytes()).hexdigest()
    buf = TrajectoryBuffer.load(cached) if cached.exists() else None
    if buf is None or buf.meta.get("policy_sha256") != digest:
        actor, _ = load_actor(own)
        console.print(
            f"collecting {cfg.world_model.train.holdout_episodes} held-out episodes with the run's "
            f"actor (joint pre-training, {ckpt.get('env_steps')} env steps; sampling)"
        )
        buf = collect_holdout(cfg, actor_policy(actor))
        buf.meta.update(policy="the run's policy.pt (sampling)", policy_sha256=digest)
        buf.save(cached)
    return buf, "the run's own actor (policy.pt, sampling)"


def _data_policy(cfg: Config, console: Console) -> Any:
    """``run.data_policy``'s sampling actor (its exploration is the data's diversity), or None for
    random."""
    if cfg.run.data_policy is None:
        return None
    source = resolve_model_path(cfg.run.data_policy)
    if source.is_dir():
        return _bundle_policy(cfg, source, console)
    actor, ckpt = load_actor(source)
    trained = ckpt["config"]["env"]
    if (trained["family"], trained["scenario"]) != (cfg.env.family, cfg.env.scenario):
        raise RmioError(
            f"{cfg.run.data_policy} was trained for {trained['family']}/{trained['scenario']}, "
            f"not {cfg.env.family}/{cfg.env.scenario}"
        )
    console.print(
        f"collecting with the {ckpt.get('algo', '?')} actor of {cfg.run.data_policy} "
        f"({ckpt.get('env_steps')} env steps)"
    )
    return actor_policy(actor)


# -------------------------------------------------------------------------------------------- runs


@dataclass
class Phase:
    name: str
    updates: int
    lr: float
    p_mask: float
    patience: int | None = None
    min_delta: float = 0.0
    mask_models: tuple[str, ...] = ("bernoulli",)
    p_mask_range: tuple[float, float] | None = None
    mean_burst_length: float = 4.0
    policy_term: Any = None
    """rmio's policy-aware term (train/policy_aware.py), or None for the paper's loss."""

    def paper_masks(self) -> bool:
        """Algorithm 2's masks: Bernoulli at one fixed rate (kept bit-identical to earlier runs)."""
        return self.mask_models == ("bernoulli",) and self.p_mask_range is None

    def sample(
        self, gen: torch.Generator, shape: tuple[int, int, int], device: Any
    ) -> torch.Tensor:
        if self.paper_masks():
            return sample_masks(gen, shape, self.p_mask, device)
        low, high = self.p_mask_range or (self.p_mask, self.p_mask)
        return sample_mixed_masks(
            gen, shape, self.mask_models, low, high, self.mean_burst_length, device
        )


def mask_recipe(f: Any, p_mask: float) -> str:
    """How fine-tuning masks were drawn, as reports name it ("p_mask 0.5" for the paper's)."""
    models = "+".join(f.mask_models)
    r = f.p_mask_range
    rate = f"p_mask {p_mask:g}" if r is None else f"p_mask ~ U[{r[0]:g}, {r[1]:g}]"
    burst = f", bursts of {f.mean_burst_length:g}" if "burst" in f.mask_models else ""
    aware = f", policy-aware {f.policy_weight:g}" if f.policy_weight > 0 else ""
    if models == "bernoulli":
        return rate + aware
    return f"{models} masks, {rate}{burst}{aware}"


def optimise(
    model: RMIOWorldModel,
    cfg: Config,
    phase: Phase,
    run_dir: Path,
    sampler: SequenceSampler,
    console: Console,
    start: dict[str, Any] | None,
    extra: dict[str, Any],
) -> dict[str, Any]:
    """The shared loop: sample sequences, mask with p_mask, minimise L_M; checkpoint and resume."""
    tcfg = cfg.world_model.train
    device = next(model.parameters()).device
    opt = torch.optim.Adam(model.parameters(), lr=phase.lr, eps=1e-6)
    rng = np.random.default_rng(cfg.run.seed + (0 if phase.name == PRETRAIN else 1))
    mask_gen = torch.Generator(device=device).manual_seed(cfg.run.seed + 7)
    plateau = Plateau(phase.min_delta)
    resume = Resumable(model, opt, plateau, rng, mask_gen)
    # resume exactly: weights, optimiser, step and every random stream
    step = 0 if start is None else resume.restore(start)
    metrics_log = MetricLog(run_dir, f"wm_{phase.name}")
    ckpt_path = run_dir / f"ckpt_{phase.name}.pt"

    def checkpoint() -> None:
        save_checkpoint(ckpt_path, {**extra, "phase": phase.name, **resume.state(step)})

    t0, done_at_start = time.perf_counter(), step
    # a run that stopped early and was killed before its final file stays stopped
    stopped_early = plateau.stalled(phase.patience)
    model.observe_path = "compiled" if tcfg.compile else "stepwise"  # same loss either way
    with progress(console, f"world model {phase.name}", phase.updates) as (bar, task):
        bar.update(task, completed=step)
        while step < phase.updates and not stopped_early:
            batch = sampler.sample(rng, tcfg.batch_size, tcfg.seq_len)
            mask = phase.sample(mask_gen, tuple(batch.obs.shape[:3]), device)
            loss, metrics = world_model_loss(model, batch, mask, phase.policy_term)
            if not torch.isfinite(loss):
                raise RmioError(
                    f"the {phase.name} loss became {loss.item()} at update {step}; lower the "
                    "learning rate (--set world_model.train.lr=...) or check the data for extreme "
                    "values"
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.grad_clip)
            opt.step()
            step += 1
            ema = plateau.update(metrics["loss"])
            if step % tcfg.log_every == 0 or step == phase.updates:
                rate = (step - done_at_start) / (time.perf_counter() - t0)
                metrics_log.log(
                    step,
                    {
                        **metrics,
                        "grad_norm": float(grad_norm),
                        "loss_ema": ema,
                        "updates_per_s": rate,
                    },
                )
            bar.update(
                task,
                completed=step,
                info=f"loss {metrics['loss']:.3f} obs {metrics['obs']:.3f} rew "
                f"{metrics['reward']:.3f} kl {metrics['kl']:.2f}",
            )
            if step % tcfg.checkpoint_every == 0:
                checkpoint()
            if plateau.stalled(phase.patience):
                stopped_early = True
                break
    model.observe_path = "stepwise"
    checkpoint()
    metrics_log.close()
    elapsed = time.perf_counter() - t0
    return {
        "updates": step,
        "seconds": elapsed,
        "updates_per_s": (step - done_at_start) / max(elapsed, 1e-9),
        "final_loss_ema": plateau.ema,
        "stopped_early": stopped_early,
    }


def train_world_model(cfg: Config, run_dir: Path, device: str, console: Console) -> Path:
    """Pre-train on complete observations; returns the path of ``wm_pretrain.pt``."""
    final = run_dir / "wm_pretrain.pt"
    dev = begin_training(cfg, final, device, "pre-training", console)
    if dev is None:
        return final
    train_buf, _ = ensure_data(cfg, run_dir, console)
    stats = observation_stats(train_buf)
    model = build_model(cfg, train_buf.spec, stats).to(dev)
    sampler = SequenceSampler(train_buf, cfg.world_model.smoothing, dev)
    ckpt = run_dir / f"ckpt_{PRETRAIN}.pt"
    start = load_checkpoint(ckpt, dev) if ckpt.exists() else None
    if start is not None:
        console.print(f"resuming pre-training from update {start['step']}")
    w = cfg.world_model.train
    summary = optimise(
        model,
        cfg,
        Phase(PRETRAIN, w.updates, w.lr, 0.0),
        run_dir,
        sampler,
        console,
        start,
        checkpoint_meta(cfg, train_buf.spec, stats),
    )
    save_checkpoint(
        final,
        {
            **checkpoint_meta(cfg, train_buf.spec, stats),
            "phase": PRETRAIN,
            "model": model.state_dict(),
            "summary": summary,
            "env_steps": int(train_buf.meta.get("env_steps", len(train_buf))),
        },
    )
    console.print(
        f"pre-training done: {summary['updates']} updates at {summary['updates_per_s']:.2f}/s; "
        f"wrote {final}"
    )
    return final


def finetune_world_model(
    run_dir: Path,
    p_mask: float | None,
    device: str,
    console: Console,
    updates: int | None = None,
    masks: dict[str, Any] | None = None,
) -> Path:
    """Masked fine-tuning of ``wm_pretrain.pt``: zero each agent's input with probability p_mask,
    keep the true observation as the target, stop when the smoothed loss stops improving.

    ``masks`` overrides the run config's mask recipe (``world_model.finetune``'s mask_models,
    p_mask_range, mean_burst_length)."""
    cfg = load_config(run_dir / "config.yaml")
    f = cfg.world_model.finetune
    for key, value in (masks or {}).items():
        setattr(f, key, value)
    validate_config(cfg, f"{run_dir / 'config.yaml'} with the fine-tuning mask options")
    dev = resolve_device(device)  # a device this machine lacks is refused even for a done run
    if cfg.world_model.model.correction:  # RMIO v1: a correction block on the frozen model
        return train_correction(run_dir, p_mask, device, console, updates)
    final = run_dir / "wm_finetune.pt"
    if final.exists():
        console.print(
            f"{final} exists: fine-tuning already finished (delete it to fine-tune again)"
        )
        return final
    pre = run_dir / "wm_pretrain.pt"
    if not pre.exists():
        raise RmioError(
            f"'{run_dir}' has no wm_pretrain.pt; run "
            f"`rmio train world-model CONFIG --run-dir {run_dir}` first"
        )
    model, ckpt = load_model(pre, dev)
    torch.set_num_threads(cfg.world_model.train.threads)
    p = f.p_mask if p_mask is None else p_mask
    if not 0.0 <= p <= 1.0:
        raise RmioError(f"--p-mask must be in [0, 1], got {p}")
    seed_everything(cfg.run.seed + 1)
    train_buf = TrajectoryBuffer.load(run_dir / "data" / "train.npz")
    sampler = SequenceSampler(train_buf, cfg.world_model.smoothing, dev)
    ck = run_dir / f"ckpt_{FINETUNE}.pt"
    start = load_checkpoint(ck, dev) if ck.exists() else None
    if start is not None:
        if abs(start.get("p_mask", p) - p) > 1e-12:
            raise RmioError(
                f"an interrupted fine-tuning in '{run_dir}' used p_mask {start['p_mask']}, not "
                f"{p}; resume with --p-mask {start['p_mask']} or delete {ck.name}"
            )
        recipe = mask_recipe(f, p)
        if start.get("masks", recipe) != recipe:
            raise RmioError(
                f"an interrupted fine-tuning in '{run_dir}' drew its masks as {start['masks']}, "
                f"not {recipe}; resume with the same world_model.finetune settings or delete "
                f"{ck.name}"
            )
        console.print(f"resuming fine-tuning from update {start['step']}")
    extra = {
        **{k: ckpt[k] for k in ("config", "config_hash", "spec", "stats")},
        "p_mask": p,
        "masks": mask_recipe(f, p),
    }
    phase = Phase(
        FINETUNE,
        updates or f.updates,
        f.lr,
        p,
        patience=f.patience,
        min_delta=f.min_delta,
        mask_models=tuple(f.mask_models),
        p_mask_range=None if f.p_mask_range is None else (f.p_mask_range[0], f.p_mask_range[1]),
        mean_burst_length=f.mean_burst_length,
        policy_term=_policy_term(cfg, dev, console),
    )
    summary = optimise(model, cfg, phase, run_dir, sampler, console, start, extra)
    save_checkpoint(
        final, {**extra, "phase": FINETUNE, "model": model.state_dict(), "summary": summary}
    )
    console.print(
        f"fine-tuning ({extra['masks']}) done: {summary['updates']} updates"
        f"{' (converged early)' if summary['stopped_early'] else ''}; wrote {final}"
    )
    return final


def _policy_term(cfg: Config, dev: torch.device, console: Console) -> Any:
    """rmio's policy-aware term when ``world_model.finetune.policy_weight`` > 0, else None."""
    f = cfg.world_model.finetune
    if f.policy_weight <= 0:
        return None
    source = f.policy or cfg.run.data_policy
    if source is None:
        raise RmioError(
            "world_model.finetune.policy_weight > 0 needs the actor it serves: set "
            "world_model.finetune.policy (a policy.pt or a bundle) or run.data_policy"
        )
    path = Path(source)
    actor = load_frozen_actor(path if path.exists() else find_bundle(source)).to(dev)
    console.print(
        f"policy-aware fine-tuning (weight {f.policy_weight:g}) for the actor of {source}"
    )
    return PolicyAwareTerm(actor, f.policy_weight)


def _bundle_policy(cfg: Config, bundle: Path, console: Console) -> Any:
    """A bundle's greedy actor.onnx with exploration noise (Gaussian 0.3 / 10% random available
    actions)."""
    manifest = load_manifest(bundle)
    if (
        manifest.spec.name != f"{cfg.env.family}/{cfg.env.scenario}"
        or "actor" not in manifest.files
    ):
        raise RmioError(f"bundle '{bundle}' has no actor for {cfg.env.family}/{cfg.env.scenario}")
    console.print(f"collecting with the actor of bundle {bundle} plus exploration noise")
    return _NoisyBundleActor(ActorRunner(bundle, manifest), cfg.run.seed + 17)


class _NoisyBundleActor:
    """``collect``'s policy: every agent of every copy in one batched actor call, then noise
    (``explore``: the chance of a random available action, discrete tasks).

    A recurrent actor (a QMIX or MMSA Q-agent) keeps one hidden state per agent of each copy, reset
    when ``collect`` starts that copy's episode (``episode_start``). Its state records the greedy
    action it chose, not the random one that exploration may put in its place: the data's actor
    is the deployed one, with noise on top."""

    def __init__(self, runner: ActorRunner, seed: int, explore: float = 0.1) -> None:
        self.runner, self.spec, self.explore = runner, runner.manifest.spec, explore
        self.rng = np.random.default_rng(seed)
        self.state: np.ndarray | None = None  # (copies * n, *shape) of a recurrent actor

    def episode_start(self, k: int) -> None:
        if self.state is not None:
            n = self.spec.n_agents
            self.state[k * n : (k + 1) * n] = 0.0

    def __call__(self, obs: np.ndarray, observed: np.ndarray, avail: np.ndarray | None) -> Any:
        """``obs`` is ``(num_envs, n, d)``."""
        spec, rows = self.spec, int(np.prod(obs.shape[:-1]))
        flat_avail = None if avail is None else avail.reshape(-1, avail.shape[-1])
        ids = np.tile(np.arange(spec.n_agents), rows // spec.n_agents)
        flat = obs.reshape(-1, obs.shape[-1])
        if self.runner.recurrent:
            if self.state is None or self.state.shape[0] != rows:  # a new batch of copies
                self.state = self.runner.initial_state(rows)
            action, self.state = self.runner.step(flat, ids, flat_avail, self.state)
        else:
            action = self.runner.act(flat, ids, flat_avail)
        action = action.reshape(*obs.shape[:-1], *action.shape[1:])
        if spec.discrete:
            explore = self.rng.random(action.shape) < self.explore
            return np.where(explore, spec.random_actions(self.rng, avail), action)
        noisy = action + self.rng.normal(0.0, 0.3, action.shape).astype(np.float32)
        return np.clip(noisy, spec.action_low, spec.action_high) * np.asarray(
            spec.action_feature_mask, np.float32
        )
