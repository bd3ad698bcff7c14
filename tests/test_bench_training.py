"""bench/training.py compares runs at a matched real-step budget: a run that has not trained to
the budget must not have its last evaluation reported as its figure at the budget."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_training", ROOT / "bench" / "training.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(tmp: Path, name: str, steps: list[int]) -> Path:
    run = tmp / name
    run.mkdir()
    rows = [{"step": s, "return_mean": float(s) / 10, "return_std": 1.0} for s in steps]
    (run / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run


def test_budget_figure_only_for_runs_that_reached_it(tmp_path: Path) -> None:
    bench = _bench()
    budgets = [10000, 12000]
    done = bench.summarise(_run(tmp_path, "done", [5000, 10000, 15000]), budgets, "return_mean")
    short_run = _run(tmp_path, "short", [5000, 8000, 11000])
    diag = [{"step": s, "diag_obs_err_1": 0.1} for s in (5000, 8000, 11000)]
    (short_run / "joint.jsonl").write_text("".join(json.dumps(r) + "\n" for r in diag))
    short = bench.summarise(short_run, budgets, "return_mean")
    # nor diagnostics "at" a budget it never reached
    assert short["diag_at_budget"][10000]["step"] == 8000
    assert short["diag_at_budget"][12000] is None
    assert done["at_budget"][10000]["step"] == 10000
    assert done["at_budget"][10000]["return_mean"] == 1000.0
    assert done["at_budget"][12000]["step"] == 10000  # the last evaluation at or before it
    assert short["at_budget"][10000]["step"] == 8000 and short["at_budget"][12000] is None
    assert short["final"]["step"] == 11000 and short["env_steps"] == 11000
    assert bench._cell(short["at_budget"][12000], "return_mean", "not reached") == "not reached"


def test_the_table_has_a_column_and_a_mean_per_budget(tmp_path: Path) -> None:
    a = _run(tmp_path, "algo-seed0", [5000, 10000])
    b = _run(tmp_path, "algo-seed1", [5000, 10000])
    out = tmp_path / "table"
    script = str(ROOT / "bench" / "training.py")
    budgets = ("--budget", "10000", "--budget", "5000")
    proc = subprocess.run(
        [sys.executable, script, str(a), str(b), *budgets, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    md = out.with_suffix(".md").read_text()
    assert "| eval at 5,000 | eval at 10,000 |" in md
    assert "| 500.0 ± 1.0 | 1000.0 ± 1.0 |" in md
    means = [line for line in md.splitlines() if line.startswith("Mean ± std")]
    assert len(means) == 2 and "500.00 ± 0.00 (2 seeds)" in means[0]
    assert "1000.00 ± 0.00 (2 seeds)" in means[1]


def test_wall_time_counts_each_process_span_not_the_pause_between(tmp_path: Path) -> None:
    """Two training processes (a resume): 800 s of training for 8,000 steps, with a day between
    them that must not count, and a fine-tuning process whose steps are updates."""
    from torch.utils.tensorboard import SummaryWriter

    run = tmp_path / "run"
    for start_step, start_wall in ((1000, 1.0e9), (5000, 1.0e9 + 86_400)):
        writer = SummaryWriter(str(run / "tb"), filename_suffix=f".{start_step}")
        for k in range(5):
            step, wall = start_step + 1000 * k, start_wall + 100 * k
            writer.add_scalar("joint/loss", 1.0, step, walltime=wall)
        writer.close()
    # fine-tuning in the same run directory counts updates, not real steps: left out
    writer = SummaryWriter(str(run / "tb"), filename_suffix=".finetune")
    for k in range(5):
        writer.add_scalar("wm_finetune/loss", 1.0, 1 + 5000 * k, walltime=2.0e9 + 10 * k)
    writer.close()
    assert len(list((run / "tb").glob("events.out.tfevents.*"))) == 3
    hours = _bench().wall_hours_per_100k(run)
    assert abs(hours - 100_000 * 800 / 8000 / 3600) < 1e-6


@pytest.mark.parametrize("algo", ["mappo", "qmix", "mmsa"])
def test_model_free_and_value_based_runs_report_their_rate(tmp_path: Path, algo: str) -> None:
    """Without event files the rate column is the trainer's own logged one, for MAPPO, QMIX and
    MMSA alike (QMIX and MMSA rows had none)."""
    run = _run(tmp_path, "r", [5000, 10000])
    (run / f"{algo}.jsonl").write_text(json.dumps({"step": 10000, "env_steps_per_s": 250.0}))
    row = _bench().summarise(run, [10000], "return_mean")
    assert row["overall_steps_per_s"] == 250.0
    assert abs(row["hours_per_100k"] - 100_000 / 250.0 / 3600) < 1e-9


def test_update_strength_is_the_median_of_each_span_between_budgets(tmp_path: Path) -> None:
    """The PPO update table: each span between budgets has the median of its own iterations."""
    run = _run(tmp_path, "joint", [5000, 10000, 15000])
    rows = [
        {
            "step": s,
            "collect_steps_per_s": 1.0,
            "imagined_steps_per_s": 1.0,
            "real_steps_per_s": 1.0,
        }
        | {"approx_kl": kl, "clip_frac": 10 * kl, "entropy": 1.0 - kl}
        for s, kl in ((2000, 0.1), (4000, 0.3), (6000, 0.2), (9000, 0.01), (14000, 0.5))
    ]
    rows.append({"step": 5000, "diag_obs_err_1": 0.1})  # a diagnostics row, no update
    (run / "joint.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    updates = _bench().summarise(run, [5000, 10000], "return_mean")["updates"]
    assert list(updates) == ["0-5,000", "5,000-10,000", "after 10,000"]
    assert updates["0-5,000"]["approx_kl"] == pytest.approx(0.2)
    assert updates["5,000-10,000"]["clip_frac"] == pytest.approx(1.05)
    assert updates["after 10,000"]["entropy"] == pytest.approx(0.5)
    assert any(
        "| 0-5,000 | 0.2000 | 2.000 | 0.800 |" in line
        for line in _bench()._update_table([{"run": "r", "updates": updates}])
    )


def test_a_joint_run_is_labelled_with_its_recipe_and_what_it_changed(tmp_path: Path) -> None:
    from rmio.config import load_config, save_config

    labels = []
    for name, extra in (("a", []), ("b", ["policy.imagination.return_scaling=batch"])):
        run = tmp_path / name
        cfg = load_config("halfcheetah_6x1", overrides=["policy.imagination.recipe=tuned", *extra])
        save_config(cfg, run)
        (run / "joint.jsonl").write_text("")
        labels.append(_bench()._label(run))
    assert labels == ["rmiov2/tuned seed 0 (a)", "rmiov2/tuned+return_scaling=batch seed 0 (b)"]
