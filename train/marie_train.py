"""`rmio train world-model --algo marie`: MARIE's world model trained on rmio's collected data.

The same conventions as RMIOv2's pre-training (train/wm_train.py): the run directory holds the
resolved config, the data (collected once, reused), ``marie_pretrain.{jsonl,csv}`` and TensorBoard
logs, ``ckpt_marie.pt`` (weights, optimiser, step, every random stream) and, when done,
``marie_pretrain.pt``; rerunning the command on the directory resumes where it stopped.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console

from rmio.config import Config
from rmio.envs.trajectory import TrajectoryBuffer
from rmio.errors import RmioError
from rmio.train.common import begin_training, checkpoint_meta, progress
from rmio.train.marie_model import MarieWorldModel
from rmio.train.runlog import MetricLog, load_checkpoint, restore_rng, rng_state, save_checkpoint
from rmio.train.wm_data import SequenceSampler, observation_stats
from rmio.train.wm_train import ensure_data

log = logging.getLogger(__name__)

CKPT, FINAL, LOG = "ckpt_marie.pt", "marie_pretrain.pt", "marie_pretrain"


def build_marie(cfg: Config, spec: Any, stats: tuple[np.ndarray, ...]) -> MarieWorldModel:
    """The model a config and the data's observation statistics describe."""
    return MarieWorldModel(cfg.marie, spec, stats[0], stats[1])


def _optimiser(model: MarieWorldModel, cfg: Config) -> torch.optim.Optimizer:
    """AdamW with Table 3's weight decay on the weight matrices only (not biases, norms, embeddings
    of ids or the codebook)."""
    decay, rest = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        matrix = p.dim() >= 2 and "emb" not in name and "codebook" not in name
        (decay if matrix and "latents" not in name else rest).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.marie.weight_decay},
        {"params": rest, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.world_model.train.lr)


@torch.no_grad()
def holdout_metrics(
    model: MarieWorldModel, holdout: TrajectoryBuffer, cfg: Config, device: torch.device
) -> dict[str, float]:
    """Teacher-forced losses on held-out episodes (other seeds), in eval mode."""
    sampler = SequenceSampler(holdout, cfg.world_model.smoothing, device)
    rng = np.random.default_rng(cfg.run.seed + 99)
    model.eval()
    try:
        batch = sampler.sample(rng, cfg.world_model.train.batch_size, cfg.marie.seq_len + 1)
        _, metrics = model.loss(batch)
    finally:
        model.train()
    return {f"holdout_{k}": v for k, v in metrics.items()}


def train_marie(cfg: Config, run_dir: Path, device: str, console: Console) -> Path:
    """Train (or resume) MARIE's world model; returns the path of ``marie_pretrain.pt``."""
    final = run_dir / FINAL
    dev = begin_training(cfg, final, device, "MARIE's training", console)
    if dev is None:
        return final
    train_buf, holdout = ensure_data(cfg, run_dir, console)
    stats = observation_stats(train_buf)
    model = build_marie(cfg, train_buf.spec, stats).to(dev)
    sampler = SequenceSampler(train_buf, cfg.world_model.smoothing, dev)
    tcfg = cfg.world_model.train
    opt = _optimiser(model, cfg)
    rng = np.random.default_rng(cfg.run.seed)
    step = 0
    ckpt_path = run_dir / CKPT
    if ckpt_path.exists():  # resume exactly: weights (and codebook EMA), optimiser, step, rngs
        start = load_checkpoint(ckpt_path, dev)
        model.load_state_dict(start["model"])
        opt.load_state_dict(start["optim"])
        step = start["step"]
        rng.bit_generator.state = start["np_rng"]
        restore_rng(start["torch_rng"])
        console.print(f"resuming MARIE's training from update {step}")
    meta = checkpoint_meta(cfg, train_buf.spec, stats)
    params = sum(p.numel() for p in model.parameters())
    console.print(f"MARIE ({cfg.marie.preset} preset): {params / 1e6:.2f} M parameters")

    def checkpoint() -> None:
        save_checkpoint(
            ckpt_path,
            {
                **meta,
                "model": model.state_dict(),
                "optim": opt.state_dict(),
                "step": step,
                "np_rng": rng.bit_generator.state,
                "torch_rng": rng_state(),
            },
        )

    metrics_log = MetricLog(run_dir, LOG)
    t0, done_at_start = time.perf_counter(), step
    model.train()
    with progress(console, "MARIE world model", tcfg.updates) as (bar, task):
        bar.update(task, completed=step)
        while step < tcfg.updates:
            batch = sampler.sample(rng, tcfg.batch_size, cfg.marie.seq_len + 1)
            loss, metrics = model.loss(batch)
            if not torch.isfinite(loss):
                raise RmioError(
                    f"MARIE's loss became {loss.item()} at update {step}; lower the learning rate "
                    "(--set world_model.train.lr=...) or check the data for extreme values"
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.grad_clip)
            opt.step()
            step += 1
            if step % tcfg.log_every == 0 or step == tcfg.updates:
                rate = (step - done_at_start) / (time.perf_counter() - t0)
                row = {**metrics, "grad_norm": float(grad_norm), "updates_per_s": rate}
                metrics_log.log(step, row)
            bar.update(
                task,
                completed=step,
                info=f"loss {metrics['loss']:.3f} tokens {metrics['obs_ce']:.3f} "
                f"acc {metrics['token_acc']:.2f} vq {metrics['vq_recon']:.3f}",
            )
            if step % tcfg.checkpoint_every == 0:
                checkpoint()
    checkpoint()
    elapsed = time.perf_counter() - t0
    held = holdout_metrics(model, holdout, cfg, dev)
    metrics_log.log(step, held)
    metrics_log.close()
    summary = {
        "updates": step,
        "seconds": elapsed,
        "updates_per_s": (step - done_at_start) / max(elapsed, 1e-9),
        "params": params,
        **held,
    }
    save_checkpoint(
        final,
        {
            **meta,
            "phase": "marie",
            "model": model.state_dict(),
            "summary": summary,
            "env_steps": int(train_buf.meta.get("env_steps", len(train_buf))),
        },
    )
    console.print(
        f"MARIE's training done: {step} updates at {summary['updates_per_s']:.2f}/s, held-out "
        f"token accuracy {held['holdout_token_acc']:.3f}; wrote {final}"
    )
    return final


def load_marie(path: Path, device: torch.device | str = "cpu") -> tuple[MarieWorldModel, dict]:
    """A trained MARIE from ``marie_pretrain.pt`` (config, spec and statistics travel with it)."""
    from rmio.config import build_dataclass
    from rmio.envs.base import EnvSpec

    ckpt = load_checkpoint(path, device)
    cfg = build_dataclass(Config, ckpt["config"], str(path))
    stats = tuple(np.asarray(ckpt["stats"][k], np.float32) for k in ("obs_mean", "obs_std"))
    model = build_marie(cfg, EnvSpec.from_dict(ckpt["spec"]), stats).to(device)
    model.load_state_dict(ckpt["model"])
    return model.eval(), ckpt
