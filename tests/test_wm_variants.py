"""The Fig. 8 baselines as world-model variants: MAMBA (a lost agent's latent from the prior, no
observation fusion) and RMIO v1 (the prior's prediction corrected by a block over the joint
observation, trained on the frozen world model); presets, semantics, the correction stage."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from rich.console import Console

from rmio.config import ALGORITHMS, algorithm_of, load_config, save_config
from rmio.envs import EnvConfig
from rmio.envs.collect import collect
from rmio.envs.loss import LossConfig
from rmio.errors import RmioError
from rmio.train.common import load_model, prepare_run_dir
from rmio.train.correction import correction_loss
from rmio.train.smoothing import SmoothingConfig
from rmio.train.wm_config import WorldModelConfig
from rmio.train.wm_data import SequenceSampler, observation_stats, sample_masks
from rmio.train.wm_train import finetune_world_model, train_world_model
from rmio.train.world_model import RMIOWorldModel

TINY = WorldModelConfig(deter=32, hidden=32, fusion_dim=16, fusion_heads=2, groups=4, classes=4)


@pytest.fixture(scope="module")
def buffer():
    buf, _ = collect(
        EnvConfig("mamujoco", "HalfCheetah-6x1", episode_limit=40),
        LossConfig("none"),
        steps=160,
        num_envs=2,
        seed=0,
    )
    return buf


def _model(buffer, **overrides) -> RMIOWorldModel:
    torch.manual_seed(0)
    cfg = WorldModelConfig(**{**TINY.__dict__, **overrides})
    return RMIOWorldModel(buffer.spec, cfg, *observation_stats(buffer)).eval()


def _step_inputs(model: RMIOWorldModel, buffer, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    n = model.n_agents
    h = torch.randn(2, n, model.cfg.deter, generator=gen)
    z = torch.zeros(2, n, model.stoch)
    z.view(2, n, model.cfg.groups, model.cfg.classes)[..., 1] = 1.0
    act = torch.rand(2, n, model.act_width, generator=gen) * 2 - 1
    obs = torch.as_tensor(buffer.data["obs"][:2], dtype=torch.float32)
    mask = torch.ones(2, n)
    mask[:, 0] = 0.0  # agent 0 lost
    return h, z, act, obs * mask.unsqueeze(-1), mask


def _others_moved(obs: torch.Tensor) -> torch.Tensor:
    moved = obs.clone()
    moved[:, 1:] += 3.0 * torch.sign(torch.randn_like(moved[:, 1:]))
    return moved


def test_presets_name_their_variant() -> None:
    for algo in ALGORITHMS:
        cfg = load_config("halfcheetah_6x1", preset="debug", algo=algo)
        assert algorithm_of(cfg.to_dict()) == algo
    mamba = load_config("smax_2s3z", algo="mamba").world_model
    assert (mamba.model.obs_fusion, mamba.model.action_fusion) == (False, True)
    assert (mamba.model.action_fusion_layers, mamba.model.lost_latent) == (3, "prior")
    assert mamba.smoothing.mode == "off" and not mamba.model.correction
    v1 = load_config("smax_2s3z", algo="rmio-v1").world_model
    assert v1.model.correction and v1.model.lost_latent == "prior" and not v1.model.obs_fusion
    default = load_config("smax_2s3z").world_model.model
    assert default.lost_latent == "posterior" and not default.correction


def test_three_attention_layers_of_action_fusion(buffer) -> None:
    assert len(_model(buffer, action_fusion_layers=3).action_fusion.blocks) == 3
    assert len(_model(buffer, action_fusion_layers=3).obs_fusion.blocks) == 1
    assert len(_model(buffer).action_fusion.blocks) == 1


def _lost_dist(model: RMIOWorldModel, h1: torch.Tensor, obs: torch.Tensor, mask: torch.Tensor):
    with torch.no_grad():
        return model.latent(h1, model.normalize_obs(obs), mask, sample=False)[1].probs


def test_a_lost_agents_latent_is_the_priors_mode(buffer) -> None:
    """MAMBA: the lost agent's z_t is the prior's mode and nothing observed at t reaches it; the
    observed agents keep their posterior."""
    prior_model = _model(buffer, obs_fusion=False, lost_latent="prior")
    post_model = _model(buffer, obs_fusion=False)  # same weights (same seed), posterior latents
    h, z, act, obs, mask = _step_inputs(prior_model, buffer)
    with torch.no_grad():
        h1, z1, rec1 = prior_model.step(h, z, act, obs, mask)
        _, z2, rec2 = prior_model.step(h, z, act, _others_moved(obs), mask)
        _, zp, _ = post_model.step(h, z, act, obs, mask)
        prior = prior_model.prior(h1)
    assert torch.equal(z1[:, 0], prior.mode()[:, 0]) and torch.equal(z1[:, 0], z2[:, 0])
    assert torch.equal(z1[:, 1:], zp[:, 1:])
    assert torch.equal(rec1[:, 0], rec2[:, 0])
    probs = _lost_dist(prior_model, h1, obs, mask)
    assert torch.equal(probs[:, 0], prior.probs[:, 0])
    assert not torch.allclose(_lost_dist(post_model, h1, obs, mask)[:, 0], prior.probs[:, 0])


def test_rmiov2_lets_the_others_inform_a_lost_agent(buffer) -> None:
    """The contrast the Fig. 8 comparison is about: with observation fusion the same change of the
    other agents' observations moves the lost agent's distribution; with MAMBA's it does not."""
    for fusion, lost_latent, moves in ((True, "posterior", True), (False, "prior", False)):
        model = _model(buffer, obs_fusion=fusion, lost_latent=lost_latent)
        h, z, act, obs, mask = _step_inputs(model, buffer)
        with torch.no_grad():
            h1 = model.transition(h, z, act)
        a = _lost_dist(model, h1, obs, mask)[:, 0]
        b = _lost_dist(model, h1, _others_moved(obs), mask)[:, 0]
        assert (not torch.allclose(a, b)) == moves, (fusion, lost_latent)


def test_prior_latents_carry_no_kl_and_train_the_prior(buffer) -> None:
    """In training, a lost agent's distribution is its prior: its KL term is zero."""
    model = _model(buffer, obs_fusion=False, lost_latent="prior")
    batch = SequenceSampler(buffer, SmoothingConfig()).sample(np.random.default_rng(0), 2, 8)
    mask = torch.ones(2, 8, 6)
    mask[:, 3:, 2] = 0.0
    post = model.observe(model.normalize_obs(batch.obs), batch.prev_action, mask, batch.is_first)
    kl = post.post.kl(post.prior)
    assert torch.allclose(kl[:, 3:, 2], torch.zeros(2, 5), atol=1e-6)
    assert (kl[:, :, [0, 1, 3, 4, 5]] > 1e-4).all()


def test_the_correction_block_uses_the_joint_observation(buffer) -> None:
    """RMIO v1: an untrained block changes nothing observed; once its head is not zero, the lost
    agent's row depends on what the others observe, and observed agents stay as they were."""
    model = _model(buffer, obs_fusion=False, lost_latent="prior")
    h, z, act, obs, mask = _step_inputs(model, buffer)
    with torch.no_grad():
        _, z_prior, _ = model.step(h, z, act, obs, mask)
        block = model.attach_correction()
        _, z0, rec0 = model.step(h, z, act, obs, mask)
        torch.nn.init.normal_(block.head.weight, std=0.5)
        _, z1, rec1 = model.step(h, z, act, obs, mask)
        _, _, rec2 = model.step(h, z, act, _others_moved(obs), mask)
    assert torch.equal(z0[:, 1:], z_prior[:, 1:]) and torch.equal(z1[:, 1:], z_prior[:, 1:])
    assert not torch.equal(rec1[:, 0], rec2[:, 0])
    assert not torch.equal(rec0[:, 0], rec1[:, 0])


def test_correction_stage_freezes_the_world_model_and_learns(tmp_path) -> None:
    """`rmio train finetune` of an rmio-v1 run trains only the block; on held masks of the training
    data the corrected rows beat the prior's prediction; the checkpoint reloads with its block."""
    cfg = load_config(
        "halfcheetah_6x1",
        preset="debug",
        algo="rmio-v1",
        overrides=[
            "world_model.train.updates=10",
            "world_model.train.threads=1",
            "world_model.train.seq_len=8",
            "world_model.finetune.updates=40",
        ],
    )
    run = prepare_run_dir(cfg, tmp_path / "run", "rmio-v1")
    console = Console(file=open(tmp_path / "log.txt", "w"))  # noqa: SIM115
    train_world_model(cfg, run, "cpu", console)
    with pytest.raises(RmioError, match="learns from lost agents"):
        finetune_world_model(run, 0.0, "cpu", console)
    finetune_world_model(run, 0.5, "cpu", console)
    pre, _ = load_model(run / "wm_pretrain.pt")
    post, ckpt = load_model(run / "wm_finetune.pt")
    assert ckpt["phase"] == "correction" and post.correction is not None and pre.correction is None
    for name, value in pre.state_dict().items():
        assert torch.equal(value, post.state_dict()[name]), name
    from rmio.envs.trajectory import TrajectoryBuffer

    buf = TrajectoryBuffer.load(run / "data" / "train.npz")
    batch = SequenceSampler(buf, cfg.world_model.smoothing).sample(np.random.default_rng(5), 32, 12)
    mask = sample_masks(torch.Generator().manual_seed(5), tuple(batch.obs.shape[:3]), 0.5, "cpu")
    with torch.no_grad():
        _, metrics = correction_loss(post, batch, mask)
    assert metrics["corr_masked"] < metrics["prior_masked"]
    save_config(cfg, tmp_path / "again")  # the recorded config names the variant
    assert algorithm_of(load_config(tmp_path / "again" / "config.yaml").to_dict()) == "rmio-v1"
