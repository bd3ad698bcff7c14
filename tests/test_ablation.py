"""`rmio ablate`: a shipped sweep validates; a debug sweep trains every variant on shared data and
reports L_rec and AUC side by side; re-running resumes instead of retraining."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from rmio.config import load_config, preset_values
from rmio.errors import ConfigError
from rmio.testing import make_tiny_bundle
from rmio.train.ablation import Sweep, _config, _shrunk, run_ablation
from rmio.train.ablation_config import load_ablation, policy_path
from rmio.train.export import portable_path

SHIPPED = sorted(
    p.stem for p in (Path(__file__).parents[1] / "configs" / "ablations").glob("*.yaml")
)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_sweeps_validate(name: str) -> None:
    ab = load_ablation(Path(name))
    assert ab.variants and ab.robustness.p_loss[0] == 0.0 and ab.robustness.p_loss[-1] == 1.0


def test_paper_numbers_need_one_entry_per_variant(tmp_path: Path) -> None:
    path = tmp_path / "sweep.yaml"
    path.write_text(
        "name: x\nscenario: halfcheetah_6x1\nvary: p_mask\nvariants: [0.25, 0.5]\n"
        "policy: halfcheetah_6x1\npaper: {source: Table 2, auc: [54.9, 81.7, 93.8]}\n"
    )
    with pytest.raises(ConfigError, match="one entry per variant \\(2\\), got 3 and 0"):
        load_ablation(path)


def test_an_unknown_sweep_name_lists_the_shipped_ones() -> None:
    with pytest.raises(ConfigError, match="nor one of the shipped sweeps") as err:
        load_ablation(Path("no_such_sweep"))
    assert SHIPPED and all(name in str(err.value) for name in SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_debug_shrinks_shipped_sweeps(name: str) -> None:
    """`rmio ablate SWEEP --debug`: every key the debug preset sets keeps the preset's value, though
    the sweep's own set: lines give full-size ones (it used to train the shipped sizes)."""
    ab = load_ablation(Path(name))
    algo = ab.variants[0] if ab.vary == "algo" else None
    got = _config(ab, Sweep(Path(name), Path("unused"), True, "cpu"), 0, algo).to_dict()
    want = load_config(ab.scenario, preset="debug", algo=algo).to_dict()
    keys = sorted(set(preset_values(ab.scenario, "debug")) - {"run.seed"})
    assert keys

    def at(tree: dict, key: str) -> object:
        for part in key.split("."):
            tree = tree[part]
        return tree

    assert [at(got, k) for k in keys] == [at(want, k) for k in keys]
    assert got["run"]["seed"] == 0


def test_debug_keeps_only_lines_that_shrink(tmp_path: Path) -> None:
    """Under --debug a set: line survives when the preset does not set its key, or when it is a
    number below the preset's; a section line covering a preset key loses, and the seed line is
    never filtered."""
    path = tmp_path / "sweep.yaml"
    path.write_text(
        "name: x\nscenario: halfcheetah_6x1\npolicy: halfcheetah_6x1\nvary: p_mask\n"
        "variants: [0.5]\nset: [world_model.train.updates=12, run.collect_steps=50000,\n"
        "  'world_model.model={deter: 256}', marie.preset=cpu, run.data_policy=halfcheetah_6x1]\n"
    )
    ab = load_ablation(path)
    assert _shrunk(ab) == ["world_model.train.updates=12", "run.data_policy=halfcheetah_6x1"]
    cfg = _config(ab, Sweep(path, tmp_path, True, "cpu"), 3)
    debug = load_config("halfcheetah_6x1", preset="debug")
    assert (cfg.world_model.train.updates, cfg.run.seed, cfg.marie.preset) == (12, 3, "tiny")
    assert cfg.run.collect_steps == debug.run.collect_steps < 50000
    assert cfg.world_model.model.deter == debug.world_model.model.deter < 256


@pytest.mark.parametrize(
    "body,needle",
    [
        ("vary: algo\nvariants: [rmiov2, telepathy]", "unknown method"),
        ("vary: p_mask\nvariants: [0.5, 1.5]", "p_mask variants"),
        ("vary: seeds\nvariants: [1]", "vary"),
    ],
)
def test_bad_sweeps_are_refused(tmp_path: Path, body: str, needle: str) -> None:
    path = tmp_path / "sweep.yaml"
    path.write_text(f"name: x\nscenario: halfcheetah_6x1\npolicy: halfcheetah_6x1\n{body}\n")
    with pytest.raises(ConfigError, match=needle):
        load_ablation(path)


def test_marie_is_a_method_variant(tmp_path: Path) -> None:
    """`variants: [rmiov2, marie]` validates (it was refused before issue 23's item 2): the sweep
    trains MARIE with its own trainer and fine-tuning, see the end-to-end test below."""
    path = tmp_path / "sweep.yaml"
    path.write_text(
        "name: x\nscenario: halfcheetah_6x1\npolicy: halfcheetah_6x1\nvary: algo\n"
        "variants: [rmiov2, marie]\n"
    )
    assert load_ablation(path).variants == ["rmiov2", "marie"]


def test_debug_marie_beside_rmiov2_end_to_end(tmp_path: Path) -> None:
    """`rmio ablate` with [rmiov2, marie] at debug scale: both trained on the same real data,
    fine-tuned, exported (MARIE as its window graph), scored on their held-out L_rec and swept for
    robustness with the same actor; MARIE's row sits beside RMIOv2's."""
    from click.testing import CliRunner

    from rmio.cli import cli

    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(
        "name: debug marie\nscenario: halfcheetah_6x1\nvary: algo\nvariants: [rmiov2, marie]\n"
        "policy: halfcheetah_6x1\nfinetune_updates: 4\n"
        "set: [marie.preset=tiny, marie.seq_len=6, world_model.history_window=6,\n"
        "      world_model.train.updates=12]\n"
        "robustness: {p_loss: [0, 0.5, 1.0], seeds: 1, episodes: 1, steps: 20}\n"
    )
    out = tmp_path / "out"
    res = CliRunner().invoke(cli, ["ablate", str(sweep), "--debug", "--out", str(out)])
    assert res.exit_code == 0, res.output
    result = json.loads((out / "ablation.json").read_text())
    rows = {r["variant"]: r for r in result["rows"]}
    assert list(rows) == ["rmiov2", "marie"]
    for r in rows.values():
        assert 0 < r["lrec_lost"] < 10 and len(r["curve"]) == 3
        assert all(np.isfinite(r["curve"])) and np.isfinite(r["auc_mean"])
    marie = out / "seed0" / "marie"
    manifest = json.loads((marie / "bundle" / "manifest.json").read_text())
    assert manifest["wm_window"]["algo"] == "marie"
    assert not Path(manifest["budget"]["policy_source"]).is_absolute()
    rec = json.loads((marie / "eval_reconstruction.json").read_text())
    assert "MARIE fine-tuned (p_mask 0.5)" in rec["strategies"]
    # the same real data, and so the same held-out episodes and masks, for both methods
    a, b = (out / "seed0" / v / "data" / "holdout.npz" for v in ("rmiov2", "marie"))
    assert a.read_bytes() == b.read_bytes()
    other = json.loads((out / "seed0" / "rmiov2" / "eval_reconstruction.json").read_text())
    assert rec["strategies"]["zero-fill"] == other["strategies"]["zero-fill"]
    md = (out / "ablation.md").read_text()
    assert "| marie |" in md and "| rmiov2 |" in md


def test_policy_is_checked_before_training(tmp_path: Path) -> None:
    path = tmp_path / "sweep.yaml"
    body = "name: x\nscenario: halfcheetah_6x1\nvary: p_mask\nvariants: [0.5]\npolicy: {}\n"
    path.write_text(body.format("no_such_bundle"))
    with pytest.raises(ConfigError, match="policy 'no_such_bundle' is neither"):
        load_ablation(path)
    path.write_text(body.format("halfcheetah_6x1"))  # a shipped bundle's name
    assert (policy_path(load_ablation(path)) / "actor.onnx").is_file()


def test_debug_fusion_sweep_end_to_end(tmp_path: Path) -> None:
    policy = make_tiny_bundle(tmp_path / "policy", "mamujoco/HalfCheetah-6x1", 8)
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(
        f"name: debug fusion\nscenario: halfcheetah_6x1\nvary: algo\n"
        f"variants: [rmiov2, rmiov2-no-obs-fusion]\npolicy: {policy}\n"
        "robustness: {p_loss: [0, 0.5, 1.0], seeds: 1, episodes: 2, steps: 20}\n"
    )
    out = tmp_path / "out"
    # closed with the test's tmp dir
    console = Console(file=open(tmp_path / "log.txt", "w"))  # noqa: SIM115
    result = run_ablation(sweep, out, True, console)
    rows = result["rows"]
    assert [r["variant"] for r in rows] == ["rmiov2", "rmiov2-no-obs-fusion"]
    for r in rows:
        assert 0 < r["lrec_lost"] < 10 and len(r["curve"]) == 3
        (run,) = r["runs"]
        assert not Path(run).is_absolute()
        source = json.loads((out / run / "bundle" / "manifest.json").read_text())["budget"][
            "policy_source"
        ]
        assert source == portable_path(str(policy)) and not Path(source).is_absolute()
    # the same real data for both methods (hard links or copies of the first run's files)
    a, b = (out / "seed0" / v / "data" / "train.npz" for v in ("rmiov2", "rmiov2-no-obs-fusion"))
    assert a.read_bytes() == b.read_bytes()
    assert "L_rec lost agents" in (out / "ablation.md").read_text()
    before = (out / "seed0" / "rmiov2" / "wm_finetune.pt").stat().st_mtime_ns
    # a cached evaluation from before window mode (no mode: whole-episode filtering) is redone,
    # so one table never mixes the two kinds of L_rec; the other one is reused as it is
    old = out / "seed0" / "rmiov2" / "eval_reconstruction.json"
    kept = out / "seed0" / "rmiov2-no-obs-fusion" / "eval_reconstruction.json"
    rec = json.loads(old.read_text())
    assert rec["mode"] == "window"
    del rec["mode"]
    old.write_text(json.dumps(rec))
    kept_at = kept.stat().st_mtime_ns
    again = run_ablation(sweep, out, True, console)  # resumes: nothing is retrained
    assert (out / "seed0" / "rmiov2" / "wm_finetune.pt").stat().st_mtime_ns == before
    assert json.loads(old.read_text())["mode"] == "window" and kept.stat().st_mtime_ns == kept_at
    assert [r["lrec_lost"] for r in again["rows"]] == [r["lrec_lost"] for r in rows]


@pytest.mark.parametrize("flags", [("--jobs", "2"), ("--backend", "ray")], ids=["jobs", "ray"])
def test_other_backends_make_the_same_table(tmp_path: Path, flags: tuple[str, str]) -> None:
    """`--jobs 2` runs the seed's pre-training and then its p_mask trials in worker processes,
    `--backend ray` as Ray tasks on a local Ray; each trial seeds itself, so the table equals the
    one-process table number for number, and re-running (with any backend) skips every finished
    stage."""
    if flags[1] == "ray":
        pytest.importorskip("ray")
    policy = make_tiny_bundle(tmp_path / "policy", "mamujoco/HalfCheetah-6x1", 8)
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(
        f"name: debug p_mask\nscenario: halfcheetah_6x1\nvary: p_mask\nvariants: [0, 0.5]\n"
        f"policy: {policy}\nrobustness: {{p_loss: [0, 1.0], seeds: 1, episodes: 1, steps: 20}}\n"
    )
    console = Console(file=open(tmp_path / "log.txt", "w"))  # noqa: SIM115
    one = run_ablation(sweep, tmp_path / "one", True, console)
    # through the CLI, in a process of its own: a spawn pool leaves multiprocessing's resource
    # tracker running in its parent, and Ray its helper processes, which other tests' orphan
    # checks would count
    out = tmp_path / "other"
    proc = subprocess.run(
        [sys.executable, "-m", "rmio.cli", "ablate", str(sweep), "--debug", *flags,
         "--out", str(out)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    other = json.loads((out / "ablation.json").read_text())
    assert [r["variant"] for r in other["rows"]] == ["p_mask 0", "p_mask 0.5"]
    for a, b in zip(one["rows"], other["rows"], strict=True):
        assert a["runs"] == b["runs"]
        assert a["lrec_lost"] == b["lrec_lost"] and a["curve"] == b["curve"]
    # every stage wrote its own log in the worker
    logs = sorted(p.name for p in (out / "seed0").glob("*.log"))
    assert logs == ["p_mask_0.5.log", "p_mask_0.log", "prepare.log"]
    assert "pre-training done" in (out / "seed0" / "prepare.log").read_text()
    before = (out / "seed0" / "p_mask_0.5" / "wm_finetune.pt").stat().st_mtime_ns
    run_ablation(sweep, out, True, console)  # any backend resumes another's sweep
    assert (out / "seed0" / "p_mask_0.5" / "wm_finetune.pt").stat().st_mtime_ns == before


def test_recipe_sweep_with_burst_robustness_and_baseline_rows(tmp_path: Path) -> None:
    """vary: recipe fine-tunes one pre-trained model several ways (issues 21 and 25); every bundle
    is swept under Bernoulli and burst loss, and the pre-trained model, hold-last and zero-fill get
    rows of their own."""
    policy = "halfcheetah_6x1"  # the shipped actor: policy-aware fine-tuning needs rmio's Actor
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(
        f"name: debug recipes\nscenario: halfcheetah_6x1\nvary: recipe\npolicy: {policy}\n"
        "set: [run.data_policy=models/halfcheetah_6x1]\n"
        "variants:\n"
        "  - {name: paper}\n"
        "  - {name: range, finetune: {p_mask_range: [0, 1], mask_models: [bernoulli, burst]}}\n"
        f"  - {{name: aware, finetune: {{policy_weight: 1.0, policy: {policy}}}}}\n"
        "robustness: {p_loss: [0, 0.5], seeds: 1, episodes: 1, steps: 20,\n"
        "             loss_models: [bernoulli, burst], mean_burst_length: 3, baselines: true}\n"
        "paper: {source: a table, auc: [91.5, null, 7], lrec: [0.07, 0.2, null]}\n"
    )
    console = Console(file=open(tmp_path / "log.txt", "w"))  # noqa: SIM115
    result = run_ablation(sweep, tmp_path / "out", True, console)
    names = [r["variant"] for r in result["rows"]]
    assert names == [
        "paper", "range", "aware", "pre-trained (no fine-tuning)",
        "hold-last (no world model)", "zero-fill (no world model)",
    ]  # fmt: skip
    for r in result["rows"]:
        assert set(r["by_loss"]) == {"bernoulli", "burst"}
        assert r["policy_metric"] == "action_mae" and r["policy_value"] >= 0
        assert r["by_loss"]["bernoulli"]["auc_mean"] == r["auc_mean"]
    runs = tmp_path / "out" / "seed0"
    assert torch_load(runs / "range" / "wm_finetune.pt")["masks"].startswith("bernoulli+burst")
    assert torch_load(runs / "aware" / "wm_finetune.pt")["masks"] == "p_mask 0.5, policy-aware 1"
    pre = json.loads((runs / "pretrain" / "robustness_burst.json").read_text())
    assert pre["strategies"] == ["no-finetune"] and pre["loss"]["model"] == "burst"
    rec = json.loads((runs / "pretrain" / "eval_reconstruction.json").read_text())
    (label,) = [k for k in rec["strategies"] if k.endswith(" pre-trained")]
    row = result["rows"][3]
    assert row["runs"] == ["seed0/pretrain"] and row["lrec_lost"] == pytest.approx(
        rec["strategies"][label]["lrec_masked"][rec["p_masks"].index(0.5)]
    )
    # the pre-trained model is not a fine-tuned one: its L_rec differs from every recipe's
    assert all(row["lrec_lost"] != r["lrec_lost"] for r in result["rows"][:3])
    burst = json.loads((runs / "paper" / "robustness_burst.json").read_text())
    assert burst["loss"]["model"] == "burst" and burst["loss"]["mean_burst_length"] == 3
    md = (tmp_path / "out" / "ablation.md").read_text()
    assert "| AUC (burst) |" in md and "action_mae" in md and "hold-last (no world model)" in md
    # the paper's numbers sit in their variants' rows, and only there
    assert "Paper: a table" in md and "| paper AUC / L_rec |" in md
    assert "return under burst loss, by p_loss:" in md and "- aware: bernoulli: " in md
    lines = md.splitlines()
    top = next(i for i, line in enumerate(lines) if line.startswith("| variant | L_rec"))
    table = [[c.strip() for c in line.strip("|").split("|")] for line in lines[top : top + 8]]
    col = table[0].index("paper AUC / L_rec")
    cells = {row[0]: row[col] for row in table[2:]}
    assert cells == {
        "paper": "91.5 / 0.07", "range": "- / 0.2", "aware": "7 / -",
        "pre-trained (no fine-tuning)": "-", "hold-last (no world model)": "-",
        "zero-fill (no world model)": "-",
    }  # fmt: skip


def torch_load(path: Path) -> dict:
    import torch

    return torch.load(path, weights_only=False)


def test_a_sweep_refuses_to_resume_after_its_actor_was_replaced(tmp_path: Path) -> None:
    """Re-exporting a shipped bundle mid-sweep would mix two actors' numbers in one table: the
    actors the sweep deploys and collects with are pinned when it starts."""
    from rmio.errors import RmioError
    from rmio.train.ablation import pin_policies

    bundle = make_tiny_bundle(tmp_path / "policy", "mamujoco/HalfCheetah-6x1", 8, seed=0)
    other = make_tiny_bundle(tmp_path / "other", "mamujoco/HalfCheetah-6x1", 8, seed=1)
    path = tmp_path / "sweep.yaml"
    path.write_text(
        "name: x\nscenario: halfcheetah_6x1\nvary: p_mask\nvariants: [0.5]\n"
        f"policy: {bundle}\nset: [run.data_policy={bundle}]\n"
    )
    out, console = tmp_path / "out", Console(quiet=True)
    pin_policies(load_ablation(path), out, console)
    pinned = json.loads((out / "policies.json").read_text())
    assert set(pinned) == {"policy", "run.data_policy"} and len(set(pinned.values())) == 1
    pin_policies(load_ablation(path), out, console)  # unchanged: resumes
    actor = bundle / "actor.onnx"
    replaced = (other / "actor.onnx").read_bytes()
    assert replaced != actor.read_bytes()  # the two random actors differ, so this is a real change
    actor.write_bytes(replaced)
    with pytest.raises(RmioError, match=r"policy \(.*\) and run.data_policy .* not the one"):
        pin_policies(load_ablation(path), out, console)
    assert json.loads((out / "policies.json").read_text()) == pinned  # the record is kept
    # a folder started before the record existed: its trials' exported actors stand in for it
    old = tmp_path / "old"
    trial = old / "seed0" / "pretrain" / "bundle"
    shutil.copytree(other, trial)
    (trial / "actor.onnx").write_bytes(b"the actor the trials deployed before the swap")
    with pytest.raises(RmioError, match="not the one the sweep started with"):
        pin_policies(load_ablation(path), old, console)
    assert not (old / "policies.json").exists()
    shutil.copy(bundle / "actor.onnx", trial / "actor.onnx")  # the same actor: it resumes
    pin_policies(load_ablation(path), old, console)
    assert (old / "policies.json").exists()


def test_a_sweep_reuses_another_sweeps_identical_pretraining(tmp_path: Path) -> None:
    """`--reuse OTHER`: the rmiov2 column of a fusion-style sweep starts from the p_mask sweep's
    pre-trained model of the same seed (same config hash, same data actor) instead of training it
    again; a sweep that collects with another actor trains its own."""
    from click.testing import CliRunner

    from rmio.cli import cli

    actor = make_tiny_bundle(tmp_path / "actor", "mamujoco/HalfCheetah-6x1", 8, seed=0)
    tail = (
        "robustness: {p_loss: [0, 1.0], seeds: 1, episodes: 1, steps: 10, baselines: true}\n"
        "finetune_updates: 2\n"
    )

    def sweep(name: str, vary: str, policy: Path) -> Path:
        path = tmp_path / f"{name}.yaml"
        variants = "[0.5]" if vary == "p_mask" else "[rmiov2]"
        path.write_text(
            f"name: {name}\nscenario: halfcheetah_6x1\nvary: {vary}\nvariants: {variants}\n"
            f"policy: {policy}\nset: [run.data_policy={policy}]\n{tail}"
        )
        return path

    def ablate(path: Path, out: Path, *extra: str) -> str:
        args = ["ablate", str(path), "--debug", "--out", str(out), *extra]
        res = CliRunner().invoke(cli, args)
        assert res.exit_code == 0, res.output
        return res.output

    first = tmp_path / "p_mask"
    ablate(sweep("p", "p_mask", actor), first)
    source = first / "seed0" / "pretrain"
    log = ablate(sweep("f", "algo", actor), tmp_path / "fusion", "--reuse", str(first))
    run = tmp_path / "fusion" / "seed0" / "rmiov2"
    assert "pre-training reused from" in log and "pre-training done" not in log
    assert (run / "REUSED_FROM").read_text().strip() == "p_mask/seed0/pretrain"
    for name in ("wm_pretrain.pt", "data/train.npz", "data/holdout.npz"):  # the very same files
        assert (run / name).stat().st_ino == (source / name).stat().st_ino
    # its log is a copy: a run trained again appends to its own
    assert (run / "wm_pretrain.csv").read_text() == (source / "wm_pretrain.csv").read_text()
    assert (run / "wm_pretrain.csv").stat().st_ino != (source / "wm_pretrain.csv").stat().st_ino
    assert (run / "wm_finetune.pt").is_file() and (run / "bundle" / "manifest.json").is_file()
    rows = json.loads((tmp_path / "fusion" / "ablation.json").read_text())["rows"]
    # Fig. 8's baseline columns, on a method sweep
    assert [r["variant"] for r in rows] == [
        "rmiov2", "hold-last (no world model)", "zero-fill (no world model)"
    ]  # fmt: skip
    # the actor at the same path replaced: the same config hash, but other data, so no reuse
    make_tiny_bundle(tmp_path / "actor", "mamujoco/HalfCheetah-6x1", 8, seed=1)
    log = ablate(sweep("g", "algo", actor), tmp_path / "other", "--reuse", str(first))
    assert "skipped, its data come from another actor" in log
    assert "reused" not in log and "pre-training done" in log
    assert not (tmp_path / "other" / "seed0" / "rmiov2" / "REUSED_FROM").exists()


def _row(label: str, auc: float, auc_std: float, lrec: float, lrec_std: float = 0.0) -> dict:
    return {
        "variant": label, "auc_mean": auc, "auc_std": auc_std, "lrec_lost": lrec,
        "lrec_lost_std": lrec_std,
    }  # fmt: skip


def test_the_papers_orderings_are_checked_on_the_table() -> None:
    from rmio.train.ablation_report import orderings

    fusion = {
        "vary": "algo",
        "rows": [
            _row("rmiov2", 84.0, 1.7, 0.056, 0.001),
            _row("rmiov2-no-obs-fusion", 75.1, 0.9, 0.065, 0.001),
            _row("rmiov2-no-action-fusion", 84.6, 0.9, 0.074, 0.002),
            _row("rmiov2-no-fusion", 64.2, 2.5, 0.050, 0.001),
        ],
    }
    got = orderings(fusion)
    assert got[0].startswith("full > (a) on AUC (84.0 vs 75.1): holds;")
    assert "full > (b) on AUC (84.0 vs 84.6): does not hold (within the spread);" in got[1]
    assert got[2].endswith("(a) < (c) on L_rec (0.0650 vs 0.0500): does not hold")
    # the paper's 2s3z row of Table 2: AUC and L_rec by p_mask
    rows = [
        (0, 27.9, 8.76), (0.125, 54.9, 0.136), (0.25, 81.7, 0.102), (0.375, 90.6, 0.091),
        (0.5, 93.8, 0.071), (0.75, 92.4, 0.079),
    ]  # fmt: skip

    def table(rows: list) -> dict:
        return {"vary": "p_mask", "rows": [_row(f"p_mask {p:g}", a, 1.0, lr) for p, a, lr in rows]}

    assert orderings(table(rows))[1:] == [
        "AUC rises at every step from p_mask 0 to 0.5: holds",
        "L_rec falls at every step from p_mask 0 to 0.5: holds",
        "AUC levels off near 0.5 (0.5's within the spread of the best): holds (best at p_mask 0.5)",
        "L_rec worse at 0.75 than at 0.5 (all four of the paper's maps): holds",
        "AUC lower at 0.75 than at 0.5 (three of the paper's four maps): holds (within the spread)",
    ]
    rows[2] = (0.25, 20.0, 0.2)  # a fall on the way up, and the best at 0.75, far above 0.5's
    rows[5] = (0.75, 99.0, 0.05)
    assert orderings(table(rows))[1:] == [
        "AUC rises at every step from p_mask 0 to 0.5: does not hold",
        "L_rec falls at every step from p_mask 0 to 0.5: does not hold",
        "AUC levels off near 0.5 (0.5's within the spread of the best): does not hold (best at "
        "p_mask 0.75)",
        "L_rec worse at 0.75 than at 0.5 (all four of the paper's maps): does not hold",
        "AUC lower at 0.75 than at 0.5 (three of the paper's four maps): does not hold",
    ]
    rows[5] = (0.75, 95.0, 0.08)  # 3s_vs_5z's shape: best at 0.75 by less than the spread
    assert "holds (best at p_mask 0.75)" in orderings(table(rows))[3]
    rows[4] = (0.5, float("nan"), 0.071)
    assert orderings(table(rows))[-1].endswith(": n/a")
    assert orderings({"vary": "recipe", "rows": fusion["rows"]}) == []


def test_recipe_checks_say_where_a_recipe_loses() -> None:
    """Issue 21's goal per recipe and loss model: never below the pre-trained model, above hold-last
    and zero-fill at every p_loss > 0 (p_loss 0 is one run for every row and never counts)."""
    from rmio.train.ablation_report import recipe_checks

    def row(label: str, bern: list[float], burst: list[float]) -> dict:
        return {
            "variant": label,
            "p_loss": [0, 0.5, 1],
            "by_loss": {"bernoulli": {"curve": bern}, "burst": {"curve": burst}},
        }

    result = {
        "vary": "recipe",
        "rows": [
            row("good", [10, 8, 3], [10, 7, 3]),
            row("fragile", [10, 9, 1], [10, 4, 1]),
            row("pre-trained (no fine-tuning)", [10, 6, 2], [10, 5, 2]),
            row("hold-last (no world model)", [10, 5, 2], [10, 4, 2]),
            row("zero-fill (no world model)", [10, 4, 2.5], [10, 3, 2.5]),
        ],
    }
    assert recipe_checks(result) == [
        "good: bernoulli: never below the pre-trained model; above hold-last and zero-fill "
        "everywhere; burst: never below the pre-trained model; above hold-last and zero-fill "
        "everywhere",
        "fragile: bernoulli: below the pre-trained model at p_loss 1; not above hold-last and "
        "zero-fill at p_loss 1; burst: below the pre-trained model at p_loss 0.5, 1; not above "
        "hold-last and zero-fill at p_loss 0.5, 1",
    ]
    assert recipe_checks({**result, "vary": "p_mask"}) == []
    assert recipe_checks({**result, "rows": result["rows"][:3]}) == []  # no baseline rows
