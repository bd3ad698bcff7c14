"""A Q-agent (QMIX's or MMSA's recurrent agent) exported as the bundle's actor: greedy over the
available actions, its GRU state carried by the runtime between steps (docs/BUNDLE.md, "A recurrent
actor").

MMSA's agent is QMIX's GRU with a SALE Q-head (train/mmsa_nets.py, ``MMSAAgent``): the head reads
the normalised observation through the agent's fixed SALE encoder copy (z^o, z^oa for every
action) and its own phi^oa layer beside the GRU state, all inside the agent's ``forward``, so the
same graph exports it and computes exactly the greedy evaluation's Q-values. Its mixer, world model
and online encoders are training-only and are not exported.

QMIX's agent reads its observation, its previous action (one-hot, zeros at an episode's start) and
its one-hot id. The graph builds all three itself, so the runtime feeds it nothing new beyond the
hidden state: the id from the contract's ``agent_id`` input, and the previous action from the
hidden state, which is ``[h (rnn_hidden), one-hot of the action the graph chose (n_actions)]``. The
state the graph returns already holds the action it picks, so an agent's state is a function of
what the agent saw and did, which every caller (swarm agent, in-process evaluations) replays the
same way. A bundle pairs the actor with a world model trained on the same scenario (QMIX trains
none): an existing bundle, a shipped one or a world-model run directory (exported first).

Parity is checked over real rollouts: the PyTorch agent plays greedy episodes (some observations
zeroed, as a lost one reaches an actor) and onnxruntime, run through the runtime's own
``ActorRunner`` with batch n and batch 1, carries its own state alongside; every action must agree
and every state within ``PARITY_TOLERANCE``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from torch import nn

from rmio.config import Config, build_dataclass
from rmio.envs.base import EnvSpec
from rmio.envs.registry import EnvConfig, make_env
from rmio.errors import RmioError
from rmio.runtime.bundle import SCHEMA_VERSION, ActorState, Manifest, load_manifest
from rmio.runtime.models import ActorRunner
from rmio.runtime.settings import env_config_for
from rmio.runtime.validate import bundle_checksums, check_bundle
from rmio.train.export import PARITY_TOLERANCE, _same_agents, export_onnx, portable_path
from rmio.train.mmsa_nets import MMSAAgent
from rmio.train.model_card import write_model_card
from rmio.train.qmix_nets import NEG_INF, RNNAgent, masked_argmax
from rmio.train.runlog import load_checkpoint

STATE_IN, STATE_OUT = "state", "state_next"
"""The names of the Q-actor's hidden state in actor.onnx (declared in the manifest)."""
PARITY_SEED = 700_000
"""Parity rollouts use env seeds apart from training's and evaluation's."""


class QActorGraph(nn.Module):
    """actor.onnx of a Q-agent: (obs, agent_id, avail_actions, state) -> (action, state_next)."""

    def __init__(self, agent: RNNAgent) -> None:
        super().__init__()
        self.agent = agent
        self.hidden, self.n_actions = agent.hidden, agent.n_actions
        self.register_buffer("ids", torch.arange(agent.n_agents))
        self.register_buffer("actions", torch.arange(agent.n_actions))

    @property
    def width(self) -> int:
        return self.hidden + (self.n_actions if self.agent.last_action else 0)

    def forward(self, obs, agent_id, avail_actions, state):
        a = self.agent
        parts = [a.normalise_obs(obs, agent_id)]  # RNNAgent.inputs, the last action from the state
        if a.last_action:
            parts.append(state[:, self.hidden :])
        if a.agent_id:
            parts.append((agent_id[:, None] == self.ids[None, :]).float())
        q, h_next = a(torch.cat(parts, -1), state[:, : self.hidden])
        action = q.masked_fill(~avail_actions, NEG_INF).argmax(-1)
        if not a.last_action:
            return action, h_next
        return action, torch.cat([h_next, (action[:, None] == self.actions[None, :]).float()], -1)


Q_ALGOS = ("qmix", "mmsa")
"""The value-based trainers whose agents export as a Q-actor (``<algo>.pt``, ``ckpt_<algo>.pt``)."""


def q_algo_of(ckpt: dict[str, Any], path: Path) -> str | None:
    """``"qmix"`` or ``"mmsa"`` for a Q-agent checkpoint, None for anything else (a MAPPO
    policy.pt, a world model). The final file names its algorithm; a training checkpoint is told
    by its agent's weights (MMSA's carries the SALE head, QMIX's the linear Q layer ``fc2``). A
    Q-agent of neither kind is a one-line error, not a weight mismatch later."""
    learner = ckpt.get("learner")
    if not isinstance(learner, dict) or "agent" not in learner:
        return None
    algo = ckpt.get("algo")
    if algo is None:
        keys = set(learner["agent"])
        if "q_out.weight" in keys and any(k.startswith("sale.") for k in keys):
            algo = "mmsa"
        elif "fc2.weight" in keys:
            algo = "qmix"
    if algo not in Q_ALGOS:
        raise RmioError(
            f"'{path}' holds a Q-agent of an unknown algorithm ({algo or 'unrecognised weights'}):"
            f" only {' and '.join(a.upper() for a in Q_ALGOS)} agents export as actors"
        )
    return str(algo)


def load_q_agent(path: Path) -> tuple[RNNAgent, Config, dict[str, Any]]:
    """The Q-agent of a ``qmix.pt``/``mmsa.pt`` (or their ``ckpt_*.pt``), its run's config and the
    checkpoint, whose ``"algo"`` is set to the algorithm found."""
    ckpt = load_checkpoint(path, "cpu")
    algo = q_algo_of(ckpt, path)
    if algo is None:
        raise RmioError(
            f"'{path}' is not a QMIX or MMSA checkpoint (qmix.pt, mmsa.pt or their ckpt_*.pt)"
        )
    cfg = build_dataclass(Config, ckpt["config"], str(path))
    spec = EnvSpec.from_dict(ckpt["spec"])
    agent = MMSAAgent(spec, cfg.qmix, cfg.mmsa) if algo == "mmsa" else RNNAgent(spec, cfg.qmix)
    try:
        agent.load_state_dict(ckpt["learner"]["agent"])
    except RuntimeError as err:
        first = str(err).splitlines()[0]
        raise RmioError(f"the {algo.upper()} agent of '{path}' does not load: {first}") from None
    return agent.eval(), cfg, {**ckpt, "algo": algo}


def is_q_checkpoint(path: Path) -> bool:
    """Whether ``path`` is a QMIX or MMSA checkpoint (what `rmio export --policy` then ships as a
    Q-actor); a Q-agent of another algorithm is a one-line error."""
    if not path.is_file():
        return False
    return q_algo_of(load_checkpoint(path, "cpu"), path) is not None


def export_q_actor(agent: RNNAgent, out: Path) -> ActorState:
    """Write ``out/actor.onnx`` from the Q-agent; returns the hidden state's declaration."""
    graph = QActorGraph(agent).eval()
    gen = torch.Generator().manual_seed(2)
    n, d, width = agent.n_agents, agent.obs_dim, graph.width
    rows = 2 * n
    obs = agent.obs_mean.repeat(2, 1) + torch.randn(rows, d, generator=gen) * agent.obs_std.repeat(
        2, 1
    )
    avail = torch.rand(rows, agent.n_actions, generator=gen) > 0.3
    avail[:, 0] = True
    args = (obs, torch.arange(n).repeat(2), avail, torch.randn(rows, width, generator=gen))
    inputs = ("obs", "agent_id", "avail_actions", STATE_IN)
    export_onnx(graph, args, out / "actor.onnx", inputs, ("action", STATE_OUT))
    return ActorState(STATE_IN, STATE_OUT, (width,))


def rollout_parity(
    agent: RNNAgent,
    env_cfg: EnvConfig,
    runner: ActorRunner,
    episodes: int = 4,
    max_steps: int = 400,
    p_blind: float = 0.3,
) -> dict[str, float]:
    """Greedy episodes played by the PyTorch agent, onnxruntime carrying its own state beside it
    (steps alternate between one call for the n agents and batch 1 per agent, the swarm's call,
    so both are compared whatever the episodes' length).
    Observations are zeroed with probability ``p_blind``, as a lost one reaches an actor. Returns
    the fraction of differing actions, the largest state difference and the steps compared."""
    rng = np.random.default_rng(0)
    width = runner.state_spec.shape[0] if runner.state_spec else 0
    wrong = total = 0
    worst = 0.0
    with make_env(env_cfg) as env:
        n = env.spec.n_agents
        ids = torch.arange(n)
        for k in range(episodes):
            ts = env.reset(seed=PARITY_SEED + k)
            h, prev = agent.init_hidden(n), torch.full((n,), -1)
            state = runner.initial_state(n)
            while total < max_steps:
                obs = (ts.obs * (rng.random(n) >= p_blind)[:, None]).astype(np.float32)
                avail = np.ones((n, agent.n_actions), bool)
                if ts.avail_actions is not None:
                    avail = np.asarray(ts.avail_actions, bool)
                with torch.no_grad():
                    q, h = agent(agent.inputs(torch.as_tensor(obs), prev, ids), h)
                    want = masked_argmax(q, torch.as_tensor(avail))
                if (total // n) % 2 == 0:
                    got, state = runner.step(obs, np.arange(n), avail, state)
                else:
                    pairs = [runner.step(obs[i], i, avail[i], state[i : i + 1]) for i in range(n)]
                    got = np.stack([a for a, _ in pairs])
                    state = np.concatenate([s for _, s in pairs])
                ref = h.numpy()
                if agent.last_action:
                    ref = np.concatenate([ref, np.eye(agent.n_actions)[want.numpy()]], -1)
                worst = max(worst, float(np.abs(state[:, :width] - ref).max()))
                wrong += int((np.asarray(got).reshape(-1) != want.numpy()).sum())
                total += n
                prev = want
                ts = env.step(want.numpy())
                if ts.done:
                    break
    return {"actor_parity": wrong / max(total, 1), "actor_parity_state": worst, "steps": total}


def _world_model_bundle(source: str | Path, console: Console) -> Path:
    """A bundle directory, a shipped bundle's name, or a world-model run directory (exported into
    its ``bundle/`` first)."""
    from rmio.evaluation.robustness import resolve_bundle
    from rmio.models import find_bundle

    path = Path(source)
    bundle = resolve_bundle(path if path.is_dir() else find_bundle(source), console)
    if "wm_step" not in load_manifest(bundle).files:
        raise RmioError(f"'{source}' holds no world model (wm_step.onnx)")
    return bundle


def _check_task(
    cfg: Config, ckpt: dict[str, Any], manifest: Manifest, policy: Path, source: str | Path
) -> None:
    """The Q-agent's task must be the one the swarm builds from the world model's manifest."""
    spec = EnvSpec.from_dict(ckpt["spec"])
    if not _same_agents(spec, manifest.spec):
        raise RmioError(
            f"the Q-agent of {policy} was trained on {spec.name} ({spec.n_agents} agents), the "
            f"world model of '{source}' on {manifest.spec.name}: give a world model of its task"
        )
    built = EnvConfig(**env_config_for(manifest))
    if (built.agent_obsk, built.options) != (cfg.env.agent_obsk, cfg.env.options):
        raise RmioError(
            f"the Q-agent of {policy} was trained with env options {cfg.env.options} (agent_obsk "
            f"{cfg.env.agent_obsk}), the world model of '{source}' with {built.options} "
            f"(agent_obsk {built.agent_obsk})"
        )


def export_qmix(policy: Path, world_model: str | Path, out: Path, console: Console) -> Path:
    """A bundle of the Q-agent of ``policy`` (a qmix.pt or mmsa.pt, or a ``ckpt_*.pt``) and the
    world model of ``world_model``,
    checked (rollout parity, then ``check_bundle``); a bundle that fails is removed."""
    agent, cfg, ckpt = load_q_agent(policy)
    source = _world_model_bundle(world_model, console)
    if out.resolve() == source.resolve():
        raise RmioError(f"--out '{out}' is the world model's own bundle: pick another directory")
    manifest = load_manifest(source)
    _check_task(cfg, ckpt, manifest, policy, world_model)
    fresh = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        return _write(agent, cfg, ckpt, policy, world_model, source, manifest, out, console)
    except BaseException:
        if fresh:
            shutil.rmtree(out, ignore_errors=True)
        raise


def _write(
    agent: RNNAgent,
    cfg: Config,
    ckpt: dict[str, Any],
    policy: Path,
    world_model: str | Path,
    source: Path,
    manifest: Manifest,
    out: Path,
    console: Console,
) -> Path:
    state = export_q_actor(agent, out)
    files = {"actor": "actor.onnx"}
    for role in ("wm_step", "wm_step_pretrain"):
        if role in manifest.files:
            shutil.copyfile(source / manifest.files[role], out / manifest.files[role])
            files[role] = manifest.files[role]
    data = json.loads((source / "manifest.json").read_text())
    data.update(schema_version=SCHEMA_VERSION, files=files, actor_state=state.to_dict())
    budget = {k: v for k, v in data.get("budget", {}).items() if not k.startswith("policy")}
    data["budget"] = {
        **budget,
        "policy_source": portable_path(str(policy)),
        "policy_algo": ckpt["algo"],
        "policy_env_steps": ckpt.get("env_steps"),
        "world_model_source": portable_path(str(world_model)),
    }
    metrics = {
        k: v for k, v in data.get("metrics", {}).items() if not k.startswith(("actor", "policy"))
    }
    data["metrics"] = {**metrics, "policy_final_eval": ckpt.get("final_eval")}
    new = Manifest.from_dict(data, str(out / "manifest.json"))
    new.save(out)
    parity = rollout_parity(agent, cfg.env, ActorRunner(out, new))
    console.print(
        f"Q-actor parity over {parity['steps']} agent-steps of greedy rollouts: "
        f"{parity['actor_parity']:.2e} of actions differ, hidden state max |diff| "
        f"{parity['actor_parity_state']:.2e}"
    )
    if parity["actor_parity"] > 0 or parity["actor_parity_state"] > PARITY_TOLERANCE:
        raise RmioError(
            f"the exported Q-actor drifts from PyTorch ({parity['actor_parity']:.2e} of actions, "
            f"state {parity['actor_parity_state']:.2e}, tolerance {PARITY_TOLERANCE})"
        )
    new.metrics.update(
        actor_parity=parity["actor_parity"],
        actor_parity_state=parity["actor_parity_state"],
        actor_parity_steps=parity["steps"],
    )
    new.sha256 = bundle_checksums(out, new)
    new.save(out)
    write_model_card(out, new)
    console.print(check_bundle(out))
    return out
