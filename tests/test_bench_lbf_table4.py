"""bench/lbf_table4.py (issue 22): the table takes each run's return at the budget, gives a spread
only where there is more than one seed, and says whether MMSA > QMIX holds on the means."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "lbf_table4.py"
TASK = "lbf_10x10_4p_3f"


def _run(root: Path, algo: str, seed: int, returns: dict[int, float]) -> None:
    run = root / TASK / algo / f"seed{seed}"
    run.mkdir(parents=True)
    rows = [{"step": s, "return_mean": r, "return_std": 0.1} for s, r in returns.items()]
    (run / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _report(root: Path, out: Path, seeds: list[int]) -> str:
    cmd = [sys.executable, str(SCRIPT), "--report-only", "--tasks", TASK, "--steps", "1000"]
    cmd += ["--algos", "mmsa", "qmix", "--seeds", *map(str, seeds), "--root", str(root)]
    proc = subprocess.run(
        [*cmd, "--out", str(out)], capture_output=True, text=True, timeout=600, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stderr
    return out.with_suffix(".md").read_text()


def test_returns_at_the_budget_with_a_spread_over_seeds_and_the_verdict(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    # the evaluation after the budget (0.9) must not be taken for the figure at it
    _run(root, "mmsa", 0, {500: 0.1, 1000: 0.4, 1500: 0.9})
    _run(root, "mmsa", 1, {500: 0.1, 1000: 0.2})
    _run(root, "qmix", 0, {500: 0.1, 1000: 0.1})
    _run(root, "qmix", 1, {500: 0.1, 1000: 0.3})
    text = _report(root, tmp_path / "two", [0, 1])
    assert f"| {TASK} | mmsa | 2 of 2 | 0.30 ± 0.10 | 0.88 |" in text
    assert f"| {TASK} | qmix | 2 of 2 | 0.20 ± 0.10 | 0.31 |" in text
    assert f"- {TASK}: holds (0.30 against 0.20)" in text
    table = json.loads((tmp_path / "two.json").read_text())
    assert table[TASK]["mmsa"]["per_seed"] == [0.4, 0.2]

    one = _report(root, tmp_path / "one", [1])  # one seed: no spread to show
    assert f"| {TASK} | mmsa | 1 of 1 | 0.20 | 0.88 |" in one
    assert f"- {TASK}: does not hold (0.20 against 0.30)" in one


def test_an_ablation_trains_mmsa_with_its_switch_and_has_its_own_row(tmp_path: Path) -> None:
    """`--algos mmsa-no-wm` (the MMSA paper's Fig. 5b No-WM) trains MMSA with the roll-out state
    out of the mixer, in its own run directory, row and curve label (a debug-scale run)."""
    from rmio.config import load_config
    from rmio.train.evaluate import run_label

    root, task = tmp_path / "runs", "lbf_8x8_2p_2f_coop"
    cmd = [sys.executable, str(SCRIPT), "--debug", "--tasks", task, "--algos", "mmsa-no-wm"]
    cmd += ["--seeds", "0", "--steps", "300", "--eval-every", "300", "--jobs", "1"]
    cmd += ["--root", str(root), "--out", str(tmp_path / "abl")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run = root / task / "mmsa-no-wm" / "seed0"
    cfg = load_config(run / "config.yaml")
    assert not cfg.mmsa.mixer_rollout and cfg.mmsa.mixer_state and cfg.mmsa.kl_balance
    assert run_label(run) == "mmsa No-WM seed 0 (seed0)"
    text = (tmp_path / "abl.md").read_text()
    assert f"| {task} | mmsa-no-wm | 1 of 1 |" in text, text
    assert (tmp_path / f"abl_{task}.png").stat().st_size > 0


def test_win_rate_is_tabulated_beside_its_published_reference(tmp_path: Path) -> None:
    """`--metric win_rate` (SMAX): the figure is the win rate at the budget, not the return, and
    the reference column holds the published QMIX figure for 3m."""
    root = tmp_path / "runs"
    for algo, win in (("mmsa", 0.5), ("qmix", 0.75)):
        run = root / "smax_3m" / algo / "seed0"
        run.mkdir(parents=True)
        row = {"step": 1000, "return_mean": 1.5, "return_std": 0.1, "win_rate": win}
        (run / "eval.jsonl").write_text(json.dumps(row) + "\n")
    cmd = [sys.executable, str(SCRIPT), "--report-only", "--tasks", "smax_3m", "--steps", "1000"]
    cmd += ["--algos", "mmsa", "qmix", "--seeds", "0", "--metric", "win_rate"]
    cmd += ["--root", str(root), "--out", str(tmp_path / "smax")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    text = (tmp_path / "smax.md").read_text()
    assert "| smax_3m | qmix | 1 of 1 | 0.75 | 1.00 |" in text, text
    assert "| smax_3m | mmsa | 1 of 1 | 0.50 | - |" in text, text
    assert "- smax_3m: does not hold (0.50 against 0.75)" in text
    assert "SMAC paper" in text
    assert json.loads((tmp_path / "smax.json").read_text())["smax_3m"]["qmix"]["per_seed"] == [0.75]


def test_pymarl2_recipe_rows_train_their_trainer_on_the_recipe(tmp_path: Path) -> None:
    """`--algos qmix-pymarl2` trains QMIX with pymarl2's optimiser, TD(lambda) and update period
    in its own run directory and row (a debug-scale run, which keeps the preset's batch)."""
    from rmio.config import load_config
    from rmio.train.evaluate import run_label

    root, task = tmp_path / "runs", "lbf_8x8_2p_2f_coop"
    cmd = [sys.executable, str(SCRIPT), "--debug", "--tasks", task, "--algos", "qmix-pymarl2"]
    cmd += ["--seeds", "0", "--steps", "300", "--eval-every", "300", "--jobs", "1"]
    cmd += ["--root", str(root), "--out", str(tmp_path / "rec")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run = root / task / "qmix-pymarl2" / "seed0"
    q = load_config(run / "config.yaml").qmix
    assert (q.optimizer, q.lr, q.td_lambda, q.update_every_episodes) == ("adam", 1e-3, 0.6, 4)
    assert "adam, lr 0.001, λ 0.6" in run_label(run)
    assert f"| {task} | qmix-pymarl2 | 1 of 1 |" in (tmp_path / "rec.md").read_text()


def test_recipe_rows_sit_beside_the_papers_figure_of_their_method(tmp_path: Path) -> None:
    """A method on pymarl2's recipe is still that method: its reference is the paper's figure,
    and MMSA against QMIX is stated on the recipe too."""
    root = tmp_path / "runs"
    for algo, ret in (("mmsa-pymarl2", 0.5), ("qmix-pymarl2", 0.4), ("mmsa", 0.3), ("qmix", 0.2)):
        _run(root, algo, 0, {1000: ret})
    cmd = [sys.executable, str(SCRIPT), "--report-only", "--tasks", TASK, "--steps", "1000"]
    cmd += ["--algos", "mmsa", "qmix", "mmsa-pymarl2", "qmix-pymarl2", "--seeds", "0"]
    cmd += ["--root", str(root), "--out", str(tmp_path / "r")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    text = (tmp_path / "r.md").read_text()
    assert f"| {TASK} | mmsa-pymarl2 | 1 of 1 | 0.50 | 0.88 |" in text
    assert f"| {TASK} | qmix-pymarl2 | 1 of 1 | 0.40 | 0.31 |" in text
    assert f"- {TASK}: holds (0.30 against 0.20)" in text
    assert f"- {TASK}, mmsa-pymarl2 against qmix-pymarl2: holds (0.50 against 0.40)" in text
    assert f"- {TASK}, mmsa against qmix-pymarl2: does not hold (0.30 against 0.40)" in text
