"""Observation masks for training and evaluating reconstruction, drawn from rmio's loss models.

RMIOv2's Algorithm 2 (line 22) fine-tunes with m_t ~ Bernoulli(1 - p_mask)^n at one fixed p_mask.
A model fine-tuned that way is tuned for one loss regime: at p_loss 0.8-1 the model before
fine-tuning can do better, and runs of consecutive losses (bursts) are rare under Bernoulli masks.
So masks here come from the same families as the deployment loss models (`rmio.envs.loss`), on whole
training sequences (B, T, n) at once:

* ``bernoulli``: independent per agent and step at rate p (the paper);
* ``burst``: per agent a two-state Markov chain whose lost state lasts ``mean_burst_length`` steps
  on average and whose long-run lost fraction is p (the chain starts in its stationary law);
* ``blackout``: every agent blind at once for one contiguous run of round(p * T) steps.

and the rate p is either fixed or drawn per sequence from U[p_low, p_high] (a mixture over the
whole range, total loss included). 1 = observed, as everywhere in rmio.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

MASK_MODELS = ("bernoulli", "burst", "blackout")


def burst_rates(p: torch.Tensor, mean_burst_length: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(enter, leave) probabilities of the lost state whose stationary lost fraction is p.

    leave = 1 / L keeps the mean burst at L; enter = p / (L (1 - p)) then gives the fraction p. When
    that would exceed 1 (p > L / (L + 1)), bursts must be longer: enter = 1, leave = (1 - p) / p."""
    L = float(mean_burst_length)
    p = p.clamp(0.0, 1.0)
    enter = p / (L * (1.0 - p)).clamp_min(1e-12)
    long = enter > 1.0
    leave = torch.where(long, (1.0 - p) / p.clamp_min(1e-12), torch.full_like(p, 1.0 / L))
    enter = torch.where(long, torch.ones_like(p), enter)
    return enter, leave


def _bernoulli(gen: torch.Generator, shape: tuple[int, int, int], p: torch.Tensor) -> torch.Tensor:
    u = torch.rand(shape, generator=gen, device=p.device)
    return (u >= p.view(-1, 1, 1)).float()


def _burst(
    gen: torch.Generator, shape: tuple[int, int, int], p: torch.Tensor, mean_burst_length: float
) -> torch.Tensor:
    B, T, n = shape
    enter, leave = (r.view(B, 1) for r in burst_rates(p, mean_burst_length))
    u = torch.rand((B, T, n), generator=gen, device=p.device)
    lost = u[:, 0] < p.view(B, 1)  # the stationary law at the first step
    out = torch.empty((B, T, n), device=p.device)
    out[:, 0] = (~lost).float()
    for t in range(1, T):
        lost = torch.where(lost, u[:, t] >= leave, u[:, t] < enter)
        out[:, t] = (~lost).float()
    return out


def _blackout(gen: torch.Generator, shape: tuple[int, int, int], p: torch.Tensor) -> torch.Tensor:
    B, T, n = shape
    length = torch.round(p * T).long().clamp(0, T)  # (B,)
    start = (torch.rand(B, generator=gen, device=p.device) * (T - length + 1).float()).long()
    t = torch.arange(T, device=p.device).view(1, T)
    blind = (t >= start.view(B, 1)) & (t < (start + length).view(B, 1))
    return (~blind).float().unsqueeze(-1).expand(B, T, n).contiguous()


def sample_loss_masks(
    gen: torch.Generator,
    shape: tuple[int, int, int],
    p: float | torch.Tensor,
    model: str = "bernoulli",
    mean_burst_length: float = 4.0,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """(B, T, n) masks of one loss model; ``p`` is one rate or one per sequence (B,)."""
    B = shape[0]
    rate = torch.as_tensor(p, dtype=torch.float32, device=device).expand(B).contiguous()
    if model == "bernoulli":
        return _bernoulli(gen, shape, rate)
    if model == "burst":
        return _burst(gen, shape, rate, mean_burst_length)
    if model == "blackout":
        return _blackout(gen, shape, rate)
    raise ValueError(f"unknown mask model '{model}' (known: {', '.join(MASK_MODELS)})")


def sample_mixed_masks(
    gen: torch.Generator,
    shape: tuple[int, int, int],
    models: Sequence[str],
    p_low: float,
    p_high: float,
    mean_burst_length: float,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Each sequence gets a loss model drawn uniformly from ``models`` and a rate drawn from
    U[p_low, p_high] (p_low == p_high: a fixed rate)."""
    B = shape[0]
    u = torch.rand(B, generator=gen, device=device)
    rate = p_low + (p_high - p_low) * u
    which = torch.randint(len(models), (B,), generator=gen, device=device)
    out = torch.empty(shape, device=device)
    for k, name in enumerate(models):
        rows = (which == k).nonzero(as_tuple=True)[0]
        if len(rows):
            sub = (len(rows), shape[1], shape[2])
            out[rows] = sample_loss_masks(gen, sub, rate[rows], name, mean_burst_length, device)
    return out
