"""Reconstruction quality on held-out real trajectories (`rmio eval reconstruction`).

For every test-time p_mask, agents' observations are dropped at random (several seeds) and each
strategy fills them in:

* ``world model (fine-tuned)`` / ``world model (pre-trained)``: the posterior with the mask, then
  the observation decoder (categorical modes, deterministic). ``world_model.eval.mode`` says over
  what: ``window`` (the default) replays, for every ``window_stride``-th step t, the window of the
  last history_window steps from the zero state, as every round of the deployed swarm does
  (train/wm_eval_window.py); ``episode`` filters each whole episode in one pass from step 0, which
  the swarm never runs. Every metric of a world model below, the policy metrics included, is taken
  at the same scored steps from the same reconstructions (the baselines score every step in either
  mode);
* ``zero-fill``: a lost observation is all zeros (in raw units), which is what an agent without
  reconstruction would act on;
* ``hold-last``: the agent's last observation it did receive in this episode (zeros before the
  first).

Metrics, in normalised observation units (per feature (o - mean) / std of the training data):

* ``lrec_masked``: SmoothL1 over the lost agents only (what reconstruction is for);
* ``lrec_all``: over all agents of the joint observation the agents act on (observed agents keep
  their own observation, Algorithm 2 line 36), so it is lrec_masked times the lost fraction;
* ``lrec_decoder_all`` (world models only): the decoder's output for every agent, observed or not,
  the paper's L_rec;
* GPE and GCI of GAWM section 4.3 (Eq. 7-8) for the world models (p_mask 0 gives the classic
  numbers).

The results are written and shown by train/wm_eval_report.py (tables, warnings) and
train/wm_eval_plot.py (the figure).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console

from rmio.config import load_config
from rmio.config import validate as validate_config
from rmio.errors import RmioError
from rmio.models import find_bundle, resolve_model_path
from rmio.train.common import load_model, resolve_device
from rmio.train.masks import sample_loss_masks
from rmio.train.policy_metrics import POLICY_METRICS, PolicyProbe
from rmio.train.wm_data import Batch, SequenceSampler
from rmio.train.wm_eval_plot import plot_reconstruction
from rmio.train.wm_eval_report import (
    BASELINES,
    masks_named,
    mode_named,
    policy_warnings,
    print_results,
    reconstruction_table,
)
from rmio.train.wm_eval_window import at_steps, eval_steps, window_heads
from rmio.train.wm_train import eval_holdout
from rmio.train.world_model import RMIOWorldModel


@dataclass(frozen=True)
class ModelFamily:
    """How :func:`evaluate_run` finds, loads and scores one kind of world model: RMIOv2's (and
    its variants') here, MARIE's in train/marie_eval.py."""

    label: str
    """Row label prefix: ``wm`` (RMIOv2), ``MARIE``."""
    files: dict[str, str]
    """Checkpoint name (finetune, pretrain) -> file in the run directory."""
    load: Callable[[Path, Any], tuple[Any, dict]]
    episode_fn: Callable[..., dict[str, dict[str, np.ndarray]]]
    filters: bool = False
    """Whether its model filters a latent state (RMIOv2's): its ``episode_fn`` then takes
    ``mode``, ``window`` and ``stride`` (world_model.eval.mode). A window model (MARIE's) scores
    every step's window whatever the mode."""


def _same_stats(a: Any, b: Any) -> bool:
    """Two checkpoints' input statistics (nested dicts, lists, arrays or tensors) are equal."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_stats(a[k], b[k]) for k in a)
    if a is None or b is None:
        return a is b
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().numpy()
    if isinstance(b, torch.Tensor):
        b = b.detach().cpu().numpy()
    try:
        x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    except (TypeError, ValueError):
        return bool(a == b)
    return x.shape == y.shape and bool(np.allclose(x, y, rtol=1e-6, atol=1e-9))


def hold_last(obs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, T, n, D) raw observations, (B, T, n) masks -> each agent's last received observation."""
    out = torch.zeros_like(obs)
    last = torch.zeros_like(obs[:, 0])
    for t in range(obs.shape[1]):
        m = mask[:, t].unsqueeze(-1)
        last = m * obs[:, t] + (1 - m) * last
        out[:, t] = last
    return out


def _smooth_l1(pred: torch.Tensor, target: torch.Tensor, fm: torch.Tensor) -> torch.Tensor:
    """Per-agent SmoothL1 over real features: (B, T, n)."""
    return (F.smooth_l1_loss(pred, target, reduction="none") * fm).sum(-1) / fm.sum(-1)


@torch.no_grad()
def evaluate_episode(
    model: RMIOWorldModel,
    ep: Batch,
    p_masks: list[float],
    seeds: int,
    seed: int,
    eps_r: float,
    eps_g: float,
    loss_model: str = "bernoulli",
    mean_burst_length: float = 4.0,
    probe: PolicyProbe | None = None,
    mode: str = "episode",
    window: int = 20,
    stride: int = 1,
) -> dict[str, dict[str, np.ndarray]]:
    """Sums (and counts) of every metric for one episode, batched over p_masks x seeds; the masks
    come from ``loss_model`` at each p_mask (its long-run lost fraction). ``mode`` ``episode``
    filters the whole episode once; ``window`` reconstructs every ``stride``-th step t, each from
    its own window of ``window`` + 1 steps (the swarm's replay), and the world model's metrics
    average over those steps. The baselines are the same in both modes: every step."""
    P = len(p_masks)
    B = P * seeds
    mask = draw_masks(ep, p_masks, seeds, seed, loss_model, mean_burst_length)
    rep = lambda x: x.expand(B, *x.shape[1:])  # noqa: E731 - one episode, many mask draws
    obs = rep(ep.obs)
    obs_n = model.normalize_obs(obs)
    fm = model.feature_mask
    lost = 1 - mask
    held = hold_last(obs, mask)
    baselines = {
        "zero-fill": mask.unsqueeze(-1) * obs_n
        + lost.unsqueeze(-1) * model.normalize_obs(torch.zeros_like(obs)),
        "hold-last": model.normalize_obs(held),
    }
    res = strategy_sums(baselines, obs_n, fm, lost, P, seeds)
    if probe is not None:
        policy_sums(res, probe, obs, ep, lost, None, held, P, seeds)
    if mode == "window":
        steps = eval_steps(obs.shape[1], stride, obs.device)
        out = window_heads(model, obs_n, rep(ep.prev_action), mask, steps, window)
        ep, obs, obs_n = at_steps(ep, steps), obs[:, steps], obs_n[:, steps]
        mask, lost = mask[:, steps], lost[:, steps]
    elif mode == "episode":
        post = model.observe(obs_n, rep(ep.prev_action), mask, rep(ep.is_first), sample=False)
        out = model.heads(post.h, post.z)
    else:
        raise ValueError(f"mode must be window or episode, got {mode!r}")
    T = obs.shape[1]
    decoded = out["obs"]
    joint = {"model": mask.unsqueeze(-1) * obs_n + lost.unsqueeze(-1) * decoded}
    res = {**strategy_sums(joint, obs_n, fm, lost, P, seeds), **res}
    if probe is not None:
        policy_sums(res, probe, obs, ep, lost, model.denormalize_obs(decoded), None, P, seeds)
    dec_err = _smooth_l1(decoded, obs_n, fm)
    # GPE (GAWM Eq. 8): per agent ||o^ - o||_2 + |r^ - r| + |gamma^ - gamma|, averaged over agents
    # and steps
    l2 = ((decoded - obs_n) * fm).norm(dim=-1)  # (B, T, n)
    gamma_hat = 1 - torch.sigmoid(out["term_logit"])
    gamma = 1 - ep.is_terminal.expand(B, T)
    reward = (ep.raw_reward if ep.raw_reward is not None else ep.reward).expand(B, T)
    gpe = l2.mean(-1) + (out["reward"] - reward).abs() + (gamma_hat - gamma).abs()
    # GCI (GAWM Eq. 7): disagreement between agents' own estimates of the global quantities; reward
    # and termination come from one joint head here, so their indicator terms are zero by
    # construction
    gci_state = torch.zeros(B, T, device=obs.device)
    if "state" in out:
        s_hat = out["state"]  # (B, T, n, S) each agent's own estimate
        gci_state = (s_hat - s_hat.mean(-2, keepdim=True)).norm(dim=-1).mean(-1)
    res["model"]["decoder_all_sum"] = dec_err.sum((1, 2)).view(P, seeds).sum(1).cpu().numpy()
    res["model"]["gpe_sum"] = gpe.sum(1).view(P, seeds).sum(1).cpu().numpy()
    res["model"]["gci_sum"] = gci_state.sum(1).view(P, seeds).sum(1).cpu().numpy()
    res["model"]["steps"] = np.full(P, T * seeds, dtype=np.float64)
    return res


def draw_masks(
    ep: Batch,
    p_masks: list[float],
    seeds: int,
    seed: int,
    loss_model: str = "bernoulli",
    mean_burst_length: float = 4.0,
) -> torch.Tensor:
    """Test-time masks (P * seeds, T, n), 1 = observed, for one episode: the same draws for every
    world model scored on it (RMIOv2's and MARIE's), given the same seed."""
    B, T, n = len(p_masks) * seeds, ep.obs.shape[1], ep.obs.shape[2]
    gen = torch.Generator(device=ep.obs.device).manual_seed(seed)
    probs = torch.tensor(p_masks, device=ep.obs.device).repeat_interleave(seeds)
    if loss_model == "bernoulli":  # drawn as before the other loss models existed
        mask = torch.rand((B, T, n), generator=gen, device=ep.obs.device) >= probs.view(B, 1, 1)
        return mask.float()
    return sample_loss_masks(gen, (B, T, n), probs, loss_model, mean_burst_length, ep.obs.device)


def strategy_sums(
    joint: dict[str, torch.Tensor],
    obs_n: torch.Tensor,
    fm: torch.Tensor,
    lost: torch.Tensor,
    P: int,
    seeds: int,
) -> dict[str, dict[str, np.ndarray]]:
    """L_rec sums per p_mask of each strategy's joint observation (B, T, n, D) normalised."""
    T, n = lost.shape[1], lost.shape[2]
    res: dict[str, dict[str, np.ndarray]] = {}
    for name, pred in joint.items():
        err = _smooth_l1(pred, obs_n, fm)  # (B, T, n)
        res[name] = {
            "masked_sum": (err * lost).sum((1, 2)).view(P, seeds).sum(1).cpu().numpy(),
            "masked_count": lost.sum((1, 2)).view(P, seeds).sum(1).cpu().numpy(),
            "all_sum": err.sum((1, 2)).view(P, seeds).sum(1).cpu().numpy(),
            "all_count": np.full(P, T * n * seeds, dtype=np.float64),
        }
    return res


def policy_sums(
    res: dict[str, dict[str, np.ndarray]],
    probe: PolicyProbe,
    obs: torch.Tensor,
    ep: Batch,
    lost: torch.Tensor,
    recon: torch.Tensor | None,
    held: torch.Tensor | None,
    P: int,
    seeds: int,
) -> None:
    """Add the actor's disagreement on every lost agent-step (raw units, as the actor sees them,
    ``recon`` the world model's) to each strategy's sums, per p_mask: the world model's when
    ``recon`` is given, the baselines' when ``held`` is (zero-fill's with it)."""
    b, t, i = lost.nonzero(as_tuple=True)
    if len(b) == 0:
        return
    true = obs[b, t, i].cpu().numpy()
    ids = i.cpu().numpy()
    avail = None if ep.avail is None else ep.avail[0, t, i].cpu().numpy()
    p_idx = (b // seeds).cpu().numpy()
    rows_of = {}
    if recon is not None:
        rows_of["model"] = recon[b, t, i].cpu().numpy()
    if held is not None:
        rows_of["zero-fill"] = np.zeros_like(true)
        rows_of["hold-last"] = held[b, t, i].cpu().numpy()
    for name, rows in rows_of.items():
        for key, v in probe.compare(true, rows, ids, avail).items():
            res[name][f"{key}_sum"] = np.bincount(p_idx, weights=v, minlength=P).astype(np.float64)


def evaluate_model(
    model: Any,
    episodes: list[Batch],
    cfg: Any,
    seed: int,
    probe: PolicyProbe | None = None,
    episode_fn: Callable[..., dict[str, dict[str, np.ndarray]]] | None = None,
) -> dict[str, Any]:
    """Every metric over held-out episodes; ``episode_fn`` scores one episode (default RMIOv2's
    :func:`evaluate_episode` in ``cfg``'s world_model.eval.mode; MARIE's has the same
    signature)."""
    ev = cfg.world_model.eval
    totals: dict[str, dict[str, np.ndarray]] = {}
    fn = episode_fn or partial(evaluate_episode, **mode_kwargs(cfg))
    for k, ep in enumerate(episodes):
        res = fn(
            model,
            ep,
            ev.p_masks,
            ev.seeds,
            seed + k,
            ev.gci_reward_eps,
            ev.gci_discount_eps,
            ev.loss_model,
            ev.mean_burst_length,
            probe,
        )
        for name, sums in res.items():
            acc = totals.setdefault(name, {key: np.zeros_like(v) for key, v in sums.items()})
            for key, v in sums.items():
                acc[key] += v
    out: dict[str, Any] = {}
    with np.errstate(invalid="ignore", divide="ignore"):
        for name, acc in totals.items():
            row = {
                "lrec_masked": acc["masked_sum"] / acc["masked_count"],
                "lrec_all": acc["all_sum"] / acc["all_count"],
            }
            for key in POLICY_METRICS:
                if f"{key}_sum" in acc:
                    row[key] = acc[f"{key}_sum"] / acc["masked_count"]
            if name == "model":
                row["lrec_decoder_all"] = acc["decoder_all_sum"] / acc["all_count"]
                row["gpe"] = acc["gpe_sum"] / acc["steps"]
                row["gci"] = acc["gci_sum"] / acc["steps"]
            out[name] = {
                k: [None if not np.isfinite(x) else float(x) for x in v] for k, v in row.items()
            }
    return out


def mode_kwargs(cfg: Any, window: int | None = None) -> dict[str, Any]:
    """What a filtering model's ``episode_fn`` takes from ``cfg`` (world_model.eval.mode, its
    stride, and the history window l, unless ``window`` gives the model's own)."""
    ev = cfg.world_model.eval
    l = cfg.world_model.history_window if window is None else window  # noqa: E741
    return {"mode": ev.mode, "window": l, "stride": ev.window_stride}


RMIOV2 = ModelFamily(
    "wm",
    {"finetune": "wm_finetune.pt", "pretrain": "wm_pretrain.pt"},
    load_model,
    evaluate_episode,
    filters=True,
)


def evaluate_run(
    run_dir: Path,
    which: str,
    device: str,
    console: Console,
    loss_model: str | None = None,
    mean_burst_length: float | None = None,
    policy: str | Path | None = None,
    family: ModelFamily | None = None,
    beside: list[tuple[Path, ModelFamily]] | None = None,
    mode: str | None = None,
    window_stride: int | None = None,
) -> dict[str, Any]:
    """Evaluate a run's world models on its held-out data; writes ``eval_reconstruction.*`` (the
    run config's test-time loss model, Bernoulli by default) or ``eval_reconstruction_<model>.*``
    when ``loss_model`` asks for another one.

    ``family`` says what the run's world model is (default RMIOv2's); ``beside`` adds the world
    models of other runs of the same task, scored on this run's held-out episodes with the same
    masks, their rows named after their run directory (MARIE beside RMIOv2 in one table).
    With an actor (``policy``, else the run's exported bundle, else ``run.data_policy`` when it is
    a bundle) the policy metrics of :mod:`rmio.train.policy_metrics` are added. ``mode``
    overrides world_model.eval.mode (``window``: the swarm's window replay; ``episode``: one pass
    over each episode) and ``window_stride`` world_model.eval.window_stride."""
    cfg = load_config(run_dir / "config.yaml")
    ev = cfg.world_model.eval
    if mode is not None:
        if mode not in ("window", "episode"):
            raise RmioError(f"mode must be window or episode, got {mode!r}")
        ev.mode = mode
    if window_stride is not None:
        ev.window_stride = window_stride
    runs = [(run_dir, family or RMIOV2, ""), *((r, f, f"{r.name}: ") for r, f in beside or [])]
    if loss_model is not None:
        ev.loss_model = loss_model
    if mean_burst_length is not None:
        ev.mean_burst_length = mean_burst_length
    validate_config(cfg, f"{run_dir / 'config.yaml'} with the evaluation options")
    stem = "eval_reconstruction" + ("" if ev.loss_model == "bernoulli" else f"_{ev.loss_model}")
    dev = resolve_device(device)
    torch.set_num_threads(cfg.world_model.train.threads)
    holdout, holdout_policy = eval_holdout(run_dir, cfg, console)
    names = {"finetune": ["finetune"], "pretrain": ["pretrain"], "both": ["finetune", "pretrain"]}[
        which
    ]
    results: dict[str, Any] = {
        "p_masks": cfg.world_model.eval.p_masks,
        "seeds": cfg.world_model.eval.seeds,
        "loss_model": cfg.world_model.eval.loss_model,
        "mean_burst_length": cfg.world_model.eval.mean_burst_length,
        "mode": ev.mode,
        "window_stride": ev.window_stride if ev.mode == "window" else 1,
        "history_window": cfg.world_model.history_window,
        "policy": None,
        "holdout_episodes": holdout.num_episodes,
        "holdout_rows": len(holdout),
        "holdout_policy": holdout_policy,
        "strategies": {},
    }
    probe, results["policy"] = _probe_for(run_dir, cfg, policy, holdout.spec.name)
    main_stats: Any = None
    for run, fam, prefix in runs:
        found = False
        for name in names:
            path = run / fam.files[name]
            if not path.exists():
                continue
            found = True
            model, ckpt = fam.load(path, dev)
            if ckpt["spec"] != holdout.spec.to_dict():
                raise RmioError(
                    f"{path} was trained for {ckpt['spec']['name']}, the held-out data is "
                    f"{holdout.spec.name}"
                )
            if not prefix:
                main_stats = ckpt.get("stats")
            elif not _same_stats(main_stats, ckpt.get("stats")):
                # L_rec is in each model's own normalised units: other data, other units
                raise RmioError(
                    f"--beside {run}: its world model was trained on other data (other input "
                    f"statistics) than '{run_dir}', so their L_rec would be in different units; "
                    "give runs that share their training data (as rmio ablate's variants do)"
                )
            model.eval()
            sampler = SequenceSampler(holdout, cfg.world_model.smoothing, dev)
            fn = fam.episode_fn
            if fam.filters:  # the model's own history window, as its bundle's swarm replays it
                own = ckpt.get("config", {}).get("world_model", {}).get("history_window")
                fn = partial(fn, **mode_kwargs(cfg, own))
            elif fam.label not in results.setdefault("window_models", []):
                results["window_models"].append(fam.label)
            res = evaluate_model(model, sampler.episodes(), cfg, cfg.run.seed + 555, probe, fn)
            label = (
                f"{fam.label} fine-tuned "
                f"({ckpt.get('masks') or 'p_mask ' + format(ckpt['p_mask'], 'g')})"
                if name == "finetune"
                else f"{fam.label} pre-trained"
            )
            results["strategies"][prefix + label] = res["model"]
            for b in BASELINES:  # the same masks and data for every model: the main run's
                results["strategies"].setdefault(b, res[b])
        if not found and len(names) == 1:
            raise RmioError(f"'{run}' has no {fam.files[names[0]]}")
        if not found:
            files = " / ".join(fam.files[k] for k in reversed(names))
            raise RmioError(f"'{run}' has no trained world model ({files})")
    results["warnings"] = policy_warnings(results)
    (run_dir / f"{stem}.json").write_text(json.dumps(results, indent=2))
    md = reconstruction_table(results)
    (run_dir / f"{stem}.md").write_text(md)
    named = "" if ev.loss_model == "bernoulli" else f", {masks_named(results)}"
    title = f"{cfg.env.scenario}{named}, {mode_named(results, short=True)}"
    plot_reconstruction(results, run_dir / f"{stem}.png", title)
    print_results(results, console)
    for w in results["warnings"]:
        console.print(f"[yellow]warning:[/yellow] {w}")
    console.print(f"wrote {run_dir / stem}.md, .json and .png")
    return results


def _probe_for(
    run_dir: Path, cfg: Any, policy: str | Path | None, spec_name: str
) -> tuple[PolicyProbe | None, str | None]:
    """The actor the policy metrics use, and how to name it in results (never a machine path)."""
    given = policy is not None
    candidates = [policy] if given else [run_dir / "bundle", cfg.run.data_policy]
    for c in candidates:
        if c is None:
            continue
        path = find_bundle(c) if given else resolve_model_path(c)
        if not (path / "manifest.json").is_file():
            if given:
                raise RmioError(f"--policy '{c}' is not a bundle directory (no manifest.json)")
            continue
        try:
            probe = PolicyProbe(path)
        except (ValueError, RmioError) as e:  # a bundle without an actor, or a recurrent one
            if given:
                raise RmioError(f"--policy '{c}': {e}") from None
            continue
        if probe.manifest.spec.name != spec_name:
            if given:
                raise RmioError(
                    f"--policy '{c}' acts in {probe.manifest.spec.name}, the run is {spec_name}"
                )
            continue
        return probe, ("bundle" if c == run_dir / "bundle" else str(c))
    return None, None
