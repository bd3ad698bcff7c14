"""MMSA (`rmio train mmsa`): config validation, AvgL1Norm and the decoupled SALE encoders, the
roll-out from recurrent states, the mixer's monotonicity with the roll-out state as input, KL
balancing's weights, and a debug run end to end with resume."""

from __future__ import annotations

import io
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console

from rmio.config import load_config
from rmio.envs.base import EnvSpec
from rmio.errors import ConfigError
from rmio.train.mmsa import load_mmsa_agent, train_mmsa
from rmio.train.mmsa_config import MMSAConfig
from rmio.train.mmsa_learner import MMSALearner
from rmio.train.mmsa_nets import (
    SALE,
    LatentWorldModel,
    MMSAMixer,
    avg_l1_norm,
    balanced_kl,
    gaussian_kl,
    rollout_dim,
)
from rmio.train.qmix_config import QMIXConfig
from rmio.train.qmix_replay import Episode, EpisodeBuffer
from rmio.train.runlog import load_checkpoint

SPEC = EnvSpec("test/m", 3, (5, 5, 4), 12, "discrete", (4, 4, 4), 6)
Q = QMIXConfig(rnn_hidden=16, mixing_embed=8, hypernet_embed=16, target_update_episodes=3)
M = MMSAConfig(latent_dim=6, phi_dim=3, sale_hidden=12, wm_hidden=12)
LBF = ("lbf_8x8_2p_2f_coop", "lbf_2s_8x8_2p_2f_coop", "lbf_10x10_3p_5f", "lbf_10x10_4p_3f")
LBF += ("lbf_2s_10x10_3p_3f",)


BAD = ("horizon=0", "horizon=-2", "latent_dim=0", "phi_dim=0", "lr=0", "min_std=0")
BAD += ("kl_alpha=1.5", "kl_balance=3", "rollout=2")  # a wrong type, an unknown key


@pytest.mark.parametrize("bad", BAD)
def test_a_bad_mmsa_setting_is_one_config_error_line_naming_it(bad: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config("lbf_8x8_2p_2f_coop", preset="debug", overrides=[f"mmsa.{bad}"])
    text = str(err.value)
    assert f"mmsa.{bad.split('=')[0]}" in text and len(text.splitlines()) == 1, text


@pytest.mark.parametrize("name", LBF)
def test_lbf_configs_carry_table_6_and_share_their_qmix_settings(name: str) -> None:
    cfg = load_config(name)
    m = cfg.mmsa
    assert (m.lr, m.horizon, m.latent_dim, m.kl_balance, m.kl_alpha) == (1e-3, 3, 16, True, 0.8)
    assert cfg.qmix == load_config("lbf_8x8_2p_2f_coop").qmix
    assert cfg.qmix.env_steps == 2_000_000 and cfg.env.family == "lbf"
    debug = load_config(name, preset="debug")
    assert debug.mmsa.horizon == 3 and debug.qmix.env_steps <= 1_000


def test_ten_by_ten_five_food_really_has_five_food() -> None:
    """lbforaging registers at most 4 food: the config builds the 5-food field via options."""
    from rmio.envs.registry import make_env

    cfg = load_config("lbf_10x10_3p_5f")
    with make_env(cfg.env) as env:
        env.reset(seed=0)
        assert env.spec.n_agents == 3 and int((env._core.field > 0).sum()) == 5


def test_avg_l1_norm_gives_unit_mean_absolute_value_whatever_the_scale() -> None:
    torch.manual_seed(0)
    x = torch.randn(64, 16) * torch.logspace(-3, 3, 64).unsqueeze(1)
    z = avg_l1_norm(x)
    torch.testing.assert_close(z.abs().mean(-1), torch.ones(64))
    torch.testing.assert_close(avg_l1_norm(x * 7.5), z)  # positive rescaling is invisible
    torch.testing.assert_close(torch.sign(z), torch.sign(x))  # direction kept
    sale = SALE(9, 4, M)
    zs = sale.zs(torch.randn(32, 9) * 100)
    torch.testing.assert_close(zs.abs().mean(-1), torch.ones(32))
    assert zs.shape == (32, M.latent_dim)
    # the agents' every-action z^oa is g on each one-hot action
    every = sale.zsa_every_action(zs)
    for a in range(4):
        one_hot = torch.nn.functional.one_hot(torch.full((32,), a), 4).float()
        torch.testing.assert_close(every[:, a], sale.zsa(zs, one_hot))


def _batch(spec: EnvSpec, b: int = 4, t: int = 5, seed: int = 0) -> dict[str, torch.Tensor]:
    """``b`` random episodes of at most ``t`` steps (one shorter), through QMIX's replay."""
    rng = np.random.default_rng(seed)
    n, a = spec.n_agents, spec.action_dim
    buf = EpisodeBuffer(b, replace(spec, episode_limit=t))
    for k in range(b):
        steps = t if k else t - 2
        buf.add(
            Episode(
                obs=list(rng.normal(size=(steps + 1, n, spec.obs_dim)).astype(np.float32)),
                state=list(rng.normal(size=(steps + 1, spec.state_dim)).astype(np.float32)),
                avail=list(np.ones((steps + 1, n, a), bool)),
                actions=list(rng.integers(0, a, (steps, n))),
                reward=list(rng.normal(size=steps)),
            )
        )
    return buf.sample(b, rng, torch.device("cpu"))


def _params(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def _same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_sale_encoders_are_decoupled_and_rotate_like_td7() -> None:
    """TD never reaches the SALE encoders: the agents' fixed copy stays put between target
    updates while the online encoders learn from their own loss; at a target update the target
    agents get the old fixed copy and the agents the online one."""
    torch.manual_seed(0)
    learner = MMSALearner(SPEC, Q, M, torch.device("cpu"))
    fixed0, online0 = _params(learner.agent.sale), _params(learner.sale)
    assert not any(p.requires_grad for p in learner.agent.sale.parameters())
    stats = learner.update(_batch(SPEC), episodes=1)
    assert stats["target_updated"] == 0.0 and stats["sale_obs"] > 0
    assert _same(_params(learner.agent.sale), fixed0)  # TD moved the agents, not their encoders
    assert not _same(_params(learner.sale), online0)  # the SALE loss moved the online encoders
    # the Q-values have no path to the encoders even where they would accept a gradient
    learner.agent.sale.requires_grad_(True)
    qvals, _ = learner.agent.unroll_hidden(_batch(SPEC)["obs"], _batch(SPEC)["actions"])
    grads = torch.autograd.grad(qvals.sum(), list(learner.agent.parameters()), allow_unused=True)
    for (name, _), g in zip(learner.agent.named_parameters(), grads, strict=True):
        assert (g is None) == name.startswith("sale."), name
    learner.agent.sale.requires_grad_(False)
    learner.update(_batch(SPEC, seed=1), episodes=2)
    fixed_before = _params(learner.agent.sale)
    stats = learner.update(_batch(SPEC, seed=2), episodes=3)
    online_now = _params(learner.sale)
    assert stats["target_updated"] == 1.0
    assert _same(_params(learner.target_agent.sale), fixed_before)
    assert _same(_params(learner.agent.sale), online_now)
    assert _same(_params(learner.target_wm), _params(learner.wm))


def test_rollout_gives_horizon_plus_one_latent_states_from_recurrent_states() -> None:
    torch.manual_seed(1)
    wm = LatentWorldModel(SPEC, Q, M).eval()
    h = torch.randn(7, SPEC.n_agents, Q.rnn_hidden)
    with torch.no_grad():
        states, hs = wm.rollout(h, 3)
        assert states.shape == (7, SPEC.n_agents, 4, M.latent_dim)
        assert hs.shape == (7, SPEC.n_agents, 3, Q.rnn_hidden)
        # s^_t is the posterior's mean; each next state the prior's mean after the latent
        # policy's joint action; h'_{t+k} VAE-2's decoding of s^_{t+k}
        torch.testing.assert_close(states[:, :, 0], wm.posterior(h)[0])
        for k in range(3):
            s = states[:, :, k]
            joint = wm.joint_action(wm.policy_logits(s).argmax(-1))
            assert joint.shape == (7, SPEC.n_agents, SPEC.n_agents * SPEC.action_dim)
            assert (joint.sum(-1) == SPEC.n_agents).all()
            torch.testing.assert_close(states[:, :, k + 1], wm.prior(wm.embed(s, joint))[0])
            torch.testing.assert_close(hs[:, :, k], wm.decode_h(states[:, :, k + 1]))
        other, _ = wm.rollout(h + 1.0, 3)
        assert not torch.allclose(other, states)  # the roll-out depends on h
    # the learner's roll-out state over whole episodes, from the agents' GRU states
    learner = MMSALearner(SPEC, Q, M, torch.device("cpu"))
    batch = _batch(SPEC)
    _, hs_ep = learner.agent.unroll_hidden(batch["obs"], batch["actions"])
    r = learner.rollout_state(learner.wm, hs_ep)
    assert hs_ep.shape == (4, 6, SPEC.n_agents, Q.rnn_hidden)
    assert r.shape == (4, 6, SPEC.n_agents * 4 * M.latent_dim) and not r.requires_grad


@pytest.mark.parametrize("layers", [1, 2])
def test_mixer_is_monotonic_in_every_agents_q_with_the_rollout_state(layers: int) -> None:
    """dQ_tot/dQ_a >= 0 for every agent at random states and roll-out states (autograd), and the
    roll-out state does change Q_tot."""
    torch.manual_seed(layers)
    q = QMIXConfig(hypernet_layers=layers)
    mixer = MMSAMixer(4, 7, 40, q)
    mixer.set_stats(np.random.default_rng(0).normal(size=7), np.full(7, 0.5))
    assert mixer.state_mean.shape == (47,) and (mixer.state_std[7:] == 1).all()
    qs = (torch.randn(512, 4) * 5).requires_grad_(True)
    state = torch.randn(512, 7) * 3
    rollout = torch.randn(512, 40) * 2
    q_tot = mixer(qs, torch.cat([state, rollout], -1))
    assert q_tot.shape == (512,)
    (grad,) = torch.autograd.grad(q_tot.sum(), qs)
    assert (grad >= 0).all(), grad.min()
    assert (grad > 0).float().mean() > 0.5
    moved = mixer(qs, torch.cat([state, rollout + 1.0], -1))
    assert (moved - q_tot).abs().max() > 1e-3


def test_mixer_is_monotonic_on_the_learners_own_rollouts() -> None:
    torch.manual_seed(3)
    learner = MMSALearner(SPEC, Q, M, torch.device("cpu"))
    batch = _batch(SPEC)
    qvals, hs = learner.agent.unroll_hidden(batch["obs"], batch["actions"])
    mix = torch.cat([batch["state"], learner.rollout_state(learner.wm, hs)], -1)
    chosen = qvals.gather(-1, torch.zeros_like(qvals[..., :1], dtype=torch.long)).squeeze(-1)
    chosen = chosen.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(learner.mixer(chosen, mix).sum(), chosen)
    assert (grad >= 0).all() and (grad > 0).any()


def test_a_mixer_with_neither_state_nor_rollout_is_one_config_error_line() -> None:
    off = ["mmsa.mixer_rollout=false", "mmsa.mixer_state=false"]
    with pytest.raises(ConfigError) as err:
        load_config("lbf_8x8_2p_2f_coop", preset="debug", overrides=off)
    text = str(err.value)
    assert "mmsa.mixer_state" in text and len(text.splitlines()) == 1, text
    assert not load_config("lbf_8x8_2p_2f_coop", overrides=off[:1]).mmsa.mixer_rollout


@pytest.mark.parametrize(("state", "rollout"), [(True, True), (False, True), (True, False)])
def test_no_gs_and_no_wm_leave_their_part_out_of_the_mixer(state: bool, rollout: bool) -> None:
    """The paper's Fig. 5b ablations: No-GS (mmsa.mixer_state false) keeps the global state out
    of the hypernetworks, No-WM (mmsa.mixer_rollout false) the world model; whatever is left out
    changes nothing the mixer sees, whatever is kept does, and the learner trains on."""
    torch.manual_seed(4)
    m = replace(M, mixer_state=state, mixer_rollout=rollout)
    learner = MMSALearner(SPEC, Q, m, torch.device("cpu"))
    rng = np.random.default_rng(0)
    learner.set_stats(
        np.zeros(SPEC.obs_dim), np.ones(SPEC.obs_dim), rng.normal(size=12), np.full(12, 2.0)
    )
    width = SPEC.state_dim * state + rollout_dim(SPEC, m) * rollout
    assert learner.mixer.state_dim == learner.target_mixer.state_dim == width
    torch.testing.assert_close(
        learner.mixer.state_std[: SPEC.state_dim * state], torch.full((12 * state,), 2.0)
    )
    assert (learner.mixer.state_std[SPEC.state_dim * state :] == 1).all()
    batch = _batch(SPEC)
    _, hs = learner.agent.unroll_hidden(batch["obs"], batch["actions"])
    mix = learner.mixer_input(batch["state"], learner.wm, hs)
    assert mix.shape == (*batch["state"].shape[:2], width)
    moved_state = learner.mixer_input(batch["state"] + 1.0, learner.wm, hs)
    assert (not torch.equal(moved_state, mix)) == state
    other_wm = LatentWorldModel(SPEC, Q, m)
    assert (not torch.equal(learner.mixer_input(batch["state"], other_wm, hs), mix)) == rollout
    for k in range(3):
        stats = learner.update(_batch(SPEC, seed=k), episodes=k + 1)
        assert np.isfinite([stats[key] for key in stats]).all()
    assert stats["target_updated"] == 1.0


@pytest.mark.parametrize("sale", [True, False])
def test_no_sale_cuts_the_sale_embeddings_out_of_agents_and_world_model(sale: bool) -> None:
    """The paper's No-SALE ablation (mmsa.sale false): no Q-value, roll-out or latent-policy
    output depends on either SALE pair, and neither SALE loss is trained; with SALE on, both
    pairs reach them (so the check can fail)."""
    torch.manual_seed(5)
    learner = MMSALearner(SPEC, Q, replace(M, sale=sale), torch.device("cpu"))
    batch = _batch(SPEC)
    qvals, hs = learner.agent.unroll_hidden(batch["obs"], batch["actions"])
    rollout = learner.rollout_state(learner.wm, hs)
    logits = learner.wm.policy_logits(learner.wm.posterior(hs)[0])
    with torch.no_grad():
        for p in (*learner.agent.sale.parameters(), *learner.wm.sale.parameters()):
            p.add_(torch.randn_like(p))
    qvals2, _ = learner.agent.unroll_hidden(batch["obs"], batch["actions"])
    logits2 = learner.wm.policy_logits(learner.wm.posterior(hs)[0])
    same = (
        torch.equal(qvals, qvals2),
        torch.equal(rollout, learner.rollout_state(learner.wm, hs)),
        torch.equal(logits, logits2),
    )
    assert same == (not sale,) * 3, same
    stats = learner.update(batch, episodes=1)
    assert ("sale_obs" in stats) == sale and (stats["sale_latent"] > 0) == sale
    assert np.isfinite([stats[key] for key in stats]).all()


@pytest.mark.parametrize("alpha", [0.8, 0.2, 0.5])
def test_kl_balancing_gives_the_prior_alpha_and_the_posterior_one_minus_alpha(
    alpha: float,
) -> None:
    """Same value as the plain KL; the prior's gradient is alpha times the plain one and the
    posterior's 1 - alpha (Table 6: alpha 0.8, so the prior learns four times faster)."""
    assert load_config("lbf_8x8_2p_2f_coop").mmsa.kl_alpha == 0.8
    torch.manual_seed(0)
    qm, qs = torch.randn(10, 6, requires_grad=True), (torch.rand(10, 6) + 0.2).requires_grad_()
    pm, ps = torch.randn(10, 6, requires_grad=True), (torch.rand(10, 6) + 0.2).requires_grad_()
    plain = gaussian_kl(qm, qs, pm, ps)
    balanced = balanced_kl((qm, qs), (pm, ps), alpha)
    torch.testing.assert_close(balanced, plain)
    g_plain = torch.autograd.grad(plain.sum(), [qm, qs, pm, ps])
    g_bal = torch.autograd.grad(balanced.sum(), [qm, qs, pm, ps])
    for got, full, w in zip(g_bal, g_plain, (1 - alpha, 1 - alpha, alpha, alpha), strict=True):
        assert full.abs().max() > 1e-3
        torch.testing.assert_close(got, w * full)
    g_off = torch.autograd.grad(balanced_kl((qm, qs), (pm, ps), alpha, False).sum(), [qm, pm])
    torch.testing.assert_close(g_off[0], g_plain[0])
    torch.testing.assert_close(g_off[1], g_plain[2])
    # the closed form against torch's own KL of diagonal Gaussians
    ref = torch.distributions.kl_divergence(
        torch.distributions.Normal(qm, qs), torch.distributions.Normal(pm, ps)
    ).sum(-1)
    torch.testing.assert_close(plain, ref)


def test_world_model_losses_fall_on_a_fixed_batch() -> None:
    """Every term of the world model and of SALE falls when its own parameters are trained on
    one batch (and TD's gradient never reaches them)."""
    torch.manual_seed(0)
    learner = MMSALearner(SPEC, Q, MMSAConfig(latent_dim=6, phi_dim=3), torch.device("cpu"))
    batch = _batch(SPEC, b=8, t=6)
    first = learner.update(batch, episodes=1)
    for _ in range(60):
        last = learner.update(batch, episodes=1)
    for key in ("rec_h", "rec_emb", "sale_latent", "sale_obs", "policy_ce", "loss"):
        assert last[key] < first[key], (key, first[key], last[key])
    assert np.isfinite([last[k] for k in last]).all()


def test_debug_run_logs_every_loss_and_restores_every_piece_on_resume(tmp_path: Path) -> None:
    """What MMSA adds to QMIX's run (whose files, resume and replay test_qmix.py's
    test_debug_run_end_to_end_and_resume checks for both): every loss term in mmsa.jsonl, the
    learner's whole state (both SALE pairs, the world model and its target, the fixed encoders,
    the optimiser) restored exactly from the checkpoint, and the world model trained on after."""
    cfg = load_config("lbf_8x8_2p_2f_coop", preset="debug")
    short = load_config("lbf_8x8_2p_2f_coop", preset="debug", overrides=["qmix.env_steps=300"])
    console = Console(file=io.StringIO(), width=200)
    train_mmsa(short, tmp_path, "cpu", console)
    lines = (tmp_path / "mmsa.jsonl").read_text().splitlines()
    trained = [row for row in map(json.loads, lines) if "kl_post" in row]
    terms = ("kl_post", "kl_prior", "rec_emb", "rec_h", "sale_latent", "policy_ce", "sale_obs")
    assert trained and all(np.isfinite([r[k] for k in terms]).all() for r in trained)
    agent, _ = load_mmsa_agent(tmp_path / "mmsa.pt")
    assert not agent.training
    ckpt = load_checkpoint(tmp_path / "ckpt_mmsa.pt")
    learner = MMSALearner(EnvSpec.from_dict(ckpt["spec"]), cfg.qmix, cfg.mmsa, torch.device("cpu"))
    learner.load_state_dict(ckpt["learner"])
    _assert_equal_trees(learner.state_dict(), ckpt["learner"])
    torch.testing.assert_close(
        agent.state_dict()["sale.f.0.weight"], ckpt["learner"]["agent"]["sale.f.0.weight"]
    )
    (tmp_path / "mmsa.pt").unlink()
    train_mmsa(cfg, tmp_path, "cpu", console)
    assert f"resuming MMSA at {ckpt['env_steps']} env steps" in console.file.getvalue()
    after = load_checkpoint(tmp_path / "ckpt_mmsa.pt")["learner"]["wm"]
    assert any(not torch.equal(after[k], ckpt["learner"]["wm"][k]) for k in after)


def _assert_equal_trees(a: object, b: object) -> None:
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys()
        for k in a:
            _assert_equal_trees(a[k], b[k])
    elif isinstance(a, list | tuple):
        assert len(a) == len(b)  # type: ignore[arg-type]
        for x, y in zip(a, b, strict=True):  # type: ignore[call-overload]
            _assert_equal_trees(x, y)
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b)  # type: ignore[arg-type]
    else:
        assert a == b


def test_mmsa_refuses_a_sum_mixer_and_continuous_actions(tmp_path: Path) -> None:
    from rmio.errors import RmioError

    console = Console(file=io.StringIO(), width=200)
    vdn = load_config("lbf_8x8_2p_2f_coop", preset="debug", overrides=["qmix.mixer=vdn"])
    with pytest.raises(RmioError, match=r"qmix\.mixer is 'vdn'"):
        train_mmsa(vdn, tmp_path / "vdn", "cpu", console)
    with pytest.raises(RmioError, match="MMSA needs discrete actions"):
        train_mmsa(load_config("halfcheetah_6x1", preset="debug"), tmp_path / "hc", "cpu", console)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["mmsa", "lbf_8x8_2p_2f_coop", "--set", "qmix.mixer=vdn"], "qmix.mixer is 'vdn'"),
        (["mmsa", "halfcheetah_6x1"], "MMSA needs discrete actions"),
        (["qmix", "halfcheetah_6x1"], "QMIX needs discrete actions"),
    ],
)
def test_a_refused_run_leaves_no_run_directory(
    args: list[str], message: str, tmp_path: Path
) -> None:
    """`rmio train mmsa`/`qmix` refuse what they cannot train with one line (exit code 2) before
    the run directory is made, whether named (--run-dir) or made under run.runs_dir."""
    import subprocess
    import sys

    runs = tmp_path / "runs"
    for where in (["--run-dir", str(tmp_path / "run")], ["--set", f"run.runs_dir={runs}"]):
        cmd = [sys.executable, "-m", "rmio", "train", *args, "--debug", *where]
        proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        err = proc.stderr.strip()
        assert proc.returncode == 2 and message in err and len(err.splitlines()) == 1, err
        assert sorted(p.name for p in tmp_path.iterdir()) == [], list(tmp_path.iterdir())
