"""Bundle validation with onnxruntime alone (no torch): what `rmio export --check` runs, and what
every command that takes a bundle runs before it starts any process, so that a corrupt, truncated
or swapped graph is one line naming the file instead of crashing agents mid-run.

Two levels: :func:`verify_bundle` (checksums, then every graph's input and output names, dtypes and
shapes against the manifest; about 50 ms) and :func:`check_bundle` (that, plus running the graphs).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import numpy as np

from rmio.errors import RmioError
from rmio.runtime.bundle import Manifest, load_manifest
from rmio.runtime.history import ActionCodec
from rmio.runtime.models import ActorRunner, WorldModelRunner, make_session, world_model_runner

log = logging.getLogger(__name__)

_DTYPES = {"tensor(float)": "float32", "tensor(int64)": "int64", "tensor(bool)": "bool"}
BATCH = None
"""The batch axis in an expected shape: it must be dynamic (in-process sweeps batch episodes)."""
Signature = dict[str, tuple[str, tuple[int | None, ...]]]
_WARNED: set[str] = set()


def file_sha256(path: str | Path) -> str:
    """The hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def bundle_checksums(bundle: str | Path, manifest: Manifest) -> dict[str, str]:
    """sha256 of every file the manifest names, keyed by file name (what the exporter records)."""
    return {name: file_sha256(Path(bundle) / name) for name in sorted(set(manifest.files.values()))}


def expected_signatures(manifest: Manifest, role: str) -> tuple[Signature, Signature]:
    """The inputs and outputs (name -> dtype, shape) a graph of ``role`` must have for this
    manifest: the contract of ``rmio.runtime.bundle``."""
    if role == "wm_window":
        return window_signatures(manifest)
    spec = manifest.spec
    n, d = spec.n_agents, spec.obs_dim
    if role == "actor":
        inputs: Signature = {"obs": ("float32", (BATCH, d)), "agent_id": ("int64", (BATCH,))}
        if spec.discrete:
            inputs["avail_actions"] = ("bool", (BATCH, spec.action_dim))
            outputs: Signature = {"action": ("int64", (BATCH,))}
        else:
            outputs = {"action": ("float32", (BATCH, spec.action_dim))}
        state = manifest.actor_state
        if state is not None:  # a recurrent actor: its hidden state in and out
            inputs[state.input] = ("float32", (BATCH, *state.shape))
            outputs[state.output] = ("float32", (BATCH, *state.shape))
        return inputs, outputs
    inputs = {
        "h": ("float32", (BATCH, n, manifest.deter)),
        "z": ("float32", (BATCH, n, manifest.stoch)),
        "prev_action": ("float32", (BATCH, n, manifest.act_width)),
        "obs": ("float32", (BATCH, n, d)),
        "mask": ("float32", (BATCH, n)),
    }
    outputs = {
        "h_next": ("float32", (BATCH, n, manifest.deter)),
        "z_next": ("float32", (BATCH, n, manifest.stoch)),
        "obs_recon": ("float32", (BATCH, n, d)),
    }
    return inputs, outputs


def window_signatures(manifest: Manifest) -> tuple[Signature, Signature]:
    """A window graph's (``Manifest.wm_window``, MARIE's): ``WM_WINDOW_INPUTS`` over the L steps
    the manifest names, ``WM_WINDOW_OUTPUTS`` with its K tokens."""
    window = manifest.wm_window or {}
    n, d, w = manifest.spec.n_agents, manifest.spec.obs_dim, manifest.act_width
    steps, k = window.get("steps"), window.get("tokens")
    if not all(isinstance(v, int) and v >= 1 for v in (steps, k)):
        raise RmioError(f"manifest: wm_window needs integer steps and tokens, got {window}")
    inputs: Signature = {
        "obs": ("float32", (BATCH, n, steps, d)),
        "actions": ("float32", (BATCH, n, steps - 1, w)),
        "mask": ("float32", (BATCH, n, steps)),
        "valid": ("float32", (BATCH, steps)),
    }
    outputs: Signature = {
        "obs_recon": ("float32", (BATCH, n, d)),
        "tokens_t": ("int64", (BATCH, n, k)),
    }
    return inputs, outputs


def optional_outputs(manifest: Manifest, role: str) -> Signature:
    """Outputs a graph may add to the contract: a discrete actor's action probabilities, which
    the policy metrics of `rmio eval reconstruction` use for their KL term."""
    if role == "actor" and manifest.spec.discrete:
        return {"action_probs": ("float32", (BATCH, manifest.spec.action_dim))}
    return {}


def check_signature(session: Any, manifest: Manifest, role: str, path: Path) -> None:
    """Refuse a graph whose input or output names, dtypes or shapes differ from the manifest's."""
    want_in, want_out = expected_signatures(manifest, role)
    optional = optional_outputs(manifest, role)
    for kind, want, metas in (
        ("input", want_in, session.get_inputs()),
        ("output", want_out, session.get_outputs()),
    ):
        have = {m.name: m for m in metas}
        if kind == "output":
            want = {**want, **{k: v for k, v in optional.items() if k in have}}
        if set(have) != set(want):
            raise RmioError(
                f"{path}: {kind}s {sorted(have)}, but a {role} graph for {manifest.spec.name} "
                f"({'discrete' if manifest.spec.discrete else 'continuous'} actions) has "
                f"{sorted(want)}"
            )
        for name, (dtype, shape) in want.items():
            meta = have[name]
            got_dtype = _DTYPES.get(meta.type, meta.type)
            got_shape = tuple(d if isinstance(d, int) else None for d in meta.shape)
            if got_dtype != dtype or got_shape != shape:
                raise RmioError(
                    f"{path}: {kind} '{name}' is {got_dtype} {_show(got_shape)}, the manifest "
                    f"wants {dtype} {_show(shape)}"
                )


def _show(shape: tuple[int | None, ...]) -> str:
    return "(" + ", ".join("B" if d is None else str(d) for d in shape) + ")"


def verify_bundle(bundle: str | Path, manifest: Manifest | None = None) -> Manifest:
    """Checksums, then every graph's signature against the manifest; returns the manifest. A bundle
    without recorded checksums (exported before they existed) loads with a warning."""
    bundle = Path(bundle)
    manifest = manifest or load_manifest(bundle)
    if manifest.sha256:
        for name in sorted(set(manifest.files.values())):
            want = manifest.sha256.get(name)
            if want is None:
                raise RmioError(f"{bundle / 'manifest.json'}: no sha256 recorded for '{name}'")
            if file_sha256(bundle / name) != want:
                raise RmioError(
                    f"{bundle / name}: sha256 differs from the one in manifest.json (a corrupt or "
                    "replaced file; re-export the bundle)"
                )
    elif str(bundle.resolve()) not in _WARNED:
        _WARNED.add(str(bundle.resolve()))
        log.warning(
            "bundle %s records no sha256 checksums (exported by an older rmio): its files are not "
            "verified; re-export it to add them",
            bundle,
        )
    for role, name in manifest.files.items():
        path = bundle / name
        graph = "wm_step" if manifest.wm_window is None else "wm_window"
        check_signature(make_session(path), manifest, "actor" if role == "actor" else graph, path)
    return manifest


def check_bundle(bundle: str | Path) -> str:
    """Re-validate a bundle: manifest schema, files, checksums, graph signatures, and that the
    graphs run; returns a one-line description of the valid bundle, raises RmioError otherwise."""
    manifest = verify_bundle(bundle)
    n, d = manifest.spec.n_agents, manifest.spec.obs_dim
    for role in ("wm_step", "wm_step_pretrain"):
        if role not in manifest.files:
            continue
        runner = world_model_runner(bundle, manifest, file=manifest.files[role])
        if isinstance(runner, WorldModelRunner):
            _, recon = runner.step(
                runner.initial_state(3),
                np.zeros((3, n, manifest.act_width), np.float32),
                np.zeros((3, n, d), np.float32),
                np.ones((3, n), np.float32),
            )
        else:  # a window graph: a 2-step window of 3 rounds, every agent lost at its last step
            codec = ActionCodec.of(manifest.spec)
            masks = np.ones((2, 3, n), np.float32)
            masks[-1] = 0.0
            recon = runner.replay_batch(
                np.zeros((2, 3, n, d), np.float32),
                np.zeros((2, 3, n, *codec.shape), codec.dtype),
                masks,
            )[1][-1]
        if recon.shape != (3, n, d) or not np.isfinite(recon).all():
            raise RmioError(
                f"bundle '{bundle}': {manifest.files[role]} returns {recon.shape} or non-finite "
                "values"
            )
    if "actor" in manifest.files:
        actor = ActorRunner(bundle, manifest)
        action, state = actor.step(
            np.zeros((3, d), np.float32), np.arange(3) % n, None, actor.initial_state(3)
        )
        if state is not None:  # a second step from the state the first one returned
            action, state = actor.step(np.zeros((3, d), np.float32), np.arange(3) % n, None, state)
        if not all(
            np.isfinite(np.asarray(a, np.float64)).all()
            for a in (action, 0 if state is None else state)
        ):
            raise RmioError(
                f"bundle '{bundle}': {manifest.files['actor']} returns non-finite values"
            )
    checked = "sha256 checked" if manifest.sha256 else "no checksums recorded"
    return (
        f"bundle {bundle} is valid: {manifest.spec.name}, {n} agents, window "
        f"{manifest.history_window}, files {', '.join(manifest.files.values())} ({checked})"
    )
