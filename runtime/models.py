"""Running a bundle's ONNX graphs with onnxruntime: the actor, and the world model over a window."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rmio.errors import RmioError
from rmio.runtime.bundle import ACTOR_INPUTS, WM_INPUTS, WM_OUTPUTS, Manifest, load_manifest

log = logging.getLogger(__name__)


def make_session(path: str | Path, device: str = "cpu", threads: int = 1):
    """One intra-op thread is fastest for these small graphs on a 2-core machine (and leaves the
    other core to the simulator); ``device="cuda"`` uses the CUDA provider when onnxruntime has
    it."""
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
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=providers)
    except Exception as exc:  # onnxruntime's own exception types: an unreadable or invalid graph
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise RmioError(f"{path}: not a loadable ONNX graph ({first[:200]})") from None


_ORT_DTYPES = {"tensor(float)": np.float32, "tensor(int64)": np.int64, "tensor(bool)": np.bool_}


class BoundCall:
    """A graph called with batch 1 over and over, its inputs and outputs bound to fixed buffers.

    A swarm process calls its graph once per env step and sleeps in between, so every call starts
    with cold caches, and a cold call costs about the code and memory it touches: the binding skips
    feed validation and the allocation and conversion of every input and output. On the 2-core CPU
    VM a cold call of the tiny actor took 0.09-0.22 ms this way against 0.26-0.33 ms with
    ``session.run`` (``bench/cold_calls.py``), and an agent's whole actor step in a 6-agent swarm
    0.145 ms p50 against 0.19 ms. The caller writes into ``inputs[name]`` and reads
    ``outputs[name]``, which the next call overwrites (copy what you keep).
    """

    def __init__(self, session) -> None:
        def buffer(meta) -> np.ndarray:  # every symbolic axis (the batch) has size 1
            return np.zeros(
                tuple(d if isinstance(d, int) else 1 for d in meta.shape), _ORT_DTYPES[meta.type]
            )

        import onnxruntime as ort

        self.session = session
        self.inputs = {m.name: buffer(m) for m in session.get_inputs()}
        self.outputs = {m.name: buffer(m) for m in session.get_outputs()}
        self.binding = session.io_binding()
        self._values = []  # the OrtValues point into our buffers: keep them alive with us
        for name, array in self.inputs.items():
            self._values.append(ort.OrtValue.ortvalue_from_numpy(array))
            self.binding.bind_ortvalue_input(name, self._values[-1])
        for name, array in self.outputs.items():
            self._values.append(ort.OrtValue.ortvalue_from_numpy(array))
            self.binding.bind_ortvalue_output(name, self._values[-1])

    def fits(self, feeds: dict[str, np.ndarray]) -> bool:
        """Whether every array has its buffer's exact shape (a buffer write would broadcast a wrong
        one)."""
        return all(a.shape == self.inputs[name].shape for name, a in feeds.items())

    def run(self, feeds: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        for name, a in (feeds or {}).items():
            self.inputs[name][...] = a
        self.session.run_with_iobinding(self.binding)
        return self.outputs


class ActorRunner:
    """The decentralised policy: one agent's local observation in, its action out.

    A recurrent actor (the manifest's ``actor_state``) also carries a hidden state: ``step`` takes
    the state before the step and returns the one after it, and ``initial_state`` is the zeros an
    episode starts from. The caller keeps one per agent (per row of a batch)."""

    def __init__(self, bundle_dir: str | Path, manifest: Manifest | None = None) -> None:
        self.manifest = manifest or load_manifest(bundle_dir)
        self.session = make_session(Path(bundle_dir) / self.manifest.files["actor"])
        self._discrete = self.manifest.spec.discrete
        self.state_spec = self.manifest.actor_state
        names = {i.name for i in self.session.get_inputs()}
        missing = set(ACTOR_INPUTS) - names
        if self.state_spec is not None:
            missing |= {self.state_spec.input} - names
        if missing:
            raise ValueError(f"actor.onnx lacks inputs {sorted(missing)}")
        self._one = BoundCall(self.session)
        self._one_obs = self._one.inputs["obs"]

    @property
    def recurrent(self) -> bool:
        return self.state_spec is not None

    def initial_state(self, batch: int = 1) -> np.ndarray | None:
        """The hidden state of ``batch`` rows at an episode's start (None: a stateless actor)."""
        if self.state_spec is None:
            return None
        return np.zeros((batch, *self.state_spec.shape), np.float32)

    def act(
        self, obs: np.ndarray, agent_id: np.ndarray | int, avail: np.ndarray | None = None
    ) -> np.ndarray:
        """The action of a stateless actor; a recurrent one needs ``step`` and its state."""
        if self.state_spec is not None:
            raise RmioError(
                f"the actor of {self.manifest.spec.name} is recurrent (actor_state in its "
                "manifest): it needs its hidden state, which this caller does not keep"
            )
        return self.step(obs, agent_id, avail)[0]

    def step(
        self,
        obs: np.ndarray,
        agent_id: np.ndarray | int,
        avail: np.ndarray | None = None,
        state: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """(action, next hidden state) for one row (``obs`` (obs_dim,), ``state`` (1, *shape)) or a
        batch (``obs`` (B, obs_dim), ``state`` (B, *shape)); the state is None for a stateless
        actor."""
        obs = np.asarray(obs, np.float32)
        spec = self.state_spec
        if spec is not None and state is None:
            raise ValueError("a recurrent actor's step needs its state (initial_state at t = 0)")
        one = self._one
        avail_row = one.inputs.get("avail_actions")
        if (
            obs.shape == self._one_obs.shape[1:]
            and type(agent_id) is int  # an agent's own step: the short path
            and (avail is None or (avail_row is not None and np.size(avail) == avail_row.size))
            and (spec is None or np.shape(state) == one.inputs[spec.input].shape)
        ):
            self._one_obs[0] = (
                obs  # exact shapes only: a buffer write would broadcast a wrong one silently
            )
            one.inputs["agent_id"][0] = agent_id
            if avail_row is not None:
                avail_row[0] = True if avail is None else np.asarray(avail, bool).reshape(-1)
            if spec is not None:
                one.inputs[spec.input][...] = state
            out = one.run()
            return out["action"][0].copy(), (None if spec is None else out[spec.output].copy())
        single = obs.ndim == 1
        feed = self._feed(obs[None] if single else obs, agent_id, avail, state)
        if spec is None:
            (action,) = self.session.run(["action"], feed)
            return (action[0] if single else action), None
        action, state_next = self.session.run(["action", spec.output], feed)
        return (action[0] if single else action), state_next

    def _feed(
        self,
        obs: np.ndarray,
        agent_id: np.ndarray | int,
        avail: np.ndarray | None,
        state: np.ndarray | None,
    ) -> dict[str, np.ndarray]:
        """The graph's inputs for a batch of rows (``obs`` (B, obs_dim))."""
        ids = np.broadcast_to(np.asarray(agent_id, np.int64), (obs.shape[0],)).copy()
        feed = {"obs": obs, "agent_id": ids}
        if self._discrete:
            if avail is None:
                avail = np.ones((obs.shape[0], self.manifest.spec.action_dim), bool)
            feed["avail_actions"] = np.asarray(avail, bool).reshape(obs.shape[0], -1)
        if self.state_spec is not None:
            shape = self.state_spec.shape
            feed[self.state_spec.input] = np.asarray(state, np.float32).reshape(-1, *shape)
        return feed

    @property
    def exports_probs(self) -> bool:
        """Whether the graph exports a discrete actor's distribution (an ``action_probs``
        output)."""
        return any(o.name == "action_probs" for o in self.session.get_outputs())

    def probs(
        self,
        obs: np.ndarray,
        agent_id: np.ndarray,
        avail: np.ndarray | None = None,
        state: np.ndarray | None = None,
    ) -> np.ndarray:
        """The action distributions (B, n_actions) of a batch of rows, for measurements (the KL
        between what an agent would do on two observations); needs ``exports_probs``."""
        feed = self._feed(np.asarray(obs, np.float32), agent_id, avail, state)
        (probs,) = self.session.run(["action_probs"], feed)
        return probs


def categorical_kl(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """KL(p || q) per row of two batches of action distributions (..., n_actions), clipped at 1e-8
    so an action one side rules out stays finite."""
    p, q = np.clip(p, 1e-8, 1.0), np.clip(q, 1e-8, 1.0)
    return (p * (np.log(p) - np.log(q))).sum(-1)


@dataclass
class LatentState:
    h: np.ndarray
    """(B, n, deter)"""
    z: np.ndarray
    """(B, n, stoch)"""


class _Replayer:
    """What both world-model runners share: actions encoded as the bundle contract says, and
    ``replay`` as ``replay_batch`` over one window."""

    manifest: Manifest

    def encode_actions(self, actions: np.ndarray) -> np.ndarray:
        """Joint actions as the world model consumes them: one-hot for discrete tasks, padded floats
        otherwise.

        A discrete action of -1 means "no action" (before an episode's first step) and encodes as
        the zero vector, as the bundle contract asks; indexing an identity matrix would wrap it to
        the last class.
        """
        actions = np.asarray(actions)
        if self.manifest.spec.discrete:
            ids = actions.astype(np.int64)[..., None]
            return (ids == np.arange(self.manifest.act_width)).astype(np.float32)
        return actions.astype(np.float32)

    def replay_batch(
        self,
        obs: np.ndarray,
        prev_actions: np.ndarray,
        masks: np.ndarray,
        state: LatentState | None = None,
    ) -> tuple[LatentState, np.ndarray]:
        raise NotImplementedError

    def replay(
        self,
        obs: np.ndarray,
        prev_actions: np.ndarray,
        masks: np.ndarray,
        state: LatentState | None = None,
    ) -> tuple[LatentState, np.ndarray]:
        """One window o_{s..t} (T, n, obs_dim) with a_{s-1..t-1} (T, n, ...) and m (T, n): the
        final state and the reconstructions, (T, n, obs_dim) for a step graph (every step), (1, n,
        obs_dim) for a window graph (step t; its state is empty and ``state`` ignored). Lost rows
        of ``obs`` are zeroed whatever the caller put in them."""
        state, recons = self.replay_batch(
            obs[:, None], prev_actions[:, None], masks[:, None], state
        )
        return state, recons[:, 0]


class WorldModelRunner(_Replayer):
    """The fine-tuned world model's one-step graph, replayed over a window or run incrementally."""

    def __init__(
        self,
        bundle_dir: str | Path,
        manifest: Manifest | None = None,
        device: str = "cpu",
        file: str | None = None,
    ) -> None:
        self.manifest = manifest or load_manifest(bundle_dir)
        self.session = make_session(
            Path(bundle_dir) / (file or self.manifest.files["wm_step"]), device=device
        )
        names = [i.name for i in self.session.get_inputs()]
        if sorted(names) != sorted(WM_INPUTS):
            raise ValueError(f"wm_step.onnx inputs are {names}, expected {list(WM_INPUTS)}")
        self._one = BoundCall(self.session) if device == "cpu" else None

    def initial_state(self, batch: int = 1) -> LatentState:
        m = self.manifest
        n = m.spec.n_agents
        return LatentState(
            np.zeros((batch, n, m.deter), np.float32), np.zeros((batch, n, m.stoch), np.float32)
        )

    def step(
        self, state: LatentState, prev_action: np.ndarray, obs: np.ndarray, mask: np.ndarray
    ) -> tuple[LatentState, np.ndarray]:
        """One step for a batch: ``prev_action`` already encoded (B, n, act_width)."""
        feeds = {"h": state.h, "z": state.z, "prev_action": prev_action, "obs": obs, "mask": mask}
        # a coordinator's round: batch 1, bound buffers
        if self._one is not None and self._one.fits(feeds):
            out = self._one.run(feeds)
            return LatentState(out["h_next"].copy(), out["z_next"].copy()), out["obs_recon"].copy()
        h, z, recon = self.session.run(
            list(WM_OUTPUTS),
            {
                "h": state.h,
                "z": state.z,
                "prev_action": prev_action.astype(np.float32),
                "obs": obs.astype(np.float32),
                "mask": mask.astype(np.float32),
            },
        )
        return LatentState(h, z), recon

    def replay_batch(
        self,
        obs: np.ndarray,
        prev_actions: np.ndarray,
        masks: np.ndarray,
        state: LatentState | None = None,
    ) -> tuple[LatentState, np.ndarray]:
        """``replay`` for B windows of the same length at once: (T, B, n, ...) in, (T, B, n,
        obs_dim) out."""
        state = state or self.initial_state(obs.shape[1])
        enc = self.encode_actions(prev_actions)
        recons = []
        for t in range(obs.shape[0]):
            visible = obs[t] * masks[t][..., None]
            state, recon = self.step(state, enc[t], visible, masks[t])
            recons.append(recon)
        return state, np.stack(recons)


WM_WINDOW_INPUTS = ("obs", "actions", "mask", "valid")
"""A window graph's inputs (``Manifest.wm_window``, MARIE's), all float32: ``obs`` (B, n, L,
obs_dim) raw with zero rows where lost, ``actions`` (B, n, L - 1, act_width) the actions taken on
the window's steps before t, encoded as for ``wm_step``, ``mask`` (B, n, L) 1 observed, ``valid``
(B, L) 1 for the window's steps: a window of k < L steps (an episode's first) fills positions
0..k-1 and ends there."""
WM_WINDOW_OUTPUTS = ("obs_recon", "tokens_t")
"""``obs_recon`` (B, n, obs_dim) float32, step t in raw units; ``tokens_t`` (B, n, K) int64."""


def carries_state(manifest: Manifest) -> bool:
    """Whether rounds can continue a latent state (the ``incremental`` mode): RMIOv2's step graph
    can; a window graph has no state, so every round reads its whole window."""
    return manifest.wm_window is None


class WindowModelRunner(_Replayer):
    """A window graph (MARIE's, docs/ARCHITECTURE.md "MARIE in the swarm"): one call per round on
    the last L steps of the window, no state between rounds. The same ``replay`` and
    ``replay_batch`` as ``WorldModelRunner``, so every caller runs either; the reconstruction they
    return is step t's alone ((1, ...) where a step graph gives every step), and the state is
    empty (width 0)."""

    def __init__(
        self,
        bundle_dir: str | Path,
        manifest: Manifest | None = None,
        device: str = "cpu",
        file: str | None = None,
    ) -> None:
        self.manifest = manifest or load_manifest(bundle_dir)
        window = self.manifest.wm_window
        steps = None if window is None else window.get("steps")
        if not isinstance(steps, int) or not 2 <= steps <= self.manifest.history_window + 1:
            raise RmioError(
                f"bundle '{bundle_dir}': wm_window.steps must be an integer in [2, history_window "
                f"+ 1], got {steps!r}"
            )
        self.steps = steps
        self.session = make_session(
            Path(bundle_dir) / (file or self.manifest.files["wm_step"]), device=device
        )
        names = [i.name for i in self.session.get_inputs()]
        if sorted(names) != sorted(WM_WINDOW_INPUTS):
            raise ValueError(f"window graph inputs are {names}, expected {list(WM_WINDOW_INPUTS)}")
        self._one = BoundCall(self.session) if device == "cpu" else None

    def initial_state(self, batch: int = 1) -> LatentState:
        """No state: (batch, n, 0) arrays, so code that stores states stores nothing."""
        empty = np.zeros((batch, self.manifest.spec.n_agents, 0), np.float32)
        return LatentState(empty, empty.copy())

    def feeds(
        self, obs: np.ndarray, prev_actions: np.ndarray, masks: np.ndarray
    ) -> dict[str, np.ndarray]:
        """The graph's inputs for B windows (T, B, n, ...) of steps s..t with a_{s-1..t-1}: their
        last k = min(T, L) steps at positions 0..k-1 (padded after them when k < L)."""
        T, B, n, d = obs.shape
        L, k = self.steps, min(obs.shape[0], self.steps)
        m = np.asarray(masks[T - k :], np.float32)
        o = np.zeros((B, n, L, d), np.float32)
        o[:, :, :k] = (obs[T - k :] * m[..., None]).transpose(1, 2, 0, 3)
        mask = np.zeros((B, n, L), np.float32)
        mask[:, :, :k] = m.transpose(1, 2, 0)
        acts = np.zeros((B, n, L - 1, self.manifest.act_width), np.float32)
        if k > 1:  # the actions taken on the window's steps before t
            acts[:, :, : k - 1] = self.encode_actions(prev_actions[T - k + 1 :]).transpose(
                1, 2, 0, 3
            )
        valid = np.zeros((B, L), np.float32)
        valid[:, :k] = 1.0
        return {"obs": o, "actions": acts, "mask": mask, "valid": valid}

    def replay_batch(
        self,
        obs: np.ndarray,
        prev_actions: np.ndarray,
        masks: np.ndarray,
        state: LatentState | None = None,
    ) -> tuple[LatentState, np.ndarray]:
        """``replay`` for B windows: (T, B, n, ...) in, (1, B, n, obs_dim) out."""
        feeds = self.feeds(obs, prev_actions, masks)
        if self._one is not None and self._one.fits(feeds):  # a coordinator's round: batch 1
            recon = self._one.run(feeds)["obs_recon"].copy()
        else:
            recon = self.session.run(["obs_recon"], feeds)[0]
        return self.initial_state(obs.shape[1]), recon[None]


WorldModel = WorldModelRunner | WindowModelRunner
"""Either kind of world-model runner: both ``replay`` a window."""


def world_model_runner(
    bundle_dir: str | Path,
    manifest: Manifest | None = None,
    device: str = "cpu",
    file: str | None = None,
) -> WorldModel:
    """The runner a bundle's world model needs: RMIOv2's step graph, or a window graph
    (``Manifest.wm_window``, MARIE's)."""
    manifest = manifest or load_manifest(bundle_dir)
    cls = WorldModelRunner if manifest.wm_window is None else WindowModelRunner
    return cls(bundle_dir, manifest, device, file)
