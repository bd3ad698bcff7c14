"""Joint pre-training's diagnostics and recipe (issue 20): open-loop errors computed from real
rollouts, bounded actions, percentile return scaling, the recipe as validated configuration."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rmio.config import Config, load_config, save_config
from rmio.envs import EnvConfig
from rmio.envs.base import EnvSpec
from rmio.envs.collect import collect
from rmio.envs.loss import LossConfig
from rmio.errors import ConfigError
from rmio.train.imagination import imagine, start_batch
from rmio.train.joint_diag import open_loop_errors, policy_spread, return_gap, slice_batch
from rmio.train.policy import Actor, Critic, LatentCritic
from rmio.train.ppo import PPO, Rollout
from rmio.train.ppo_config import RECIPES, ImaginationConfig, PPOConfig
from rmio.train.wm_config import WorldModelConfig
from rmio.train.wm_data import SequenceSampler, observation_stats
from rmio.train.world_model import RMIOWorldModel

CONTEXT = 4
CONTINUOUS = EnvSpec("test/box", 2, (3, 5), 8, "continuous", (2, 1), 10, (-1.0, -1.0), (1.0, 1.0))


@pytest.fixture(scope="module")
def setup() -> tuple[RMIOWorldModel, SequenceSampler]:
    buf, _ = collect(
        EnvConfig("mamujoco", "HalfCheetah-6x1", episode_limit=40),
        LossConfig("none"),
        steps=160,
        num_envs=1,
        seed=0,
    )
    torch.manual_seed(0)
    cfg = WorldModelConfig(deter=16, hidden=16, fusion_dim=8, fusion_heads=2, groups=2, classes=4)
    model = RMIOWorldModel(buf.spec, cfg, *observation_stats(buf))
    sampler = SequenceSampler(buf, load_config("halfcheetah_6x1").world_model.smoothing)
    return model, sampler


def _windows(sampler: SequenceSampler, length: int) -> object:
    """Windows that lie inside one episode each (episodes are 40 rows: starts 0-40 stay inside)."""
    firsts = np.flatnonzero(sampler.arrays["is_first"])
    starts = [int(f) + o for f in firsts[:3] for o in (0, 3, 7)]
    idx = torch.as_tensor(np.array(starts)[:, None] + np.arange(length)[None])
    return sampler._gather(idx, first_is_start=True)


def _prior_rollout(model: RMIOWorldModel, batch, steps: int) -> list[dict[str, torch.Tensor]]:
    """By hand: filter the context, then the prior's mode under the real actions."""
    with torch.no_grad():
        obs_n = model.normalize_obs(batch.obs[:, :CONTEXT])
        mask = torch.ones(obs_n.shape[:3])
        post = model.observe(
            obs_n, batch.prev_action[:, :CONTEXT], mask, batch.is_first[:, :CONTEXT], sample=False
        )
        h, z = post.h[:, -1], post.z[:, -1]
        out = []
        for k in range(1, steps + 1):
            h = model.transition(h, z, batch.prev_action[:, CONTEXT - 1 + k])
            z = model.prior(h).mode()
            out.append(model.heads(h, z))
        return out


def test_one_step_error_equals_a_hand_computation(setup) -> None:
    model, sampler = setup
    batch = _windows(sampler, CONTEXT + 15)
    pred = _prior_rollout(model, batch, 1)[0]
    # the squared error per real feature, averaged per agent, then over agents and windows
    target = model.normalize_obs(batch.obs[:, CONTEXT]).numpy()
    mask = model.feature_mask.numpy().astype(bool)
    per_window = [
        np.mean(
            [
                np.mean((pred["obs"][b, i].numpy()[mask[i]] - target[b, i][mask[i]]) ** 2)
                for i in range(mask.shape[0])
            ]
        )
        for b in range(target.shape[0])
    ]
    reward = np.abs(pred["reward"].numpy() - batch.reward[:, CONTEXT].numpy()).mean()
    got = open_loop_errors(model, batch, CONTEXT)
    assert got["diag_obs_err_1"] == pytest.approx(float(np.mean(per_window)), rel=1e-5)
    assert got["diag_reward_err_1"] == pytest.approx(float(reward), rel=1e-5)
    assert got["diag_obs_err_1"] > 0.01  # an untrained model is far off: something was compared
    assert set(got) == {f"diag_{k}_err_{s}" for k in ("obs", "reward") for s in (1, 5, 15)}


def test_a_perfect_copy_scores_zero_and_a_shifted_one_does_not(setup) -> None:
    """Real rows after the context replaced by what the model predicts under the real actions:
    zero error at 1, 5 and 15 steps. The same data one step out of line is not zero, so the zero
    comes from matching rows, not from comparing nothing."""
    model, sampler = setup
    batch = _windows(sampler, CONTEXT + 15)
    obs, reward = batch.obs.clone(), batch.reward.clone()
    for k, heads in enumerate(_prior_rollout(model, batch, 15), start=1):
        obs[:, CONTEXT - 1 + k] = model.denormalize_obs(heads["obs"])
        reward[:, CONTEXT - 1 + k] = heads["reward"]
    copy = dataclasses.replace(batch, obs=obs, reward=reward)
    got = open_loop_errors(model, copy, CONTEXT)
    for s in (1, 5, 15):
        assert got[f"diag_obs_err_{s}"] < 1e-9 and got[f"diag_reward_err_{s}"] < 1e-6
    shifted = obs.clone()
    shifted[:, CONTEXT:] = torch.cat([obs[:, CONTEXT + 1 :], obs[:, -1:]], 1)  # one row early
    off = open_loop_errors(model, dataclasses.replace(copy, obs=shifted), CONTEXT)
    assert off["diag_obs_err_1"] > 1e-4


def test_open_loop_error_stops_at_the_end_of_the_real_episode(setup) -> None:
    """A window whose episode ends after the context counts for no step beyond its end."""
    model, sampler = setup
    batch = _windows(sampler, CONTEXT + 15)
    cut = dataclasses.replace(batch, is_first=batch.is_first.clone())
    cut.is_first[0, CONTEXT + 2] = 1.0  # window 0's episode ends after 2 predicted steps
    only0 = slice_batch(cut, 0, cut.obs.shape[1])
    only0 = dataclasses.replace(
        only0, **{k: getattr(only0, k)[:1] for k in ("obs", "prev_action", "reward", "is_first")}
    )
    got = open_loop_errors(model, only0, CONTEXT)
    assert "diag_obs_err_1" in got and "diag_obs_err_5" not in got and "diag_obs_err_15" not in got
    rest = open_loop_errors(
        model,
        dataclasses.replace(
            cut, **{k: getattr(cut, k)[1:] for k in ("obs", "prev_action", "reward", "is_first")}
        ),
        CONTEXT,
    )
    assert open_loop_errors(model, cut, CONTEXT)["diag_obs_err_5"] == pytest.approx(
        rest["diag_obs_err_5"], rel=1e-5
    )


def test_return_gap_compares_imagined_with_the_real_discounted_return(setup) -> None:
    model, sampler = setup
    spec = model.spec
    mean, std = model.obs_mean.numpy(), model.obs_std.numpy()
    ppo = PPO(Actor(spec, 16, -0.5, mean, std), Critic(spec, 16, mean, std), PPOConfig())
    batch = _windows(sampler, CONTEXT + 6)
    gamma, horizon = 0.9, 6
    torch.manual_seed(3)
    got = return_gap(model, ppo, batch, CONTEXT, horizon, gamma)
    raw = batch.raw_reward[:, CONTEXT : CONTEXT + horizon].numpy()
    real = (raw * gamma ** np.arange(horizon)).sum(1).mean()
    assert got["diag_real_return"] == pytest.approx(float(real), rel=1e-5)
    torch.manual_seed(3)
    h, z, _ = start_batch(model, slice_batch(batch, 0, CONTEXT))
    roll = imagine(model, ppo, h, z, horizon)
    imagined = (roll.weights * roll.rewards * (gamma ** torch.arange(horizon))[:, None]).sum(0)
    assert got["diag_imagined_return"] == pytest.approx(float(imagined.mean()), rel=1e-5)
    assert got["diag_return_gap"] == pytest.approx(
        got["diag_imagined_return"] - got["diag_real_return"], abs=1e-5
    )


def test_bounded_actor_keeps_its_mean_in_the_box_and_its_std_in_range() -> None:
    zeros = np.zeros((2, CONTINUOUS.obs_dim), np.float32)
    torch.manual_seed(0)
    actor = Actor(CONTINUOUS, 16, -0.5, zeros, np.ones_like(zeros))
    with torch.no_grad():
        actor.net[-1].bias.fill_(50.0)  # a mean far past the box
    obs = torch.randn(32, 2, CONTINUOUS.obs_dim)
    free = policy_spread(actor, obs)
    assert free["diag_mean_saturated"] == 1.0 and free["diag_saturated"] > 0.99
    assert free["diag_std"] == pytest.approx(float(np.exp(-0.5)), rel=1e-5)
    actor.set_bounds(0.1, 1.0)
    ids = torch.arange(2).expand(32, 2)
    dist = actor.dist(obs, ids)
    assert (dist.mean <= 1.0).all() and (dist.mean >= -1.0).all()
    assert float(dist.stddev[0, 0, 0].detach()) == pytest.approx(
        float(np.exp(-0.5)), rel=1e-3
    )  # kept
    with torch.no_grad():
        actor.log_std.fill_(-100.0)
    assert actor.dist(obs, ids).stddev.min() >= 0.1 - 1e-6
    # the bounds travel with the weights; a checkpoint from before them loads unbounded
    fresh = Actor(CONTINUOUS, 16, -0.5, zeros, np.ones_like(zeros))
    fresh.load_state_dict(actor.state_dict())
    assert fresh.bounded and torch.equal(fresh(obs[:, 0], ids[:, 0]), actor(obs[:, 0], ids[:, 0]))
    old = {k: v for k, v in actor.state_dict().items() if k != "bounds"}
    fresh.load_state_dict(old)
    assert not fresh.bounded


def test_bounded_actor_exports_with_parity(tmp_path: Path) -> None:
    from rmio.train.export import export_actor

    zeros = np.zeros((2, CONTINUOUS.obs_dim), np.float32)
    actor = Actor(CONTINUOUS, 16, -0.5, zeros, np.ones_like(zeros))
    actor.set_bounds(0.1, 1.0)
    with torch.no_grad():
        actor.net[-1].weight.mul_(300.0)  # saturates some outputs
    assert export_actor(actor, tmp_path) < 1e-5


def test_percentile_scaling_keeps_small_advantages_small() -> None:
    """DreamerV3's scaling divides by max(1, range): returns spread over less than 1 leave the
    advantages as they are, where per-batch standardisation blows them up to unit size."""
    spec = CONTINUOUS
    zeros = np.zeros((2, CONTINUOUS.obs_dim), np.float32)
    torch.manual_seed(0)
    actor = Actor(spec, 16, -0.5, zeros, np.ones_like(zeros))
    ppo = PPO(actor, LatentCritic(2, 4, 16), PPOConfig(), "percentile")
    returns = torch.linspace(0, 0.1, 200)
    adv = torch.full((200,), 0.01)
    w = torch.ones(200)
    torch.testing.assert_close(ppo._scale(adv, returns, w), adv)
    assert float(ppo.return_range) == pytest.approx(0.09, abs=2e-3)
    big = torch.linspace(0, 50, 200)
    ppo._scale(adv, big, w)
    assert float(ppo.return_range) == pytest.approx(0.99 * 0.09 + 0.01 * 45, abs=0.05)
    batch = PPO(actor, LatentCritic(2, 4, 16), PPOConfig(), "batch")
    assert batch._scale(torch.randn(200) * 0.01, returns, w).std() == pytest.approx(1.0, rel=0.01)
    state = ppo.state_dict()
    other = PPO(actor, LatentCritic(2, 4, 16), PPOConfig(), "percentile")
    other.load_state_dict(state)
    assert float(other.return_range) == float(ppo.return_range)
    del state["return_range"]  # a checkpoint from before the scaling
    other.load_state_dict(state)


def test_latent_critic_trains_on_what_imagination_hands_it(setup) -> None:
    model, sampler = setup
    spec = model.spec
    mean, std = model.obs_mean.numpy(), model.obs_std.numpy()
    feat = model.cfg.deter + model.stoch
    critic = LatentCritic(spec.n_agents, feat, 16)
    ppo = PPO(Actor(spec, 16, -0.5, mean, std), critic, PPOConfig(), "percentile")
    batch = _windows(sampler, CONTEXT)
    h, z, ctx = start_batch(model, batch)
    roll: Rollout = imagine(model, ppo, h, z, 5, ctx.obs[:, -1], latent_critic=True)
    assert roll.critic_in is not None and roll.critic_in.shape == (5, h.shape[0], 6, feat)
    torch.testing.assert_close(roll.obs[0], ctx.obs[:, -1])  # step 0 acted on the real obs
    before = [p.clone() for p in critic.parameters()]
    stats = ppo.update(roll)
    assert np.isfinite(list(stats.values())).all() and "return_range" in stats
    assert any(not torch.equal(a, b) for a, b in zip(before, critic.parameters(), strict=True))


def test_imagination_entropy_coef_overrides_the_shared_one_for_imagination_only(setup) -> None:
    from rmio.train.joint import _build_ppo

    model, _ = setup
    stats = (model.obs_mean.numpy(), model.obs_std.numpy())
    got = {}
    for value in (None, 3e-4):
        cfg = load_config(
            "halfcheetah_6x1", overrides=[f"policy.imagination.entropy_coef={value or 'null'}"]
        )
        got[value] = _build_ppo(cfg, model.spec, stats, model, torch.device("cpu")).cfg
        assert cfg.policy.ppo.entropy_coef == 0.01  # MAPPO's is left alone
    assert got[None].entropy_coef == 0.01 and got[3e-4].entropy_coef == 3e-4


# ------------------------------------------------------------------------------------ config


def _rmio(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rmio.cli", *args], capture_output=True, text=True, timeout=900
    )


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("wm_ratio", 0),
        ("wm_ratio", -0.5),
        ("horizon", 0),
        ("horizon", -3),
        ("starts", 0),
        ("starts", -1),
        ("context", 0),
        ("wm_warmup_updates", -1),
        ("std_min", 0),
        ("percentile_decay", 1.0),
    ],
)
def test_bad_recipe_values_are_one_line_config_errors(key: str, value: float) -> None:
    with pytest.raises(ConfigError) as err:
        load_config("halfcheetah_6x1", overrides=[f"policy.imagination.{key}={value}"])
    text = str(err.value)
    assert "\n" not in text and f"policy.imagination.{key}" in text and str(value) in text


def test_bad_ratio_on_the_command_line_is_one_line() -> None:
    proc = _rmio(
        "train", "pretrain", "halfcheetah_6x1", "--debug", "--set", "policy.imagination.wm_ratio=0"
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "policy.imagination.wm_ratio must be > 0" in lines[0]


def test_paper_recipe_is_the_default_and_tuned_sets_every_key() -> None:
    defaults = ImaginationConfig()
    assert RECIPES["paper"] == {k: getattr(defaults, k) for k in RECIPES["paper"]}
    assert set(RECIPES["tuned"]) == set(RECIPES["paper"])
    paper = load_config("smax_3m").policy.imagination  # a config that names no recipe
    assert paper.recipe == "paper" and paper.wm_ratio is None and not paper.bounded_actions
    smax = load_config("smax_2s3z").policy.imagination  # tuned, with per-batch advantages
    assert (smax.recipe, smax.return_scaling, smax.wm_ratio, smax.env_steps) == (
        "tuned", "batch", 0.5, 100_000,
    )  # fmt: skip
    paper = (
        load_config(
            "halfcheetah_6x1", overrides=["policy.imagination.recipe=paper"]
        ).policy.imagination
    )  # HalfCheetah's config picks the tuned one; the paper's stays one flag away
    assert paper.wm_ratio is None and not paper.bounded_actions and paper.wm_warmup_updates == 0
    cheetah = load_config("halfcheetah_6x1").policy.imagination
    assert cheetah.recipe == "tuned" and cheetah.wm_ratio == 0.5 and cheetah.env_steps == 100_000
    debug = load_config("halfcheetah_6x1", preset="debug").policy.imagination
    assert debug.recipe == "tuned" and debug.wm_warmup_updates == 5  # a smoke test's warm-start
    tuned = load_config(
        "halfcheetah_6x1",
        overrides=["policy.imagination.recipe=tuned", "policy.imagination.critic=obs"],
    ).policy.imagination
    for key, value in RECIPES["tuned"].items():
        assert getattr(tuned, key) == (value if key != "critic" else "obs")  # explicit keys win


def test_recorded_configs_round_trip_and_old_ones_resume_as_paper(tmp_path: Path) -> None:
    tuned = load_config("halfcheetah_6x1", overrides=["policy.imagination.recipe=tuned"])
    save_config(tuned, tmp_path / "new")
    assert load_config(tmp_path / "new" / "config.yaml").digest() == tuned.digest()
    # a run directory recorded before the recipe existed: none of its keys
    paper = load_config("halfcheetah_6x1", overrides=["policy.imagination.recipe=paper"])
    old = paper.to_dict()
    for key in (*RECIPES["paper"], "recipe", "std_min", "std_max", "percentile_decay"):
        del old["policy"]["imagination"][key]
    del old["policy"]["imagination"]["diag_windows"]
    (tmp_path / "old").mkdir()
    import yaml

    (tmp_path / "old" / "config.yaml").write_text(
        "# resolved rmio config, hash x\n" + yaml.safe_dump(old, sort_keys=False)
    )
    assert load_config(tmp_path / "old" / "config.yaml").digest() == paper.digest()
    assert isinstance(load_config(tmp_path / "old" / "config.yaml"), Config)


def test_tuned_debug_pretraining_logs_diagnostics_at_every_evaluation(tmp_path: Path) -> None:
    """The debug preset with the tuned recipe: warm-start, ratio, bounded actions, latent critic;
    every evaluation step has its diagnostics in joint.jsonl and joint.csv."""
    run = tmp_path / "run"
    proc = _rmio(
        *("train", "pretrain", "halfcheetah_6x1", "--debug", "--run-dir", str(run)),
        *("--set", "policy.imagination.recipe=tuned"),
        *("--set", "policy.imagination.wm_warmup_updates=5"),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in (run / "joint.jsonl").read_text().splitlines()]
    evals = [json.loads(line)["step"] for line in (run / "eval.jsonl").read_text().splitlines()]
    diag = {r["step"]: r for r in rows if "diag_obs_err_1" in r}
    assert sorted(diag) == sorted(evals)
    for r in diag.values():
        assert 0 <= r["diag_saturated"] <= 1 and 0.1 <= r["diag_std"] <= 1.0
        assert np.isfinite([r["diag_obs_err_15"], r["diag_return_gap"]]).all()
    iterations = [r for r in rows if "collect_steps_per_s" in r]
    # ratio 0.5 of each iteration's 100 real steps (whole episodes of 50): 50 updates each
    assert iterations and all(r["wm_updates"] == 50 for r in iterations)
    assert rows[0]["step"] == 200 and "wm_loss" in rows[0]  # the warm-start's row
    header = (run / "joint.csv").read_text().splitlines()[0].split(",")
    assert "diag_obs_err_15" in header and "diag_std" in header
