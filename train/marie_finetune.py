"""`rmio train finetune RUN_DIR` on a MARIE run: rmio's masked fine-tuning of MARIE (not the
paper's; train/marie_masked.py says what it trains).

The same conventions as RMIOv2's fine-tuning (train/wm_train.py): ``world_model.finetune``'s
p_mask, mask recipe (train/masks.py), learning rate, update bound and early stopping;
``marie_finetune.{jsonl,csv}`` and TensorBoard; ``ckpt_marie_finetune.pt`` (weights, optimiser,
step, every random stream), resumed by rerunning the command; ``marie_finetune.pt`` when done,
with held-out L_rec on the lost agents before and after fine-tuning.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console

from rmio.config import Config, load_config
from rmio.config import validate as validate_config
from rmio.envs.trajectory import TrajectoryBuffer
from rmio.errors import RmioError
from rmio.train.common import progress, resolve_device, seed_everything
from rmio.train.marie_masked import masked_loss
from rmio.train.marie_model import MarieWorldModel
from rmio.train.marie_train import FINAL as PRETRAINED
from rmio.train.marie_train import _optimiser, load_marie
from rmio.train.plateau import Plateau
from rmio.train.resume import Resumable
from rmio.train.runlog import MetricLog, load_checkpoint, save_checkpoint
from rmio.train.wm_data import SequenceSampler
from rmio.train.wm_train import FINETUNE, Phase, mask_recipe

log = logging.getLogger(__name__)

CKPT, FINAL, LOG = "ckpt_marie_finetune.pt", "marie_finetune.pt", "marie_finetune"
HOLDOUT_BATCHES = 4
"""Held-out batches (of world_model.train.batch_size sequences) behind the reported L_rec."""


def _feature_mask(model: MarieWorldModel, spec: Any) -> torch.Tensor:
    return torch.as_tensor(spec.obs_feature_mask, dtype=torch.float32, device=model.tok.mean.device)


@torch.no_grad()
def holdout_lrec(
    model: MarieWorldModel, holdout: TrajectoryBuffer, cfg: Config, phase: Phase, seed: int
) -> dict[str, float]:
    """L_rec (SmoothL1, normalised units) and token accuracy on the lost agents of held-out
    sequences, masks drawn by ``phase``'s recipe with a fixed seed (the same masks for every
    model compared)."""
    dev = model.tok.mean.device
    sampler = SequenceSampler(holdout, cfg.world_model.smoothing, dev)
    rng = np.random.default_rng(seed)
    gen = torch.Generator(device=dev).manual_seed(seed)
    fm = _feature_mask(model, holdout.spec)
    was = model.training
    model.eval()
    sums: dict[str, float] = {}
    try:
        for _ in range(HOLDOUT_BATCHES):
            batch = sampler.sample(rng, cfg.world_model.train.batch_size, cfg.marie.seq_len + 1)
            mask = phase.sample(gen, tuple(batch.obs.shape[:3]), dev)
            _, metrics = masked_loss(model, batch, mask, fm)
            for key in ("lrec_masked", "token_acc_masked", "obs_ce_masked"):
                sums[key] = sums.get(key, 0.0) + metrics[key] / HOLDOUT_BATCHES
    finally:
        model.train(was)
    return sums


def finetune_marie(
    run_dir: Path,
    p_mask: float | None,
    device: str,
    console: Console,
    updates: int | None = None,
    masks: dict[str, Any] | None = None,
) -> Path:
    """Masked fine-tuning of ``marie_pretrain.pt`` with the tokenizer frozen; returns the path of
    ``marie_finetune.pt``. ``masks`` overrides ``world_model.finetune``'s recipe keys."""
    cfg = load_config(run_dir / "config.yaml")
    f = cfg.world_model.finetune
    for key, value in (masks or {}).items():
        setattr(f, key, value)
    validate_config(cfg, f"{run_dir / 'config.yaml'} with the fine-tuning mask options")
    dev = resolve_device(device)
    if f.policy_weight > 0:
        raise RmioError(
            "policy-aware fine-tuning (world_model.finetune.policy_weight > 0) is not built for "
            "MARIE: fine-tune with policy_weight 0"
        )
    final = run_dir / FINAL
    if final.exists():
        console.print(
            f"{final} exists: fine-tuning already finished (delete it to fine-tune again)"
        )
        return final
    pre = run_dir / PRETRAINED
    if not pre.exists():
        raise RmioError(
            f"'{run_dir}' has no {PRETRAINED}; run `rmio train world-model CONFIG --algo marie "
            f"--run-dir {run_dir}` first"
        )
    p = f.p_mask if p_mask is None else p_mask
    if not 0.0 <= p <= 1.0:
        raise RmioError(f"--p-mask must be in [0, 1], got {p}")
    recipe = mask_recipe(f, p)
    model, ckpt = load_marie(pre, dev)
    torch.set_num_threads(cfg.world_model.train.threads)
    seed_everything(cfg.run.seed + 1)
    for param in model.tok.parameters():  # its ids are the targets: frozen
        param.requires_grad_(False)
    opt = _optimiser(model, cfg)
    for group in opt.param_groups:
        group["lr"] = f.lr
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
    )
    train_buf = TrajectoryBuffer.load(run_dir / "data" / "train.npz")
    holdout = TrajectoryBuffer.load(run_dir / "data" / "holdout.npz")
    sampler = SequenceSampler(train_buf, cfg.world_model.smoothing, dev)
    fm = _feature_mask(model, train_buf.spec)
    rng = np.random.default_rng(cfg.run.seed + 1)
    mask_gen = torch.Generator(device=dev).manual_seed(cfg.run.seed + 7)
    step, plateau = 0, Plateau(phase.min_delta)
    resume = Resumable(model, opt, plateau, rng, mask_gen)
    extra = {k: ckpt[k] for k in ("config", "config_hash", "spec", "stats")}
    extra.update(p_mask=p, masks=recipe)
    before: dict[str, float] | None = None
    ck = run_dir / CKPT
    if ck.exists():
        start = load_checkpoint(ck, dev)
        if abs(start["p_mask"] - p) > 1e-12 or start["masks"] != recipe:
            raise RmioError(
                f"an interrupted fine-tuning in '{run_dir}' drew its masks as {start['masks']}, "
                f"not {recipe}; resume with the same settings or delete {ck.name}"
            )
        step = resume.restore(start)
        before = start["holdout_before"]
        console.print(f"resuming MARIE's masked fine-tuning from update {step}")
    if before is None:
        before = holdout_lrec(model, holdout, cfg, phase, cfg.run.seed + 99)

    def checkpoint() -> None:
        save_checkpoint(
            ck,
            {**extra, "phase": "marie_finetune", "holdout_before": before, **resume.state(step)},
        )

    tcfg = cfg.world_model.train
    metrics_log = MetricLog(run_dir, LOG)
    t0, done_at_start = time.perf_counter(), step
    # a run that stopped early and was killed before its final file stays stopped
    stopped_early = plateau.stalled(phase.patience)
    model.train()
    with progress(console, "MARIE masked fine-tuning", phase.updates) as (bar, task):
        bar.update(task, completed=step)
        while step < phase.updates and not stopped_early:
            batch = sampler.sample(rng, tcfg.batch_size, cfg.marie.seq_len + 1)
            mask = phase.sample(mask_gen, tuple(batch.obs.shape[:3]), dev)
            loss, metrics = masked_loss(model, batch, mask, fm)
            if not torch.isfinite(loss):
                raise RmioError(
                    f"MARIE's fine-tuning loss became {loss.item()} at update {step}; lower "
                    "world_model.finetune.lr"
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
                    step, {**metrics, "grad_norm": float(grad_norm), "loss_ema": ema,
                           "updates_per_s": rate}
                )  # fmt: skip
            bar.update(
                task,
                completed=step,
                info=f"loss {metrics['loss']:.3f} masked ce {metrics['obs_ce_masked']:.3f} "
                f"acc {metrics['token_acc_masked']:.2f} L_rec {metrics['lrec_masked']:.3f}",
            )
            if step % tcfg.checkpoint_every == 0:
                checkpoint()
            if plateau.stalled(phase.patience):
                stopped_early = True
                break
    checkpoint()
    elapsed = time.perf_counter() - t0
    after = holdout_lrec(model, holdout, cfg, phase, cfg.run.seed + 99)
    held = {f"holdout_{k}": v for k, v in after.items()}
    held.update({f"holdout_{k}_pretrain": v for k, v in before.items()})
    metrics_log.log(step, held)
    metrics_log.close()
    summary = {
        "updates": step,
        "seconds": elapsed,
        "updates_per_s": (step - done_at_start) / max(elapsed, 1e-9),
        "final_loss_ema": plateau.ema,
        "stopped_early": stopped_early,
        **held,
    }
    save_checkpoint(
        final, {**extra, "phase": "marie_finetune", "model": model.state_dict(), "summary": summary}
    )
    console.print(
        f"MARIE's masked fine-tuning ({recipe}) done: {step} updates"
        f"{' (converged early)' if stopped_early else ''}; held-out L_rec on lost agents "
        f"{before['lrec_masked']:.4f} -> {after['lrec_masked']:.4f}; wrote {final}"
    )
    return final
