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

Both files hold the held-out errors before and after. As RMIOv2's fine-tuning, the stages resume
by re-running the same command: the data is collected once (``mmsa_wm_data.pt``), and
``ckpt_mmsa_wm.pt`` holds the stage, its update count, the weights, the optimiser, the
early-stopping state (train/plateau.py) and every random stream, written every
``world_model.train.checkpoint_every`` updates and at each stage's start and end. Fine-tuning
stops early by ``world_model.finetune``'s patience and min_delta on the smoothed loss; the decoder
stage, like RMIOv2's pre-training, runs its whole budget.
"""

from __future__ import annotations

import copy
import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console

from rmio.config import Config, load_config
from rmio.config import validate as validate_config
from rmio.envs.base import EnvSpec
from rmio.envs.vector import make_vector_env
from rmio.errors import RmioError
from rmio.train.common import progress, resolve_device, seed_everything
from rmio.train.masks import sample_mixed_masks
from rmio.train.mmsa_nets import LatentWorldModel, MMSAAgent
from rmio.train.mmsa_recon import MMSAObsModel, reconstruction_terms
from rmio.train.plateau import Plateau
from rmio.train.qmix_replay import EpisodeBuffer, Runner
from rmio.train.resume import Resumable
from rmio.train.runlog import MetricLog, load_checkpoint, save_checkpoint
from rmio.train.wm_train import mask_recipe

PRETRAINED, FINAL, LOG = "mmsa_wm_pretrain.pt", "mmsa_wm.pt", "mmsa_wm"
CKPT, DATA = "ckpt_mmsa_wm.pt", "mmsa_wm_data.pt"
DECODER, FINETUNE = "decoder", "finetune"
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


@dataclass
class Stage:
    """One of the two stages: what it trains, for how long, on which masks."""

    name: str
    label: str
    params: list[torch.nn.Parameter]
    lr: float
    updates: int
    offset: int
    """Seeds its sampling streams (``run.seed + offset``) and numbers its log rows after the
    previous stage's."""
    p_mask: float | None = None
    """None: every observation seen (the decoder stage); else masks of that rate (fine-tuning)."""
    patience: int | None = None
    min_delta: float = 0.0


@dataclass
class Record:
    """What every checkpoint of the run carries besides the stage's own state."""

    meta: dict[str, Any]
    holdout: dict[str, dict[str, float]] = field(default_factory=dict)
    summary: dict[str, dict[str, Any]] = field(default_factory=dict)

    def payload(self) -> dict[str, Any]:
        return {**self.meta, "holdout": dict(self.holdout), "summary": dict(self.summary)}


def run_stage(
    model: MMSAObsModel,
    stage: Stage,
    data: EpisodeBuffer,
    cfg: Config,
    ck: Path,
    record: Record,
    start: dict[str, Any] | None,
    log: MetricLog,
    console: Console,
) -> dict[str, Any]:
    """``stage.updates`` Adam steps on sampled episodes (fewer when the smoothed loss stalls for
    ``stage.patience``), resumed exactly from ``start`` (a checkpoint of this stage) when given:
    weights, optimiser, update count, early-stopping state and every random stream."""
    dev = model.ids.device
    opt = torch.optim.Adam(stage.params, lr=stage.lr)
    rng = np.random.default_rng(cfg.run.seed + stage.offset)
    gen = torch.Generator(device=dev).manual_seed(cfg.run.seed + stage.offset)
    plateau = Plateau(stage.min_delta)
    resume = Resumable(model, opt, plateau, rng, gen)
    step = 0 if start is None else resume.restore(start)

    def checkpoint() -> None:
        save_checkpoint(ck, {**record.payload(), "stage": stage.name, **resume.state(step)})

    if start is None:  # the stage's starting point: after the decoder stage, fine-tuning's
        checkpoint()
    size = min(cfg.mmsa.recon_batch, data.count)
    every, ckpt_every = max(1, stage.updates // 20), cfg.world_model.train.checkpoint_every
    # a run stopped early, then interrupted before its final file, stays stopped
    t0, first, stopped = time.perf_counter(), step, plateau.stalled(stage.patience)
    model.train()
    with progress(console, stage.label, stage.updates) as (bar, task):
        bar.update(task, completed=step)
        while step < stage.updates and not stopped:
            batch = data.sample(size, rng, dev)
            b, t1, n, _ = batch["obs"].shape
            if stage.p_mask is None:
                mask = torch.ones(b, t1, n, device=dev)
            else:
                mask = draw_masks(cfg, stage.p_mask, gen, (b, t1, n), dev)
            terms = reconstruction_terms(
                model,
                batch["obs"],
                batch["actions"],
                batch["filled"],
                mask,
                stage.p_mask is not None,
            )
            loss = terms["rec_prior"] + terms["rec_post"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(stage.params, 10.0)
            opt.step()
            step += 1
            ema = plateau.update(float(loss.detach()))
            stopped = plateau.stalled(stage.patience)
            if step % every == 0 or step == stage.updates or stopped:
                row = {k: float(v.detach()) for k, v in terms.items()}
                log.log(stage.offset + step, {**row, "loss_ema": ema})
            bar.update(task, completed=step, info=f"loss {ema:.3f}")
            if step % ckpt_every == 0:
                checkpoint()
    model.eval()
    checkpoint()
    elapsed = time.perf_counter() - t0
    return {
        "updates": step,
        "budget": stage.updates,
        "stopped_early": stopped,
        "final_loss_ema": plateau.ema,
        **plateau.state(),
        "seconds": elapsed,
        "updates_per_s": (step - first) / max(elapsed, 1e-9),
    }


def source_id(trained: Path) -> str:
    """Which ``mmsa.pt`` the cached episodes and the interrupted stage came from: a retrained
    agent must not resume on another agent's episodes and weights."""
    return hashlib.sha256(trained.read_bytes()).hexdigest()[:16]


def ensure_data(
    run_dir: Path,
    agent: MMSAAgent,
    cfg: Config,
    spec: EnvSpec,
    dev: torch.device,
    console: Console,
    source: str | None = None,
) -> tuple[EpisodeBuffer, EpisodeBuffer]:
    """The stage's training and held-out episodes, collected once (``mmsa_wm_data.pt``) and then
    reused, so a resumed stage samples the episodes an uninterrupted one would; collected again
    when they came from another ``mmsa.pt`` than ``source``."""
    path, m = run_dir / DATA, cfg.mmsa
    saved = load_checkpoint(path) if path.exists() else None
    if saved is not None and saved.get("source", source) != source:
        console.print(f"{path.name} came from an earlier mmsa.pt: collecting its episodes again")
        saved = None
    if saved is not None:
        data, holdout = (EpisodeBuffer(len(saved[k]["length"]), spec) for k in ("train", "holdout"))
        data.load_state_dict(saved["train"])
        holdout.load_state_dict(saved["holdout"])
        return data, holdout
    data = collect(agent, cfg, m.recon_episodes, cfg.run.seed + DATA_SEED, dev)
    holdout = collect(agent, cfg, m.recon_holdout, cfg.run.seed + 2 * DATA_SEED, dev)
    save_checkpoint(
        path, {"train": data.state_dict(), "holdout": holdout.state_dict(), "source": source}
    )
    console.print(f"collected {data.count} episodes (+{holdout.count} held out) into {path}")
    return data, holdout


def finetune_mmsa(
    run_dir: Path,
    p_mask: float | None,
    device: str,
    console: Console,
    updates: int | None = None,
    masks: dict[str, Any] | None = None,
) -> Path:
    """The decoder stage then masked fine-tuning of an MMSA run's latent model, resumed where an
    interrupted run stopped; returns the path of ``mmsa_wm.pt``. ``masks`` overrides
    ``world_model.finetune``'s recipe keys, as for RMIOv2."""
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
            f"{final} exists: fine-tuning already finished (delete it, {CKPT} and {DATA} to "
            "fine-tune again from the start)"
        )
        return final
    trained = run_dir / "mmsa.pt"
    if not trained.exists():
        raise RmioError(f"'{run_dir}' has no mmsa.pt: let `rmio train mmsa` finish first")
    p = f.p_mask if p_mask is None else p_mask
    if not 0.0 <= p <= 1.0:
        raise RmioError(f"--p-mask must be in [0, 1], got {p}")
    recipe = mask_recipe(f, p)
    ck, source = run_dir / CKPT, source_id(trained)
    start = load_checkpoint(ck, dev) if ck.exists() else None
    if start is not None and start.get("source", source) != source:
        console.print(f"{ck.name} came from an earlier mmsa.pt: fine-tuning from the start")
        start = None
    if start is not None and (abs(start["p_mask"] - p) > 1e-12 or start["masks"] != recipe):
        raise RmioError(
            f"an interrupted fine-tuning in '{run_dir}' drew its masks as {start['masks']}, "
            f"not {recipe}; resume with the same settings or delete {ck.name}"
        )
    ckpt = load_checkpoint(trained, dev)
    agent, wm = _trained_networks(ckpt, cfg, dev)
    torch.set_num_threads(cfg.world_model.train.threads)
    spec = EnvSpec.from_dict(ckpt["spec"])
    data, holdout = ensure_data(run_dir, agent, cfg, spec, dev, console, source)
    seed_everything(cfg.run.seed + 11)
    m = cfg.mmsa
    model = MMSAObsModel(agent, wm, m).to(dev)
    meta = {k: ckpt[k] for k in ("config", "spec")}
    record = Record({**meta, "p_mask": p, "masks": recipe, "source": source})
    decoder = Stage(
        DECODER,
        "MMSA decoder stage",
        params=list(model.decode_o.parameters()),
        lr=m.recon_lr,
        updates=m.recon_updates,
        offset=0,
    )
    tune = Stage(
        FINETUNE,
        "MMSA masked fine-tuning",
        params=model.finetuned_parameters(),
        lr=f.lr,
        updates=updates or f.updates,
        offset=m.recon_updates,
        p_mask=p,
        patience=f.patience,
        min_delta=f.min_delta,
    )
    if start is not None:
        record.holdout, record.summary = start["holdout"], start["summary"]
        done = " (the decoder stage is done)" if start["stage"] == FINETUNE else ""
        label = decoder.label if start["stage"] == DECODER else tune.label
        console.print(f"resuming the {label} from update {start['step']}{done}")
    log = MetricLog(run_dir, LOG)
    held = record.holdout
    try:
        if start is None or start["stage"] == DECODER:
            if start is None:
                held["untrained"] = holdout_errors(model, holdout, cfg, p)
            record.summary[DECODER] = run_stage(
                model, decoder, data, cfg, ck, record, start, log, console
            )
            held["decoder"] = holdout_errors(model, holdout, cfg, p)
            start = None
            save_checkpoint(
                run_dir / PRETRAINED,
                {**record.payload(), "model": model.state_dict(), "stage": DECODER},
            )
            before, decoded = held["untrained"], held["decoder"]
            console.print(
                f"MMSA decoder: held-out prediction error {before['rec_prior_all']:.3f} -> "
                f"{decoded['rec_prior_all']:.3f}, lost agents at p_mask {p:g} "
                f"{decoded['rec_lost']:.3f}"
            )
        ft = run_stage(model, tune, data, cfg, ck, record, start, log, console)
        record.summary[FINETUNE] = ft
        held["finetune"] = holdout_errors(model, holdout, cfg, p)
    finally:
        log.close()
    save_checkpoint(
        final,
        {
            **record.payload(),
            "model": model.state_dict(),
            "stage": FINETUNE,
            "updates": ft["updates"],
            "stopped_early": ft["stopped_early"],
        },
    )
    why = (
        f"stopped early: no {f.min_delta:g} relative gain of the smoothed loss in "
        f"{f.patience} updates, of a budget of {tune.updates}"
        if ft["stopped_early"]
        else "the whole budget"
    )
    console.print(
        f"MMSA masked fine-tuning ({recipe}, {ft['updates']} updates, {why}): lost agents' "
        f"held-out error {held['decoder']['rec_lost']:.3f} -> {held['finetune']['rec_lost']:.3f}; "
        f"wrote {final}"
    )
    return final


def _trained_networks(
    ckpt: dict[str, Any], cfg: Config, dev: torch.device
) -> tuple[MMSAAgent, LatentWorldModel]:
    spec = EnvSpec.from_dict(ckpt["spec"])
    agent = MMSAAgent(spec, cfg.qmix, cfg.mmsa).to(dev)
    agent.load_state_dict(ckpt["learner"]["agent"])
    wm = LatentWorldModel(spec, cfg.qmix, cfg.mmsa).to(dev)
    wm.load_state_dict(ckpt["learner"]["wm"])
    return agent.eval(), wm


def load_obs_model(path: Path, device: str = "cpu") -> tuple[MMSAObsModel, dict[str, Any]]:
    """The reconstruction model of an ``mmsa_wm.pt`` / ``mmsa_wm_pretrain.pt``, in eval mode."""
    from rmio.config import build_dataclass

    ckpt = load_checkpoint(path, device)
    cfg = build_dataclass(Config, ckpt["config"], str(path))
    spec = EnvSpec.from_dict(ckpt["spec"])
    model = MMSAObsModel(
        MMSAAgent(spec, cfg.qmix, cfg.mmsa), LatentWorldModel(spec, cfg.qmix, cfg.mmsa), cfg.mmsa
    )
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), ckpt
