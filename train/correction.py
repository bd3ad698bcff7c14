"""RMIO v1's correction stage (`--algo rmio-v1`): a correction block trained on top of the frozen
pre-trained world model, in place of RMIOv2's masked fine-tuning.

RMIO v1 (Shi et al., arXiv 2411.19639) predicts a lost agent from the world model's prior and then
corrects the prediction with a separately trained block over the concatenated joint observation,
built from an MLP and self-attention (RMIOv2 paper, sections 2.2 and 6.2). Here, per step t:

1. h_t comes from the world model's transition as always;
2. a lost agent's row is the prior's prediction o^_t^i = p_o(h_t^i, mode p_prior(z^_t^i | h_t^i));
3. the block (``rmio.train.networks.CorrectionBlock``) sees the joint observation (real rows of the
   observed agents, predictions in the lost ones), the observed flags and each agent's id, and adds
   a correction to each lost row;
4. the corrected row is encoded by the posterior like an observed one, so z_t, the decoded o^_t that
   the coordinator hands out, and every later step use it.

The whole step is ``RMIOWorldModel.step`` with the block attached, so it is exported inside
``wm_step.onnx`` with the bundle contract unchanged: the runtime, the in-process evaluation and the
swarm run an RMIO v1 bundle exactly like an RMIOv2 one. ``wm_step_pretrain.onnx`` of such a bundle
is the world model before the correction stage: prior prediction alone, MAMBA-style.

Training: the world model's parameters are frozen; masks are Bernoulli(p_mask) per agent and step on
sequences of the real buffer (the run's fine-tuning p_mask, updates, patience); the world model is
rolled forward with the block in the loop, as deployed (modes, no sampling), and the state is
detached between steps. The loss on lost agents is SmoothL1 of the corrected row plus SmoothL1 of
what the world model decodes after encoding it (a straight-through mode carries the gradient
through the frozen posterior and decoder), both against the true observation in normalised units.

Not determinable from the papers, and chosen here:

* the block's exact layers and widths (two-layer MLP of width ``hidden`` over the flat joint
  observation plus flags, id and own row, one post-norm attention layer of ``fusion_dim`` with
  ``fusion_heads`` heads, a linear head initialised at zero so training starts from the prior's
  prediction) and its residual form;
* whether the block also sees latent states (here: no, observations only) and whether a corrected
  row re-enters the world model (here: yes, through the posterior);
* its loss (SmoothL1, as the world model's reconstruction term), its learning rate (the pre-training
  rate ``world_model.train.lr``: the block starts from scratch) and truncation to one step;
* the rest of RMIO v1's world model, which builds on MAMBA: here the MAMBA preset (no observation
  fusion, three layers of action fusion, a lost agent's latent from the prior) with fixed-window
  reward smoothing (RMIO v1 smooths rewards; the kernel it uses is not stated). Its dual-layer
  replay buffer and RNN-augmented policy are not reproduced: every variant deploys rmio's
  observation-based actor.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console

from rmio.config import load_config
from rmio.envs.trajectory import TrajectoryBuffer
from rmio.errors import RmioError
from rmio.train.common import load_model, progress, resolve_device, seed_everything
from rmio.train.plateau import Plateau
from rmio.train.resume import Resumable
from rmio.train.runlog import MetricLog, load_checkpoint, save_checkpoint
from rmio.train.wm_data import Batch, SequenceSampler, sample_masks
from rmio.train.world_model import RMIOWorldModel

PHASE = "correction"


def _per_agent(pred: torch.Tensor, target: torch.Tensor, fm: torch.Tensor) -> torch.Tensor:
    return (F.smooth_l1_loss(pred, target, reduction="none") * fm).sum(-1) / fm.sum(-1)


def correction_loss(
    model: RMIOWorldModel, batch: Batch, mask: torch.Tensor
) -> tuple[torch.Tensor, dict[str, float]]:
    """The block's loss on lost agents over a batch of sequences (B, T, n), the world model
    frozen; ``prior_masked`` is the uncorrected prior prediction's error, for comparison."""
    if model.correction is None:
        raise RmioError("the world model has no correction block to train")
    obs_n = model.normalize_obs(batch.obs)
    fm = model.feature_mask
    B, T = obs_n.shape[:2]
    h, z = model.initial(B)
    sums = {"corr": obs_n.new_zeros(()), "dec": obs_n.new_zeros(()), "prior": 0.0}
    for t in range(T):
        keep = (1.0 - batch.is_first[:, t].float()).view(B, 1, 1)
        m, target = mask[:, t], obs_n[:, t]
        lost = 1.0 - m
        with torch.no_grad():
            h = model.transition(h * keep, z * keep, batch.prev_action[:, t])
            guess = model.decode_obs(h, model.prior(h).mode())
            sums["prior"] += float((_per_agent(guess, target, fm) * lost).sum())
        corrected = model.corrected_obs(h, target, m)
        post = model.posterior(h, corrected, torch.ones_like(m))
        z_st = post.mode() + post.probs.flatten(-2) - post.probs.flatten(-2).detach()
        decoded = model.decode_obs(h, z_st)
        sums["corr"] = sums["corr"] + (_per_agent(corrected, target, fm) * lost).sum()
        sums["dec"] = sums["dec"] + (_per_agent(decoded, target, fm) * lost).sum()
        z = z_st.detach()
    count = (1.0 - mask).sum().clamp(min=1.0)
    loss = (sums["corr"] + sums["dec"]) / count
    metrics = {
        "loss": loss.item(),
        "corr_masked": (sums["corr"] / count).item(),
        "obs_masked": (sums["dec"] / count).item(),
        "prior_masked": sums["prior"] / count.item(),
    }
    return loss, metrics


def train_correction(
    run_dir: Path, p_mask: float | None, device: str, console: Console, updates: int | None = None
) -> Path:
    """RMIO v1's fine-tuning stage: train the correction block on ``wm_pretrain.pt`` frozen; writes
    ``wm_finetune.pt`` (world model unchanged, block attached). Resumable like fine-tuning."""
    final = run_dir / "wm_finetune.pt"
    if final.exists():
        console.print(f"{final} exists: the correction stage already finished (delete it to redo)")
        return final
    pre = run_dir / "wm_pretrain.pt"
    if not pre.exists():
        raise RmioError(
            f"'{run_dir}' has no wm_pretrain.pt; run "
            f"`rmio train world-model CONFIG --run-dir {run_dir}` first"
        )
    cfg = load_config(run_dir / "config.yaml")
    f, tcfg = cfg.world_model.finetune, cfg.world_model.train
    p = f.p_mask if p_mask is None else p_mask
    if not 0.0 < p <= 1.0:
        raise RmioError(
            f"the correction block learns from lost agents: p_mask must be in (0, 1], got {p}"
        )
    dev = resolve_device(device)
    torch.set_num_threads(tcfg.threads)
    seed_everything(cfg.run.seed + 1)
    model, ckpt = load_model(pre, dev)
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    block = model.attach_correction()
    opt = torch.optim.Adam(block.parameters(), lr=tcfg.lr, eps=1e-6)
    sampler = SequenceSampler(
        TrajectoryBuffer.load(run_dir / "data" / "train.npz"), cfg.world_model.smoothing, dev
    )
    rng = np.random.default_rng(cfg.run.seed + 1)
    mask_gen = torch.Generator(device=dev).manual_seed(cfg.run.seed + 7)
    extra = {k: ckpt[k] for k in ("config", "config_hash", "spec", "stats")}
    extra.update({"p_mask": p, "masks": f"p_mask {p:g}", "correction": True})
    ck = run_dir / f"ckpt_{PHASE}.pt"
    step, plateau = 0, Plateau(f.min_delta)
    resume = Resumable(block, opt, plateau, rng, mask_gen, net_key="block")
    if ck.exists():
        start = load_checkpoint(ck, dev)
        if abs(start["p_mask"] - p) > 1e-12:
            raise RmioError(
                f"an interrupted correction stage in '{run_dir}' used p_mask {start['p_mask']}, "
                f"not {p}; resume with --p-mask {start['p_mask']} or delete {ck.name}"
            )
        step = resume.restore(start)
        console.print(f"resuming the correction stage from update {step}")

    def checkpoint() -> None:
        save_checkpoint(ck, {**extra, **resume.state(step)})

    total = updates or f.updates
    log = MetricLog(run_dir, "wm_finetune")  # the fine-tuning phase's log, as RMIOv2's
    t0, first = time.perf_counter(), step
    # a run that stopped early and was killed before its final file stays stopped
    stopped = plateau.stalled(f.patience)
    with progress(console, "RMIO v1 correction block", total) as (bar, task):
        bar.update(task, completed=step)
        while step < total and not stopped:
            batch = sampler.sample(rng, tcfg.batch_size, tcfg.seq_len)
            mask = sample_masks(mask_gen, tuple(batch.obs.shape[:3]), p, dev)
            loss, metrics = correction_loss(model, batch, mask)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(block.parameters(), tcfg.grad_clip)
            opt.step()
            step += 1
            ema = plateau.update(metrics["loss"])
            if step % tcfg.log_every == 0 or step == total:
                rate = (step - first) / (time.perf_counter() - t0)
                log.log(step, {**metrics, "loss_ema": ema, "updates_per_s": rate})
            bar.update(task, completed=step, info=f"lost agents {metrics['obs_masked']:.3f}")
            if step % tcfg.checkpoint_every == 0:
                checkpoint()
            if plateau.stalled(f.patience):
                stopped = True
                break
    checkpoint()
    log.close()
    elapsed = time.perf_counter() - t0
    summary: dict[str, Any] = {
        "updates": step,
        "seconds": elapsed,
        "updates_per_s": (step - first) / max(elapsed, 1e-9),
        "final_loss_ema": plateau.ema,
        "stopped_early": stopped,
    }
    save_checkpoint(
        final, {**extra, "phase": PHASE, "model": model.state_dict(), "summary": summary}
    )
    console.print(
        f"correction stage (p_mask {p:g}, world model frozen) done: {step} updates"
        f"{' (converged early)' if stopped else ''}; wrote {final}"
    )
    return final
