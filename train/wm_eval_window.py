"""The swarm's window replay for `rmio eval reconstruction` (``world_model.eval.mode: window``).

A deployed coordinator never filters a whole episode: every round replays the window of steps
max(0, t - l)..t from the zero state, with the real previous action a_{s-1} at the window's first
step s (runtime/history.py ``window_start``, evaluation/reference.py). A world model fine-tuned on
short windows can be good there and drift over a long pass, so the evaluation replays the same
windows: each scored step t gets its own window, filtered by ``model.observe`` with ``is_first`` at
s, and its heads are read at t. Windows shorter than l + 1 (an episode's first l steps) are
left-padded with steps marked ``is_first``, so the state restarts again at the real step 0 and the
padding cannot reach t. Windows are batched (all mask draws at once) in chunks that bound memory.
"""

from __future__ import annotations

import dataclasses

import torch

from rmio.train.wm_data import Batch
from rmio.train.world_model import RMIOWorldModel

WINDOW_ROWS = 16384
"""Sequence steps (mask draws x windows x (l + 1)) filtered per ``observe`` call: bounds memory
(a few hundred MB at HalfCheetah's sizes) while keeping batches large enough to be fast."""


def eval_steps(length: int, stride: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The steps of an episode of ``length`` steps that window mode scores: 0, stride, ..."""
    return torch.arange(0, length, max(1, stride), device=device)


def window_index(steps: torch.Tensor, window: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For each scored step t, the episode rows t - l..t of its window ((W, l + 1), padding
    clamped to row 0) and where the state restarts ((W, l + 1), 1 on the padding and on the
    window's first real step max(0, t - l))."""
    pos = steps[:, None] - window + torch.arange(window + 1, device=steps.device)[None]
    start = (steps - window).clamp(min=0)
    return pos.clamp(min=0), (pos <= start[:, None]).float()


def at_steps(ep: Batch, steps: torch.Tensor) -> Batch:
    """The episode's rows at ``steps`` only (every (B, T, ...) field), for scoring."""
    return dataclasses.replace(
        ep,
        **{
            f.name: None if getattr(ep, f.name) is None else getattr(ep, f.name)[:, steps]
            for f in dataclasses.fields(ep)
        },
    )


@torch.no_grad()
def window_heads(
    model: RMIOWorldModel,
    obs_n: torch.Tensor,
    prev_action: torch.Tensor,
    mask: torch.Tensor,
    steps: torch.Tensor,
    window: int,
    rows: int = WINDOW_ROWS,
) -> dict[str, torch.Tensor]:
    """Every head of the world model at each of ``steps``, reconstructed from its own window of
    ``window`` + 1 steps from the zero state: (B, T, ...) normalised observations, encoded previous
    actions and masks of one episode under B mask draws in, (B, W, ...) per head out."""
    B, L = obs_n.shape[0], window + 1
    idx, first = window_index(steps, window)
    per = max(1, rows // (B * L))
    chunks: list[dict[str, torch.Tensor]] = []
    for c in range(0, len(steps), per):
        ix, fs = idx[c : c + per], first[c : c + per]
        w = ix.shape[0]
        post = model.observe(
            obs_n[:, ix].flatten(0, 1),
            prev_action[:, ix].flatten(0, 1),
            mask[:, ix].flatten(0, 1),
            fs.unsqueeze(0).expand(B, w, L).reshape(B * w, L),
            sample=False,
        )
        out = model.heads(post.h[:, -1], post.z[:, -1])
        chunks.append({k: v.reshape(B, w, *v.shape[1:]) for k, v in out.items()})
    return {k: torch.cat([ch[k] for ch in chunks], 1) for k in chunks[0]}
