"""Recurrent actors in the bundle (issue 22, item 2): a debug-scale QMIX run on LBF exported as a
Q-actor (hidden state in the manifest, schema 2), run through the real swarm, the in-process
reference and the batched sweep, action for action; rollout parity at export; old bundles load and
act as before; malformed declarations are one-line errors."""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console
from swarm_helpers import run_swarm, swarm_settings
from test_swarm_matrix import compare_with_in_process

from rmio.envs.loss import LossConfig
from rmio.envs.registry import EnvConfig
from rmio.errors import RmioError
from rmio.evaluation.lockstep import BatchedPolicy, Lockstep
from rmio.evaluation.reference import ReferencePolicy, evaluate
from rmio.runtime.bundle import Manifest, load_manifest
from rmio.runtime.models import ActorRunner
from rmio.runtime.settings import env_config_for
from rmio.runtime.validate import check_bundle
from rmio.testing import make_tiny_bundle

pytest.importorskip("lbforaging")
pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]

SCENARIO = "lbf/Foraging-8x8-2p-2f-coop-v3"
STEPS = 25


def _rmio(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rmio", *args], capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def qmix_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A debug-scale QMIX run on LBF (600 env steps, a few seconds)."""
    run = tmp_path_factory.mktemp("qmix") / "run"
    proc = _rmio("train", "qmix", "lbf_8x8_2p_2f_coop", "--debug", "--run-dir", str(run))
    assert proc.returncode == 0, proc.stderr[-2000:]
    return run


@pytest.fixture(scope="module")
def world_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An LBF world model bundle (randomly initialised: the actor is what is under test)."""
    return make_tiny_bundle(tmp_path_factory.mktemp("wm") / "lbf", SCENARIO, 6)


@pytest.fixture(scope="module")
def q_bundle(qmix_run: Path, world_model: Path) -> Path:
    """`rmio export QMIX_RUN --world-model BUNDLE`: the Q-agent as a recurrent actor."""
    out = qmix_run.parent / "bundle"
    proc = _rmio("export", str(qmix_run), "--world-model", str(world_model), "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:] + proc.stdout[-2000:]
    assert "is valid" in proc.stdout
    return out


def test_export_declares_the_state_and_checks_parity_over_rollouts(q_bundle: Path) -> None:
    man = load_manifest(q_bundle)
    assert man.schema_version == 2 and man.actor_state is not None
    hidden = man.config.get("qmix", {}).get("rnn_hidden") or 16  # the debug preset's width
    assert man.actor_state.shape == (hidden + man.spec.action_dim,)  # [h, one-hot a_{t-1}]
    assert man.budget["policy_algo"] == "qmix" and man.files["wm_step"] == "wm_step.onnx"
    assert man.metrics["actor_parity"] == 0.0 and man.metrics["actor_parity_state"] < 1e-4
    assert man.metrics["actor_parity_steps"] >= 4 * STEPS  # whole episodes, not one step
    assert "is valid" in check_bundle(q_bundle)
    runner = ActorRunner(q_bundle, man)
    with pytest.raises(RmioError, match="recurrent"):  # a stateless call is refused, not guessed
        runner.act(np.zeros(man.spec.obs_dim, np.float32), 0)


def test_parity_catches_a_recurrence_that_only_the_later_steps_show(
    qmix_run: Path, q_bundle: Path
) -> None:
    """A GRU whose recurrent weights differ agrees on the first step (h = 0 there) and drifts after:
    the rollout check sees it."""
    from rmio.train.export_q import load_q_agent, rollout_parity

    agent, cfg, _ = load_q_agent(qmix_run / "qmix.pt")
    runner = ActorRunner(q_bundle)
    assert rollout_parity(agent, cfg.env, runner, episodes=2)["actor_parity_state"] < 1e-4
    other = copy.deepcopy(agent)
    with torch.no_grad():
        other.rnn.weight_hh.mul_(1.5)
    n, d = agent.n_agents, agent.obs_dim
    obs = np.random.default_rng(0).normal(size=(n, d)).astype(np.float32)
    avail = np.ones((n, agent.n_actions), bool)
    _, first = runner.step(obs, np.arange(n), avail, runner.initial_state(n))
    with torch.no_grad():
        ids = torch.arange(n)
        _, h = other(
            other.inputs(torch.as_tensor(obs), torch.full((n,), -1), ids), other.init_hidden(n)
        )
    assert np.abs(first[:, : agent.hidden] - h.numpy()).max() < 1e-5  # one step: no difference
    drift = rollout_parity(other, cfg.env, runner, episodes=2)
    assert drift["actor_parity_state"] > 1e-3


def _trace(bundle: Path, env_cfg: EnvConfig, loss: LossConfig, forget: bool) -> list[np.ndarray]:
    """The reference's joint actions over two episodes; ``forget``: its actor's state zeroed
    before every step (an agent that kept no state)."""
    from rmio.envs.loss import LossyEnv, make_loss_model
    from rmio.envs.registry import make_env

    policy = ReferencePolicy(bundle)
    out = []
    with make_env(env_cfg) as base:
        env = LossyEnv(base, make_loss_model(loss, base.spec.n_agents, 3))
        for k in range(2):
            policy.reset()
            ts = env.reset(seed=3 + k)
            while not ts.done:
                if forget:
                    policy.actor_states = [policy.actor.initial_state(1)] * base.spec.n_agents
                joint = policy.act(ts.obs, ts.observed, ts.avail_actions)
                out.append(joint)
                ts = env.step(joint)
    return out


def test_the_hidden_state_changes_the_actions(q_bundle: Path) -> None:
    """The comparisons below are not vacuous: an agent that dropped its state every step would act
    differently on the same episodes."""
    man = load_manifest(q_bundle)
    env_cfg = EnvConfig(**env_config_for(man, STEPS))
    loss = LossConfig("bernoulli", p_loss=0.3)
    kept = _trace(q_bundle, env_cfg, loss, False)
    ref = evaluate(q_bundle, env_cfg, loss, episodes=2, seed=3, trace=True)
    assert np.array_equal(np.concatenate([r["actions"] for r in ref]), np.stack(kept))
    forgot = _trace(q_bundle, env_cfg, loss, True)
    n = min(len(kept), len(forgot))
    assert not np.array_equal(np.stack(kept[:n]), np.stack(forgot[:n]))


def test_swarm_equals_in_process_action_for_action(q_bundle: Path, tmp_path: Path) -> None:
    """Real agent processes, p_loss 0.3, two episodes: every joint action is the in-process
    reference's (hidden state kept across steps, advanced on reconstructions when blind, zeroed at
    each episode's start)."""
    settings = swarm_settings(
        q_bundle,
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


def test_batched_sweep_acts_as_the_reference(q_bundle: Path) -> None:
    """`rmio eval robustness`'s batched rollouts (one actor call for every agent of every episode,
    the state rows carried per environment) take the reference's actions."""
    man = load_manifest(q_bundle)
    env_cfg = EnvConfig(**env_config_for(man, STEPS))
    loss = LossConfig("bernoulli", p_loss=0.3)
    actor = ActorRunner(q_bundle, man)
    from rmio.runtime.models import WorldModelRunner

    policy = BatchedPolicy(actor, man, "world-model", WorldModelRunner(q_bundle, man))
    policy.reset(3)
    taken: list[np.ndarray] = []

    def act(obs, observed, avail, active):  # type: ignore[no-untyped-def]
        joint = policy.act(obs, observed, avail, active)
        taken.append(np.where(active[:, None], joint, -2))
        return joint

    with Lockstep(env_cfg, 3) as envs:
        envs.run(act, loss, 1)
    ref = evaluate(q_bundle, env_cfg, loss, episodes=3, seed=1000, trace=True)
    got = np.stack(taken)  # (T, E, n)
    for k, r in enumerate(ref):
        assert np.array_equal(got[: r["steps"], k], r["actions"]), f"episode {k}"


def test_the_counterfactual_call_gets_the_state_before_the_step(
    q_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every real call of the actor is recorded (the real onnxruntime actor runs): each
    counterfactual call on a lost agent's true observation must get that agent's state from
    before the step (the state the step's own call got), not the advanced one, and the sweep's
    action error must be the share of those calls whose action differs from the one taken."""
    from rmio.evaluation import robustness

    calls: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
    step = ActorRunner.step

    def recording(self, obs, agent_id, avail=None, state=None):  # type: ignore[no-untyped-def]
        action, after = step(self, obs, agent_id, avail, state)
        ids = np.atleast_1d(np.asarray(agent_id))
        calls.append((ids.copy(), np.asarray(state).copy(), np.asarray(after).copy(), action))
        return action, after

    monkeypatch.setattr(ActorRunner, "step", recording)
    result = robustness.sweep(
        q_bundle,
        p_loss=[0.5],
        episodes=1,
        seeds=1,
        strategies=["zero-fill"],
        episode_limit=STEPS,
        policy_metrics=True,
    )
    checked = differ = 0
    main = calls[0]
    for ids, state, after, action in calls[1:]:
        _, before, advanced, taken = main
        # a counterfactual call repeats rows of the step's own input state; a step's call starts
        # from the state the previous step left (so a counterfactual given the advanced state
        # would pass for a step, and none would be counted)
        if np.array_equal(state, before[ids]) and not np.array_equal(state, advanced[ids]):
            differ += int((np.asarray(action).reshape(-1) != taken[ids].reshape(-1)).sum())
            checked += len(ids)
        else:
            main = (ids, state, after, action)
    assert checked >= 5  # lost agent-steps were measured from the state before the step
    row = next(r for r in result["rows"] if r["strategy"] == "zero-fill")
    assert row["action_error"] == pytest.approx(differ / checked)


def test_rmio_eval_robustness_in_process_and_swarm_agree(q_bundle: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from rmio.cli import cli

    out = tmp_path / "rob"
    args = ["eval", "robustness", str(q_bundle), "--p-loss", "0,0.3", "--episodes", "2"]
    args += ["--seeds", "1", "--steps", str(STEPS), "--swarm", "--out", str(out)]
    args += ["--strategies", "world-model"]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    result = json.loads((out / "robustness.json").read_text())
    rows = [r for r in result["swarm"] if r["deadline_misses"] == 0]
    assert rows
    for row in rows:
        curve = result["summary"][row["strategy"]]["curve"]
        in_process = next(c["mean"] for c in curve if c["p_loss"] == row["p_loss"])
        assert row["mean"] == in_process, row


GOLDEN_SMAX = (
    [0.2840000130236149, 0.30425000935792923],
    "ae195401112f20a040037ee6d7514f6a404cafa7d654efe6aae55e1ec9a0ff72",
)
"""models/smax_2s3z, 2 episodes of 20 steps at Bernoulli p_loss 0.3, seed 5: the returns and the
sha256 of the joint actions, recorded with the code before recurrent actors existed (the parent of
f3d8276, importing this bundle). Re-recorded when the bundle was re-exported with the actor trained
in imagination; the same code reproduces the previous bundle's golden from git history,
([0.4186666766181588, 0.41625001188367605], f9bd8254...)."""


def test_old_bundles_load_and_act_as_before() -> None:
    pytest.importorskip("jaxmarl")
    from rmio.models import find_bundle

    for name in ("smax_2s3z", "halfcheetah_6x1"):
        man = load_manifest(find_bundle(name))
        assert man.schema_version == 1 and man.actor_state is None
        assert "actor_state" not in man.to_dict()  # rewritten, it reads as it did
    bundle = find_bundle("smax_2s3z")
    env = EnvConfig(**env_config_for(load_manifest(bundle), 20))
    rows = evaluate(
        bundle, env, LossConfig("bernoulli", p_loss=0.3), episodes=2, seed=5, trace=True
    )
    acts = np.concatenate([r["actions"] for r in rows]).astype(np.int64)
    assert ([r["return"] for r in rows], hashlib.sha256(acts.tobytes()).hexdigest()) == GOLDEN_SMAX


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["actor_state"].pop("output"), "actor_state must be"),
        (lambda d: d["actor_state"].update(shape=[0]), "positive integers"),
        (lambda d: d["actor_state"].update(shape="22"), "positive integers"),
        (lambda d: d["actor_state"].update(input="obs"), "already the actor's own"),
        (lambda d: d["actor_state"].update(output="state"), "two different"),
        (lambda d: d.update(schema_version=1), "needs schema_version 2"),
        (lambda d: d.update(schema_version=3), "schema version 3"),
        (lambda d: d["actor_state"].update(input="h"), "inputs"),  # not the graph's name
        (lambda d: d["actor_state"].update(shape=[7]), "the manifest wants"),  # not its width
        (lambda d: d.pop("actor_state"), "inputs"),  # a recurrent graph declared stateless
    ],
)
def test_a_malformed_state_declaration_is_one_line(
    q_bundle: Path, tmp_path: Path, edit, message: str
) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "bad"
    shutil.copytree(q_bundle, bad)
    data = json.loads((bad / "manifest.json").read_text())
    edit(data)
    (bad / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(RmioError) as err:
        check_bundle(bad)
    assert message in str(err.value) and "\n" not in str(err.value), str(err.value)
    proc = _rmio("export", "--check", str(bad))
    assert proc.returncode != 0 and message in proc.stderr + proc.stdout


def test_export_errors_are_one_line(qmix_run: Path, tmp_path: Path) -> None:
    from rmio.train.export_q import export_qmix

    proc = _rmio("export", str(qmix_run), "--out", str(tmp_path / "b"))
    assert proc.returncode != 0 and "--world-model" in proc.stderr + proc.stdout
    assert not (tmp_path / "b").exists()
    other = make_tiny_bundle(tmp_path / "cheetah", "mamujoco/HalfCheetah-6x1", 4)
    with pytest.raises(RmioError, match="give a world model of its task") as err:
        export_qmix(qmix_run / "qmix.pt", other, tmp_path / "b2", Console(quiet=True))
    assert "\n" not in str(err.value) and not (tmp_path / "b2").exists()


def test_the_other_export_forms(qmix_run: Path, world_model: Path, tmp_path: Path) -> None:
    """A QMIX run that only has its last checkpoint, and the pairing named from the world model's
    side (`rmio export WM --policy qmix.pt`), give the same actor."""
    from click.testing import CliRunner

    from rmio.cli import cli

    partial = tmp_path / "partial"
    partial.mkdir()
    for name in ("config.yaml", "ckpt_qmix.pt"):
        shutil.copy2(qmix_run / name, partial / name)
    runs = {
        "ckpt": ["export", str(partial), "--world-model", str(world_model)],
        "policy": ["export", str(world_model), "--policy", str(qmix_run / "qmix.pt")],
    }
    digests = {}
    for key, args in runs.items():
        out = tmp_path / key
        res = CliRunner().invoke(cli, [*args, "--out", str(out)])
        assert res.exit_code == 0, res.output
        man = load_manifest(out)
        assert man.actor_state is not None and man.metrics["actor_parity"] == 0.0
        digests[key] = man.sha256["actor.onnx"]
    # ckpt_qmix.pt and qmix.pt hold the same final agent: the same graph, byte for byte
    assert digests["ckpt"] == digests["policy"]


def test_a_stateless_manifest_round_trips_without_the_key(q_bundle: Path) -> None:
    man = load_manifest(q_bundle)
    again = Manifest.from_dict(json.loads(json.dumps(man.to_dict())))
    assert again.actor_state == man.actor_state
    stateless = Manifest.from_dict({**man.to_dict(), "actor_state": None})
    assert stateless.actor_state is None and "actor_state" not in stateless.to_dict()
