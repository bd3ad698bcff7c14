"""The Fig. 8 baselines on the bundle contract: a MAMBA and an RMIO v1 world model, trained at debug
scale with the shipped HalfCheetah actor, exported, checked without torch's help, and played by the
real swarm action for action as the in-process evaluation plays them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("gymnasium_robotics")

from rich.console import Console
from test_swarm_matrix import compare_with_in_process

from rmio.config import load_config
from rmio.models import resolve_model_path
from rmio.runtime.validate import check_bundle
from rmio.testing import run_swarm, swarm_settings
from rmio.train.common import prepare_run_dir
from rmio.train.export import export_run
from rmio.train.wm_train import finetune_world_model, train_world_model

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]

VARIANTS = ("mamba", "rmio-v1")
TINY = [
    "world_model.train.updates=8",
    "world_model.train.threads=1",
    "world_model.train.seq_len=8",
    "world_model.finetune.updates=8",
    "run.collect_steps=200",
]


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One bundle per variant: `rmio train world-model --algo V --debug`, `rmio train finetune`
    (RMIO v1: the correction stage) and `rmio export` with the shipped actor, in-process."""
    root = tmp_path_factory.mktemp("variants")
    console = Console(file=open(root / "log.txt", "w"))  # noqa: SIM115
    out = {}
    for algo in VARIANTS:
        cfg = load_config("halfcheetah_6x1", preset="debug", algo=algo, overrides=TINY)
        run = prepare_run_dir(cfg, root / algo, algo)
        train_world_model(cfg, run, "cpu", console)
        finetune_world_model(run, 0.5, "cpu", console)
        out[algo] = export_run(
            run, run / "bundle", console, resolve_model_path("models/halfcheetah_6x1")
        )
    return out


@pytest.mark.parametrize("algo", VARIANTS)
def test_variant_bundle_plays_the_same_in_the_swarm(
    bundles: dict[str, Path], tmp_path: Path, algo: str
) -> None:
    bundle = bundles[algo]
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["budget"]["wm_algo"] == algo
    card = (bundle / "MODEL_CARD.md").read_text()
    assert f": {algo} world model" in card and "observation-based" in card
    assert "is valid" in check_bundle(bundle)  # `rmio export --check`
    settings = swarm_settings(
        bundle,
        tmp_path,
        steps=20,
        episodes=1,
        record=True,
        loss={"model": "bernoulli", "p_loss": 0.5},
        step_deadline_ms=2000.0,
    )
    report, _ = run_swarm(settings, tmp_path / "run")
    ev = report["events"]
    assert ev.get("deadline_misses", 0) == 0 and ev.get("agents.recon_miss", 0) == 0
    compared = compare_with_in_process(settings, tmp_path / "run", report)
    assert compared["lost"] > 0 and ev["agents.act_world-model"] == compared["lost"]
