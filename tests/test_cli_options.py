"""One consistent command line, second part (issue 17, part 4): --loss-model with one meaning (a
model's name with its options, or a YAML file) whose settings reach the in-process sweep, the swarm
and the results files; loss models refused before anything starts; --json summaries alone on
stdout; a bad --device as one line in every command that takes it. Real subprocesses, the shipped
HalfCheetah 6x1 bundle, short episodes."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rmio.cli import cli

pytestmark = pytest.mark.timeout(600)

SHORT = ("--episodes", "1", "--seeds", "1", "--steps", "20")


def rmio(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rmio.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def one_json(stdout: str) -> dict:
    """stdout holds one JSON document and nothing else."""
    lines = [line for line in stdout.splitlines() if line.strip()]
    assert len(lines) == 1, stdout[-2000:]
    return json.loads(lines[0])


def test_loss_model_options_are_the_same_in_every_command() -> None:
    commands = {
        "demo": cli.commands["demo"],
        "swarm launch": cli.commands["swarm"].commands["launch"],
        "swarm roster": cli.commands["swarm"].commands["roster"],
        "eval robustness": cli.commands["eval"].commands["robustness"],
    }
    shapes = {}
    for name, command in commands.items():
        params = {p.name: p for p in command.params}
        shapes[name] = tuple(
            (key, type(params[key].type).__name__, params[key].metavar)
            for key in ("loss_model", "mean_burst_length", "blackout_length", "blackout_rate")
        )
    assert len(set(shapes.values())) == 1, shapes


def test_burst_and_blackout_settings_reach_the_sweep_and_its_files(tmp_path: Path) -> None:
    burst = tmp_path / "burst"
    res = rmio(
        *("eval", "robustness", "halfcheetah_6x1", *SHORT, "--p-loss", "0,0.6"),
        *("--strategies", "world-model", "--loss-model", "burst", "--mean-burst-length", "6"),
        *("--out", str(burst), "--json"),
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    summary = one_json(res.stdout)
    assert summary["loss"] == {"model": "burst", "mean_burst_length": 6.0}
    assert summary["files"]["json"] == str(burst / "robustness.json")
    assert "swarm" not in summary and not (burst / "swarm").exists()  # no --swarm: no swarm
    result = json.loads((burst / "robustness.json").read_text())
    assert result["loss"] == {"model": "burst", "mean_burst_length": 6.0}
    assert "burst loss: mean burst length 6" in (burst / "robustness.md").read_text()

    # the same model from a YAML file: the same masks, hence the same returns, cell for cell
    spec = tmp_path / "burst.yaml"
    spec.write_text("model: burst\nmean_burst_length: 6\n")
    from_file = tmp_path / "from_file"
    res = rmio(
        *("eval", "robustness", "halfcheetah_6x1", *SHORT, "--p-loss", "0,0.6"),
        *("--strategies", "world-model", "--loss-model", str(spec), "--out", str(from_file)),
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    again = json.loads((from_file / "robustness.json").read_text())
    assert [r["episodes"] for r in again["rows"]] == [r["episodes"] for r in result["rows"]]

    blackout = tmp_path / "blackout"
    res = rmio(
        *("eval", "robustness", "halfcheetah_6x1", *SHORT, "--p-loss", "0,0.5"),
        *("--strategies", "zero-fill", "--loss-model", "blackout", "--blackout-length", "3"),
        *("--out", str(blackout)),
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    result = json.loads((blackout / "robustness.json").read_text())
    assert result["loss"] == {"model": "blackout", "blackout_length": 3}
    lossy = [r for r in result["rows"] if r["p_loss"] == 0.5]
    assert lossy and all(r["episodes"][0]["lost_fraction"] > 0 for r in lossy)
    assert "blackout loss: blackout length 3" in (blackout / "robustness.md").read_text()


def test_loss_models_are_refused_before_anything_runs(tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = rmio(
        *("eval", "robustness", "halfcheetah_6x1", "--p-loss", "0,0.9", "--loss-model", "burst"),
        *("--out", str(out)),
        cwd=tmp_path,
    )
    # the advice names the option that exists, with the length that would do
    assert res.returncode == 2 and "--mean-burst-length" in res.stderr, res.stderr
    assert "at least 9" in res.stderr and "Traceback" not in res.stderr
    res = rmio(
        *("swarm", "launch", "halfcheetah_6x1", "--p-loss", "0.9", "--loss-model", "burst"),
        *("--out", str(out)),
        cwd=tmp_path,
    )
    assert res.returncode == 2 and "--mean-burst-length" in res.stderr, res.stderr
    res = rmio(
        *("swarm", "launch", "halfcheetah_6x1", "--mean-burst-length", "6", "--out", str(out)),
        cwd=tmp_path,
    )
    assert res.returncode == 2 and "bernoulli loss does not read it" in res.stderr, res.stderr
    schedule = tmp_path / "schedule.yaml"
    schedule.write_text("- {steps: '3-5', agents: [0, 9]}\n")  # HalfCheetah 6x1 has 6 agents
    res = rmio(
        *("swarm", "launch", "halfcheetah_6x1", "--loss-model", str(schedule)),
        *("--out", str(out)),
        cwd=tmp_path,
    )
    assert res.returncode == 2 and "entry 0" in res.stderr and "[0, 6)" in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert not out.exists()  # no run directory: no process was started


@pytest.mark.slow
def test_the_swarm_runs_the_loss_model_it_is_given(tmp_path: Path) -> None:
    """swarm launch with a burst model and its length, as the in-process evaluation runs it: the
    same masks (lost fractions), recorded in the report; --json alone on stdout."""
    from rmio.api import evaluate

    res = rmio(
        *("swarm", "launch", "halfcheetah_6x1", "--episodes", "2", "--steps", "30"),
        *("--p-loss", "0.4", "--loss-model", "burst", "--mean-burst-length", "6"),
        *("--no-baselines", "--out", str(tmp_path / "out"), "--json"),
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    summary = one_json(res.stdout)
    loss = {"model": "burst", "p_loss": 0.4, "mean_burst_length": 6.0}
    assert summary["loss"] == loss and not summary["interrupted"]
    report = json.loads(Path(summary["report"]).read_text())
    assert report["settings"]["loss"] == loss
    assert "'mean_burst_length': 6.0" in Path(summary["markdown"]).read_text()
    reference = evaluate("halfcheetah_6x1", episodes=2, loss=loss, episode_limit=30)
    swarm = [e["lost_fraction"] for e in summary["episodes"]]
    assert swarm == [r["lost_fraction"] for r in reference] and max(swarm) > 0
    default = evaluate(
        "halfcheetah_6x1", episodes=2, loss={**loss, "mean_burst_length": 4.0}, episode_limit=30
    )
    assert swarm != [r["lost_fraction"] for r in default]  # the length mattered


@pytest.mark.slow
def test_robustness_through_the_swarm_and_the_demo_take_the_loss_model(tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    res = rmio(
        *("eval", "robustness", "halfcheetah_6x1", *SHORT, "--p-loss", "0,0.5"),
        *("--strategies", "world-model", "--loss-model", "burst", "--mean-burst-length", "6"),
        *("--swarm", "--out", str(out), "--json"),
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    summary = one_json(res.stdout)
    assert set(summary["swarm_auc"]) == {"world-model"}
    result = json.loads((out / "robustness.json").read_text())
    inproc = {r["p_loss"]: r for r in result["rows"] if r["strategy"] == "world-model"}
    reports = sorted((out / "swarm").glob("*/report.json"))
    assert len(reports) == 2
    for path in reports:
        report = json.loads(path.read_text())
        p = report["settings"]["loss"]["p_loss"]
        assert report["settings"]["loss"]["model"] == "burst"
        assert report["settings"]["loss"]["mean_burst_length"] == 6.0
        lost = [e["lost_fraction"] for e in report["episodes"]]
        assert lost == [e["lost_fraction"] for e in inproc[p]["episodes"]], p
    # the rows count the blind agents that fell back to their last observation, as the reports do
    events = [json.loads(path.read_text())["events"] for path in reports]
    fallbacks = sum(int(ev.get("agents.recon_miss", 0)) for ev in events)
    assert sum(row["recon_fallbacks"] for row in result["swarm"]) == fallbacks

    demo = tmp_path / "demo"
    res = rmio(
        *("demo", "--p-loss", "0.5", "--episodes", "1", "--steps", "20"),
        *("--loss-model", "blackout", "--blackout-length", "4", "--out", str(demo), "--json"),
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    summary = one_json(res.stdout)
    assert summary["loss"] == {"model": "blackout", "blackout_length": 4}
    assert {row["strategy"] for row in summary["swarm"]} == {"world-model", "zero-fill"}
    assert summary["swarm_auc"]["world-model"]["auc_mean"] is None  # no p_loss 0: no AUC
    (run,) = demo.glob("demo-*")
    for path in (run / "swarm").glob("*/report.json"):
        assert json.loads(path.read_text())["settings"]["loss"]["blackout_length"] == 4


def _device_commands(tmp_path: Path) -> dict[str, list[str]]:
    run = tmp_path / "run"
    run.mkdir(exist_ok=True)
    return {
        "train world-model": ["train", "world-model", "halfcheetah_6x1", "--debug"],
        "train pretrain": ["train", "pretrain", "halfcheetah_6x1", "--debug"],
        "train mappo": ["train", "mappo", "halfcheetah_6x1", "--debug"],
        "train qmix": ["train", "qmix", "lbf_8x8_2p_2f_coop", "--debug"],
        "train mmsa": ["train", "mmsa", "lbf_8x8_2p_2f_coop", "--debug"],
        "train finetune": ["train", "finetune", str(run)],
        "eval reconstruction": ["eval", "reconstruction", str(run)],
        "eval open-loop": ["eval", "open-loop", str(run)],
        "ablate": ["ablate", "fusion_halfcheetah_6x1", "--debug"],
    }


def test_a_bad_device_is_one_line_in_every_command(tmp_path: Path) -> None:
    takes_device = {
        " ".join(path)
        for path, command in _walk(cli)
        if any(p.name == "device" for p in command.params)
    }
    commands = _device_commands(tmp_path)
    assert takes_device == set(commands)
    for name, args in commands.items():
        res = rmio(*args, "--device", "gpu0", cwd=tmp_path, timeout=120)
        assert res.returncode == 2, (name, res.stderr[-2000:])
        assert res.stderr.strip().splitlines() == [
            "rmio: error: --device 'gpu0' is not a device: give cpu, cuda, cuda:N (N: a GPU's "
            "index) or mps"
        ], name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # nothing was started


def test_resolve_device_is_one_line_too() -> None:
    from rmio.errors import RmioError
    from rmio.train.common import resolve_device

    assert str(resolve_device("cpu")) == "cpu"
    with pytest.raises(RmioError, match="'gpu0' is not a device"):
        resolve_device("gpu0")


def _walk(group: Any, prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            yield from _walk(command, (*prefix, name))
        else:
            yield (*prefix, name), command
