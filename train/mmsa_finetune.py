"""`rmio train finetune MMSA_RUN`: MMSA under observation loss, rmio's extension (not the paper's).

A separate stage on the trained run, not a term of MMSA's training: the paper's losses, curves and
agent stay what `rmio train mmsa` trained (its L_total has no observation term, and one would
reshape the posterior the mixer's roll-outs read), and an already trained run gains a world model
without retraining. The stage (train/mmsa_recon.py has the model):

1. **data**: the trained agent plays ``mmsa.recon_episodes`` episodes epsilon-greedy at
   ``qmix.epsilon_finish`` (QMIX's runner and episode buffer), and ``mmsa.recon_holdout`` more on
   other seeds;
2. **decoder** (the analogue of RMIOv2's pre-training): the observation decoder D alone, every
   observation seen, on the prior's prediction and the posterior's decode of every agent, with
   MMSA's latent model frozen (``mmsa.recon_updates`` updates, Adam at ``mmsa.recon_lr``);
   written as ``mmsa_wm_pretrain.pt``;
3. **masked fine-tuning** (RMIOv2's Algorithm 2, lines 20-27): masks from
   ``world_model.finetune``'s recipe (train/masks.py), the lost agents' observations replaced in
   the unroll by the prior's prediction exactly as the deployed step does, the loss the lost
   agents' reconstruction error (plus the observed agents' decode), D, the posterior, the prior
   and phi^sa trained (``world_model.finetune.updates`` at its ``lr``); ``mmsa_wm.pt``.

Both files hold the held-out errors before and after. The stage runs in seconds to minutes and
keeps no resumable checkpoint: an interrupted stage starts again.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console

from rmio.config import Config, load_config
from rmio.config import validate as validate_config
from rmio.envs.vector import make_vector_env
from rmio.errors import RmioError
from rmio.train.common import resolve_device, seed_everything
from rmio.train.masks import sample_mixed_masks
from rmio.train.mmsa_nets import LatentWorldModel, MMSAAgent
from rmio.train.mmsa_recon import MMSAObsModel, reconstruction_terms
from rmio.train.qmix_replay import EpisodeBuffer, Runner
from rmio.train.runlog import MetricLog, load_checkpoint, save_checkpoint
from rmio.train.wm_train import mask_recipe

PRETRAINED, FINAL, LOG = "mmsa_wm_pretrain.pt", "mmsa_wm.pt", "mmsa_wm"
DATA_SEED = 800_000
"""The stage's episodes use env seeds apart from training's, evaluation's and export's."""


def collect(
    agent: MMSAAgent, cfg: Config, episodes: int, seed: int, device: torch.device
) -> EpisodeBuffer:
    """``episodes`` finished episodes of the agent, epsilon-greedy at ``qmix.epsilon_finish``."""
    with make_vector_env(cfg.env, cfg.run.num_envs, cfg.run.vector_mode) as venv:
        buffer = EpisodeBuffer(episodes, venv.spec)
        runner = Runner(venv, agent, np.random.default_rng(seed), device)
        runner.reset(seed=seed)
        while buffer.count < episodes:
            for ep in runner.step(cfg.qmix.epsilon_finish):
                if buffer.count < episodes:
                    buffer.add(ep)
    return buffer


def draw_masks(
    cfg: Config, p_mask: float, gen: torch.Generator, shape: tuple[int, int, int], dev: Any
) -> torch.Tensor:
    """world_model.finetune's recipe at rate ``p_mask`` (or its range), (B, T+1, n)."""
    f = cfg.world_model.finetune
    low, high = (p_mask, p_mask) if f.p_mask_range is None else tuple(f.p_mask_range)
    return sample_mixed_masks(gen, shape, f.mask_models, low, high, f.mean_burst_length, dev)


@torch.no_grad()
def holdout_errors(
    model: MMSAObsModel, holdout: EpisodeBuffer, cfg: Config, p_mask: float, seed: int = 0
) -> dict[str, float]:
    """Reconstruction errors on every held-out episode (normalised units, summed over features):
    ``rec_lost`` of the lost agents under fixed masks at ``p_mask`` (the same masks for every
    model compared), ``rec_prior_all`` of the prediction of every agent, ``rec_post`` of the
    observed agents' decode; ``rec_lost_hold_last`` is ``rec_lost`` of hold-last (the model with
    D = 0, which predicts the observation last acted on: zeros at an episode's first step)."""
    dev = model.ids.device
    batch = holdout.sample(holdout.count, np.random.default_rng(0), dev)
    b, t1, n, _ = batch["obs"].shape
    gen = torch.Generator(device=dev).manual_seed(seed)
    mask = draw_masks(cfg, p_mask, gen, (b, t1, n), dev)
    masked = reconstruction_terms(
        model, batch["obs"], batch["actions"], batch["filled"], mask, True
    )
    full = torch.ones_like(mask)
    seen = reconstruction_terms(model, batch["obs"], batch["actions"], batch["filled"], full, False)
    hold = copy.deepcopy(model)
    hold.decode_o[-1].weight.zero_()
    hold.decode_o[-1].bias.zero_()
    baseline = reconstruction_terms(
        hold, batch["obs"], batch["actions"], batch["filled"], mask, True
    )
    return {
        "rec_lost": float(masked["rec_prior"]),
        "rec_lost_hold_last": float(baseline["rec_prior"]),
        "rec_prior_all": float(seen["rec_prior"]),
        "rec_post": float(seen["rec_post"]),
    }


def _optimise(
    model: MMSAObsModel,
    params: list[torch.nn.Parameter],
    lr: float,
    updates: int,
    data: EpisodeBuffer,
    cfg: Config,
    p_mask: float | None,
    log: MetricLog,
    offset: int,
) -> None:
    """``updates`` Adam steps on sampled episodes; ``p_mask`` None: every observation seen (the
    decoder stage), else masks of that rate and the lost agents' error (fine-tuning)."""
    dev = model.ids.device
    opt = torch.optim.Adam(params, lr=lr)
    rng = np.random.default_rng(cfg.run.seed + offset)
    gen = torch.Generator(device=dev).manual_seed(cfg.run.seed + offset)
    size = min(cfg.mmsa.recon_batch, data.count)
    every = max(1, updates // 20)
    for step in range(1, updates + 1):
        batch = data.sample(size, rng, dev)
        b, t1, n, _ = batch["obs"].shape
        if p_mask is None:
            mask = torch.ones(b, t1, n, device=dev)
        else:
            mask = draw_masks(cfg, p_mask, gen, (b, t1, n), dev)
        terms = reconstruction_terms(
            model, batch["obs"], batch["actions"], batch["filled"], mask, p_mask is not None
        )
        loss = terms["rec_prior"] + terms["rec_post"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 10.0)
        opt.step()
        if step % every == 0 or step == updates:
            log.log(offset + step, {k: float(v.detach()) for k, v in terms.items()})


def finetune_mmsa(
    run_dir: Path,
    p_mask: float | None,
    device: str,
    console: Console,
    updates: int | None = None,
    masks: dict[str, Any] | None = None,
) -> Path:
    """The decoder stage then masked fine-tuning of an MMSA run's latent model; returns the path
    of ``mmsa_wm.pt``. ``masks`` overrides ``world_model.finetune``'s recipe keys, as for
    RMIOv2."""
    cfg = load_config(run_dir / "config.yaml")
    f = cfg.world_model.finetune
    for key, value in (masks or {}).items():
        setattr(f, key, value)
    validate_config(cfg, f"{run_dir / 'config.yaml'} with the fine-tuning mask options")
    if f.policy_weight > 0:
        raise RmioError(
            "policy-aware fine-tuning (world_model.finetune.policy_weight > 0) is not built for "
            "MMSA: fine-tune with policy_weight 0"
        )
    dev = resolve_device(device)
    final = run_dir / FINAL
    if final.exists():
        console.print(
            f"{final} exists: fine-tuning already finished (delete it to fine-tune again)"
        )
        return final
    trained = run_dir / "mmsa.pt"
    if not trained.exists():
        raise RmioError(f"'{run_dir}' has no mmsa.pt: let `rmio train mmsa` finish first")
    p = f.p_mask if p_mask is None else p_mask
    if not 0.0 <= p <= 1.0:
        raise RmioError(f"--p-mask must be in [0, 1], got {p}")
    ckpt = load_checkpoint(trained, dev)
    agent, wm = _trained_networks(ckpt, cfg, dev)
    torch.set_num_threads(cfg.world_model.train.threads)
    seed_everything(cfg.run.seed + 11)
    m = cfg.mmsa
    data = collect(agent, cfg, m.recon_episodes, cfg.run.seed + DATA_SEED, dev)
    holdout = collect(agent, cfg, m.recon_holdout, cfg.run.seed + 2 * DATA_SEED, dev)
    model = MMSAObsModel(agent, wm, m).to(dev)
    log = MetricLog(run_dir, LOG)
    extra = {k: ckpt[k] for k in ("config", "spec")}
    try:
        before = holdout_errors(model, holdout, cfg, p)
        model.train()
        decoder = list(model.decode_o.parameters())
        _optimise(model, decoder, m.recon_lr, m.recon_updates, data, cfg, None, log, 0)
        model.eval()
        decoded = holdout_errors(model, holdout, cfg, p)
        stage = {"untrained": before, "decoder": decoded}
        save_checkpoint(
            run_dir / PRETRAINED,
            {**extra, "model": model.state_dict(), "stage": "decoder", "holdout": stage},
        )
        console.print(
            f"MMSA decoder: held-out prediction error {before['rec_prior_all']:.3f} -> "
            f"{decoded['rec_prior_all']:.3f}, lost agents at p_mask {p:g} {decoded['rec_lost']:.3f}"
        )
        model.train()
        n_ft = updates or f.updates
        params = model.finetuned_parameters()
        _optimise(model, params, f.lr, n_ft, data, cfg, p, log, m.recon_updates)
        model.eval()
        tuned = holdout_errors(model, holdout, cfg, p)
    finally:
        log.close()
    recipe = mask_recipe(f, p)
    result = {"untrained": before, "decoder": decoded, "finetune": tuned}
    save_checkpoint(
        final,
        {
            **extra,
            "model": model.state_dict(),
            "stage": "finetune",
            "p_mask": p,
            "masks": recipe,
            "updates": n_ft,
            "holdout": result,
        },
    )
    console.print(
        f"MMSA masked fine-tuning ({recipe}, {n_ft} updates): lost agents' held-out error "
        f"{decoded['rec_lost']:.3f} -> {tuned['rec_lost']:.3f}; wrote {final}"
    )
    return final


def _trained_networks(
    ckpt: dict[str, Any], cfg: Config, dev: torch.device
) -> tuple[MMSAAgent, LatentWorldModel]:
    from rmio.envs.base import EnvSpec

    spec = EnvSpec.from_dict(ckpt["spec"])
    agent = MMSAAgent(spec, cfg.qmix, cfg.mmsa).to(dev)
    agent.load_state_dict(ckpt["learner"]["agent"])
    wm = LatentWorldModel(spec, cfg.qmix, cfg.mmsa).to(dev)
    wm.load_state_dict(ckpt["learner"]["wm"])
    return agent.eval(), wm


def load_obs_model(path: Path, device: str = "cpu") -> tuple[MMSAObsModel, dict[str, Any]]:
    """The reconstruction model of an ``mmsa_wm.pt`` / ``mmsa_wm_pretrain.pt``, in eval mode."""
    from rmio.config import build_dataclass
    from rmio.envs.base import EnvSpec

    ckpt = load_checkpoint(path, device)
    cfg = build_dataclass(Config, ckpt["config"], str(path))
    spec = EnvSpec.from_dict(ckpt["spec"])
    model = MMSAObsModel(
        MMSAAgent(spec, cfg.qmix, cfg.mmsa), LatentWorldModel(spec, cfg.qmix, cfg.mmsa), cfg.mmsa
    )
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), ckpt
