"""QMIX (`rmio train qmix`): config validation, the mixer's monotonicity, TD targets, target
updates, available-action masks, and a debug run end to end with resume."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console

from rmio.config import load_config
from rmio.envs.base import EnvSpec
from rmio.envs.vector import make_vector_env
from rmio.errors import ConfigError
from rmio.train.mmsa import train_mmsa
from rmio.train.qmix import train_qmix
from rmio.train.qmix_config import QMIXConfig
from rmio.train.qmix_learner import QLearner, lambda_returns
from rmio.train.qmix_nets import QMixer, masked_argmax
from rmio.train.qmix_replay import EpisodeBuffer, Runner, epsilon_at, epsilon_greedy
from rmio.train.runlog import load_checkpoint

TRAINERS = {"qmix": train_qmix, "mmsa": train_mmsa}
SPEC = EnvSpec("test/q", 3, (5, 5, 4), 12, "discrete", (4, 4, 4), 6)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("qmix.batch_size=64", "qmix.batch_size"),  # more than the buffer holds
        ("qmix.td_lambda=1.5", "qmix.td_lambda"),
        ("qmix.gamma=-0.1", "qmix.gamma"),
        ("qmix.hypernet_layers=3", "qmix.hypernet_layers"),
        ("qmix.lr=0", "qmix.lr"),
        ("qmix.epsilon_finish=2.0", "qmix.epsilon_finish"),
        ("qmix.target_update_episodes=0", "qmix.target_update_episodes"),
        ("qmix.optimizer=sgd", "qmix.optimizer"),
        ("qmix.mixer=qplex", "qmix.mixer"),
        ("qmix.double_q=3", "qmix.double_q"),
        ("qmix.replay=1", "qmix.replay"),
    ],
)
def test_bad_qmix_settings_are_one_line_errors_naming_the_key(override: str, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config("lbf_8x8_2p_2f_coop", preset="debug", overrides=[override])
    message = str(err.value)
    assert key in message and "\n" not in message, message


def test_scenarios_and_debug_presets_carry_a_qmix_section() -> None:
    lbf = load_config("lbf_8x8_2p_2f_coop")
    assert (lbf.qmix.env_steps, lbf.qmix.lr, lbf.qmix.batch_size) == (2_000_000, 5e-4, 32)
    smax = load_config("smax_3m")
    assert smax.qmix.update_every_episodes == 8
    for name in ("lbf_8x8_2p_2f_coop", "smax_3m"):
        debug = load_config(name, preset="debug")
        assert debug.qmix.env_steps <= 1_000 and debug.qmix.buffer_size <= 100


@pytest.mark.parametrize("layers", [1, 2])
def test_mixer_is_monotonic_in_every_agents_q(layers: int) -> None:
    """dQ_tot/dQ_a >= 0 for every agent a, at random states and Q-values (autograd)."""
    torch.manual_seed(layers)
    mixer = QMixer(4, 7, QMIXConfig(hypernet_layers=layers))
    mixer.set_stats(np.random.default_rng(0).normal(size=7), np.full(7, 0.5))
    qs = (torch.randn(512, 4) * 5).requires_grad_(True)
    state = torch.randn(512, 7) * 3
    q_tot = mixer(qs, state)
    assert q_tot.shape == (512,)
    (grad,) = torch.autograd.grad(q_tot.sum(), qs)  # rows are independent: the sum's gradient
    assert (grad >= 0).all(), grad.min()
    assert (grad > 0).float().mean() > 0.5  # not vacuously zero


def test_lambda_returns_match_hand_computation() -> None:
    r = torch.tensor([[1.0, 2.0, 3.0, 0.0], [0.5, 0.5, 0.0, 0.0]])
    term = torch.tensor([[False, False, True, False], [False, False, False, False]])
    filled = torch.tensor([[True, True, True, False], [True, True, False, False]])
    v = torch.tensor([[10.0, 20.0, 30.0, 40.0], [5.0, 7.0, 99.0, 99.0]])  # V_{t+1}
    g = 0.9
    one = lambda_returns(r, term, filled, v, g, 0.0)
    want = torch.tensor([[1 + g * 10, 2 + g * 20, 3.0, 0.0], [0.5 + g * 5, 0.5 + g * 7, 0, 0]])
    torch.testing.assert_close(one, want)
    mc = lambda_returns(r, term, filled, v, g, 1.0)
    # episode 0 terminates: the Monte Carlo return; episode 1 is truncated after 2 steps and
    # bootstraps on V after its last real step (7), never on the padding (99)
    want_mc = torch.tensor(
        [[1 + g * 2 + g * g * 3, 2 + g * 3, 3.0, 0.0], [0.5 + g * (0.5 + g * 7), 0.5 + g * 7, 0, 0]]
    )
    torch.testing.assert_close(mc, want_mc)


def _batch(spec: EnvSpec, b: int = 4, t: int = 5, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    n, a = spec.n_agents, spec.action_dim
    return {
        "obs": torch.randn(b, t + 1, n, spec.obs_dim, generator=gen),
        "state": torch.randn(b, t + 1, spec.state_dim, generator=gen),
        "avail": torch.ones(b, t + 1, n, a, dtype=torch.bool),
        "actions": torch.randint(0, a, (b, t, n), generator=gen),
        "reward": torch.randn(b, t, generator=gen),
        "terminated": torch.zeros(b, t, dtype=torch.bool),
        "filled": torch.ones(b, t, dtype=torch.bool),
    }


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    pairs = zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    return all(torch.equal(x, y) for x, y in pairs)


def test_targets_are_hard_copies_every_target_update_episodes() -> None:
    torch.manual_seed(0)
    learner = QLearner(SPEC, QMIXConfig(target_update_episodes=3, lr=1e-2), torch.device("cpu"))
    start = {k: v.clone() for k, v in learner.target_agent.state_dict().items()}
    stats = learner.update(_batch(SPEC), episodes=1)
    assert stats["target_updated"] == 0.0
    assert not _same(learner.agent, learner.target_agent)  # the online networks moved...
    for k, v in learner.target_agent.state_dict().items():  # ...the targets did not
        assert torch.equal(v, start[k]), k
    learner.update(_batch(SPEC, seed=1), episodes=2)
    assert not _same(learner.mixer, learner.target_mixer)
    stats = learner.update(_batch(SPEC, seed=2), episodes=3)
    assert stats["target_updated"] == 1.0 and learner.last_target_update == 3
    assert _same(learner.agent, learner.target_agent)
    assert _same(learner.mixer, learner.target_mixer)
    learner.update(_batch(SPEC, seed=3), episodes=5)
    assert not _same(learner.agent, learner.target_agent)  # next copy only at episode 6


def test_unavailable_actions_are_never_chosen_nor_bootstrapped_on() -> None:
    rng = np.random.default_rng(0)
    q = torch.tensor([[9.0, 1.0, 2.0, 0.5]]).repeat(2000, 1)  # the best action is unavailable
    avail = np.ones((2000, 4), bool)
    avail[:, 0] = False
    avail[1000:, 3] = False
    for eps in (0.0, 0.3, 1.0):
        acts = epsilon_greedy(q, avail, eps, rng)
        assert avail[np.arange(2000), acts].all(), eps
    acts = epsilon_greedy(q, avail, 1.0, rng)
    assert set(acts[:1000]) == {1, 2, 3} and set(acts[1000:]) == {1, 2}  # uniform over available
    assert (epsilon_greedy(q, avail, 0.0, rng) == 2).all()
    # double-Q's argmax at the next step skips unavailable actions too
    assert masked_argmax(q[:1], torch.as_tensor(avail[:1])).item() == 2


def test_runner_records_only_available_actions_on_lbf() -> None:
    """The epsilon-greedy runner on real LBF copies (whose masks forbid walls and occupied
    cells) stores whole episodes whose actions were all available when taken."""
    cfg = load_config("lbf_8x8_2p_2f_coop", preset="debug")
    rng = np.random.default_rng(0)
    with make_vector_env(cfg.env, 2, "sync") as venv:
        learner = QLearner(venv.spec, cfg.qmix, torch.device("cpu"))
        buf = EpisodeBuffer(16, venv.spec)
        runner = Runner(venv, learner.agent, rng, torch.device("cpu"))
        runner.reset(seed=3)
        for step in range(200):
            for ep in runner.step(1.0 if step < 100 else 0.0):
                buf.add(ep)
    assert buf.count >= 4
    d = buf.data
    taken = np.take_along_axis(d["avail"][:, :-1], d["actions"][..., None], -1)[..., 0]
    real = np.arange(venv.spec.episode_limit)[None, :] < d["length"][: buf.count, None]
    assert taken[: buf.count][real].all()
    assert not d["avail"][: buf.count, :-1][real].all()  # some actions were unavailable


def test_epsilon_schedule_is_linear_then_flat() -> None:
    q = QMIXConfig(epsilon_start=1.0, epsilon_finish=0.05, epsilon_anneal_steps=100)
    assert [epsilon_at(q, s) for s in (0, 50, 100, 1000)] == pytest.approx([1.0, 0.525, 0.05, 0.05])


def _rmio(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rmio", *args], capture_output=True, text=True, timeout=600
    )


@pytest.mark.parametrize("algo", ["qmix", "mmsa"])
def test_debug_run_end_to_end_and_resume(tmp_path: Path, algo: str) -> None:
    """Both trainers of the off-policy loop (train_value): QMIX and MMSA (tests/test_mmsa.py
    checks what MMSA adds)."""
    run = tmp_path / "run"
    proc = _rmio("train", algo, "lbf_8x8_2p_2f_coop", "--debug", "--run-dir", str(run))
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name in (f"{algo}.pt", f"ckpt_{algo}.pt", f"{algo}.csv", f"{algo}.jsonl", "eval.jsonl"):
        assert (run / name).is_file(), name
    assert (run / "config.yaml").is_file()
    assert any((run / "tb").iterdir())
    final = load_checkpoint(run / f"{algo}.pt")
    assert final["algo"] == algo and final["env_steps"] >= 600 and "replay" not in final
    assert final["counters"]["updates"] > 0 and "return_mean" in final["final_eval"]
    rows = [json.loads(x) for x in (run / f"{algo}.jsonl").read_text().splitlines()]
    assert rows and all("train_return" in r and "epsilon" in r for r in rows)
    again = _rmio("train", algo, "lbf_8x8_2p_2f_coop", "--debug", "--run-dir", str(run))
    assert again.returncode == 0 and "already finished" in again.stdout

    # resume: a run stopped at its checkpoint continues from it on the next call
    cfg = load_config("lbf_8x8_2p_2f_coop", preset="debug")
    cut = load_config("lbf_8x8_2p_2f_coop", preset="debug", overrides=["qmix.env_steps=300"])
    part = tmp_path / "part"
    console = Console(file=io.StringIO(), width=200)
    TRAINERS[algo](cut, part, "cpu", console)
    stopped = load_checkpoint(part / f"ckpt_{algo}.pt")
    assert 300 <= stopped["env_steps"] < 600
    (part / f"{algo}.pt").unlink()
    TRAINERS[algo](cfg, part, "cpu", console)
    assert f"resuming {algo.upper()} at {stopped['env_steps']} env steps" in console.file.getvalue()
    done = load_checkpoint(part / f"ckpt_{algo}.pt")
    assert done["env_steps"] >= 600
    c0, c1 = stopped["counters"], done["counters"]
    assert c1["episodes"] > c0["episodes"] and c1["updates"] > c0["updates"]
    # the replay buffer came back: the stopped run's episodes, then the new ones (capacity 40
    # holds both: nothing wrapped)
    held, new = len(stopped["replay"]["length"]), c1["episodes"] - c0["episodes"]
    assert held > 0 and len(done["replay"]["length"]) == held + new
    for key in ("obs", "state", "avail", "actions", "reward", "terminated", "length"):
        np.testing.assert_array_equal(done["replay"][key][:held], stopped["replay"][key])
    steps = [json.loads(x)["step"] for x in (part / f"{algo}.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and len(set(steps)) == len(steps)  # one continuous history


@pytest.mark.parametrize("name", ["lbf_8x8_2p_2f_coop", "smax_3m"])
def test_last_observation_keeps_its_own_state_and_available_actions(name: str) -> None:
    """An episode's last row (what a truncated episode bootstraps on) holds the state and the
    available actions of its final observation, not the next episode's nor 'all': replaying the
    stored actions in a fresh copy with the same seed reaches the same final row."""
    from rmio.envs.registry import make_env

    limit = 8
    cfg = load_config(name, preset="debug", overrides=[f"env.episode_limit={limit}"])
    with make_vector_env(cfg.env, 2, "sync") as venv:
        learner = QLearner(venv.spec, cfg.qmix, torch.device("cpu"))
        runner = Runner(venv, learner.agent, np.random.default_rng(1), torch.device("cpu"))
        runner.reset(seed=11)
        starts = [ep.obs[0] for ep in runner.current]
        finished = [ep for _ in range(limit) for ep in runner.step(1.0)]
    firsts = {}  # copy -> its first episode, when it ran to the limit (copy k is seeded 11 + k)
    for ep in finished:
        for k, first_obs in enumerate(starts):
            if len(ep.actions) == limit and np.array_equal(ep.obs[0], first_obs):
                firsts[k] = ep
    assert firsts, "no first episode ran to its limit"
    with make_env(cfg.env) as env:
        for k, ep in firsts.items():
            ts = env.reset(seed=11 + k)
            for action in ep.actions:
                ts = env.step(np.asarray(action))
            assert ts.truncated and not ts.terminated and ts.avail_actions is not None
            np.testing.assert_allclose(ep.obs[-1], ts.obs, atol=1e-5)
            np.testing.assert_allclose(ep.state[-1], ts.state, atol=1e-5)
            np.testing.assert_array_equal(ep.avail[-1], ts.avail_actions)
            assert not ep.avail[-1].all() or not ts.avail_actions.all()


def test_run_labels_name_a_qmix_recipe_so_two_recipes_never_pool(tmp_path: Path) -> None:
    """Curves and tables label QMIX runs by the recipe settings that differ from pymarl's
    defaults (pymarl2's Adam, TD(lambda), batch 128, ...); pymarl's own runs keep the plain name."""
    from rmio.config import save_config
    from rmio.train.evaluate import run_label

    plain, recipe = tmp_path / "plain", tmp_path / "pymarl2"
    save_config(load_config("lbf_8x8_2p_2f_coop"), plain)
    overrides = ["qmix.optimizer=adam", "qmix.lr=0.001", "qmix.td_lambda=0.6"]
    save_config(load_config("smax_3m", overrides=overrides), recipe)  # 8 episodes per update
    for run in (plain, recipe):
        (run / "qmix.jsonl").write_text("{}\n")
    assert run_label(plain) == "qmix seed 0 (plain)"
    assert run_label(recipe) == ("qmix [adam, lr 0.001, λ 0.6, 1 upd/8 ep] seed 0 (pymarl2)")
