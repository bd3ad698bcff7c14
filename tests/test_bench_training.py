"""bench/training.py compares runs at a matched real-step budget: a run that has not trained to
the budget must not have its last evaluation reported as its figure at the budget."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

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
    done = bench.summarise(_run(tmp_path, "done", [5000, 10000, 15000]), 10000, "return_mean")
    short = bench.summarise(_run(tmp_path, "short", [5000, 8000]), 10000, "return_mean")
    assert done["at_budget"]["step"] == 10000 and done["at_budget"]["return_mean"] == 1000.0
    assert short["at_budget"] is None
    assert short["final"]["step"] == 8000 and short["env_steps"] == 8000
    assert bench._cell(short["at_budget"], "return_mean", "not reached") == "not reached"
