"""The world model itself: shapes, masking semantics, learning, resume, export parity, bad
inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from rmio.config import load_config
from rmio.envs import EnvConfig
from rmio.envs.collect import collect
from rmio.envs.loss import LossConfig
from rmio.train.smoothing import SmoothingConfig
from rmio.train.wm_config import WorldModelConfig
from rmio.train.wm_data import SequenceSampler, observation_stats, sample_masks, world_model_loss
from rmio.train.world_model import RMIOWorldModel

TINY = WorldModelConfig(deter=32, hidden=32, fusion_dim=16, fusion_heads=2, groups=4, classes=4)


@pytest.fixture(scope="module")
def buffer():
    buf, _ = collect(
        EnvConfig("mamujoco", "HalfCheetah-6x1", episode_limit=60),
        LossConfig("none"),
        steps=600,
        num_envs=2,
        seed=0,
    )
    return buf


def _model(buffer, **overrides) -> RMIOWorldModel:
    torch.manual_seed(0)
    cfg = WorldModelConfig(**{**TINY.__dict__, **overrides})
    return RMIOWorldModel(buffer.spec, cfg, *observation_stats(buffer))


def test_shapes_of_a_filtered_sequence(buffer) -> None:
    model = _model(buffer)
    batch = SequenceSampler(buffer, SmoothingConfig()).sample(np.random.default_rng(0), 3, 10)
    mask = torch.ones(3, 10, 6)
    post = model.observe(model.normalize_obs(batch.obs), batch.prev_action, mask, batch.is_first)
    assert post.h.shape == (3, 10, 6, 32) and post.z.shape == (3, 10, 6, 16)
    out = model.heads(post.h, post.z)
    assert out["obs"].shape == (3, 10, 6, 9) and out["reward"].shape == (3, 10)
    assert out["state"].shape == (3, 10, 6, 17)
    np.testing.assert_array_equal(
        out["obs"][..., 8].detach()[:, :, [2, 5]], 0.0
    )  # padding stays zero


@pytest.mark.parametrize("fusion", [True, False])
def test_a_masked_agents_observation_cannot_leak_in(buffer, fusion: bool) -> None:
    """Whatever a lost agent's row holds, the model's output is the same: the mask really removes
    it."""
    model = _model(buffer, obs_fusion=fusion).eval()
    gen = torch.Generator().manual_seed(0)
    h, z = model.initial(2)
    act = torch.zeros(2, 6, 1)
    obs = torch.randn(2, 6, 9, generator=gen) * model.feature_mask
    mask = torch.tensor([[1, 0, 1, 1, 0, 1]] * 2, dtype=torch.float32)
    tampered = obs.clone()
    tampered[:, [1, 4]] = 123.0
    with torch.no_grad():
        a = model.step(h, z, act, obs, mask)
        b = model.step(h, z, act, tampered, mask)
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y)


def test_observation_fusion_lets_other_agents_inform_a_lost_one(buffer) -> None:
    """With fusion, an observed agent's input changes the lost agent's reconstruction; without,
    never."""
    gen = torch.Generator().manual_seed(1)
    obs = torch.randn(1, 6, 9, generator=gen)
    other = obs.clone()
    other[:, 0] += 1.0
    mask = torch.tensor([[1, 0, 1, 1, 1, 1]], dtype=torch.float32)
    for fusion, should_change in ((True, True), (False, False)):
        model = _model(buffer, obs_fusion=fusion, action_fusion=fusion).eval()
        h, z = model.initial(1)
        h = torch.randn(h.shape, generator=gen)
        with torch.no_grad():
            _, _, r1 = model.step(h, z, torch.zeros(1, 6, 1), obs, mask)
            _, _, r2 = model.step(h, z, torch.zeros(1, 6, 1), other, mask)
        changed = not torch.allclose(r1[0, 1], r2[0, 1])
        assert changed == should_change


def test_loss_falls_and_masked_finetuning_improves_masked_reconstruction(buffer) -> None:
    torch.set_num_threads(1)
    model = _model(buffer)
    sampler = SequenceSampler(buffer, SmoothingConfig())
    rng = np.random.default_rng(0)
    fixed = sampler.sample(np.random.default_rng(99), 8, 16)
    gen = torch.Generator().manual_seed(3)
    fixed_mask = sample_masks(gen, tuple(fixed.obs.shape[:3]), 0.5, fixed.obs.device)

    def evaluate(mask):
        torch.manual_seed(5)
        with torch.no_grad():
            return world_model_loss(model, fixed, mask)[1]

    before = evaluate(torch.ones_like(fixed_mask))
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(120):
        b = sampler.sample(rng, 8, 16)
        loss, _ = world_model_loss(model, b, torch.ones(b.obs.shape[:3]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = evaluate(torch.ones_like(fixed_mask))
    assert after["obs"] < 0.8 * before["obs"]
    assert after["loss"] < before["loss"]
    masked_before = evaluate(fixed_mask)["obs_masked"]
    for _ in range(80):
        b = sampler.sample(rng, 8, 16)
        loss, _ = world_model_loss(
            model, b, sample_masks(gen, tuple(b.obs.shape[:3]), 0.5, b.obs.device)
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert evaluate(fixed_mask)["obs_masked"] < masked_before


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path: Path, buffer) -> None:
    from rich.console import Console

    from rmio.train.runlog import load_checkpoint
    from rmio.train.wm_train import Phase, optimise

    torch.set_num_threads(1)
    cfg = load_config("halfcheetah_6x1", preset="debug")
    sampler = SequenceSampler(buffer, cfg.world_model.smoothing)
    quiet = Console(quiet=True)
    full = _model(buffer)
    optimise(full, cfg, Phase("pretrain", 40, 1e-3, 0.3), tmp_path / "a", sampler, quiet, None, {})
    part = _model(buffer)
    optimise(part, cfg, Phase("pretrain", 20, 1e-3, 0.3), tmp_path / "b", sampler, quiet, None, {})
    resumed = _model(buffer)
    start = load_checkpoint(tmp_path / "b" / "ckpt_pretrain.pt")
    optimise(
        resumed, cfg, Phase("pretrain", 40, 1e-3, 0.3), tmp_path / "b", sampler, quiet, start, {}
    )
    for (name, p), q in zip(full.state_dict().items(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(p, q, msg=f"{name} differs after resume")
    lines = (tmp_path / "b" / "wm_pretrain.jsonl").read_text().splitlines()
    assert (
        len(lines) == 4
    )  # logged at 10, 20 (first run) then 30, 40 (resumed): one continuous history
