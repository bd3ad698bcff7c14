"""r-MAPPO and Algorithm 1: the actor is local, PPO learns, imagination has the right shapes, export
matches."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rmio.config import load_config
from rmio.envs import EnvConfig
from rmio.envs.base import EnvSpec
from rmio.envs.collect import collect
from rmio.envs.loss import LossConfig
from rmio.envs.trajectory import TrajectoryBuffer
from rmio.train.imagination import imagine, start_states
from rmio.train.policy import Actor, Critic, joint_act
from rmio.train.ppo import PPO, Rollout, gae
from rmio.train.ppo_config import PPOConfig
from rmio.train.wm_config import WorldModelConfig
from rmio.train.wm_data import SequenceSampler, observation_stats
from rmio.train.world_model import RMIOWorldModel

DISCRETE = EnvSpec("test/bandit", 3, (4, 4, 2), 10, "discrete", (5, 5, 5), 1)
CONTINUOUS = EnvSpec("test/box", 2, (3, 5), 8, "continuous", (2, 1), 10, (-1.0, -1.0), (1.0, 1.0))


def _actor(spec: EnvSpec) -> Actor:
    torch.manual_seed(0)
    zeros = np.zeros((spec.n_agents, spec.obs_dim), np.float32)
    return Actor(spec, 32, -0.5, zeros, np.ones_like(zeros))


@pytest.mark.parametrize("spec", [DISCRETE, CONTINUOUS], ids=["discrete", "continuous"])
def test_actor_sees_only_its_own_observation(spec: EnvSpec) -> None:
    actor = _actor(spec)
    obs = torch.randn(4, spec.n_agents, spec.obs_dim)
    for i in range(spec.n_agents):
        other = obs.clone()
        other[:, [j for j in range(spec.n_agents) if j != i]] += 5.0  # everyone else's view changes
        ids = torch.arange(spec.n_agents).expand(4, -1)
        d1, d2 = actor.dist(obs, ids), actor.dist(other, ids)
        if spec.discrete:
            torch.testing.assert_close(d1.logits[:, i], d2.logits[:, i])
        else:
            torch.testing.assert_close(d1.mean[:, i], d2.mean[:, i])
    assert (
        actor.net[0].in_features == spec.obs_dim + spec.n_agents
    )  # one observation + the id, nothing else


def test_unavailable_actions_are_never_taken() -> None:
    actor = _actor(DISCRETE)
    avail = torch.zeros(64, 3, 5)
    avail[..., 3] = 1.0
    avail[:, 0, 1] = 1.0
    act, _ = joint_act(actor, torch.randn(64, 3, DISCRETE.obs_dim), avail)
    assert set(act[:, 1:].unique().tolist()) == {3}
    assert set(act[:, 0].unique().tolist()) <= {1, 3}


def test_continuous_greedy_action_is_clipped_and_padding_zero() -> None:
    actor = _actor(CONTINUOUS)
    with torch.no_grad():
        actor.net[-1].bias.fill_(7.0)
    out = actor(torch.randn(2, CONTINUOUS.obs_dim), torch.tensor([0, 1]))
    assert out.max() <= 1.0
    assert out[1, 1] == 0.0  # agent 1 has a single action dimension


def test_gae_matches_a_hand_computation() -> None:
    r = Rollout(
        obs=torch.zeros(3, 1, 1, 1),
        actions=torch.zeros(3, 1, 1),
        logp=torch.zeros(3, 1, 1),
        values=torch.tensor([[1.0], [2.0], [3.0]]),
        rewards=torch.tensor([[1.0], [0.0], [2.0]]),
        next_values=torch.tensor([[2.0], [0.0], [5.0]]),
        dones=torch.tensor([[0.0], [1.0], [0.0]]),
    )
    adv, ret = gae(r, gamma=0.9, lam=0.5)
    d = [1 + 0.9 * 2 - 1, 0 + 0 - 2, 2 + 0.9 * 5 - 3]
    expected = [
        d[0] + 0.45 * d[1],
        d[1],
        d[2],
    ]  # no bootstrapping across the episode end after step 1
    torch.testing.assert_close(adv[:, 0], torch.tensor(expected))
    torch.testing.assert_close(ret, adv + r.values)


def test_ppo_learns_a_bandit() -> None:
    """One-step episodes, reward 1 when an agent picks action 2: the greedy action becomes 2."""
    torch.manual_seed(0)
    actor = _actor(DISCRETE)
    zeros = np.zeros((3, DISCRETE.obs_dim), np.float32)
    ppo = PPO(
        actor,
        Critic(DISCRETE, 32, zeros, np.ones_like(zeros)),
        PPOConfig(actor_lr=3e-3, critic_lr=3e-3),
    )
    obs = torch.randn(1, 64, 3, DISCRETE.obs_dim)
    for _ in range(15):
        with torch.no_grad():
            act, logp = joint_act(actor, obs)
            value = ppo.value(obs)
        reward = (act == 2).float().mean(-1)
        ppo.update(
            Rollout(
                obs, act, logp, value, reward, torch.zeros_like(reward), torch.ones_like(reward)
            )
        )
    greedy, _ = joint_act(actor, obs, deterministic=True)
    assert (greedy == 2).float().mean() > 0.9


def test_imagined_rollouts_have_the_right_shapes() -> None:
    buf, _ = collect(
        EnvConfig("mamujoco", "HalfCheetah-6x1", episode_limit=40),
        LossConfig("none"),
        steps=120,
        num_envs=1,
        seed=0,
    )
    stats = observation_stats(buf)
    torch.manual_seed(0)
    cfg = WorldModelConfig(deter=16, hidden=16, fusion_dim=8, fusion_heads=2, groups=2, classes=4)
    model = RMIOWorldModel(buf.spec, cfg, *stats)
    ppo = PPO(
        Actor(buf.spec, 16, -0.5, stats[0], stats[1]),
        Critic(buf.spec, 16, stats[0], stats[1]),
        PPOConfig(),
    )
    sampler = SequenceSampler(buf, load_config("halfcheetah_6x1").world_model.smoothing)
    h, z = start_states(model, sampler, np.random.default_rng(0), starts=5, context=4)
    assert h.shape == (5, 6, 16) and z.shape == (5, 6, 8)
    roll = imagine(model, ppo, h, z, horizon=7)
    assert roll.obs.shape == (7, 5, 6, 9) and roll.actions.shape == (7, 5, 6, 1)
    assert (
        roll.logp.shape == (7, 5, 6)
        and roll.rewards.shape == (7, 5)
        and roll.values.shape == (7, 5)
    )
    assert (roll.weights[1:] <= roll.weights[:-1] + 1e-6).all() and (roll.weights <= 1).all()
    # the actor acted on reconstructed observations: padding features stay zero as in real ones
    np.testing.assert_array_equal(roll.obs[..., [2, 5], 8].numpy(), 0.0)
    stats_out = ppo.update(roll)
    assert np.isfinite(list(stats_out.values())).all()


@pytest.mark.parametrize("spec", [DISCRETE, CONTINUOUS], ids=["discrete", "continuous"])
def test_exported_actor_matches_pytorch(spec: EnvSpec, tmp_path: Path) -> None:
    from rmio.train.export import export_actor

    assert export_actor(_actor(spec), tmp_path) < 1e-5


def rmio(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rmio.cli", *args], capture_output=True, text=True, timeout=900
    )


def test_pretrain_finetune_export_end_to_end(tmp_path: Path) -> None:
    """The debug preset of HalfCheetah 6x1 with the paper's recipe of Algorithm 1 (the config's
    default is the tuned one, which test_joint_diag runs): masked fine-tuning, a full bundle, both
    runtimes."""
    run, bundle = tmp_path / "run", tmp_path / "deployed"
    paper = ("--set", "policy.imagination.recipe=paper")
    paper += ("--set", "policy.imagination.wm_warmup_updates=0")
    for args in (
        ("train", "pretrain", "halfcheetah_6x1", "--debug", "--run-dir", str(run), *paper),
        ("train", "finetune", str(run)),
        ("export", str(run), "--out", str(bundle)),
        ("export", "--check", str(bundle)),
        # the policy metrics with an actor named by a path of this machine
        ("eval", "reconstruction", str(run), "--checkpoint", "finetune", "--policy", str(bundle)),
        ("export", str(run), "--out", str(tmp_path / "bundle2")),
    ):
        proc = rmio(*args)
        assert proc.returncode == 0, (args, proc.stderr[-2000:])
    assert load_config(run / "config.yaml").policy.imagination.critic == "obs"  # the paper's
    # Algorithm 1's own held-out set is random play; the reconstruction is scored on episodes of the
    # trained actor instead (sampling, as it collected its training data)
    recon = json.loads((run / "eval_reconstruction.json").read_text())
    assert recon["holdout_policy"] == "the run's own actor (policy.pt, sampling)"
    random_play = TrajectoryBuffer.load(run / "data" / "holdout.npz")
    by_actor = TrajectoryBuffer.load(run / "data" / "holdout_actor.npz")
    assert by_actor.meta["policy"] == "the run's policy.pt (sampling)"
    assert recon["holdout_rows"] == len(by_actor) and by_actor.num_episodes == 2
    assert by_actor.data["action"].shape == random_play.data["action"].shape
    assert not np.array_equal(by_actor.data["action"], random_play.data["action"])
    assert recon["policy"] == str(bundle) and "action_mae" in next(
        iter(recon["strategies"].values())
    )
    shipped = json.loads((tmp_path / "bundle2" / "manifest.json").read_text())
    assert shipped["metrics"]["reconstruction"]["policy"] == "deployed"  # no machine path in it
    # a retrained actor (another policy.pt) gets its own held-out episodes, not the cached ones
    from rich.console import Console

    from rmio.train.runlog import load_checkpoint, save_checkpoint
    from rmio.train.wm_train import eval_holdout

    ckpt = load_checkpoint(run / "policy.pt")
    for name, w in ckpt["ppo"]["actor"].items():
        if name.startswith("net."):
            w.add_(0.5 * torch.randn_like(w))
    save_checkpoint(run / "policy.pt", ckpt)
    again, _ = eval_holdout(run, load_config(run / "config.yaml"), Console(quiet=True))
    assert again.meta["policy_sha256"] != by_actor.meta["policy_sha256"]
    assert not np.array_equal(again.data["action"][:10], by_actor.data["action"][:10])
    # the open-loop error is measured on those episodes too, not on the random warm-up's
    from rmio.train.open_loop import evaluate_open_loop

    loop = evaluate_open_loop([run], context=3, horizon=2, windows=4, quiet=True)
    assert loop["data_policy"] == "the run's own actor (policy.pt, sampling)"
    assert loop["holdout_episodes"] == again.num_episodes
    evals = [json.loads(line) for line in (run / "eval.jsonl").read_text().splitlines()]
    assert evals[-1]["step"] >= 600 and np.isfinite(evals[-1]["return_mean"])
    rows = [json.loads(line) for line in (run / "joint.jsonl").read_text().splitlines()]
    iterations = [r for r in rows if "collect_steps_per_s" in r]  # the others: diagnostics
    assert iterations and all(r["imagined_steps_per_s"] > 0 for r in iterations)
    assert {r["step"] for r in rows if "diag_obs_err_1" in r} == {e["step"] for e in evals}
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["files"] == {
        "wm_step": "wm_step.onnx",
        "actor": "actor.onnx",
        "wm_step_pretrain": "wm_step_pretrain.onnx",
    }  # the no-finetune baseline
    assert manifest["metrics"]["actor_parity"] < 1e-5
    from rmio.runtime.models import ActorRunner

    runner = ActorRunner(bundle)
    action = runner.act(np.zeros(9, np.float32), 3)
    assert action.shape == (1,) and -1 <= action[0] <= 1


def test_imagination_never_starts_from_an_episodes_last_row() -> None:
    buf, _ = collect(
        EnvConfig("mamujoco", "Hopper-3x1", episode_limit=6), LossConfig("none"), steps=60, seed=1
    )
    sampler = SequenceSampler(buf, load_config("hopper_3x1").world_model.smoothing)
    rng = np.random.default_rng(0)
    for _ in range(20):
        batch = sampler.sample(rng, 32, 3, end_mid_episode=True)
        assert not batch.is_last[:, -1].any()
    plain = [sampler.sample(rng, 32, 3).is_last[:, -1].any().item() for _ in range(20)]
    assert any(plain)  # without the option such windows do occur, so the test above is not vacuous


def test_world_model_data_from_a_trained_actor_and_export_with_another_policy(
    tmp_path: Path,
) -> None:
    """run.data_policy collects the world model's data with a trained actor; export --policy ships
    that actor."""
    mappo, wm = tmp_path / "mappo", tmp_path / "wm"
    for args in (
        ("train", "mappo", "halfcheetah_6x1", "--debug", "--run-dir", str(mappo)),
        (
            "train",
            "world-model",
            "halfcheetah_6x1",
            "--debug",
            "--run-dir",
            str(wm),
            "--set",
            f"run.data_policy={mappo / 'policy.pt'}",
        ),
        (
            "export",
            str(wm),
            "--policy",
            str(mappo / "policy.pt"),
            "--out",
            str(tmp_path / "bundle"),
        ),
    ):
        proc = rmio(*args)
        assert proc.returncode == 0, (args, proc.stderr[-2000:])
    from rmio.envs.trajectory import TrajectoryBuffer
    from rmio.train.export import portable_path

    assert TrajectoryBuffer.load(wm / "data" / "train.npz").meta["policy"] == str(
        mappo / "policy.pt"
    )
    manifest = json.loads((tmp_path / "bundle" / "manifest.json").read_text())
    # a manifest names no path of the machine that wrote it (the exporter's portable_path)
    assert manifest["budget"]["policy_source"] == portable_path(str(mappo / "policy.pt"))
    assert not Path(manifest["budget"]["policy_source"]).is_absolute()
    assert (
        manifest["budget"]["policy_algo"] == "mappo" and manifest["metrics"]["actor_parity"] < 1e-5
    )
    # rmio eval policy: the same greedy episodes as evaluate_policy on those seeds, by run dir
    out = tmp_path / "eval" / "policy"
    proc = rmio("eval", "policy", str(mappo), "--episodes", "2", "--seed", "7", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    (row,) = json.loads(out.with_suffix(".json").read_text())["rows"]
    from rmio.train.common import load_actor
    from rmio.train.evaluate import evaluate_policy

    actor, ckpt = load_actor(mappo / "policy.pt")
    again = evaluate_policy(actor, load_config(mappo / "config.yaml").env, 2, 7)
    assert row["file"] == "policy.pt" and row["env_steps"] == ckpt["env_steps"]
    assert row["return_mean"] == pytest.approx(again["return_mean"]) and row["episodes"] == 2
    assert "| policy.pt |" in out.with_suffix(".md").read_text()
    # a bundle's actor.onnx, under onnxruntime, plays the episodes its torch checkpoint plays (the
    # training run's episode length included: the debug preset's is shorter than the task's)
    bundle_out = tmp_path / "eval" / "bundle"
    proc = rmio(
        "eval", "policy", str(tmp_path / "bundle" / "actor.onnx"), "--episodes", "2",
        "--seed", "7", "--out", str(bundle_out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    (brow,) = json.loads(bundle_out.with_suffix(".json").read_text())["rows"]
    assert brow["file"] == "actor.onnx" and brow["env_steps"] == ckpt["env_steps"]
    assert brow["episode_length"] == row["episode_length"] < 1000
    assert brow["return_mean"] == pytest.approx(row["return_mean"], rel=1e-4)
    proc = rmio("eval", "policy", str(wm))  # a world-model run has no actor
    assert proc.returncode == 2 and "holds no actor checkpoint" in proc.stderr
    wrong = rmio(
        "train",
        "world-model",
        "ant_4x2",
        "--debug",
        "--run-dir",
        str(tmp_path / "ant"),
        "--set",
        f"run.data_policy={mappo / 'policy.pt'}",
    )
    assert wrong.returncode == 2 and "was trained for mamujoco/HalfCheetah-6x1" in wrong.stderr


def test_a_shipped_bundle_collects_world_model_data_with_exploration_noise() -> None:
    """run.data_policy=models/NAME resolves to the packaged bundle; its greedy actor gets Gaussian
    noise."""
    from rich.console import Console

    from rmio.runtime.models import ActorRunner
    from rmio.train.wm_train import _data_policy

    cfg = load_config("halfcheetah_6x1", overrides=["run.data_policy=models/halfcheetah_6x1"])
    act = _data_policy(cfg, Console(quiet=True))
    obs = np.random.default_rng(0).normal(size=(6, 9)).astype(np.float32) * 0.1
    observed = np.ones(6, bool)
    a, b = act(obs, observed, None), act(obs, observed, None)
    assert a.shape == (6, 1) and np.all(np.abs(a) <= 1.0)
    assert not np.array_equal(a, b)  # exploration noise
    from rmio.models import default_bundle

    greedy = ActorRunner(default_bundle()).act(obs, np.arange(6))
    assert (
        0.05 < np.abs(a - greedy).mean() < 0.6
    )  # noise of std 0.3 around the greedy action (clipped)
    # collect() calls it with every copy of a vector env at once: (num_envs, n, obs_dim)
    batch = np.stack([obs, -obs, 2 * obs, obs[::-1]])
    acts = act(batch, np.ones((4, 6), bool), None)
    assert acts.shape == (4, 6, 1)
    greedy_batch = np.stack([ActorRunner(default_bundle()).act(o, np.arange(6)) for o in batch])
    assert 0.05 < np.abs(acts - greedy_batch).mean() < 0.6
