"""Every task family through the real swarm: continuous and discrete actions, at p_loss 0, 0.3 and
1.0, with the world model on the agent and on a node, over every transport.

The matrix is full over family x p_loss x placement (18 runs); the transport rotates so that every
transport meets every family, every p_loss and both placements. Each run is compared with the
in-process evaluation action for action (the env host's records against the reference's trace), not
only by return: a tiny bundle's random policy often scores 0, and equal zeros would prove nothing.
"""

from __future__ import annotations

import importlib.util
import itertools
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from swarm_helpers import run_swarm, swarm_settings

from rmio.evaluation.reference import evaluate
from rmio.models import resolve_model_path
from rmio.runtime.settings import TRANSPORTS
from rmio.testing import make_tiny_bundle

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]

FAMILIES = {
    # continuous actions, observation widths that differ between agents (zero-padded to obs_dim)
    "mamujoco": ("mamujoco/HalfCheetah-6x1", "gymnasium_robotics"),
    # discrete actions with available-action masks
    "smax": ("smax/2s3z", "jaxmarl"),
    "lbf": ("lbf/Foraging-8x8-2p-2f-coop-v3", "lbforaging"),
}
P_LOSS = (0.0, 0.3, 1.0)
PLACEMENTS = ("on-agent", "node")
STEPS, EPISODES = 24, 2

CASES = [
    (family, p, placement, TRANSPORTS[(f + k + w) % len(TRANSPORTS)])
    for (f, family), (k, p), (w, placement) in itertools.product(
        enumerate(FAMILIES), enumerate(P_LOSS), enumerate(PLACEMENTS)
    )
]


def test_the_matrix_covers_every_pair() -> None:
    """Every transport meets every family, every p_loss and both placements."""
    pairs = {(c[i], c[3]) for c in CASES for i in range(3)}
    for values in (FAMILIES, P_LOSS, PLACEMENTS):
        assert {(v, t) for v in values for t in TRANSPORTS} <= pairs


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = {}
    for family, (scenario, module) in FAMILIES.items():
        if importlib.util.find_spec(module) is not None:
            out[family] = make_tiny_bundle(tmp_path_factory.mktemp(family), scenario, 6)
    return out


def compare_with_in_process(settings: Any, run_dir: Path, report: dict[str, Any]) -> dict[str, int]:
    """The swarm's joint actions are the in-process evaluation's, step for step; returns what was
    compared."""
    ref = evaluate(
        settings.bundle,
        settings.env_config(),
        settings.loss_config(),
        episodes=settings.episodes,
        seed=settings.seed,
        recon=settings.recon,
        wm_mode=settings.wm_mode,
        trace=True,
    )
    assert [ep["return"] for ep in report["episodes"]] == [r["return"] for r in ref]
    env = np.load(run_dir / "records" / "env.npz")
    compared = {"steps": 0, "lost": 0}
    for k, r in enumerate(ref):
        rows = env["ep"] == k
        assert rows.sum() == r["steps"] == len(r["actions"])
        assert np.array_equal(env["observed"][rows], r["observed"])
        got, want = env["actions"][rows], r["actions"]
        assert got.shape == want.shape and np.array_equal(got, want.astype(got.dtype)), (
            f"episode {k}"
        )
        compared["steps"] += int(rows.sum())
        compared["lost"] += int((~r["observed"]).sum())
    return compared


@pytest.mark.parametrize(
    ("family", "p_loss", "placement", "transport"),
    CASES,
    ids=[f"{f}-p{p:g}-{w}-{t}" for f, p, w, t in CASES],
)
def test_swarm_equals_in_process(
    bundles: dict[str, Path],
    tmp_path: Path,
    family: str,
    p_loss: float,
    placement: str,
    transport: str,
) -> None:
    if family not in bundles:
        pytest.skip(f"the {family} extra is not installed")
    settings = swarm_settings(
        bundles[family],
        tmp_path,
        steps=STEPS,
        episodes=EPISODES,
        record=True,
        loss={"model": "bernoulli", "p_loss": p_loss},
        world_model=placement,
        transport=transport,
        step_deadline_ms=2000.0,
    )
    report, _ = run_swarm(settings, tmp_path / "run")
    ev = report["events"]
    assert ev.get("deadline_misses", 0) == 0 and ev.get("agents.recon_miss", 0) == 0
    assert ev.get("agents.internal_errors", 0) == 0 and ev.get("invalid_actions", 0) == 0
    assert not any(k.startswith("dropped.") for k in ev), ev
    compared = compare_with_in_process(settings, tmp_path / "run", report)
    assert compared["steps"] > 0
    if p_loss > 0:
        assert compared["lost"] > 0 and ev["agents.act_world-model"] == compared["lost"]
    else:
        assert compared["lost"] == 0 and "agents.act_world-model" not in ev
    if family != "mamujoco":
        assert (
            ev.get("unavailable_actions", 0) == 0
        )  # blind agents act on the STEP's available actions too
    # every round's world-model step ran on the node, none fell back to the agent
    if placement == "node":
        assert report["processes"]["wm"].get("wm.requests", 0) == ev.get("agents.rounds", 0)
        assert ev.get("agents.wm_node_timeout", 0) == 0
    if 0 < p_loss < 1:
        assert ev["agents.rounds"] > 0


@pytest.mark.skipif(
    importlib.util.find_spec("jaxmarl") is None, reason="the smax extra is not installed"
)
def test_the_committed_smax_bundle_runs_through_the_swarm(tmp_path: Path) -> None:
    """The README's SMAX bundle, as shipped, at p_loss 0.3: the swarm plays what the in-process
    evaluation plays."""
    bundle = resolve_model_path("models/smax_2s3z")
    settings = swarm_settings(
        bundle,
        tmp_path,
        steps=60,
        episodes=1,
        record=True,
        loss={"model": "bernoulli", "p_loss": 0.3},
        step_deadline_ms=2000.0,
    )
    report, _ = run_swarm(settings, tmp_path / "run")
    ev = report["events"]
    assert ev.get("deadline_misses", 0) == 0 and ev.get("unavailable_actions", 0) == 0
    compared = compare_with_in_process(settings, tmp_path / "run", report)
    assert compared["lost"] > 0
