"""Policy-relevant reconstruction metrics (issue 25): the deployed actor applied to true and to
reconstructed observations of lost agents, beside L_rec, for the world model, hold-last and
zero-fill."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("torch")

from rmio.runtime.models import ActorRunner
from rmio.runtime.validate import file_sha256
from rmio.testing import make_tiny_bundle
from rmio.train.policy_metrics import PolicyProbe


def test_continuous_actor_disagreement_is_the_mean_absolute_action_error(tmp_path: Path) -> None:
    bundle = make_tiny_bundle(tmp_path / "b", "mamujoco/HalfCheetah-6x1")
    probe, runner = PolicyProbe(bundle), ActorRunner(bundle)
    rng = np.random.default_rng(0)
    true = rng.normal(size=(50, 9)).astype(np.float32)
    recon = true + rng.normal(scale=0.5, size=true.shape).astype(np.float32)
    ids = rng.integers(0, 6, size=50)
    assert set(probe.compare(true, true, ids)) == {"action_mae"}
    assert not probe.compare(true, true, ids)["action_mae"].any()
    got = probe.compare(true, recon, ids, chunk=16)["action_mae"]  # several chunks
    want = np.abs(runner.act(true, ids) - runner.act(recon, ids)).reshape(50, -1).mean(-1)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert got.mean() > 0


def test_discrete_actor_disagreement_is_whether_the_action_changes(tmp_path: Path) -> None:
    bundle = make_tiny_bundle(tmp_path / "b", "lbf/Foraging-8x8-2p-2f-v3")
    probe, runner = PolicyProbe(bundle), ActorRunner(bundle)
    spec = probe.manifest.spec
    rng = np.random.default_rng(1)
    true = rng.normal(size=(200, spec.obs_dim)).astype(np.float32)
    recon = rng.normal(size=true.shape).astype(np.float32)
    ids = rng.integers(0, spec.n_agents, size=200)
    avail = np.ones((200, spec.action_dim), bool)
    same = probe.compare(true, true, ids, avail)
    assert not same["action_changed"].any()
    got = probe.compare(true, recon, ids, avail)["action_changed"]
    want = runner.act(true, ids, avail) != runner.act(recon, ids, avail)
    np.testing.assert_array_equal(got, want.astype(float))


@pytest.mark.parametrize("name", ["halfcheetah_6x1", "smax_2s3z"])
def test_a_shipped_actor_becomes_differentiable_and_identical(name: str) -> None:
    import torch

    from rmio.models import find_bundle
    from rmio.train.policy_aware import actor_from_bundle

    bundle = find_bundle(name)
    actor, runner = actor_from_bundle(bundle), ActorRunner(bundle)
    spec = actor.spec
    assert not any(p.requires_grad for p in actor.parameters())
    rng = np.random.default_rng(5)
    ids = np.tile(np.arange(spec.n_agents), 20)
    obs = rng.normal(size=(len(ids), spec.obs_dim)).astype(np.float32) * 3
    avail = np.ones((len(ids), spec.action_dim), bool) if spec.discrete else None
    with torch.no_grad():
        mine = actor(torch.as_tensor(obs), torch.as_tensor(ids), None).numpy()
    np.testing.assert_allclose(mine, runner.act(obs, ids, avail), atol=1e-5)


def test_the_policy_term_teaches_reconstructions_the_actions_they_cause() -> None:
    """Gradient descent on the term alone moves a bad reconstruction towards one on which the
    frozen actor acts as on the truth (here the reconstruction itself is the learnt tensor)."""
    import torch

    from rmio.models import find_bundle
    from rmio.train.policy_aware import PolicyAwareTerm, actor_from_bundle

    actor = actor_from_bundle(find_bundle("halfcheetah_6x1"))

    class Identity:  # decoded observations in raw units, as the world model's denormaliser gives
        @staticmethod
        def denormalize_obs(x: torch.Tensor) -> torch.Tensor:
            return x

    torch.manual_seed(0)
    true = actor.obs_mean.expand(4, 5, 6, 9) + torch.randn(4, 5, 6, 9) * actor.obs_std
    recon = (true + torch.randn_like(true) * 3 * actor.obs_std).requires_grad_(True)
    lost = (torch.rand(4, 5, 6) < 0.5).float()
    term = PolicyAwareTerm(actor, 1.0)
    opt = torch.optim.Adam([recon], lr=0.05)
    first, _ = term(Identity, recon, true, lost, None)
    for _ in range(150):
        value, metrics = term(Identity, recon, true, lost, None)
        opt.zero_grad()
        value.backward()
        opt.step()
    assert set(metrics) == {"policy_mae"}
    assert value.item() < 0.3 * first.item()


def _discrete_bundle_with_probs(where: Path) -> tuple[Path, Any]:
    """A tiny LBF bundle whose actor.onnx is rmio's exported discrete actor (with action_probs),
    far from the near-uniform initial policy; returns the bundle and the torch actor."""
    import torch

    from rmio.runtime.models import make_session
    from rmio.runtime.validate import check_signature
    from rmio.train.export import export_actor
    from rmio.train.policy import Actor

    bundle = make_tiny_bundle(where, "lbf/Foraging-8x8-2p-2f-v3")
    manifest = PolicyProbe(bundle).manifest
    spec = manifest.spec
    torch.manual_seed(0)
    zeros = np.zeros((spec.n_agents, spec.obs_dim), np.float32)
    actor = Actor(spec, 32, -0.5, zeros, np.ones_like(zeros))
    with torch.no_grad():
        actor.net[-1].weight.mul_(300.0)
    assert export_actor(actor, bundle) == 0.0  # overwrites the tiny actor.onnx
    check_signature(make_session(bundle / "actor.onnx"), manifest, "actor", bundle)
    meta = json.loads((bundle / "manifest.json").read_text())
    if meta.get("sha256"):  # the replaced file's digest, as an export records it
        meta["sha256"]["actor.onnx"] = file_sha256(bundle / "actor.onnx")
        (bundle / "manifest.json").write_text(json.dumps(meta, indent=1))
    return bundle, actor


def test_a_discrete_actor_exports_its_probabilities_for_the_kl(tmp_path: Path) -> None:
    """rmio's discrete actor.onnx carries action_probs (an optional output the bundle check
    accepts), so the policy metrics add KL(pi(.|o) || pi(.|o^)) to the changed-action rate."""
    import torch

    bundle, actor = _discrete_bundle_with_probs(tmp_path / "b")
    probe = PolicyProbe(bundle)
    spec = probe.manifest.spec
    assert probe.outputs == ["action", "action_probs"]
    rng = np.random.default_rng(2)
    true = rng.normal(size=(100, spec.obs_dim)).astype(np.float32)
    recon = rng.normal(size=true.shape).astype(np.float32)
    ids = rng.integers(0, spec.n_agents, size=100)
    avail = rng.random((100, spec.action_dim)) > 0.3
    avail[:, 0] = True
    assert not probe.compare(true, true, ids, avail)["action_kl"].any()
    got = probe.compare(true, recon, ids, avail)
    with torch.no_grad():
        t = torch.as_tensor
        p = actor.dist(t(true), t(ids), t(avail).float()).probs.clamp_min(1e-8)
        q = actor.dist(t(recon), t(ids), t(avail).float()).probs.clamp_min(1e-8)
        want = (p * (p.log() - q.log())).sum(-1).numpy()
    np.testing.assert_allclose(got["action_kl"], want, rtol=1e-3, atol=1e-5)
    assert got["action_kl"].mean() > 0 and got["action_changed"].mean() > 0


def test_the_deploy_time_check_names_where_the_world_model_loses_to_hold_last() -> None:
    from rmio.train.wm_eval_report import policy_warnings, reconstruction_table

    res = {
        "p_masks": [0.0, 0.25, 0.5],
        "strategies": {
            "wm fine-tuned (p_mask 0.5)": {
                "lrec_masked": [None, 0.05, 0.06],
                "action_mae": [None, 0.30, 0.10],
            },
            "hold-last": {"lrec_masked": [None, 0.09, 0.10], "action_mae": [None, 0.20, 0.25]},
        },
    }
    (w,) = policy_warnings(res)
    assert "does not beat hold-last on action_mae at p_mask 0.25 (0.3000 vs 0.2000)" in w
    assert "0.5" not in w.split("at p_mask")[1].split(":")[0]
    res["warnings"] = [w]
    assert "**Warning:**" in reconstruction_table(res)
    res["strategies"]["hold-last"]["action_mae"] = [None, 0.4, 0.4]
    assert policy_warnings(res) == []


def test_the_robustness_sweep_measures_what_lost_agents_acted_on(tmp_path: Path) -> None:
    """policy_metrics: on every lost agent-step, the observation the agent acted on against the
    true one, and its action against the one it would have taken on the truth."""
    from types import SimpleNamespace

    from rmio.evaluation import robustness
    from rmio.runtime.bundle import load_manifest

    bundle = make_tiny_bundle(tmp_path / "b", "mamujoco/HalfCheetah-6x1")
    manifest = load_manifest(bundle)
    runner = ActorRunner(bundle, manifest)
    policy = robustness.BatchedPolicy(runner, manifest, "zero-fill")
    policy.reset(2)
    rng = np.random.default_rng(3)
    true = rng.normal(size=(2, 6, 9)).astype(np.float32)
    observed = np.ones((2, 6), bool)
    observed[0, [1, 4]] = False
    observed[1, 2] = False
    policy.truth = SimpleNamespace(true_obs=true)
    policy.act(true * observed[..., None], observed, None, np.ones(2, bool))
    e, i = np.nonzero(~observed)
    fm = manifest.spec.obs_feature_mask[i]
    want_obs = ((np.abs(true[e, i]) * fm).sum(-1) / fm.sum(-1)).sum()
    on_truth = runner.act(true[e, i], i)
    on_zeros = runner.act(np.zeros_like(true[e, i]), i)
    assert policy.errors["lost"] == 3
    assert abs(policy.errors["obs_mae"] - want_obs) < 1e-4
    assert abs(policy.errors["action"] - np.abs(on_truth - on_zeros).mean(-1).sum()) < 1e-5

    res = robustness.sweep(
        bundle, p_loss=[0.5], episodes=2, seeds=1, strategies=["hold-last", "zero-fill"],
        episode_limit=20, policy_metrics=True,
    )  # fmt: skip
    rows = [r for r in res["rows"] if r["strategy"] != "random"]
    assert len(rows) == 2 and all(r["obs_mae"] > 0 and r["action_error"] >= 0 for r in rows)


def test_the_robustness_sweep_measures_the_kl_of_a_discrete_actor(tmp_path: Path) -> None:
    """On-policy, a lost agent's KL between its action distributions on the truth and on what it
    acted on equals the held-out probe's on the same rows (another path through onnxruntime)."""
    from types import SimpleNamespace

    from rmio.evaluation import robustness
    from rmio.runtime.bundle import load_manifest

    bundle, _ = _discrete_bundle_with_probs(tmp_path / "b")
    manifest = load_manifest(bundle)
    spec = manifest.spec
    runner = ActorRunner(bundle, manifest)
    assert runner.exports_probs
    policy = robustness.BatchedPolicy(runner, manifest, "zero-fill")
    policy.reset(3)
    rng = np.random.default_rng(5)
    true = rng.normal(size=(3, spec.n_agents, spec.obs_dim)).astype(np.float32)
    avail = rng.random((3, spec.n_agents, spec.action_dim)) > 0.3
    avail[..., 0] = True
    observed = np.ones((3, spec.n_agents), bool)
    observed[0, 1] = observed[2, 0] = observed[2, 1] = False
    policy.truth = SimpleNamespace(true_obs=true)
    policy.act(true * observed[..., None], observed, avail, np.ones(3, bool))
    e, i = np.nonzero(~observed)
    got = PolicyProbe(bundle).compare(true[e, i], np.zeros_like(true[e, i]), i, avail[e, i])
    assert policy.errors["lost"] == 3
    assert got["action_kl"].sum() > 0
    assert policy.errors["action_kl"] == pytest.approx(got["action_kl"].sum(), rel=1e-5)
    assert policy.errors["action"] == pytest.approx(got["action_changed"].sum())

    res = robustness.sweep(
        bundle, p_loss=[0.5], episodes=2, seeds=1, strategies=["zero-fill"],
        episode_limit=20, policy_metrics=True,
    )  # fmt: skip
    (row,) = [r for r in res["rows"] if r["strategy"] == "zero-fill"]
    assert row["action_kl"] >= 0 and "action_error" in row
