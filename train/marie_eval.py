"""`rmio eval reconstruction` of a MARIE run (issue 23): L_rec, GPE and GCI of lost agents on the
held-out episodes, with the masks, seeds and baselines of RMIOv2's evaluation (train/wm_eval.py),
so both models' rows sit in one table (``--beside``).

Every step t of an episode is reconstructed as the swarm reconstructs it: by ``MarieWindow``, the
PyTorch round that export checks ``wm_window.onnx`` against (on held-out rounds, within
train/export.py's PARITY_TOLERANCE; tests/test_marie_eval.py compares the two here too), fed the
last ``history_window`` steps ending at t, lost rows zero and [MASK], no state carried between
steps. The PyTorch module is used rather than the ONNX file so that a run can be scored before (or
without) being exported, and so that MARIE's reward and termination heads, which the graph does
not output, can be read off the same hidden states.

MARIE's GPE and GCI (GAWM Eq. 7-8): each agent has its own reward and termination heads on its
e_{t-1} (MARIE's aggregated token of the step before t, which holds a_{t-1}), so ``|r^_i - r|``
and ``|gamma^_i - gamma|`` are per agent and GCI is their disagreement indicators (eps_r, eps_g of
world_model.eval); MARIE predicts no global state, so GCI has no state term (RMIOv2's GCI is the
state term only: the two GCIs measure different things). An episode's first step has no e_{t-1}:
GPE and GCI average over steps t >= 1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console

from rmio.config import load_config
from rmio.envs.base import EnvSpec
from rmio.errors import RmioError
from rmio.train.marie_finetune import FINAL as FINETUNED
from rmio.train.marie_masked import MarieWindow
from rmio.train.marie_train import FINAL as PRETRAINED
from rmio.train.marie_train import load_marie
from rmio.train.policy_metrics import PolicyProbe
from rmio.train.wm_data import Batch
from rmio.train.wm_eval import (
    RMIOV2,
    ModelFamily,
    draw_masks,
    evaluate_run,
    hold_last,
    policy_sums,
    strategy_sums,
)

WINDOW_BUDGET = 1_200_000
"""Attention entries (windows x agents x tokens^2) per call: about 4 windows at the cpu preset's
sizes, the fastest of 1-344 on the 2-core VM (one thread: 35-50 ms a round for 6 agents at l = 20,
against 50 ms with 86 windows a call), and bounded memory at the faithful preset's."""


def load_window(path: Path, device: Any) -> tuple[MarieWindow, dict]:
    """A MARIE checkpoint as the window graph the swarm runs, over its run's history_window."""
    model, ckpt = load_marie(path, device)
    window = int(ckpt["config"]["world_model"]["history_window"])
    if not 2 <= window <= model.mcfg.seq_len:
        raise RmioError(
            f"{path}: MARIE's window graph reads the last history_window = {window} steps, which "
            f"must be in [2, marie.seq_len = {model.mcfg.seq_len}]"
        )
    graph = MarieWindow(model, window).to(device).eval()
    fm = EnvSpec.from_dict(ckpt["spec"]).obs_feature_mask  # real features (n, D), as RMIOv2's
    graph.register_buffer("feature_mask", torch.as_tensor(fm, dtype=torch.float32, device=device))
    return graph, ckpt


def _windows(ep: Batch, steps: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every step's window of one episode: step indices (T, L), valid (T, L), and the encoded
    actions (T, n, L - 1, A) taken on the window's steps before t (zero on padding)."""
    T = ep.obs.shape[1]
    dev = ep.obs.device
    t = torch.arange(T, device=dev)
    k = (t + 1).clamp(max=steps)
    j = torch.arange(steps, device=dev)
    idx = (t[:, None] - (k[:, None] - 1) + j[None]).clamp(0, T - 1)
    valid = (j[None] < k[:, None]).float()
    acts = ep.prev_action[0][idx[:, 1:]] * valid[:, 1:, None, None]  # a_h taken on o_{h-1}
    return idx, valid, acts.transpose(1, 2)


@torch.no_grad()
def reconstruct(
    window: MarieWindow, ep: Batch, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every step of one episode under masks (B, T, n), each from its own window as the swarm's
    round: observations (B, T, n, D) raw, and each agent's reward and discount for step t
    (B, T, n) from its e_{t-1} (step 0 has none: its values there are not scored)."""
    m = window.m
    obs = ep.obs[0]
    B, T, n = mask.shape
    steps = window.causal.shape[-1] // m.block
    idx, valid, acts = _windows(ep, steps)
    w_obs = obs[idx].transpose(1, 2)  # (T, n, L, D)
    pos = (valid.sum(1).long() - 2).clamp_min(0)  # step t - 1 in its window
    chunk = max(1, WINDOW_BUDGET // (n * (steps * m.block) ** 2))
    recon = torch.zeros(B, T, n, obs.shape[-1], device=obs.device)
    r_hat = torch.zeros(B, T, n, device=obs.device)
    g_hat = torch.ones(B, T, n, device=obs.device)
    for b in range(B):
        w_mask = (mask[b][idx] * valid[..., None]).transpose(1, 2)  # (T, n, L)
        for a in range(0, T, chunk):
            s = slice(a, min(T, a + chunk))
            out, _, h = window.round(w_obs[s] * w_mask[s, ..., None], acts[s], w_mask[s], valid[s])
            recon[b, s] = out
            e = h[torch.arange(h.shape[0]), :, pos[s], -1]  # (c, n, D): e_{t-1}
            r_hat[b, s] = m.reward_head(e)[..., 0]
            g_hat[b, s] = 1 - torch.sigmoid(m.term_head(e)[..., 0])
    return recon, r_hat, g_hat


@torch.no_grad()
def evaluate_marie_episode(
    window: MarieWindow,
    ep: Batch,
    p_masks: list[float],
    seeds: int,
    seed: int,
    eps_r: float,
    eps_g: float,
    loss_model: str = "bernoulli",
    mean_burst_length: float = 4.0,
    probe: PolicyProbe | None = None,
) -> dict[str, dict[str, np.ndarray]]:
    """train/wm_eval.py's ``evaluate_episode`` for MARIE: the same masks (same seed), every step
    reconstructed from its own window."""
    m = window.m
    P, B = len(p_masks), len(p_masks) * seeds
    obs = ep.obs[0]  # (T, n, D) raw
    T = obs.shape[0]
    mask = draw_masks(ep, p_masks, seeds, seed, loss_model, mean_burst_length)  # (B, T, n)
    recon, r_hat, g_hat = reconstruct(window, ep, mask)
    norm = lambda x: (x - m.tok.mean) / m.tok.std  # noqa: E731
    fm = window.feature_mask
    rep = obs.expand(B, *obs.shape)
    obs_n, dec_n = norm(rep), norm(recon)
    lost = 1 - mask
    held = hold_last(rep, mask)
    joint = {
        "model": mask[..., None] * obs_n + lost[..., None] * dec_n,
        "zero-fill": mask[..., None] * obs_n + lost[..., None] * norm(torch.zeros_like(rep)),
        "hold-last": norm(held),
    }
    res = strategy_sums(joint, obs_n, fm, lost, P, seeds)
    if probe is not None:
        policy_sums(res, probe, rep, ep, lost, recon, held, P, seeds)
    dec_err = ((torch.nn.functional.smooth_l1_loss(dec_n, obs_n, reduction="none") * fm).sum(-1)
               / fm.sum(-1))  # fmt: skip
    later = (torch.arange(T, device=obs.device) >= 1).float()  # steps with an e_{t-1}
    reward = (ep.raw_reward if ep.raw_reward is not None else ep.reward)[0]  # (T,)
    gamma = 1 - ep.is_terminal[0]
    l2 = ((dec_n - obs_n) * fm).norm(dim=-1)  # (B, T, n)
    gpe = (l2 + (r_hat - reward[:, None]).abs() + (g_hat - gamma[:, None]).abs()).mean(-1)
    gci = (
        ((r_hat - r_hat.mean(-1, keepdim=True)).abs() > eps_r).float()
        + ((g_hat - g_hat.mean(-1, keepdim=True)).abs() > eps_g).float()
    ).mean(-1)
    per_p = lambda x: x.sum(1).view(P, seeds).sum(1).cpu().numpy()  # noqa: E731
    res["model"]["decoder_all_sum"] = dec_err.sum((1, 2)).view(P, seeds).sum(1).cpu().numpy()
    res["model"]["gpe_sum"] = per_p(gpe * later)
    res["model"]["gci_sum"] = per_p(gci * later)
    res["model"]["steps"] = np.full(P, float(later.sum().item()) * seeds, dtype=np.float64)
    return res


MARIE = ModelFamily(
    "MARIE", {"finetune": FINETUNED, "pretrain": PRETRAINED}, load_window, evaluate_marie_episode
)


def family_of(run_dir: Path) -> ModelFamily:
    """MARIE's family for a MARIE run (``marie.enabled`` in its config), else RMIOv2's."""
    return MARIE if load_config(run_dir / "config.yaml").marie.enabled else RMIOV2


def evaluate_reconstruction(
    run_dir: Path,
    which: str,
    device: str,
    console: Console,
    loss_model: str | None = None,
    mean_burst_length: float | None = None,
    policy: str | Path | None = None,
    beside: list[Path] | None = None,
    mode: str | None = None,
    window_stride: int | None = None,
) -> dict[str, Any]:
    """`rmio eval reconstruction` of any run (RMIOv2's, a variant's or MARIE's), with the world
    models of the runs ``beside`` scored on its held-out episodes in the same table; ``mode`` and
    ``window_stride`` override world_model.eval's for the filtering models."""
    for other in beside or []:
        if not (other / "config.yaml").is_file():
            raise RmioError(f"--beside '{other}' is no run directory (no config.yaml)")
    return evaluate_run(
        run_dir,
        which,
        device,
        console,
        loss_model,
        mean_burst_length,
        policy,
        family_of(run_dir),
        [(other, family_of(other)) for other in beside or []],
        mode,
        window_stride,
    )
