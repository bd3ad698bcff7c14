"""RMIOv2 joint pre-training (Algorithm 1, `rmio train pretrain`): world model + MAPPO in
imagination.

Each iteration: collect real steps with the current policy into the real buffer B_r (line 1),
E_M world-model updates on sequences from B_r (lines 2-9), then E_pi rounds of imagination from
real start states and PPO updates on those imagined trajectories (lines 10-19; the rollout is the
pseudo buffer B_p). How many world-model updates, how the actor and critic are shaped and how
advantages are scaled is ``policy.imagination`` (its ``recipe``: ``paper`` or ``tuned``); every
evaluation also logs the diagnostics of ``rmio.train.joint_diag``. The run directory ends up with
``wm_pretrain.pt`` and ``data/train.npz`` in the same form as `rmio train world-model`, so
`rmio train finetune` and `rmio export` apply as is.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console

from rmio.config import Config
from rmio.envs.collect import collect
from rmio.envs.loss import LossConfig
from rmio.envs.trajectory import TrajectoryBuffer
from rmio.envs.vector import make_vector_env
from rmio.train.common import begin_training, build_model, checkpoint_meta, progress
from rmio.train.imagination import imagine, start_batch
from rmio.train.joint_diag import joint_diagnostics
from rmio.train.mappo import build_agents, evaluate_and_log
from rmio.train.policy import LatentCritic, actor_policy
from rmio.train.ppo import PPO
from rmio.train.runlog import MetricLog, load_checkpoint, restore_rng, rng_state, save_checkpoint
from rmio.train.wm_data import SequenceSampler, observation_stats, world_model_loss
from rmio.train.wm_train import collect_holdout

NO_LOSS = LossConfig("none")  # pre-training sees complete observations (paper section 5)


def train_joint(cfg: Config, run_dir: Path, device: str, console: Console) -> Path:
    """Algorithm 1: alternate real collection with the current actor (line 1), world-model updates
    on all real data (lines 2-9) and PPO updates in imagination (lines 10-19); evaluate in the real
    env; resume by re-running."""
    final = run_dir / "policy.pt"
    dev = begin_training(cfg, final, device, "joint pre-training", console)
    if dev is None:
        return final
    im, wt = cfg.policy.imagination, cfg.world_model.train
    data_dir = run_dir / "data"
    ckpt_path = run_dir / "ckpt_joint.pt"
    start = load_checkpoint(ckpt_path, dev) if ckpt_path.exists() else None
    real, stats, counters = _initial_data(cfg, data_dir, start)
    model = build_model(cfg, real.spec, stats).to(dev)
    wm_opt = torch.optim.Adam(model.parameters(), lr=wt.lr, eps=1e-6)
    ppo = _build_ppo(cfg, real.spec, stats, model, dev)
    rng = np.random.default_rng(cfg.run.seed + 3)
    gen = torch.Generator(device=dev).manual_seed(cfg.run.seed)
    if start is not None:
        model.load_state_dict(start["model"])
        wm_opt.load_state_dict(start["wm_opt"])
        ppo.load_state_dict(start["ppo"])
        rng.bit_generator.state = start["np_rng"]
        gen.set_state(start["gen_rng"].cpu())
        restore_rng(start["torch_rng"])
        console.print(f"resuming joint pre-training at {counters['env_steps']} env steps")
    log = MetricLog(run_dir, "joint", config=cfg.to_dict())
    t0, steps0 = time.perf_counter(), counters["env_steps"]  # this process's share, on resume
    timing = {"collect_s": 0.0, "wm_s": 0.0, "imagine_s": 0.0, "imagined_steps": 0, "wm_updates": 0}
    newest: TrajectoryBuffer | None = None  # the latest collected episodes, for the diagnostics

    def state() -> dict[str, Any]:
        return {
            **checkpoint_meta(cfg, real.spec, stats),
            "model": model.state_dict(),
            "wm_opt": wm_opt.state_dict(),
            "ppo": ppo.state_dict(),
            **counters,
            "np_rng": rng.bit_generator.state,
            "gen_rng": gen.get_state(),
            "torch_rng": rng_state(),
            "obs_mean": stats[0].tolist(),
            "obs_std": stats[1].tolist(),
        }

    with (
        progress(console, "RMIOv2 pre-training", im.env_steps) as (bar, task),
        make_vector_env(cfg.env, im.num_envs, cfg.run.vector_mode) as venv,
    ):  # built (and jitted) once
        bar.update(task, completed=counters["env_steps"])
        if not counters["warm_started"]:  # world-model warm-start on the random data
            sampler = SequenceSampler(real, cfg.world_model.smoothing, dev)
            warm = _world_model_updates(model, wm_opt, sampler, rng, cfg, im.wm_warmup_updates)
            if warm:
                log.log(counters["env_steps"], {f"wm_{k}": v for k, v in warm.items()})
            counters["warm_started"] = 1
        while counters["env_steps"] < im.env_steps:
            eval_step = None
            if counters["env_steps"] >= counters["next_eval"]:
                eval_step = counters["env_steps"]
                evaluate_and_log(cfg, ppo.actor, run_dir, eval_step, console, log)
                counters["next_eval"] += im.eval_every
            tc = time.perf_counter()
            new, cstats = collect(
                cfg.env,
                NO_LOSS,
                steps=im.collect_steps,
                num_envs=im.num_envs,
                vector_mode=cfg.run.vector_mode,
                seed=cfg.run.seed + 1 + counters["env_steps"],
                policy=actor_policy(ppo.actor),
                venv=venv,
            )  # line 1
            newest = new
            if eval_step is not None:  # the episode the evaluated actor just collected, unseen
                diag = joint_diagnostics(model, ppo, new, cfg, cfg.run.seed + eval_step)
                log.log(eval_step, diag)
            real.extend(new)
            counters["env_steps"] += cstats.env_steps
            timing["collect_s"] += time.perf_counter() - tc
            tw = time.perf_counter()
            sampler = SequenceSampler(real, cfg.world_model.smoothing, dev)
            updates = im.wm_updates
            if im.wm_ratio is not None:  # E_M from the real steps just collected
                counters["wm_credit"] += im.wm_ratio * cstats.env_steps
                updates = int(counters["wm_credit"])
                counters["wm_credit"] -= updates
            wm_metrics = _world_model_updates(model, wm_opt, sampler, rng, cfg, updates)
            timing["wm_s"] += time.perf_counter() - tw
            timing["wm_updates"] += updates
            ti = time.perf_counter()
            ppo_metrics, rollout = _policy_updates(model, ppo, sampler, rng, gen, cfg)
            timing["imagined_steps"] += im.policy_updates * im.starts * im.horizon
            timing["imagine_s"] += time.perf_counter() - ti
            env_steps = counters["env_steps"]
            row = {
                **{f"wm_{k}": v for k, v in wm_metrics.items()},
                "wm_updates": float(updates),
                **ppo_metrics,
                "imagined_reward": float(rollout.rewards.mean()),
                "train_return": float(new.episode_returns().mean()),
                "real_steps_per_s": (env_steps - steps0) / max(time.perf_counter() - t0, 1e-9),
                "collect_steps_per_s": cstats.steps_per_second,
                "imagined_steps_per_s": timing["imagined_steps"] / max(timing["imagine_s"], 1e-9),
                "wm_updates_per_s": timing["wm_updates"] / max(timing["wm_s"], 1e-9),
            }
            log.log(env_steps, row)
            bar.update(
                task,
                completed=min(env_steps, im.env_steps),
                info=f"return {row['train_return']:.1f} wm {wm_metrics.get('loss', 0.0):.2f}",
            )
            if env_steps >= counters["next_ckpt"]:
                counters["next_ckpt"] += im.checkpoint_every
                real.save(data_dir / "train.npz")
                save_checkpoint(ckpt_path, state())
    env_steps = counters["env_steps"]
    result = evaluate_and_log(cfg, ppo.actor, run_dir, env_steps, console, log)
    if newest is not None:  # the last episodes, by the actor before its last updates
        log.log(env_steps, joint_diagnostics(model, ppo, newest, cfg, cfg.run.seed + env_steps))
    log.close()
    real.meta["env_steps"] = env_steps
    real.save(data_dir / "train.npz")
    save_checkpoint(ckpt_path, state())
    save_checkpoint(
        run_dir / "wm_pretrain.pt",
        {
            **checkpoint_meta(cfg, real.spec, stats),
            "phase": "pretrain",
            "model": model.state_dict(),
            "env_steps": env_steps,
        },
    )
    save_checkpoint(final, {**state(), "algo": "rmiov2", "final_eval": result, "timing": timing})
    console.print(
        f"joint pre-training done: {env_steps} env steps; wrote {final} and wm_pretrain.pt"
    )
    return final


def _build_ppo(
    cfg: Config, spec: Any, stats: tuple[np.ndarray, ...], model: Any, dev: torch.device
) -> PPO:
    """The actor and critic as ``policy.imagination`` shapes them (bounded actions, a critic on
    latent states) and PPO with its advantage scaling."""
    im, p = cfg.policy.imagination, cfg.policy.ppo
    base = build_agents(cfg, spec, stats[0], stats[1], dev)
    if im.bounded_actions:
        base.actor.set_bounds(im.std_min, im.std_max)
    critic = base.critic
    if im.critic == "latent":
        feat = model.cfg.deter + model.stoch
        critic = LatentCritic(spec.n_agents, feat, p.hidden).to(dev)
    if im.entropy_coef is not None:
        p = dataclasses.replace(p, entropy_coef=im.entropy_coef)
    return PPO(base.actor, critic, p, im.return_scaling, im.percentile_decay)


def _initial_data(
    cfg: Config, data_dir: Path, start: dict[str, Any] | None
) -> tuple[TrajectoryBuffer, tuple[np.ndarray, ...], dict[str, Any]]:
    """The real data, the normalisation statistics and the step counters: a random warm-up (and a
    held-out set) on a new run, else what the checkpoint recorded."""
    im = cfg.policy.imagination
    if start is None:
        real, _ = collect(
            cfg.env,
            NO_LOSS,
            steps=im.warmup_steps,
            num_envs=im.num_envs,
            vector_mode=cfg.run.vector_mode,
            seed=cfg.run.seed,
        )
        collect_holdout(cfg).save(data_dir / "holdout.npz")  # random play, as the warm-up
        stats = observation_stats(
            real
        )  # fixed from the random warm-up, shared by world model and actor
        return (
            real,
            stats,
            {
                "env_steps": len(real) - real.num_episodes,
                "next_eval": 0,
                "next_ckpt": im.checkpoint_every,
                "wm_credit": 0.0,
                "warm_started": 0,
            },
        )
    real = TrajectoryBuffer.load(data_dir / "train.npz")
    stats = tuple(
        np.asarray(start["stats"][k], np.float32)
        for k in ("obs_mean", "obs_std", "state_mean", "state_std")
    )
    counters = {k: start[k] for k in ("env_steps", "next_eval", "next_ckpt")}
    # checkpoints from before the ratio and the warm-start had neither (nor needed them)
    counters["wm_credit"] = float(start.get("wm_credit", 0.0))
    counters["warm_started"] = int(start.get("warm_started", 1))
    return real, stats, counters


def _world_model_updates(
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    sampler: SequenceSampler,
    rng: np.random.Generator,
    cfg: Config,
    updates: int,
) -> dict[str, float]:
    """Algorithm 1, lines 2-9: ``updates`` world-model updates on sequences of all real data (no
    masking)."""
    wt = cfg.world_model.train
    metrics: dict[str, float] = {}
    for _ in range(updates):
        batch = sampler.sample(rng, wt.batch_size, wt.seq_len)
        loss, metrics = world_model_loss(
            model, batch, torch.ones(batch.obs.shape[:3], device=batch.obs.device)
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), wt.grad_clip)
        opt.step()
    return metrics


def _policy_updates(
    model: Any,
    ppo: Any,
    sampler: SequenceSampler,
    rng: np.random.Generator,
    gen: torch.Generator,
    cfg: Config,
) -> tuple[dict[str, float], Any]:
    """Algorithm 1, lines 10-19: PPO on rollouts imagined from posterior states of real
    sequences."""
    im = cfg.policy.imagination
    metrics: dict[str, float] = {}
    rollout = None
    for _ in range(im.policy_updates):
        windows = sampler.sample(rng, im.starts, im.context, end_mid_episode=True)
        h, z, ctx = start_batch(model, windows)
        first = ctx.obs[:, -1] if im.real_start_obs else None  # the real o_t0 (line 12)
        avail = ctx.avail[:, -1] if im.real_start_obs and ctx.avail is not None else None
        rollout = imagine(model, ppo, h, z, im.horizon, first, im.critic == "latent", avail)
        metrics = ppo.update(rollout, gen)
    return metrics, rollout
