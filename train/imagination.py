"""Imagined rollouts for policy training (Algorithm 1, lines 10-15).

Start states come from real observations: a short real context is filtered by the posterior so
that h and z carry history, exactly as the deployed coordinator's window replay does. From there
the prior rolls the world forward for H steps. Agents act on the world model's *reconstructed*
observations (decoded from h, z), never on latents, so the same actor runs at deployment on real
or reconstructed observations; with ``real_start_obs`` step 0 uses the real observation at hand.
The critic reads the decoded joint observation, or (``critic: latent``) the states (h, z).
Rewards are the reward head's (trained on smoothed rewards) and the termination head turns into a
continuation probability that weights and discounts what follows.
"""

from __future__ import annotations

import numpy as np
import torch

from rmio.train.policy import joint_act
from rmio.train.ppo import PPO, Rollout
from rmio.train.wm_data import Batch, SequenceSampler
from rmio.train.world_model import RMIOWorldModel


def start_states(
    model: RMIOWorldModel,
    sampler: SequenceSampler,
    rng: np.random.Generator,
    starts: int,
    context: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior (h, z) at the last step of ``starts`` real windows of ``context`` steps (line
    12)."""
    h, z, _ = start_batch(model, sampler.sample(rng, starts, context, end_mid_episode=True))
    return h, z


@torch.no_grad()
def start_batch(model: RMIOWorldModel, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, Batch]:
    """Posterior (h, z) at the last row of each real window of ``batch``, and the batch (its last
    rows are the real start observations)."""
    mask = torch.ones(batch.obs.shape[:3], device=batch.obs.device)
    post = model.observe(
        model.normalize_obs(batch.obs), batch.prev_action, mask, batch.is_first, sample=False
    )
    return post.h[:, -1], post.z[:, -1], batch


@torch.no_grad()
def imagine(
    model: RMIOWorldModel,
    ppo: PPO,
    h: torch.Tensor,
    z: torch.Tensor,
    horizon: int,
    first_obs: torch.Tensor | None = None,
    latent_critic: bool = False,
    first_avail: torch.Tensor | None = None,
) -> Rollout:
    """Roll the prior for ``horizon`` steps under the current policy (lines 13-15), as a PPO
    rollout. ``first_obs`` (B, n, D), raw units: what agents act on at step 0 instead of the
    reconstruction (with ``first_avail``, its real available actions)."""
    discrete = model.spec.discrete
    obs_l, act_l, logp_l, val_l, rew_l, cont_l, avail_l, lat_l = [], [], [], [], [], [], [], []
    obs = model.denormalize_obs(model.decode_obs(h, z)) if first_obs is None else first_obs
    avail = (first_avail if first_avail is not None else _avail(model, h, z)) if discrete else None

    def critic_in(obs: torch.Tensor) -> torch.Tensor:
        return torch.cat([h, z], -1) if latent_critic else obs

    value = ppo.value(critic_in(obs))
    for _ in range(horizon):
        action, logp = joint_act(ppo.actor, obs, avail)  # a_t ~ pi(a_t | o^_t), local rows only
        if latent_critic:
            lat_l.append(critic_in(obs))
        obs_l.append(obs)
        act_l.append(action)
        logp_l.append(logp)
        val_l.append(value)
        if avail is not None:
            avail_l.append(avail)
        executed = ppo.actor.executed(action)  # what the environment would really apply
        h = model.transition(
            h, z, model.encode_actions(executed)
        )  # h_{t+1} = f_rec(h_t, f_af(z_t, a_t))
        z = model.prior(h).sample()  # z^_{t+1} ~ p_prior(. | h_{t+1})
        heads = model.heads(h, z)
        rew_l.append(heads["reward"])
        cont_l.append(1.0 - torch.sigmoid(heads["term_logit"]))
        obs = model.denormalize_obs(heads["obs"])
        avail = _avail(model, h, z) if discrete else None
        value = ppo.value(critic_in(obs))
    # next_values[t] = c_{t+1} V(o^_{t+1}); the bootstrap after the last step uses the final value
    values = torch.stack(val_l)
    nxt = torch.cat([values[1:], value[None]], 0)
    cont = torch.stack(cont_l)
    alive = torch.cumprod(
        torch.cat([torch.ones_like(cont[:1]), cont[:-1]], 0), 0
    )  # P(still running at t)
    return Rollout(
        obs=torch.stack(obs_l),
        actions=torch.stack(act_l),
        logp=torch.stack(logp_l),
        values=values,
        rewards=torch.stack(rew_l),
        next_values=cont * nxt,
        dones=1.0 - cont,
        avail=(torch.stack(avail_l) if avail_l else None),
        weights=alive,
        critic_in=torch.stack(lat_l) if lat_l else None,
    )


def _avail(model: RMIOWorldModel, h: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Predicted available actions (Eq. 3b); an agent with none predicted keeps all of them."""
    logits = model.heads(h, z)["avail_logit"]
    avail = (logits > 0).float()
    none = avail.sum(-1, keepdim=True) == 0
    return torch.where(none, torch.ones_like(avail), avail)
