"""MARIE's training fast paths (issue 23's speed-up) compute what the written-out code computes:
the loss and every gradient of one update equal ``reference_paths()``'s with dropout off (chunked
causal attention across an episode start, the context Perceiver once per step), the Perceiver's
own-masked latents equal n separate runs for any depth, and the fast dropout keeps 1 - p."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from rmio.config import load_config
from rmio.envs import EnvConfig
from rmio.envs.collect import collect
from rmio.envs.loss import LossConfig
from rmio.train import marie_attention, marie_nets
from rmio.train.marie_attention import chunked_attention, keep_mask
from rmio.train.marie_config import MarieConfig
from rmio.train.marie_model import MarieWorldModel
from rmio.train.marie_nets import Perceiver, reference_paths
from rmio.train.wm_data import SequenceSampler, observation_stats


def _model_and_batch():
    buf, _ = collect(
        EnvConfig("mamujoco", "HalfCheetah-6x1", episode_limit=7),
        LossConfig("none"),
        steps=60,
        num_envs=1,
        seed=0,
    )
    torch.manual_seed(0)
    mean, std = observation_stats(buf)[:2]
    m = MarieWorldModel(MarieConfig(preset="tiny", seq_len=6, dropout=0.0), buf.spec, mean, std)
    smoothing = load_config("halfcheetah_6x1").world_model.smoothing
    sampler = SequenceSampler(buf, smoothing, "cpu")
    batch = sampler.sample(np.random.default_rng(0), 5, 7)
    return m.train(), batch


def _loss_and_grads(m: MarieWorldModel, batch, reference: bool):
    m = copy.deepcopy(m)  # the EMA codebook update changes the model
    torch.manual_seed(1)
    if reference:
        with reference_paths():
            loss, _ = m.loss(batch)
    else:
        loss, _ = m.loss(batch)
    loss.backward()
    return loss, {n: p.grad for n, p in m.named_parameters() if p.grad is not None}


def test_fast_training_update_equals_the_written_out_one(monkeypatch: pytest.MonkeyPatch) -> None:
    # pieces small enough that the tiny model's attention is cut into several of each kind
    monkeypatch.setattr(marie_attention, "ROW_CHUNK", 5)
    monkeypatch.setattr(marie_attention, "ATTENTION_CHUNK", 2 * 2 * 5 * 42)
    m, batch = _model_and_batch()
    assert (batch.is_first[:, 1:-1] > 0.5).any()  # an episode starts inside a window
    ref_loss, ref = _loss_and_grads(m, batch, reference=True)
    loss, fast = _loss_and_grads(m, batch, reference=False)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    assert set(fast) == set(ref) and len(ref) > 30
    for name, g in ref.items():
        torch.testing.assert_close(fast[name], g, rtol=1e-4, atol=1e-5, msg=name)
    assert ref["context.cross.kv.weight"].abs().sum() > 0  # the context Perceiver was compared


@pytest.mark.parametrize("layers", [0, 1, 2])
def test_own_masked_latents_equal_one_perceiver_run_per_agent(layers: int) -> None:
    torch.manual_seed(0)
    n, m, dim = 3, 2, 16
    perc = Perceiver(n, dim, heads=2, dim_head=8, layers=layers).train()
    ctx, mask = torch.randn(4, n, m, dim), torch.randn(n, dim)
    fast = perc.own_masked(ctx, mask)
    for i in range(n):
        one = ctx.clone()
        one[:, i] = mask[i]
        with reference_paths():
            want = perc(one.flatten(1, 2))[:, i]
        torch.testing.assert_close(fast[:, i], want, rtol=1e-5, atol=1e-6)


def test_fast_dropout_keeps_one_minus_p() -> None:
    torch.manual_seed(0)
    keep = keep_mask(torch.Size([1000, 1001]), 0.1, torch.device("cpu"))
    assert keep.shape == (1000, 1001) and keep.dtype == torch.uint8 and keep.max() == 1
    assert abs(keep.float().mean().item() - 0.9) < 0.002  # 1e6 draws: sd 3e-4
    drop = marie_nets.Dropout(0.25).train()
    x = torch.ones(400, 500)
    y = drop(x)
    assert torch.unique(y).tolist() == [0.0, pytest.approx(4 / 3)]
    assert abs(y.mean().item() - 1.0) < 0.01
    assert torch.equal(drop.eval()(x), x)


@pytest.mark.parametrize("causal", [True, False])
def test_piecewise_attention_backward_is_its_forwards_gradient(
    monkeypatch: pytest.MonkeyPatch, causal: bool
) -> None:
    """The hand-written backward, dropout on (the same masks on every call of a fixed seed),
    against finite differences in float64; and dropout off, the values of the written-out
    attention with an episode start inside a sequence."""
    monkeypatch.setattr(marie_attention, "ROW_CHUNK", 3)
    monkeypatch.setattr(marie_attention, "ATTENTION_CHUNK", 2 * 3 * 7)
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, 2, 7, 4, generator=gen, dtype=torch.float64) for _ in range(3))
    episode = torch.tensor([[0] * 7, [0, 0, 0, 1, 1, 1, 1], [0] * 7])
    ok = episode[:, :, None] == episode[:, None, :]
    if causal:
        ok = ok & torch.ones(7, 7, dtype=torch.bool).tril()
    bias = torch.zeros(3, 1, 7, 7, dtype=torch.float64).masked_fill(~ok[:, None], float("-inf"))

    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        torch.manual_seed(5)
        return chunked_attention(q, k, v, bias, 0.3, causal)

    inputs = tuple(x.clone().requires_grad_() for x in (q, k, v))
    assert torch.autograd.gradcheck(attend, inputs)
    plain = (q @ k.transpose(-1, -2) * 4**-0.5 + bias).softmax(-1) @ v
    torch.testing.assert_close(chunked_attention(q, k, v, bias, 0.0, causal), plain)
    assert (attend(q, k, v) - plain).abs().max() > 0.01  # dropout dropped something
