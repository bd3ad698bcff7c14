"""Policy-aware fine-tuning: rmio's extension of Algorithm 2, not the paper's objective (issue 25).

Algorithm 2 fine-tunes the world model to reconstruct lost observations feature by feature
(L_rec, Eq. 8). The deployed actor, though, is sensitive to some features and blind to others, so a
lower L_rec does not always mean a better action. This term adds, for every lost agent-step of a
training batch, the disagreement of the frozen actor between the true and the reconstructed
observation to the fine-tuning loss:

    L = L_M + lambda * E_lost[ d(pi(o), pi(o^)) ]

with d the absolute difference of the executed (clipped) actions for continuous actions, passed
straight through the clip so saturated actions still give a gradient, and KL(pi(.|o) || pi(.|o^))
for discrete ones. The actor is frozen: only the world model learns, through its decoder. lambda =
``world_model.finetune.policy_weight``; 0 (the default) is the paper's objective.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from rmio.errors import RmioError
from rmio.runtime.bundle import load_manifest
from rmio.runtime.models import ActorRunner
from rmio.train.policy import Actor


def actor_from_bundle(bundle: Path) -> Actor:
    """A differentiable copy of an rmio-exported ``actor.onnx``: the MLP's weights by name and the
    observation statistics among the graph's constants, checked against the graph's own outputs."""
    import onnx
    from onnx import numpy_helper

    manifest = load_manifest(bundle)
    spec = manifest.spec
    graph = onnx.load(str(bundle / manifest.files["actor"])).graph
    consts = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    weights = {k.removeprefix("actor."): v for k, v in consts.items() if k.startswith("actor.net.")}
    if not weights:
        raise RmioError(
            f"'{bundle}': its actor.onnx was not exported by rmio (no actor.net weights); "
            "policy-aware fine-tuning needs rmio's actor (a policy.pt or an rmio bundle)"
        )
    stats = [
        v.astype(np.float32)
        for k, v in consts.items()
        if not k.startswith("actor.") and v.shape == (spec.n_agents, spec.obs_dim)
    ]
    hidden = weights["net.0.weight"].shape[0]
    runner = ActorRunner(bundle, manifest)
    rng = np.random.default_rng(0)
    ids = np.tile(np.arange(spec.n_agents), 8)
    # an actor trained in imagination may squash its mean into the action box (bounded_actions);
    # which one the graph is, the outputs below decide
    im = (manifest.config.get("policy") or {}).get("imagination") or {}
    bounds = [None, (float(im.get("std_min", 0.1)), float(im.get("std_max", 1.0)))]
    for (mean, std), bound in itertools.product(itertools.permutations(stats, 2), bounds):
        if bound is not None and spec.discrete:
            continue
        actor = Actor(spec, hidden, 0.0, mean, std)
        if bound is not None:
            actor.set_bounds(*bound)
        state = actor.state_dict()
        state.update({k: torch.tensor(v) for k, v in weights.items()})
        actor.load_state_dict(state)
        obs = (mean[ids] + rng.normal(size=(len(ids), spec.obs_dim)) * std[ids]).astype(np.float32)
        avail = np.ones((len(ids), spec.action_dim), bool) if spec.discrete else None
        with torch.no_grad():
            a = actor(torch.as_tensor(obs), torch.as_tensor(ids), None).numpy()
        b = runner.act(obs, ids, avail)
        if (a == b).all() if spec.discrete else np.abs(a - b).max() < 1e-4:
            actor.requires_grad_(False)
            return actor.eval()
    raise RmioError(
        f"'{bundle}': could not rebuild its actor.onnx as rmio's Actor (no statistics reproduce "
        "its outputs); use the policy.pt it was exported from"
    )


def load_frozen_actor(source: Path) -> Actor:
    """A policy.pt or a bundle directory -> the frozen actor."""
    if source.is_dir():
        return actor_from_bundle(source)
    from rmio.train.common import load_actor

    actor, _ = load_actor(source)
    actor.requires_grad_(False)
    return actor.eval()


class PolicyAwareTerm:
    """lambda * E_lost[d(pi(o), pi(o^))], added to the world-model loss (see the module doc)."""

    def __init__(self, actor: Actor, weight: float) -> None:
        self.actor = actor
        self.weight = weight

    def __call__(
        self, model: Any, decoded_n: torch.Tensor, obs: torch.Tensor, lost: torch.Tensor, avail: Any
    ) -> tuple[torch.Tensor, dict[str, float]]:
        b, t, i = lost.nonzero(as_tuple=True)
        if len(b) == 0:
            return decoded_n.new_zeros(()), {}
        recon = model.denormalize_obs(decoded_n)[b, t, i]
        true = obs[b, t, i]
        av = None if avail is None else avail[b, t, i]
        actor = self.actor
        if actor.spec.discrete:
            with torch.no_grad():
                target = actor.dist(true, i, av).logits
            got = actor.dist(recon, i, av).logits
            p = F.softmax(target, -1)
            d = (p * (F.log_softmax(target, -1) - F.log_softmax(got, -1))).sum(-1)
            name = "policy_kl"
        else:
            with torch.no_grad():
                target = actor(true, i)
            raw = actor.dist(recon, i).mean
            clipped = torch.minimum(torch.maximum(raw, actor.low), actor.high)
            executed = (raw + (clipped - raw).detach()) * actor.action_mask[i]  # straight through
            d = (executed - target).abs().sum(-1) / actor.action_mask[i].sum(-1).clamp(min=1.0)
            name = "policy_mae"
        value = d.mean()
        return self.weight * value, {name: value.item()}
