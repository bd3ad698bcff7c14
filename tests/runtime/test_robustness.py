"""`rmio eval robustness`: the batched sweep keeps the swarm's semantics, the AUC is
ARCHITECTURE.md's, and the CLI writes its three files (and runs the swarm path with real
processes)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from rmio.cli import cli
from rmio.envs.loss import LossConfig
from rmio.envs.registry import EnvConfig
from rmio.errors import RmioError
from rmio.evaluation import robustness
from rmio.evaluation.reference import evaluate
from rmio.runtime.bundle import load_manifest
from rmio.runtime.settings import env_config_for

STEPS = 30


def _returns(result: dict, strategy: str, p: float, seed: int) -> list[float]:
    rows = [
        r for r in result["rows"] if (r["strategy"], r["p_loss"], r["seed"]) == (strategy, p, seed)
    ]
    assert len(rows) == 1
    return [e["return"] for e in rows[0]["episodes"]]


@pytest.mark.parametrize("wm_mode", ["window", "incremental"])
@pytest.mark.parametrize(
    "strategy,recon",
    [("world-model", "world-model"), ("hold-last", "hold-last"), ("zero-fill", "zero-fill")],
)
def test_batched_sweep_equals_the_swarms_reference_evaluator(
    bundle: Path, wm_mode: str, strategy: str, recon: str
) -> None:
    """Same env seeds, same loss masks, same windows: the batched episodes are the reference's,
    episode by episode."""
    result = robustness.sweep(
        bundle,
        p_loss=[0.5],
        episodes=3,
        seeds=2,
        strategies=[strategy],
        episode_limit=STEPS,
        wm_mode=wm_mode,
    )
    env_cfg = EnvConfig(**env_config_for(load_manifest(bundle), STEPS))
    ref = evaluate(
        bundle,
        env_cfg,
        LossConfig("bernoulli", p_loss=0.5),
        episodes=3,
        seed=robustness.SEED_STRIDE,
        recon=recon,
        wm_mode=wm_mode,
    )
    np.testing.assert_allclose(
        _returns(result, strategy, 0.5, 1), [r["return"] for r in ref], rtol=1e-5, atol=1e-5
    )
    row = next(r for r in result["rows"] if r["strategy"] == strategy and r["seed"] == 1)
    assert [e["seed"] for e in row["episodes"]] == [1000, 1001, 1002]
    assert all(0.2 < e["lost_fraction"] < 0.8 for e in row["episodes"])
    if strategy == "world-model":
        assert row["reconstructions"] > 0


def test_sweep_shares_p0_and_scores_every_strategy(bundle: Path) -> None:
    strategies = ["world-model", "hold-last", "zero-fill"]
    result = robustness.sweep(
        bundle,
        p_loss=[0.0, 1.0, 0.5],
        episodes=2,
        seeds=2,
        strategies=strategies,
        episode_limit=STEPS,
    )
    assert result["p_loss"] == [0.0, 0.5, 1.0]
    for seed in range(2):
        plain = _returns(result, "world-model", 0.0, seed)
        assert (
            _returns(result, "zero-fill", 0.0, seed)
            == plain
            == _returns(result, "hold-last", 0.0, seed)
        )
    everything_lost = [e for r in result["rows"] if r["p_loss"] == 1.0 for e in r["episodes"]]
    assert all(e["lost_fraction"] == 1.0 for e in everything_lost)
    for s in strategies:
        curve = result["summary"][s]["curve"]
        assert [c["p_loss"] for c in curve] == [0.0, 0.5, 1.0]
        assert len(result["summary"][s]["auc_per_seed"]) == 2
        assert math.isfinite(result["summary"][s]["auc_mean"])
    assert np.isfinite(result["summary"]["random"]["mean"])


def test_auc_is_the_normalised_trapezoid() -> None:
    p = [0.0, 0.5, 1.0]
    assert robustness.auc(p, [10.0, 10.0, 10.0], 10.0, 0.0) == pytest.approx(
        100.0
    )  # nothing lost to loss
    assert robustness.auc(p, [10.0, 5.0, 0.0], 10.0, 0.0) == pytest.approx(
        50.0
    )  # linear decay to random
    assert robustness.auc(p, [-2.0, -6.0, -10.0], -2.0, -10.0) == pytest.approx(
        50.0
    )  # negative returns too
    assert math.isnan(
        robustness.auc(p, [1.0, 1.0, 1.0], 1.0, 1.0)
    )  # no better than random: undefined


def test_bad_requests_are_refused(bundle: Path, tmp_path: Path) -> None:
    with pytest.raises(RmioError, match="no-finetune"):
        robustness.sweep(
            bundle, p_loss=[0.0], episodes=1, seeds=1, strategies=["no-finetune"], episode_limit=5
        )
    with pytest.raises(RmioError, match="unknown strategy"):
        robustness.sweep(
            bundle, p_loss=[0.0], episodes=1, seeds=1, strategies=["oracle"], episode_limit=5
        )
    with pytest.raises(RmioError, match="neither a model bundle"):
        robustness.resolve_bundle(tmp_path)
    res = CliRunner().invoke(cli, ["eval", "robustness", str(bundle), "--p-loss", "0,x"])
    assert res.exit_code != 0 and "comma-separated" in str(res.exception or res.output)


def test_cli_writes_json_markdown_png_and_runs_the_swarm(bundle: Path, tmp_path: Path) -> None:
    """Real agent processes for each strategy; with no deadline missed they reproduce the in-process
    returns."""
    out = tmp_path / "rob"
    res = CliRunner().invoke(
        cli,
        [
            "eval",
            "robustness",
            str(bundle),
            "--p-loss",
            "0,0.5",
            "--episodes",
            "1",
            "--seeds",
            "1",
            "--steps",
            "20",
            "--swarm",
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    result = json.loads((out / "robustness.json").read_text())
    assert (out / "robustness.png").stat().st_size > 1000
    md = (out / "robustness.md").read_text()
    assert "AUC" in md and "Through the swarm" in md
    swarm = {(r["strategy"], r["p_loss"]): r for r in result["swarm"]}
    assert set(swarm) == {
        (s, p) for s in ("world-model", "hold-last", "zero-fill") for p in (0.0, 0.5)
    }
    assert (
        swarm[("world-model", 0.0)]["bytes_per_step"] == 0.0
    )  # nothing lost, nothing sent but heartbeats
    assert swarm[("world-model", 0.5)]["bytes_per_step"] > 0.0
    assert swarm[("zero-fill", 0.5)]["bytes_per_step"] == 0.0
    compared = 0
    for (strategy, p), row in swarm.items():
        in_process = result["summary"][strategy]["curve"][[0.0, 0.5].index(p)]["mean"]
        if row["deadline_misses"] == 0:
            assert row["mean"] == pytest.approx(in_process, rel=1e-4, abs=1e-4), (strategy, p)
            compared += 1
    # a run that missed a deadline acted on a fallback somewhere and is not compared; on this tiny
    # bundle misses are rare, so at least half of the runs must have been compared (else the test
    # checked nothing)
    assert compared >= len(swarm) // 2, {k: r["deadline_misses"] for k, r in swarm.items()}


def test_discrete_smax_sweep_scores_win_rate_and_return(tmp_path: Path) -> None:
    """Available actions batched per agent; SMAX is scored by win rate, with the dense return
    alongside."""
    pytest.importorskip("jaxmarl")
    from rmio.testing import make_tiny_bundle

    smax = make_tiny_bundle(tmp_path / "smax", "smax/3m", 4)
    result = robustness.sweep(
        smax,
        p_loss=[0.0, 0.5],
        episodes=2,
        seeds=1,
        strategies=["world-model", "zero-fill"],
        episode_limit=12,
    )
    assert result["metric"] == "win_rate"
    assert set(result["summary"]["also"]) == {"metric", "world-model", "zero-fill"}
    for row in result["rows"]:
        assert all(e["steps"] <= 12 and e["won"] in (True, False) for e in row["episodes"])
    from rmio.evaluation import report as robustness_report

    assert "Also measured (return)" in robustness_report.markdown(result)
