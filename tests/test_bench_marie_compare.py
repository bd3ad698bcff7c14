"""bench/marie_compare.py (issue 23): each variant's fine-tuned row and the baselines, mean ± std
over the seeds at every p_mask but 0, the sweep's robustness rows, and a refusal when the two
variants of a seed were scored on different held-out data."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "marie_compare.py"


def _eval(run: Path, label: str, lrec: float, rows: int = 100) -> None:
    run.mkdir(parents=True)
    model = {"lrec_masked": [None, lrec, lrec + 0.1], "gpe": [1.0, 2.0, 3.0]}
    res = {
        "p_masks": [0.0, 0.25, 0.75],
        "seeds": 3,
        "holdout_episodes": 4,
        "holdout_rows": rows,
        "strategies": {label: model, "hold-last": {"lrec_masked": [None, 0.5, 0.7]}},
    }
    (run / "eval_reconstruction.json").write_text(json.dumps(res))


def _compare(sweep: Path, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), str(sweep), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )


def test_rows_over_seeds_and_the_robustness_rows(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    _eval(sweep / "seed0" / "rmiov2", "wm fine-tuned (p_mask 0.5)", 0.1)
    _eval(sweep / "seed1" / "rmiov2", "wm fine-tuned (p_mask 0.5)", 0.3)
    _eval(sweep / "seed0" / "marie", "MARIE fine-tuned (p_mask 0.5)", 0.4)
    _eval(sweep / "seed1" / "marie", "MARIE fine-tuned (p_mask 0.5)", 0.4)
    # a seed without MARIE's evaluation is left out, not averaged in with one variant
    _eval(sweep / "seed2" / "rmiov2", "wm fine-tuned (p_mask 0.5)", 9.0)
    rob = {"variant": "marie", "auc_mean": 55.5, "auc_std": 1.25, "curve": [1.0, 0.5]}
    table = {
        "robustness": {"p_loss": [0.0, 1.0]},
        "budget": {"set": ["world_model.train.updates=10"], "finetune_updates": 5},
        "rows": [rob, {**rob, "variant": "gawm"}, {**rob, "variant": "hold-last (no world model)"}],
    }
    (sweep / "ablation.json").write_text(json.dumps(table))
    proc = _compare(sweep, tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    text = (tmp_path / "out.md").read_text()
    assert text.startswith("Training seeds 0, 1;")
    assert "| rmiov2 fine-tuned | 0.2000 ± 0.1000 | 0.3000 ± 0.1000 |" in text
    assert "| marie fine-tuned | 0.4000 ± 0.0000 | 0.5000 ± 0.0000 |" in text
    assert "| hold-last | 0.5000 ± 0.0000 | 0.7000 ± 0.0000 |" in text
    assert "| marie | 55.5 ± 1.2 | 1.00 | 0.50 |" in text
    assert "gawm" not in text
    assert "| hold-last (no world model) | 55.5 ± 1.2 | 1.00 | 0.50 |" in text
    # no row has GCI or the actor's metrics: no empty tables for them
    assert "| GCI |" not in text and "actor's action" not in text and "| GPE |" in text
    data = json.loads((tmp_path / "out.json").read_text())
    assert data["seeds"] == [0, 1]
    assert (tmp_path / "out.png").stat().st_size > 0
    assert "](out.png)" in text  # the figure is shown where the table is read


def test_refuses_a_seed_scored_on_other_data(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    _eval(sweep / "seed0" / "rmiov2", "wm fine-tuned (p_mask 0.5)", 0.1, rows=100)
    _eval(sweep / "seed0" / "marie", "MARIE fine-tuned (p_mask 0.5)", 0.4, rows=99)
    proc = _compare(sweep, tmp_path / "out")
    assert proc.returncode != 0
    assert "different held-out data" in proc.stderr
