"""`rmio export`: the world model's one-step graph as ONNX plus the bundle manifest, checked for
parity.

The graph is ``RMIOWorldModel.step`` (raw observations in and out, categorical modes), exactly the
contract of ``rmio.runtime.bundle``. Parity is checked twice: on random inputs with a batch of 3
(the batch axis must be dynamic), and by replaying held-out episodes through onnxruntime and
PyTorch side by side with real loss masks, which also catches drift that accumulates over steps.
"""

from __future__ import annotations

import json
import logging
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from torch import nn

from rmio.config import algorithm_of, load_config
from rmio.envs.base import EnvSpec
from rmio.envs.trajectory import TrajectoryBuffer
from rmio.errors import RmioError
from rmio.rundir import portable_path
from rmio.runtime.bundle import SCHEMA_VERSION, WM_INPUTS, WM_OUTPUTS, Manifest, load_manifest
from rmio.runtime.models import LatentState, WorldModelRunner
from rmio.runtime.validate import bundle_checksums
from rmio.train.common import load_actor, load_model
from rmio.train.model_card import write_model_card
from rmio.train.parity import PARITY_TOLERANCE, argmax_ties
from rmio.train.policy import Actor
from rmio.train.world_model import RMIOWorldModel

log = logging.getLogger(__name__)


class ActorGraph(nn.Module):
    """actor.onnx: one agent's raw observation and id (and available actions) -> greedy action."""

    def __init__(self, actor: Actor) -> None:
        super().__init__()
        self.actor = actor

    def forward(self, obs, agent_id, avail_actions=None):
        if avail_actions is None:
            return self.actor(obs, agent_id, avail_actions)
        # discrete: the greedy action and the probabilities it comes from (for the KL of the
        # policy metrics; an optional output of the bundle contract)
        logits = self.actor._head(obs, agent_id).masked_fill(~avail_actions.bool(), -1e9)
        return self.actor(obs, agent_id, avail_actions), torch.softmax(logits, -1)


def export_actor(actor: Actor, out: Path) -> float:
    """Write actor.onnx and return the max |onnxruntime - torch| over every agent on random
    inputs."""
    import onnxruntime as ort

    spec = actor.spec
    gen = torch.Generator().manual_seed(2)
    n = spec.n_agents
    obs = actor.obs_mean.repeat(2, 1) + torch.randn(
        2 * n, spec.obs_dim, generator=gen
    ) * actor.obs_std.repeat(2, 1)
    ids = torch.arange(n).repeat(2)
    args: tuple[torch.Tensor, ...] = (obs, ids)
    names: tuple[str, ...] = ("obs", "agent_id")
    if spec.discrete:
        avail = torch.rand(2 * n, spec.action_dim, generator=gen) > 0.3
        avail[:, 0] = True
        args, names = (*args, avail), (*names, "avail_actions")
    outputs = ("action", "action_probs") if spec.discrete else ("action",)
    export_onnx(ActorGraph(actor), args, out / "actor.onnx", names, outputs)
    sess = ort.InferenceSession(str(out / "actor.onnx"), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        ref = actor(*args).numpy()  # the greedy action (the probabilities are checked below)
    feed = {k: v.numpy() for k, v in zip(names, args, strict=True)}
    got = sess.run(["action"], feed)[0]
    if spec.discrete:
        with torch.no_grad():
            probs = actor.dist(obs, ids, avail.float()).probs.numpy()
        drift = float(np.abs(sess.run(["action_probs"], feed)[0] - probs).max())
        if drift > 1e-4:
            raise RmioError(f"actor.onnx's action_probs differ from torch's by {drift:.2e}")
        return float((ref != got).mean())  # fraction of different actions
    return float(np.abs(ref - got).max())


class WorldModelStep(nn.Module):
    def __init__(self, model: RMIOWorldModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, h, z, prev_action, obs, mask):
        return self.model.step(h, z, prev_action, obs, mask)


def export_onnx(
    module: nn.Module,
    args: tuple[torch.Tensor, ...],
    path: Path,
    inputs: tuple[str, ...],
    outputs: tuple[str, ...],
) -> None:
    """Export with a dynamic batch axis (the example batch must be >= 2, or the exporter fixes it to
    1)."""
    if args[0].shape[0] < 2:
        raise ValueError("export needs an example batch of at least 2")
    batch = torch.export.Dim("batch", min=1, max=4096)
    dynamic = {name: {0: batch} for name in inputs}
    path.parent.mkdir(parents=True, exist_ok=True)
    logging.getLogger("torch.onnx").setLevel(
        logging.ERROR
    )  # torchvision-missing notices are not ours
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(
            module,
            args,
            input_names=list(inputs),
            output_names=list(outputs),
            dynamic_shapes=dynamic,
            opset_version=18,
            dynamo=True,
            verbose=False,
        )
    if prog is None:
        raise RuntimeError("torch.onnx.export returned no program")
    prog.save(str(path))
    strip_stack_traces(path)


def strip_stack_traces(path: Path) -> None:
    """Drop the exporter's per-node Python stack traces: they name files of the machine that
    exported (site-packages, the checkout) and play no part in running the graph."""
    import onnx

    model = onnx.load(str(path))
    graphs = [model.graph, *model.functions]
    changed = False
    while graphs:
        graph = graphs.pop()
        for node in graph.node:
            keep = [p for p in node.metadata_props if p.key != "pkg.torch.onnx.stack_trace"]
            if len(keep) != len(node.metadata_props):
                changed = True
                del node.metadata_props[:]
                node.metadata_props.extend(keep)
            graphs += [a.g for a in node.attribute if a.HasField("g")]
            graphs += [g for a in node.attribute for g in a.graphs]
    if changed:
        onnx.save(model, str(path))


def _portable_config(config: dict[str, Any]) -> dict[str, Any]:
    run = config.get("run")
    if isinstance(run, dict) and run.get("data_policy"):
        return {**config, "run": {**run, "data_policy": portable_path(run["data_policy"])}}
    return config


def _random_inputs(
    model: RMIOWorldModel, batch: int, gen: torch.Generator
) -> tuple[torch.Tensor, ...]:
    n, d = model.n_agents, model.obs_dim
    h = torch.randn(batch, n, model.cfg.deter, generator=gen)
    z = torch.zeros(batch, n, model.stoch)
    z.view(batch, n, model.cfg.groups, model.cfg.classes)[..., 0] = 1.0
    act = torch.randn(batch, n, model.act_width, generator=gen).clamp(-1, 1)
    obs = model.denormalize_obs(torch.randn(batch, n, d, generator=gen))
    mask = (torch.rand(batch, n, generator=gen) > 0.5).float()
    return h, z, act, obs * mask.unsqueeze(-1), mask


def random_parity(model: RMIOWorldModel, runner: WorldModelRunner, batch: int = 3) -> float:
    gen = torch.Generator().manual_seed(0)
    args = _random_inputs(model, batch, gen)
    with torch.no_grad():
        ref = [t.numpy() for t in model.step(*args)]
    got = runner.session.run(
        list(WM_OUTPUTS), {k: v.numpy() for k, v in zip(WM_INPUTS, args, strict=True)}
    )
    return max(float(np.abs(a - b).max()) for a, b in zip(ref, got, strict=True))


def replay_parity(
    model: RMIOWorldModel,
    runner: WorldModelRunner,
    holdout: TrajectoryBuffer,
    steps: int = 200,
    p_mask: float = 0.5,
) -> tuple[float, int]:
    """Replay the start of each held-out episode with random masks through the runtime's replay,
    one step at a time, and through PyTorch: the max abs difference of the reconstructions, and
    how many agent-steps were argmax ties.

    The latent is the argmax of each group's logits, so where two classes' logits are within float
    rounding of each other the two runtimes may rightly pick different classes, and from there the
    chains part (seen on SMAX 2s3z: a gap of 7e-7 flipped one class, and the replayed
    reconstructions then differed by up to 0.19). Such an agent-step (argmax_ties) is left out of
    the comparison and the runtime's chain continues from PyTorch's state; a flip with a wider
    margin is compared in full and fails the export."""
    rng = np.random.default_rng(0)
    worst, ties = 0.0, 0
    for k in range(min(holdout.num_episodes, 2)):
        ep = holdout.episode(k)
        T = min(steps, len(ep["obs"]))
        obs = ep["obs"][:T]
        prev = (
            np.full_like(ep["action"][:T], -1)
            if model.spec.discrete
            else np.zeros_like(ep["action"][:T])
        )
        prev[1:] = ep["action"][: T - 1]  # -1 (discrete) / zeros: no action before the first step
        masks = (rng.random((T, obs.shape[1])) >= p_mask).astype(np.float32)
        enc = torch.as_tensor(runner.encode_actions(prev))
        state = runner.initial_state(1)
        with torch.no_grad():
            h, z = model.initial(1)
            for t in range(T):
                m = torch.as_tensor(masks[t])[None]
                o = torch.as_tensor(obs[t])[None] * m.unsqueeze(-1)
                h, z, rec = model.step(h, z, enc[t][None], o, m)
                state, got = runner.replay(obs[t : t + 1], prev[t : t + 1], masks[t : t + 1], state)
                compared = np.ones(obs.shape[1], bool)
                if not np.array_equal(state.z[0] > 0.5, z[0].numpy() > 0.5):
                    _, dist = model.latent(h, model.normalize_obs(o), m, sample=False)
                    tied = argmax_ties(dist.logits[0].numpy(), z[0].numpy(), state.z[0])
                    if tied is not None:
                        ties += int(tied.sum())
                        compared = ~tied
                        state = LatentState(h.numpy().copy(), z.numpy().copy())
                diff = np.abs(rec[0].numpy() - got[0])[compared]
                worst = max(worst, float(diff.max()) if diff.size else 0.0)
    return worst, ties


def export_run(run_dir: Path, out: Path, console: Console, policy: Path | None = None) -> Path:
    """World model of ``run_dir`` (fine-tuned if it was) plus the actor of ``policy`` (default: the
    run's own policy.pt), checked against PyTorch. A MARIE run (``marie.enabled``) ships its window
    graph (train/marie_export.py) in place of the step graph.

    A bundle that fails a check is removed (its manifest only, where ``out`` already held
    something), so that nothing later, a resumed sweep included, takes it for a finished export."""
    fresh = not out.exists()
    try:
        return _export_run(run_dir, out, console, policy)
    except BaseException:
        if fresh:
            shutil.rmtree(out, ignore_errors=True)
        else:
            (out / "manifest.json").unlink(missing_ok=True)
        raise


def _export_run(run_dir: Path, out: Path, console: Console, policy: Path | None) -> Path:
    if load_config(run_dir / "config.yaml").marie.enabled:
        from rmio.train.marie_export import export_marie_world_model

        manifest, spec, parity = export_marie_world_model(run_dir, out, console, export_onnx)
        manifest.config = _portable_config(manifest.config)
        manifest.budget = {"env_steps": _env_steps(run_dir), **manifest.budget}
    else:
        manifest, spec, parity = _export_step_world_model(run_dir, out, console)
    _attach_policy(manifest, spec, run_dir, out, console, policy)
    eval_json = run_dir / "eval_reconstruction.json"
    if eval_json.exists():
        recon = json.loads(eval_json.read_text())
        for key in ("policy", "holdout_policy"):  # either may be a machine path
            recon[key] = portable_path(recon.get(key))
        manifest.metrics["reconstruction"] = recon
    manifest.sha256 = bundle_checksums(out, manifest)
    manifest.save(out)
    write_model_card(out, manifest)
    if manifest.wm_window is None:
        console.print(
            f"parity onnxruntime vs torch: max |diff| {parity['parity_max_abs_random']:.2e} "
            f"(random inputs, batch 3), {parity['parity_max_abs_replay']:.2e} (held-out replay "
            f"with masks{_ties_note(manifest.metrics.get('parity_replay_ties', 0))})"
        )
    if max(parity.values()) > PARITY_TOLERANCE:
        worst = max(parity["parity_max_abs_random"], parity["parity_max_abs_replay"])
        raise RmioError(
            f"exported world model drifts from PyTorch by {worst:.2e} "
            f"(tolerance {PARITY_TOLERANCE}); the bundle in '{out}' must not be used"
        )
    console.print(f"wrote bundle {out}")
    return out


def _ties_note(ties: int) -> str:
    return f"; {ties} agent-step(s) left out as argmax ties" if ties else ""


def _export_step_world_model(
    run_dir: Path, out: Path, console: Console
) -> tuple[Manifest, EnvSpec, dict[str, float]]:
    """RMIOv2's ``wm_step.onnx`` (and ``wm_step_pretrain.onnx``) and the manifest; returns it, the
    task's spec and the parity errors."""
    path = run_dir / "wm_finetune.pt"
    if not path.exists():
        path = run_dir / "wm_pretrain.pt"
        if not path.exists():
            hint = (
                " (a QMIX or MMSA run: `rmio export RUN --world-model WM` pairs its Q-agent with "
                "one)"
                if (run_dir / "qmix.pt").is_file() or (run_dir / "mmsa.pt").is_file()
                else ""
            )
            raise RmioError(f"'{run_dir}' has no trained world model to export{hint}")
        console.print(
            "[yellow]no fine-tuned world model in this run: exporting the pre-trained one; it was "
            "never trained to fill in lost observations[/]"
        )
    model, ckpt = load_model(path, "cpu")
    model.eval()
    cfg = load_config(run_dir / "config.yaml")
    gen = torch.Generator().manual_seed(1)
    example = _random_inputs(model, 2, gen)
    export_onnx(WorldModelStep(model), example, out / "wm_step.onnx", WM_INPUTS, WM_OUTPUTS)
    stats = ckpt["stats"]
    summary = ckpt.get("summary", {})
    manifest = Manifest(
        schema_version=SCHEMA_VERSION,
        spec=model.spec,
        history_window=cfg.world_model.history_window,
        deter=model.cfg.deter,
        stoch=model.stoch,
        act_width=model.act_width,
        obs_mean=stats["obs_mean"],
        obs_std=stats["obs_std"],
        files={"wm_step": "wm_step.onnx"},
        config=_portable_config(ckpt["config"]),
        config_hash=ckpt["config_hash"],
        budget={
            "env_steps": _env_steps(run_dir),
            "wm_checkpoint": path.name,
            "p_mask": ckpt.get("p_mask"),
            "updates": summary.get("updates"),
            "wm_algo": algorithm_of(ckpt["config"]),  # the variant: rmiov2, mamba, rmio-v1...
        },
        metrics={},
    )
    manifest.save(out)
    runner = WorldModelRunner(out, manifest)
    err_random = random_parity(model, runner)
    holdout = TrajectoryBuffer.load(run_dir / "data" / "holdout.npz")
    err_replay, ties = replay_parity(model, runner, holdout)
    manifest.metrics = {
        "parity_max_abs_random": err_random,
        "parity_max_abs_replay": err_replay,
        "parity_replay_ties": ties,
    }
    before = run_dir / "wm_pretrain.pt"
    # for the no-finetune strategy of `rmio eval robustness`
    if path.name == "wm_finetune.pt" and before.exists():
        pre, _ = load_model(before, "cpu")
        pre.eval()
        export_onnx(
            WorldModelStep(pre), example, out / "wm_step_pretrain.onnx", WM_INPUTS, WM_OUTPUTS
        )
        manifest.files["wm_step_pretrain"] = "wm_step_pretrain.onnx"
        manifest.metrics["parity_max_abs_random_pretrain"] = random_parity(
            pre, WorldModelRunner(out, manifest, file="wm_step_pretrain.onnx")
        )
    parity = {k: v for k, v in manifest.metrics.items() if k.startswith("parity_max_abs")}
    return manifest, model.spec, parity


def _attach_policy(
    manifest: Manifest,
    spec: EnvSpec,
    run_dir: Path,
    out: Path,
    console: Console,
    policy: Path | None,
) -> None:
    """The bundle's actor.onnx: another bundle's as it is, or exported from a policy.pt (default:
    the run's own), or none."""
    policy = policy or run_dir / "policy.pt"
    if policy.is_dir():  # another bundle's actor.onnx, as it is
        other = load_manifest(policy)
        if "actor" not in other.files or not _same_agents(other.spec, spec):
            raise RmioError(f"bundle '{policy}' has no actor for {spec.name}")
        shutil.copy2(policy / other.files["actor"], out / "actor.onnx")
        manifest.files["actor"] = "actor.onnx"
        manifest.actor_state = other.actor_state  # a recurrent actor keeps its declaration
        manifest.budget.update(
            {
                "policy_source": portable_path(str(policy)),
                "policy_algo": other.budget.get("policy_algo"),
                "policy_env_steps": other.budget.get("policy_env_steps"),
            }
        )
        manifest.metrics["actor_parity"] = other.metrics.get("actor_parity")
    elif policy.exists():
        actor, pckpt = load_actor(policy)
        if not _same_agents(EnvSpec.from_dict(pckpt["spec"]), spec):
            raise RmioError(
                f"the actor of {policy} was trained for another environment spec than {run_dir}'s "
                "world model"
            )
        manifest.budget["policy_source"] = portable_path(str(policy))
        err_actor = export_actor(actor, out)
        manifest.files["actor"] = "actor.onnx"
        manifest.metrics["actor_parity"] = err_actor
        manifest.metrics["policy_final_eval"] = pckpt.get("final_eval")
        manifest.budget["policy_env_steps"] = pckpt.get("env_steps")
        manifest.budget["policy_algo"] = pckpt.get("algo")
        console.print(f"actor parity onnxruntime vs torch: {err_actor:.2e}")
        if err_actor > PARITY_TOLERANCE:
            raise RmioError(
                f"exported actor drifts from PyTorch by {err_actor:.2e}; the bundle must not be "
                "used"
            )
    else:
        console.print(
            "[yellow]no policy.pt in this run: the bundle has the world model only (no "
            "actor.onnx)[/]"
        )


def _same_agents(a: EnvSpec, b: EnvSpec) -> bool:
    """Same scenario and the same observation and action layout (the episode length may differ)."""
    keys = (
        "name",
        "n_agents",
        "obs_sizes",
        "action_kind",
        "action_sizes",
        "action_low",
        "action_high",
    )
    da, db = a.to_dict(), b.to_dict()
    return all(da.get(k) == db.get(k) for k in keys)


def _env_steps(run_dir: Path) -> int | None:
    path = run_dir / "data" / "train.npz"
    if not path.exists():
        return None
    meta: dict[str, Any] = TrajectoryBuffer.load(path).meta
    return meta.get("env_steps")
