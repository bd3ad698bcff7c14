"""What the tests and the benchmarks both need, in the package so that neither imports the other:
a small randomly initialised bundle for any real scenario, and a swarm run of one.

The bundle honours runtime/bundle.py's contract exactly. Protocol tests and benchmarks need real
ONNX graphs of the right shapes, not a trained policy: the actor is a tiny MLP and the world-model
step a GRU cell with a deterministic categorical latent (one-hot of the argmax), a cross-agent mean
and a decoder, so reconstructions depend on the window, on the other agents and on the mask the way
a real model's do. Building one needs torch (the ``train`` extra); running one does not. Not part of
the torch-free runtime.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rmio.envs.base import EnvSpec
from rmio.envs.registry import EnvConfig, make_env
from rmio.runtime.bundle import (
    ACTOR_OUTPUTS,
    SCHEMA_VERSION,
    WM_INPUTS,
    WM_OUTPUTS,
    Manifest,
    load_manifest,
)
from rmio.runtime.launcher import Launcher
from rmio.runtime.settings import SwarmSettings, env_config_for
from rmio.runtime.validate import bundle_checksums

DETER, CATS, CLASSES, HIDDEN = 16, 4, 4, 32


class TinyActor(nn.Module):
    def __init__(self, spec: EnvSpec) -> None:
        super().__init__()
        self.spec = spec
        n, d = spec.n_agents, spec.obs_dim
        self.net = nn.Sequential(
            nn.Linear(d + n, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, spec.action_dim)
        )
        self.register_buffer("ids", torch.arange(n))
        if not spec.discrete:
            self.register_buffer("low", torch.tensor(spec.action_low, dtype=torch.float32))
            self.register_buffer("high", torch.tensor(spec.action_high, dtype=torch.float32))

    def forward(
        self, obs: torch.Tensor, agent_id: torch.Tensor, avail_actions: torch.Tensor | None = None
    ):
        onehot = (agent_id[:, None] == self.ids[None, :]).float()
        out = self.net(torch.cat([obs, onehot], -1))
        if self.spec.discrete:
            out = out.masked_fill(~avail_actions, -1e9)
            return out.argmax(-1)
        return torch.minimum(torch.maximum(torch.tanh(out), self.low), self.high)


class TinyWorldModelStep(nn.Module):
    def __init__(self, spec: EnvSpec, act_width: int, mean: np.ndarray, std: np.ndarray) -> None:
        super().__init__()
        d = spec.obs_dim
        self.gru = nn.GRUCell(CATS * CLASSES + act_width, DETER)
        self.post = nn.Linear(2 * d + DETER + 1, CATS * CLASSES)
        self.dec = nn.Linear(DETER + CATS * CLASSES, d)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32))

    def forward(self, h, z, prev_action, obs, mask):
        b, n, deter = h.shape
        x = torch.cat([z, prev_action], -1).reshape(b * n, -1)
        h_next = self.gru(x, h.reshape(b * n, deter)).reshape(b, n, deter)
        m = mask[..., None]
        norm = (obs - self.mean) / self.std * m
        shared = norm.sum(1, keepdim=True) / (m.sum(1, keepdim=True) + 1.0)
        logits = self.post(torch.cat([norm, shared.expand(-1, n, -1), h_next, m], -1)).reshape(
            b, n, CATS, CLASSES
        )
        z_next = (logits == logits.amax(-1, keepdim=True)).float().reshape(b, n, CATS * CLASSES)
        recon = self.dec(torch.cat([h_next, z_next], -1)) * self.std + self.mean
        return h_next, z_next, recon


def _export(
    module: nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str]
) -> None:
    axes = {name: {0: "batch"} for name in inputs + outputs}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=inputs,
            output_names=outputs,
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False,
        )


def make_tiny_bundle(
    out_dir: str | Path,
    scenario: str = "mamujoco/HalfCheetah-6x1",
    history_window: int = 8,
    seed: int = 0,
) -> Path:
    """Build a randomly initialised bundle for a real scenario's spec; returns the bundle
    directory."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    family, _, name = scenario.partition("/")
    with make_env(EnvConfig(family=family, scenario=name)) as env:
        spec = env.spec
        rng = np.random.default_rng(seed)
        ts = env.reset(seed=seed)
        samples = [ts.obs]
        for _ in range(64):
            ts = env.step(spec.random_actions(rng, ts.avail_actions))
            samples.append(ts.obs)
            if ts.done:
                ts = env.reset(seed=seed + 1)
    stack = np.stack(samples)
    mean = stack.mean(0).astype(np.float32)
    std = np.maximum(stack.std(0), 0.1).astype(np.float32)
    act_width = spec.action_dim
    torch.manual_seed(seed)
    n, d, batch = spec.n_agents, spec.obs_dim, 2
    actor = TinyActor(spec).eval()
    actor_args: tuple = (torch.randn(batch, d), torch.zeros(batch, dtype=torch.int64))
    actor_inputs = ["obs", "agent_id"]
    if spec.discrete:
        actor_args = (*actor_args, torch.ones(batch, spec.action_dim, dtype=torch.bool))
        actor_inputs.append("avail_actions")
    _export(actor, actor_args, out / "actor.onnx", actor_inputs, list(ACTOR_OUTPUTS))
    wm = TinyWorldModelStep(spec, act_width, mean, std).eval()
    wm_args = (
        torch.zeros(batch, n, DETER),
        torch.zeros(batch, n, CATS * CLASSES),
        torch.zeros(batch, n, act_width),
        torch.randn(batch, n, d),
        torch.ones(batch, n),
    )
    _export(wm, wm_args, out / "wm_step.onnx", list(WM_INPUTS), list(WM_OUTPUTS))
    manifest = Manifest(
        schema_version=SCHEMA_VERSION,
        spec=spec,
        history_window=history_window,
        deter=DETER,
        stoch=CATS * CLASSES,
        act_width=act_width,
        obs_mean=mean.tolist(),
        obs_std=std.tolist(),
        config={"fixture": "tiny_bundle", "seed": seed},
        metrics={"trained": False},
    )
    manifest.sha256 = bundle_checksums(out, manifest)
    manifest.save(out)
    return out


def tiny_bundle(cache: str | Path, scenario: str, window: int) -> Path:
    """``make_tiny_bundle`` once per scenario under ``cache`` (reused by later calls)."""
    out = Path(cache) / scenario.replace("/", "_")
    if not (out / "manifest.json").is_file():
        make_tiny_bundle(out, scenario, window)
    return out


def swarm_settings(
    bundle: str | Path, out_dir: str | Path, *, steps: int = 40, **kw: Any
) -> SwarmSettings:
    """Settings for a short run of ``bundle`` (Bernoulli p_loss 0.3, one episode, no baselines
    unless given)."""
    man = load_manifest(bundle)
    kw.setdefault("loss", {"model": "bernoulli", "p_loss": 0.3})
    kw.setdefault("episodes", 1)
    kw.setdefault("baselines", False)
    return SwarmSettings(
        bundle=str(bundle),
        n_agents=man.spec.n_agents,
        env=env_config_for(man, steps),
        out_dir=str(out_dir),
        **kw,
    )


def run_swarm(settings: SwarmSettings, run_dir: str | Path) -> tuple[dict[str, Any], Launcher]:
    """Run the real swarm (real processes) to completion; its report and the launcher."""
    launcher = Launcher(settings, Path(run_dir))
    return launcher.run(), launcher


def launch(bundle: str | Path, out: str | Path, *, steps: int = 200, **kw: Any) -> dict[str, Any]:
    """One swarm run of ``bundle`` with SwarmSettings' own defaults (only baselines off), for
    benchmarks; returns its report."""
    man = load_manifest(bundle)
    kw.setdefault("baselines", False)
    settings = SwarmSettings(
        bundle=str(bundle), n_agents=man.spec.n_agents, env=env_config_for(man, steps), **kw
    )
    return Launcher(settings, Path(out)).run()


def make_tiny_marie_bundle(
    out_dir: str | Path,
    history_window: int = 6,
    updates: int = 12,
    finetune_updates: int = 8,
    preset: str = "tiny",
    scenario: str = "halfcheetah_6x1",
    actor: str | None = "halfcheetah_6x1",
) -> Path:
    """A MARIE bundle (issue 23): MARIE trained ``updates`` updates on the debug preset's data of
    ``scenario`` (a config name), masked-fine-tuned ``finetune_updates`` more, exported with the
    committed bundle ``actor``'s actor (None: no actor). Its run directory is ``<out_dir>-run``.
    Returns the bundle directory."""
    from rich.console import Console

    from rmio.config import load_config, save_config
    from rmio.models import find_bundle
    from rmio.train.export import export_run
    from rmio.train.marie_finetune import finetune_marie
    from rmio.train.marie_train import train_marie

    out = Path(out_dir)
    run = out.parent / f"{out.name}-run"
    cfg = load_config(
        scenario,
        preset="debug",
        algo="marie",
        overrides=[
            f"marie.preset={preset}",
            f"marie.seq_len={history_window}",
            f"world_model.history_window={history_window}",
            f"world_model.train.updates={updates}",
            "world_model.train.checkpoint_every=4",
            "world_model.train.log_every=4",
        ],
    )
    save_config(cfg, run)
    quiet = Console(quiet=True)
    train_marie(cfg, run, "cpu", quiet)
    finetune_marie(run, None, "cpu", quiet, finetune_updates)
    return export_run(run, out, quiet, None if actor is None else find_bundle(actor))
