"""Running a bundle's ONNX graphs with onnxruntime: the actor, and the world model over a window."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rmio.runtime.bundle import ACTOR_INPUTS, WM_INPUTS, WM_OUTPUTS, Manifest, load_manifest

log = logging.getLogger(__name__)


def make_session(path: str | Path, device: str = "cpu", threads: int = 1):
    """One intra-op thread is fastest for these small graphs on a 2-core machine (and leaves the other
    core to the simulator); ``device="cuda"`` uses the CUDA provider when onnxruntime has it."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    providers = ["CPUExecutionProvider"]
    if device == "cuda":
        if "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        else:
            log.warning("CUDA execution provider not available; the world model runs on the CPU")
    return ort.InferenceSession(str(path), sess_options=opts, providers=providers)


class ActorRunner:
    """The decentralised policy: one agent's local observation in, its action out."""

    def __init__(self, bundle_dir: str | Path, manifest: Manifest | None = None) -> None:
        self.manifest = manifest or load_manifest(bundle_dir)
        self.session = make_session(Path(bundle_dir) / self.manifest.files["actor"])
        self._discrete = self.manifest.spec.discrete
        self._one_id = np.zeros(1, np.int64)
        names = {i.name for i in self.session.get_inputs()}
        missing = set(ACTOR_INPUTS) - names
        if missing:
            raise ValueError(f"actor.onnx lacks inputs {sorted(missing)}")

    def act(self, obs: np.ndarray, agent_id: np.ndarray | int, avail: np.ndarray | None = None) -> np.ndarray:
        obs = np.asarray(obs, np.float32)
        if obs.ndim == 1 and not self._discrete and type(agent_id) is int:  # an agent's own step: the short path
            self._one_id[0] = agent_id
            return self.session.run(["action"], {"obs": obs[None], "agent_id": self._one_id})[0][0]
        single = obs.ndim == 1
        if single:
            obs = obs[None]
        ids = np.broadcast_to(np.asarray(agent_id, np.int64), (obs.shape[0],)).copy()
        feed = {"obs": obs, "agent_id": ids}
        if self._discrete:
            if avail is None:
                avail = np.ones((obs.shape[0], self.manifest.spec.action_dim), bool)
            feed["avail_actions"] = np.asarray(avail, bool).reshape(obs.shape[0], -1)
        (action,) = self.session.run(["action"], feed)
        return action[0] if single else action


@dataclass
class LatentState:
    h: np.ndarray
    """(B, n, deter)"""
    z: np.ndarray
    """(B, n, stoch)"""


class WorldModelRunner:
    """The fine-tuned world model's one-step graph, replayed over a window or run incrementally."""

    def __init__(self, bundle_dir: str | Path, manifest: Manifest | None = None, device: str = "cpu",
                 file: str | None = None) -> None:
        self.manifest = manifest or load_manifest(bundle_dir)
        self.session = make_session(Path(bundle_dir) / (file or self.manifest.files["wm_step"]), device=device)
        names = [i.name for i in self.session.get_inputs()]
        if sorted(names) != sorted(WM_INPUTS):
            raise ValueError(f"wm_step.onnx inputs are {names}, expected {list(WM_INPUTS)}")

    def initial_state(self, batch: int = 1) -> LatentState:
        m = self.manifest
        n = m.spec.n_agents
        return LatentState(np.zeros((batch, n, m.deter), np.float32), np.zeros((batch, n, m.stoch), np.float32))

    def encode_actions(self, actions: np.ndarray) -> np.ndarray:
        """Joint actions as the world model consumes them: one-hot for discrete tasks, padded floats otherwise.

        A discrete action of -1 means "no action" (before an episode's first step) and encodes as the
        zero vector, as the bundle contract asks; indexing an identity matrix would wrap it to the last class.
        """
        spec = self.manifest.spec
        actions = np.asarray(actions)
        if spec.discrete:
            ids = actions.astype(np.int64)[..., None]
            return (ids == np.arange(self.manifest.act_width)).astype(np.float32)
        return actions.astype(np.float32)

    def step(self, state: LatentState, prev_action: np.ndarray, obs: np.ndarray,
             mask: np.ndarray) -> tuple[LatentState, np.ndarray]:
        """One step for a batch: ``prev_action`` already encoded (B, n, act_width)."""
        h, z, recon = self.session.run(list(WM_OUTPUTS), {
            "h": state.h, "z": state.z, "prev_action": prev_action.astype(np.float32),
            "obs": obs.astype(np.float32), "mask": mask.astype(np.float32)})
        return LatentState(h, z), recon

    def replay(self, obs: np.ndarray, prev_actions: np.ndarray, masks: np.ndarray,
               state: LatentState | None = None) -> tuple[LatentState, np.ndarray]:
        """Run the window o_{t-l..t} (T, n, obs_dim) with a_{t-l-1..t-1} (T, n, ...) and m (T, n).

        Returns the final latent state and the reconstruction of every step (T, n, obs_dim). Lost
        rows of ``obs`` are zeroed here, whatever the caller put in them.
        """
        state, recons = self.replay_batch(obs[:, None], prev_actions[:, None], masks[:, None], state)
        return state, recons[:, 0]

    def replay_batch(self, obs: np.ndarray, prev_actions: np.ndarray, masks: np.ndarray,
                     state: LatentState | None = None) -> tuple[LatentState, np.ndarray]:
        """``replay`` for B windows of the same length at once: (T, B, n, ...) in, (T, B, n, obs_dim) out."""
        state = state or self.initial_state(obs.shape[1])
        enc = self.encode_actions(prev_actions)
        recons = []
        for t in range(obs.shape[0]):
            visible = obs[t] * masks[t][..., None]
            state, recon = self.step(state, enc[t], visible, masks[t])
            recons.append(recon)
        return state, np.stack(recons)
