"""MMSA settings (torch-free, so configs validate without torch): the `mmsa:` section of a config.

MMSA ("Multi-Agent Model-Based Reinforcement Learning with Joint State-Action Learned
Embeddings", Wang and Meger, AAMAS 2026) runs on the QMIX stack, so everything it shares with
QMIX (budget, replay, batch, epsilon schedule, target updates, discount, GRU width, mixer and
hypernetwork widths, evaluation, logging and checkpoint cadence, optimiser kind and its alpha and
epsilon) is read from the config's `qmix:` section; its Table 6 gives those the values pymarl's
QMIX already has. This section holds what MMSA adds or sets differently. Defaults are the paper's
Table 6 where it gives a value; the rest is rmio's choice, said in each field's docstring and in
docs/ARCHITECTURE.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rmio.errors import ConfigError


@dataclass
class MMSAConfig:
    """SALE encoders, the latent world model and its roll-outs (`rmio train mmsa`)."""

    lr: float = 1e-3
    """Learning rate of every MMSA parameter (Table 6: 1e-3, against QMIX's 5e-4; the design
    study found 1e-3 best). Replaces qmix.lr; the optimiser is qmix.optimizer (RMSProp, alpha
    0.99, eps 1e-5 in Table 6)."""
    horizon: int = 3
    """Roll-out horizon j (Table 6: 3; 1, 2 and 10 did worse in the design study): the world
    model imagines j steps past the posterior state, and the mixer sees all j + 1 states."""
    latent_dim: int = 16
    """Table 6's "latent dimension of an agent": the size of an agent's latent state s^_t and,
    since the paper sets s^_{t+1} = z^s_{t+1}, of every SALE embedding (z^o, z^oa, z^s, z^sa)."""
    phi_dim: int = 4
    """Width of the normalised linear features phi^oa = AvgL1Norm(Linear(o, a)) (and phi^sa,
    phi^s). Our reading of Table 6's "dimension of the embedding layer for agent network" (4):
    phi is the only embedding layer of the agent network that Table 6 does not size otherwise."""
    sale_hidden: int = 64
    """Hidden width of the SALE encoders f and g (two ELU layers each, as TD7's). The paper does
    not say; 64 is Table 6's agent width (TD7 uses 256 for 256-wide embeddings)."""
    wm_hidden: int = 64
    """Hidden width of the two VAEs and the latent policy head (one ELU layer each). Not in the
    paper; 64 as the agent's."""
    min_std: float = 0.1
    """Smallest standard deviation of the prior and posterior Gaussians (softplus + min_std, as
    in Dreamer, which the paper's KL balancing comes from). Not in the paper."""
    kl_balance: bool = True
    """KL balancing of KL[q || p_prior] (Table 6: True). False: the plain KL, whose gradient
    reaches prior and posterior in full (the paper's No-KLB ablation)."""
    kl_alpha: float = 0.8
    """KL balancing alpha (Table 6: 0.8): the weight of the term that trains the prior,
    KL[sg(q) || p], with 1 - alpha on KL[q || sg(p)] that trains the posterior. This is
    DreamerV2's convention, which the paper cites, and what its text asks for ("allows the prior
    to mature quickly while preventing the posterior from being over-regularized"); the paper's
    printed equation puts alpha on the other term, which kl_alpha: 0.2 reproduces."""
    sale: bool = True
    """The SALE embeddings z^s and z^sa feed the agents' Q-functions, VAE-1 and the latent policy
    (Secs. 4.2-4.3). False: the paper's No-SALE ablation (Fig. 5b): they are zeros there (as if
    the inputs were removed: a zero column adds nothing and learns nothing) and the two SALE
    losses are not trained; phi, the networks' own linear features, stays."""
    mixer_rollout: bool = True
    """The roll-out state enters the mixer's hypernetworks (Sec. 4.4). False: the paper's No-WM
    ablation (Fig. 5b): nothing of the world model reaches the mixer, which is its only path
    to the agents (the model's losses never reach them); the model still trains, so rmio's
    reconstruction stage has one."""
    mixer_state: bool = True
    """The real global state enters the mixer's hypernetworks (Sec. 4.4). False: the paper's
    No-GS ablation (Fig. 5b): they see the roll-out state only."""
    # rmio's extension, not the paper's: an observation decoder and masked fine-tuning on the
    # trained latent model (`rmio train finetune MMSA_RUN`, train/mmsa_finetune.py); the masks,
    # fine-tuning updates and learning rate are world_model.finetune's, as for RMIOv2.
    recon_episodes: int = 200
    """Episodes the trained agent plays (epsilon qmix.epsilon_finish) for the decoder's data."""
    recon_holdout: int = 20
    """More episodes, on other seeds, behind the held-out errors the stage reports."""
    recon_updates: int = 2_000
    """Updates of the decoder stage (the decoder alone, every observation seen)."""
    recon_batch: int = 32
    """Episodes per update of both stages."""
    recon_lr: float = 1e-3
    """Adam's learning rate of the decoder stage (fine-tuning uses world_model.finetune.lr)."""


def validate_mmsa(m: MMSAConfig, src: str) -> None:
    """Ranges the types cannot say; each failure is one ConfigError line naming the key."""

    def bad(key: str, rule: str, value: Any) -> ConfigError:
        return ConfigError(f"{src}: mmsa.{key} must be {rule}, got {value!r}")

    keys = ("horizon", "latent_dim", "phi_dim", "sale_hidden", "wm_hidden", "recon_episodes")
    for key in (*keys, "recon_holdout", "recon_updates", "recon_batch"):
        if getattr(m, key) < 1:
            raise bad(key, ">= 1", getattr(m, key))
    for key in ("lr", "recon_lr"):
        if not getattr(m, key) > 0:
            raise bad(key, "> 0", getattr(m, key))
    if not m.min_std > 0:
        raise bad("min_std", "> 0", m.min_std)
    if not 0.0 <= m.kl_alpha <= 1.0:
        raise bad("kl_alpha", "in [0, 1]", m.kl_alpha)
    if not (m.mixer_rollout or m.mixer_state):
        raise bad(
            "mixer_state",
            "true when mmsa.mixer_rollout is false (the mixer needs an input)",
            m.mixer_state,
        )
