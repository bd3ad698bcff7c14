"""The world model's cheaper filtering loop (rmio.train.wm_fast) computes what the reference loop
(``observe_stepwise``) computes: same latent samples, same loss, same gradients.

The two differ only in the order of float32 sums (a linear layer over a concatenation becomes a
sum of products with column blocks of its weight; the softmax over K classes is written out), so
values agree to a few float32 roundings, amplified a little by 16 recurrent steps and LayerNorm.
At the real budget the largest gradient difference was 5e-7 of the parameter's largest gradient
entry (``bench/world_model.py paths``); the tolerances below leave a factor of about 20 above that
and stay far below any difference a wrong weight block, a shifted step or another random draw makes
(those change the loss in its second or third digit).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rmio.envs import EnvConfig
from rmio.envs.collect import collect
from rmio.envs.loss import LossConfig
from rmio.train.smoothing import SmoothingConfig
from rmio.train.wm_config import WorldModelConfig
from rmio.train.wm_data import SequenceSampler, observation_stats, sample_masks, world_model_loss
from rmio.train.world_model import RMIOWorldModel

TINY = WorldModelConfig(
    deter=32, hidden=32, fusion_dim=16, fusion_heads=2, groups=4, classes=4, free_nats=0.0
)
"""No free nats: below them the KL's gradient is zero, and the prior's gradients must be compared
too."""
REL = 1e-5
"""Largest gradient difference allowed, relative to the parameter's largest reference entry."""


@pytest.fixture(scope="module")
def buffer():
    buf, _ = collect(
        EnvConfig("mamujoco", "HalfCheetah-6x1", episode_limit=30),
        LossConfig("none"),
        steps=240,
        num_envs=2,
        seed=0,
    )
    return buf


def _loss_and_grads(model: RMIOWorldModel, batch, mask, reference: bool):
    """Loss, metrics and every gradient of one update, through either loop, from one seed."""
    model.observe_path = "stepwise" if reference else "fast"
    model.zero_grad()
    torch.manual_seed(11)
    loss, metrics = world_model_loss(model, batch, mask)
    loss.backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), metrics, grads


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"obs_fusion": False, "action_fusion": False},
        {"agent_id": False, "mask_flag": False, "unimix": 0.0},
        {"fusion_layers": 2, "action_fusion_layers": 3},
    ],
    ids=["rmiov2", "no-fusion", "no-id-no-flag-no-unimix", "deeper-fusion"],
)
def test_fast_loop_gives_the_reference_loss_and_gradients(buffer, overrides) -> None:
    torch.manual_seed(0)
    model = RMIOWorldModel(
        buffer.spec, WorldModelConfig(**{**TINY.__dict__, **overrides}), *observation_stats(buffer)
    )
    batch = SequenceSampler(buffer, SmoothingConfig()).sample(np.random.default_rng(1), 6, 16)
    # windows of 16 rows over 30-step episodes: some restart inside the window
    assert batch.is_first[:, 1:].sum() > 0
    mask = sample_masks(torch.Generator().manual_seed(2), tuple(batch.obs.shape[:3]), 0.5, "cpu")
    fast_loss, fast_metrics, fast = _loss_and_grads(model, batch, mask, reference=False)
    ref_loss, ref_metrics, ref = _loss_and_grads(model, batch, mask, reference=True)
    torch.testing.assert_close(fast_loss, ref_loss, rtol=1e-5, atol=1e-6)
    assert fast_metrics.keys() == ref_metrics.keys()
    for key, value in ref_metrics.items():
        assert fast_metrics[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    assert fast.keys() == ref.keys() and len(ref) == len(list(model.parameters()))
    for name, g in ref.items():
        scale = float(g.abs().max())
        assert scale > 0, f"{name} got no gradient"
        worst = float((fast[name] - g).abs().max()) / scale
        assert worst < REL, f"{name}: gradient differs by {worst:.2e} of its largest entry"


@pytest.mark.parametrize("sample", [True, False])
def test_fast_loop_draws_the_same_latents(buffer, sample: bool) -> None:
    """Same one-hot latents (the Gumbel noise of every step comes from one draw that reproduces
    the reference's per-step draws) and the same states and posteriors."""
    torch.manual_seed(0)
    model = RMIOWorldModel(buffer.spec, TINY, *observation_stats(buffer))
    model.observe_path = "fast"
    batch = SequenceSampler(buffer, SmoothingConfig()).sample(np.random.default_rng(3), 4, 20)
    mask = sample_masks(torch.Generator().manual_seed(4), tuple(batch.obs.shape[:3]), 0.3, "cpu")
    obs_n = model.normalize_obs(batch.obs)
    with torch.no_grad():
        torch.manual_seed(7)
        fast = model.observe(obs_n, batch.prev_action, mask, batch.is_first, sample=sample)
        after_fast = torch.rand(3)
        torch.manual_seed(7)
        ref = model.observe_stepwise(obs_n, batch.prev_action, mask, batch.is_first, sample=sample)
        after_ref = torch.rand(3)
    assert torch.equal(fast.z.round(), ref.z.round())  # the same class in every categorical
    torch.testing.assert_close(fast.z, ref.z, rtol=0, atol=1e-6)
    torch.testing.assert_close(fast.h, ref.h, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast.post.logits, ref.post.logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast.prior.logits, ref.prior.logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast.prior.probs, ref.prior.probs, rtol=1e-5, atol=1e-6)
    assert torch.equal(after_fast, after_ref)  # both consumed the same random numbers


def test_variants_keep_the_reference_loop(buffer) -> None:
    """MAMBA's prior latents (and RMIO v1's correction block) go through ``observe_stepwise``
    whatever the path asked for."""
    torch.manual_seed(0)
    model = RMIOWorldModel(
        buffer.spec,
        WorldModelConfig(**{**TINY.__dict__, "lost_latent": "prior"}),
        *observation_stats(buffer),
    )
    model.observe_path = "fast"
    batch = SequenceSampler(buffer, SmoothingConfig()).sample(np.random.default_rng(5), 2, 8)
    mask = torch.ones(batch.obs.shape[:3])
    mask[:, :, 0] = 0.0
    obs_n = model.normalize_obs(batch.obs)
    with torch.no_grad():
        torch.manual_seed(1)
        a = model.observe(obs_n, batch.prev_action, mask, batch.is_first)
        torch.manual_seed(1)
        b = model.observe_stepwise(obs_n, batch.prev_action, mask, batch.is_first)
    assert torch.equal(a.h, b.h) and torch.equal(a.z, b.z)


def test_compiled_step_gives_the_reference_loss_and_gradients(buffer, monkeypatch) -> None:
    """``world_model.train.compile``'s path: the same step under torch.compile (compiled in this
    process, without inductor's worker processes, which would outlive the test)."""
    import torch._inductor.config as inductor

    monkeypatch.setattr(inductor, "compile_threads", 1)
    torch.manual_seed(0)
    model = RMIOWorldModel(buffer.spec, TINY, *observation_stats(buffer))
    batch = SequenceSampler(buffer, SmoothingConfig()).sample(np.random.default_rng(6), 4, 12)
    mask = sample_masks(torch.Generator().manual_seed(7), tuple(batch.obs.shape[:3]), 0.5, "cpu")
    ref_loss, _, ref = _loss_and_grads(model, batch, mask, reference=True)
    model.observe_path = "compiled"
    model.zero_grad()
    torch.manual_seed(11)
    loss, _ = world_model_loss(model, batch, mask)
    loss.backward()
    torch.testing.assert_close(loss.detach(), ref_loss, rtol=1e-5, atol=1e-6)
    for name, g in ref.items():
        worst = float((model.get_parameter(name).grad - g).abs().max() / g.abs().max())
        assert worst < REL, f"{name}: gradient differs by {worst:.2e} of its largest entry"
