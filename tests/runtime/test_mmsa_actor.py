"""An MMSA agent exported as the bundle's recurrent actor, as a QMIX agent is (issue 22): a
debug-scale MMSA run on LBF paired with a world model, the graph's greedy Q-actor (GRU state and
the SALE head on the agent's fixed encoder copy; the mixer stays behind) checked over rollouts at
export, and the real swarm at p_loss 0.3 taking the in-process reference's actions. The export
forms (final file, training checkpoint, `--policy` from the world model's side) give one graph;
a Q-agent of an unknown algorithm is a one-line error."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from swarm_helpers import run_swarm, swarm_settings
from test_recurrent_actor import SCENARIO, STEPS, _rmio
from test_swarm_matrix import compare_with_in_process

from rmio.errors import RmioError
from rmio.runtime.bundle import load_manifest
from rmio.runtime.models import ActorRunner
from rmio.runtime.validate import check_bundle
from rmio.testing import make_tiny_bundle

pytest.importorskip("lbforaging")
pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]


@pytest.fixture(scope="module")
def mmsa_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A debug-scale MMSA run on LBF (600 env steps, a few seconds)."""
    run = tmp_path_factory.mktemp("mmsa") / "run"
    proc = _rmio("train", "mmsa", "lbf_8x8_2p_2f_coop", "--debug", "--run-dir", str(run))
    assert proc.returncode == 0, proc.stderr[-2000:]
    return run


@pytest.fixture(scope="module")
def world_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An LBF world model bundle (randomly initialised: the actor is what is under test)."""
    return make_tiny_bundle(tmp_path_factory.mktemp("wm") / "lbf", SCENARIO, 6)


def _export(*args: str) -> None:
    from rmio.cli import cli

    res = CliRunner().invoke(cli, ["export", *args])
    assert res.exit_code == 0, res.output
    assert "is valid" in res.output


@pytest.fixture(scope="module")
def mmsa_bundle(mmsa_run: Path, world_model: Path) -> Path:
    """`rmio export MMSA_RUN --world-model BUNDLE`."""
    out = mmsa_run.parent / "bundle"
    _export(str(mmsa_run), "--world-model", str(world_model), "--out", str(out))
    return out


def test_mmsa_exports_a_checked_recurrent_q_actor(mmsa_run: Path, mmsa_bundle: Path) -> None:
    from rmio.train.export_q import load_q_agent

    agent, cfg, ckpt = load_q_agent(mmsa_run / "mmsa.pt")
    assert type(agent).__name__ == "MMSAAgent" and ckpt["algo"] == "mmsa"
    man = load_manifest(mmsa_bundle)
    assert man.budget["policy_algo"] == "mmsa" and man.files["wm_step"] == "wm_step.onnx"
    assert man.actor_state is not None
    assert man.actor_state.shape == (cfg.qmix.rnn_hidden + man.spec.action_dim,)
    assert man.metrics["actor_parity"] == 0.0 and man.metrics["actor_parity_state"] < 1e-4
    assert man.metrics["actor_parity_steps"] >= 4 * STEPS
    assert "is valid" in check_bundle(mmsa_bundle)


def test_the_graph_acts_with_the_agents_sale_head(mmsa_run: Path, mmsa_bundle: Path) -> None:
    """The rollout check compares the graph with the agent's greedy evaluation step (train/qmix.py's
    evaluate_agent: agent(inputs) then the masked argmax). It agrees with the trained agent and
    not with the same agent whose fixed SALE encoders are replaced: the exported Q-values read
    z^o and z^oa, not only the GRU state."""
    from rmio.train.export_q import load_q_agent, rollout_parity

    agent, cfg, _ = load_q_agent(mmsa_run / "mmsa.pt")
    runner = ActorRunner(mmsa_bundle)
    same = rollout_parity(agent, cfg.env, runner, episodes=2)
    assert same["actor_parity"] == 0.0 and same["actor_parity_state"] < 1e-4
    other = copy.deepcopy(agent)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in other.sale.g.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    assert rollout_parity(other, cfg.env, runner, episodes=2)["actor_parity"] > 0.0


def test_swarm_equals_in_process_action_for_action(mmsa_bundle: Path, tmp_path: Path) -> None:
    """Real agent processes over UDP, p_loss 0.3, two episodes: every joint action is the
    in-process reference's (the MMSA actor's state kept, advanced on reconstructions, zeroed at
    each episode's start)."""
    settings = swarm_settings(
        mmsa_bundle,
        tmp_path,
        steps=STEPS,
        episodes=2,
        record=True,
        transport="udp",
        step_deadline_ms=2000.0,
    )
    report, _ = run_swarm(settings, tmp_path / "run")
    ev = report["events"]
    assert ev.get("deadline_misses", 0) == 0 and ev.get("agents.recon_miss", 0) == 0
    assert ev.get("agents.internal_errors", 0) == 0 and ev.get("invalid_actions", 0) == 0
    compared = compare_with_in_process(settings, tmp_path / "run", report)
    assert compared["steps"] == 2 * STEPS and compared["lost"] > 0
    assert ev["agents.act_world-model"] == compared["lost"]


def test_the_other_export_forms(
    mmsa_run: Path, mmsa_bundle: Path, world_model: Path, tmp_path: Path
) -> None:
    """A run that has only its training checkpoint (ckpt_mmsa.pt carries no algorithm name: its
    weights tell) and `rmio export WM --policy mmsa.pt` give the graph of `rmio export MMSA_RUN`."""
    partial = tmp_path / "partial"
    partial.mkdir()
    for name in ("config.yaml", "ckpt_mmsa.pt"):
        shutil.copy2(mmsa_run / name, partial / name)
    _export(str(partial), "--world-model", str(world_model), "--out", str(tmp_path / "ckpt"))
    policy = str(mmsa_run / "mmsa.pt")
    _export(str(world_model), "--policy", policy, "--out", str(tmp_path / "policy"))
    want = load_manifest(mmsa_bundle).sha256["actor.onnx"]
    for key in ("ckpt", "policy"):
        man = load_manifest(tmp_path / key)
        assert man.budget["policy_algo"] == "mmsa" and man.metrics["actor_parity"] == 0.0
        assert man.sha256["actor.onnx"] == want, key


def test_a_q_agent_of_an_unknown_algorithm_is_one_line(
    mmsa_run: Path, world_model: Path, tmp_path: Path
) -> None:
    from rmio.train.runlog import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(mmsa_run / "mmsa.pt")
    named = tmp_path / "named.pt"
    save_checkpoint(named, {**ckpt, "algo": "vdn"})
    unnamed = tmp_path / "unnamed.pt"
    agent = {k: v for k, v in ckpt["learner"]["agent"].items() if not k.startswith("sale.")}
    rest = {k: v for k, v in ckpt.items() if k != "algo"}
    save_checkpoint(unnamed, {**rest, "learner": {**ckpt["learner"], "agent": agent}})
    for path, what in ((named, "(vdn)"), (unnamed, "(unrecognised weights)")):
        out = tmp_path / f"b_{path.stem}"
        proc = _rmio("export", str(world_model), "--policy", str(path), "--out", str(out))
        err = proc.stderr.strip()
        assert proc.returncode == 2 and "unknown algorithm " + what in err, err
        assert len(err.splitlines()) == 1 and not out.exists()
    from rmio.train.export_q import load_q_agent

    no_q = tmp_path / "no_q.pt"  # a checkpoint with no Q-agent (no ``learner``)
    save_checkpoint(no_q, {k: v for k, v in ckpt.items() if k != "learner"})
    with pytest.raises(RmioError, match="not a QMIX or MMSA checkpoint") as err:
        load_q_agent(no_q)
    assert "\n" not in str(err.value)


def test_a_recurrent_actor_collects_world_model_data(mmsa_bundle: Path) -> None:
    """`run.data_policy` may name a bundle with a recurrent actor (an RMIOv2 world model for
    MMSA's Q-actor, bench/mmsa_robustness.py). Without exploration, every stored action is the
    greedy action of the actor stepped alone over that episode from a fresh state, on copies that
    finish several episodes each (when ``collect`` resets a copy's state: test_trajectory.py)."""
    import numpy as np

    from rmio.config import load_config
    from rmio.envs.collect import collect
    from rmio.envs.loss import LossConfig
    from rmio.train.wm_train import _NoisyBundleActor

    cfg = load_config("lbf_8x8_2p_2f_coop", preset="debug")
    runner = ActorRunner(mmsa_bundle)
    buf, _ = collect(
        cfg.env, LossConfig(model="none"), steps=8 * STEPS, num_envs=2, seed=3,
        policy=_NoisyBundleActor(runner, seed=0, explore=0.0),
    )  # fmt: skip
    assert buf.num_episodes >= 8
    reference = ActorRunner(mmsa_bundle)
    compared = 0
    for e in range(buf.num_episodes):
        ep = buf.episode(e)
        n = ep["obs"].shape[1]
        state = reference.initial_state(n)
        for t in range(len(ep["action"])):
            avail = ep["avail_actions"][t] if "avail_actions" in ep else None
            action, state = reference.step(ep["obs"][t], np.arange(n), avail, state)
            np.testing.assert_array_equal(ep["action"][t], action, err_msg=f"episode {e}, t {t}")
            compared += n
    assert compared >= 8 * STEPS * n
