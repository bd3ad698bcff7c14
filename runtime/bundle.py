"""The model bundle: the contract between training (which writes it) and the runtime (which runs
it).

A bundle is a directory::

    manifest.json   what the models are for and how to feed them (schema below)
    actor.onnx      local observation (+ agent id, + available actions) -> action
    wm_step.onnx    one world-model step (RMIOv2 Eq. 2a-2e and 3, with categorical modes)

``wm_step.onnx`` inputs, all float32, batch axis B dynamic:

* ``h``            (B, n, deter)       deterministic GRU state h_{t-1}
* ``z``            (B, n, stoch)       flattened one-hot categorical latent z_{t-1}
* ``prev_action``  (B, n, act_width)   a_{t-1} (one-hot for discrete tasks; zeros at an episode
                                       start)
* ``obs``          (B, n, obs_dim)     o_t in raw units, zero rows for agents that lost theirs
* ``mask``         (B, n)              1 = observed, 0 = lost (the paper's m_t)

outputs ``h_next`` = h_t, ``z_next`` = z_t and ``obs_recon`` (B, n, obs_dim), the decoded o_t in raw
units. Replaying it from zeros over a history window gives Algorithm 2's recursion; keeping
(h, z) between calls is the incremental mode. Normalisation lives inside the graphs, so the
runtime only ever handles raw observations.

``actor.onnx`` inputs: ``obs`` (B, obs_dim) raw, ``agent_id`` (B,) int64, and for discrete tasks
``avail_actions`` (B, n_actions) bool; output ``action``: (B, act_dim) float32 (continuous, already
clipped to the action box) or (B,) int64 (discrete, the best available action). A recurrent actor
(schema 2, ``actor_state`` in the manifest) also takes its hidden state (B, *shape) float32 and
returns the next one; the caller keeps it per agent, zeros at an episode's start (docs/BUNDLE.md).

This module only reads and checks bundles; it never imports torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rmio.envs.base import EnvSpec
from rmio.errors import RmioError

SCHEMA_VERSION = 2
"""The newest version rmio writes. 2 added ``actor_state`` (a recurrent actor's hidden state) and
``wm_window`` (a window world model); a manifest that uses neither is written as version 1, so a
runtime that reads only version 1 still loads it, and a version-1 manifest (every bundle exported
before) reads exactly as it did."""
READABLE_VERSIONS = (1, 2)
WM_INPUTS = ("h", "z", "prev_action", "obs", "mask")
WM_OUTPUTS = ("h_next", "z_next", "obs_recon")
ACTOR_INPUTS = ("obs", "agent_id")
ACTOR_OUTPUTS = ("action",)
_ACTOR_NAMES = (*ACTOR_INPUTS, "avail_actions", *ACTOR_OUTPUTS, "action_probs")


@dataclass(frozen=True)
class ActorState:
    """A recurrent actor's hidden state: graph input ``input`` (B, *shape) float32 is the state
    before the step, output ``output`` the state after it. Opaque to the runtime, which only keeps
    it per agent and zeroes it at an episode's start."""

    input: str
    output: str
    shape: tuple[int, ...]

    @classmethod
    def parse(cls, data: Any, where: str) -> ActorState:
        """The manifest's ``actor_state`` object; anything malformed is one RmioError line."""
        bad = f"{where}: actor_state must be {{input: NAME, output: NAME, shape: [N, ...]}}"
        if not isinstance(data, dict) or set(data) != {"input", "output", "shape"}:
            raise RmioError(f"{bad}, got {data!r}")
        names, shape = (data["input"], data["output"]), data["shape"]
        if not all(isinstance(x, str) and x for x in names) or names[0] == names[1]:
            raise RmioError(f"{bad}: two different non-empty names, got {list(names)}")
        taken = [x for x in names if x in _ACTOR_NAMES]
        if taken:
            raise RmioError(f"{where}: actor_state name {taken[0]!r} is already the actor's own")
        if (
            not isinstance(shape, list | tuple)
            or not shape
            or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)
        ):
            raise RmioError(f"{bad}: shape a list of positive integers, got {shape!r}")
        return cls(names[0], names[1], tuple(shape))

    def to_dict(self) -> dict[str, Any]:
        return {"input": self.input, "output": self.output, "shape": list(self.shape)}


@dataclass
class Manifest:
    schema_version: int
    spec: EnvSpec
    history_window: int
    """l: steps of history the coordinator gathers before reconstructing (Algorithm 2)."""
    deter: int
    """Width of the deterministic state h per agent."""
    stoch: int
    """Width of the flattened categorical latent z per agent (classes x categoricals)."""
    act_width: int
    """Width of an agent's action as the world model consumes it (one-hot size for discrete)."""
    obs_mean: list[list[float]]
    obs_std: list[list[float]]
    wm_window: dict[str, Any] | None = None
    """None (every bundle before MARIE's): ``wm_step`` is RMIOv2's one-step graph. Otherwise
    ``wm_step`` names a window graph (MARIE's; inputs and outputs in ``rmio.runtime.models``'s
    ``WM_WINDOW_INPUTS``): ``{"algo": "marie", "preset": ..., "steps": L, "tokens": K}`` with L
    the last steps of the window it reads and K the tokens per observation; it carries no state
    between rounds (deter = stoch = 0)."""
    files: dict[str, str] = field(
        default_factory=lambda: {"actor": "actor.onnx", "wm_step": "wm_step.onnx"}
    )
    config: dict[str, Any] = field(default_factory=dict)
    config_hash: str = ""
    budget: dict[str, Any] = field(default_factory=dict)
    """Training budget, e.g. {"env_steps": 100000, "wm_updates": ...}."""
    metrics: dict[str, Any] = field(default_factory=dict)
    """Metrics measured at export (returns, L_rec, parity errors)."""
    sha256: dict[str, str] = field(default_factory=dict)
    """File name -> sha256 hex digest of every graph, so a corrupt or swapped file is refused before
    anything runs (``rmio.runtime.validate``). Bundles written before checksums have none."""
    actor_state: ActorState | None = None
    """A recurrent actor's hidden state (schema 2); None: the actor is a function of its step."""

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k not in ("spec", "actor_state")}
        if self.wm_window is None:  # only a window graph's: a step graph's manifest is as before
            del out["wm_window"]
        # the lowest version that holds what this manifest uses
        out["schema_version"] = 1 if self.actor_state is None and self.wm_window is None else 2
        out["spec"] = self.spec.to_dict()
        if self.actor_state is not None:  # a stateless actor's manifest reads as before
            out["actor_state"] = self.actor_state.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "manifest") -> Manifest:
        try:
            version = int(data["schema_version"])
            if version not in READABLE_VERSIONS:
                raise RmioError(
                    f"{where}: schema version {version}, this rmio reads "
                    f"{' and '.join(map(str, READABLE_VERSIONS))}"
                )
            fields = {k: v for k, v in data.items() if k not in ("spec", "actor_state")}
            state = data.get("actor_state")
            for key in ("actor_state", "wm_window"):
                if data.get(key) is not None and version < 2:
                    raise RmioError(f"{where}: {key} needs schema_version 2, not {version}")
            man = cls(
                spec=EnvSpec.from_dict(data["spec"]),
                actor_state=None if state is None else ActorState.parse(state, where),
                **fields,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise RmioError(f"{where}: missing or invalid field ({exc})") from None
        n, d = man.spec.n_agents, man.spec.obs_dim
        if np.shape(man.obs_mean) != (n, d) or np.shape(man.obs_std) != (n, d):
            raise RmioError(f"{where}: observation statistics must have shape ({n}, {d})")
        if man.history_window < 1:
            raise RmioError(f"{where}: history_window must be >= 1")
        return man

    def save(self, bundle_dir: str | Path) -> Path:
        path = Path(bundle_dir) / "manifest.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2))
        return path


def load_manifest(bundle_dir: str | Path, expect_scenario: str | None = None) -> Manifest:
    """Read and check a bundle's manifest; refuse a bundle made for another scenario."""
    bundle_dir = Path(bundle_dir)
    path = bundle_dir / "manifest.json"
    if not path.is_file():
        raise RmioError(f"'{bundle_dir}' is not a model bundle: it has no manifest.json")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise RmioError(f"{path}: not valid JSON ({exc})") from None
    man = Manifest.from_dict(data, str(path))
    if expect_scenario is not None and man.spec.name != expect_scenario:
        raise RmioError(
            f"bundle '{bundle_dir}' was trained for {man.spec.name}, not {expect_scenario}"
        )
    for role, name in man.files.items():
        if not (bundle_dir / name).is_file():
            raise RmioError(
                f"bundle '{bundle_dir}': the manifest names {role} file '{name}', which is missing"
            )
    return man
