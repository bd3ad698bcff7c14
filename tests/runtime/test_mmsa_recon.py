"""MMSA under observation loss, rmio's extension (issue 22, item 4): a debug-scale MMSA run on LBF
gets an observation decoder and masked fine-tuning (`rmio train finetune MMSA_RUN`), exports its
own world model (`rmio export MMSA_RUN`, no --world-model) as RMIOv2's ``wm_step.onnx`` contract
with parity against PyTorch, and its bundle runs through the real swarm at p_loss 0.3 with the
in-process evaluation's returns and actions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from swarm_helpers import run_swarm, swarm_settings
from test_recurrent_actor import STEPS, _rmio
from test_swarm_matrix import compare_with_in_process

from rmio.runtime.bundle import load_manifest
from rmio.runtime.models import ActorRunner, WorldModelRunner
from rmio.runtime.validate import check_bundle

pytest.importorskip("lbforaging")
pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]


@pytest.fixture(scope="module")
def tuned_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A debug MMSA run (600 env steps), then its decoder stage and masked fine-tuning."""
    run = tmp_path_factory.mktemp("mmsa_recon") / "run"
    proc = _rmio("train", "mmsa", "lbf_8x8_2p_2f_coop", "--debug", "--run-dir", str(run))
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = _rmio("train", "finetune", str(run), "--p-mask", "0.3")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return run


@pytest.fixture(scope="module")
def bundle(tuned_run: Path) -> Path:
    """`rmio export MMSA_RUN`: the run's own world model beside its Q-actor."""
    from rmio.cli import cli

    out = tuned_run.parent / "bundle"
    res = CliRunner().invoke(cli, ["export", str(tuned_run), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "is valid" in res.output
    return out


def test_decoder_then_masked_finetuning(tuned_run: Path) -> None:
    """The decoder stage leaves MMSA's trained networks as they were and lowers the held-out
    prediction error; fine-tuning trains the latent model's posterior and prior (the agent's GRU
    and the SALE encoders stay) and lowers the lost agents' error under the same masks, below
    hold-last's."""
    from rmio.train.mmsa_finetune import load_obs_model
    from rmio.train.runlog import load_checkpoint

    trained = load_checkpoint(tuned_run / "mmsa.pt")["learner"]
    pre, ckpt_pre = load_obs_model(tuned_run / "mmsa_wm_pretrain.pt")
    tuned, ckpt = load_obs_model(tuned_run / "mmsa_wm.pt")
    for model, changed in ((pre, False), (tuned, True)):
        for key, value in trained["agent"].items():
            assert torch.equal(model.agent.state_dict()[key], value), key
        wm = model.wm.state_dict()
        for key in ("sale.f.0.weight", "sale.g.0.weight"):
            assert torch.equal(wm[key], trained["wm"][key])
        for key in ("posterior.net.0.weight", "prior.net.0.weight"):
            assert torch.equal(wm[key], trained["wm"][key]) is not changed, key
    h = ckpt["holdout"]
    assert h["decoder"] == ckpt_pre["holdout"]["decoder"]
    assert h["decoder"]["rec_prior_all"] < 0.9 * h["untrained"]["rec_prior_all"]
    assert h["decoder"]["rec_post"] < 0.9 * h["untrained"]["rec_post"]
    # fine-tuning must not hurt; at this scale it barely helps (4.36 against 4.38)
    assert h["finetune"]["rec_lost"] < 1.02 * h["decoder"]["rec_lost"]
    assert h["finetune"]["rec_lost"] < h["finetune"]["rec_lost_hold_last"]
    assert ckpt["p_mask"] == 0.3 and ckpt["updates"] == 40  # the debug preset's fine-tuning


def test_export_contract_and_parity(tuned_run: Path, bundle: Path) -> None:
    """h is the Q-agent's GRU state, z MMSA's latent; both graphs checked against PyTorch."""
    from rmio.config import load_config

    cfg = load_config(tuned_run / "config.yaml")
    man = load_manifest(bundle)
    width = cfg.mmsa.latent_dim + man.spec.obs_dim  # z = [s^, the observation acted on]
    assert (man.deter, man.stoch) == (cfg.qmix.rnn_hidden, width)
    assert man.budget["wm_algo"] == "mmsa-recon" and "not the paper's" in man.budget["wm_extension"]
    assert man.budget["policy_algo"] == "mmsa" and man.actor_state is not None
    assert man.files["wm_step_pretrain"] == "wm_step_pretrain.onnx"
    for key in ("parity_max_abs_random", "parity_max_abs_replay", "parity_max_abs_random_pretrain"):
        assert 0.0 <= man.metrics[key] < 1e-4, key
    assert man.metrics["actor_parity"] == 0.0
    assert "is valid" in check_bundle(bundle)


def test_the_world_model_keeps_the_blind_actors_state(bundle: Path) -> None:
    """The graph ignores a lost agent's observation and advances h exactly as the actor advances
    its own state on the reconstruction it is handed: the world model's h is the actor's."""
    man = load_manifest(bundle)
    wm, actor = WorldModelRunner(bundle, man), ActorRunner(bundle, man)
    n, d, act = man.spec.n_agents, man.spec.obs_dim, man.spec.action_dim
    rng = np.random.default_rng(0)
    mean, std = np.asarray(man.obs_mean, np.float32), np.asarray(man.obs_std, np.float32)
    state, astate = wm.initial_state(1), actor.initial_state(n)
    prev = np.full((1, n), -1)
    for t in range(12):
        obs = (mean + std * rng.standard_normal((n, d))).astype(np.float32)[None]
        mask = np.ones((1, n), np.float32)
        mask[0, t % n] = 0.0  # one agent blind at every step
        enc = wm.encode_actions(prev)
        nxt, recon = wm.step(state, enc, obs * mask[..., None], mask)
        garbage = obs + 5.0 * (1.0 - mask[..., None])
        other, recon2 = wm.step(state, enc, garbage, mask)
        assert np.array_equal(recon, recon2) and np.array_equal(nxt.h, other.h)
        seen = np.where(mask[0, :, None] > 0, obs[0], recon[0])  # what each actor acts on
        action, astate = actor.step(seen, np.arange(n), None, astate)
        np.testing.assert_allclose(astate[:, : man.deter], nxt.h[0], atol=1e-4)
        state, prev = nxt, np.asarray(action).reshape(1, n)
        assert astate.shape[1] == man.deter + act


@pytest.mark.parametrize("wm_mode", ["window", "incremental"])
def test_swarm_equals_in_process(bundle: Path, tmp_path: Path, wm_mode: str) -> None:
    """Real agent processes over UDP at p_loss 0.3, two episodes, blind agents acting on the MMSA
    world model's reconstructions: the in-process evaluation's returns and every joint action."""
    settings = swarm_settings(
        bundle,
        tmp_path,
        steps=STEPS,
        episodes=2,
        record=True,
        transport="udp",
        wm_mode=wm_mode,
        step_deadline_ms=2000.0,
    )
    report, _ = run_swarm(settings, tmp_path / "run")
    ev = report["events"]
    assert ev.get("deadline_misses", 0) == 0 and ev.get("agents.recon_miss", 0) == 0
    assert ev.get("agents.internal_errors", 0) == 0 and ev.get("invalid_actions", 0) == 0
    compared = compare_with_in_process(settings, tmp_path / "run", report)
    assert compared["steps"] == 2 * STEPS and compared["lost"] > 0
    assert ev["agents.act_world-model"] == compared["lost"]
