"""One consistent command line (issue 17, part 4): one transport list, ipc and wildcard hosts
refused where they cannot work, one AUC for every report, -v reaching every swarm process, and a
plot that refuses a metric it has no data for."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rmio.cli import cli
from rmio.evaluation.robustness import summarise
from rmio.evaluation.swarm import swarm_auc
from rmio.runtime.settings import TRANSPORTS


def rmio(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rmio.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_one_transport_list_everywhere() -> None:
    commands = {
        "demo": cli.commands["demo"],
        "swarm launch": cli.commands["swarm"].commands["launch"],
        "swarm roster": cli.commands["swarm"].commands["roster"],
        "eval robustness": cli.commands["eval"].commands["robustness"],
    }
    for name, command in commands.items():
        (param,) = [p for p in command.params if p.name == "transport"]
        assert tuple(param.type.choices) == TRANSPORTS, name


def test_roster_refuses_ipc_and_wildcard_hosts_and_defaults_to_tcp(tmp_path) -> None:
    out = tmp_path / "roster.yaml"
    res = rmio(
        "swarm", "roster", "halfcheetah_6x1", "--transport", "ipc", "-o", str(out), cwd=tmp_path
    )
    assert res.returncode == 2 and "ipc" in res.stderr and not out.exists(), res.stderr
    res = rmio(
        "swarm", "roster", "halfcheetah_6x1", "--host", "0.0.0.0", "-o", str(out), cwd=tmp_path
    )
    assert res.returncode == 2 and "'0.0.0.0'" in res.stderr and not out.exists(), res.stderr
    res = rmio(
        "swarm", "roster", "halfcheetah_6x1", "--host", "10.1.2.3", "-o", str(out), cwd=tmp_path
    )
    assert res.returncode == 0, res.stderr
    data = yaml.safe_load(out.read_text())
    assert data["settings"]["transport"] == "tcp"
    assert all(e.startswith("tcp://10.1.2.3:") for e in data["endpoints"].values())
    res = rmio(
        "swarm", "roster", "halfcheetah_6x1", "--transport", "udp", "-o", str(out), cwd=tmp_path
    )
    assert res.returncode == 0, res.stderr
    data = yaml.safe_load(out.read_text())
    assert data["settings"]["transport"] == "udp"
    assert all(e.startswith("udp://") for e in data["endpoints"].values())


def _episodes(value: float) -> list[dict[str, object]]:
    return [{"seed": 0, "return": value, "steps": 10, "won": False, "lost_fraction": 0.0}]


def test_swarm_auc_is_the_in_process_auc_on_identical_returns() -> None:
    """The same returns, cell for cell, give the same AUC whether they came from the swarm or from
    the in-process sweep: both are the mean of per-seed-family AUCs, with the same spread."""
    p_loss = [0.0, 0.5, 1.0]
    returns = {0: [100.0, 60.0, 20.0], 1: [50.0, 45.0, 40.0], 2: [80.0, 10.0, 5.0]}
    random = {0: 10.0, 1: 0.0, 2: 30.0}
    rows = [
        {"strategy": "random", "p_loss": 0.0, "seed": s, "episodes": _episodes(random[s])}
        for s in returns
    ]
    rows += [
        {"strategy": "world-model", "p_loss": p, "seed": s, "episodes": _episodes(returns[s][i])}
        for s in returns
        for i, p in enumerate(p_loss)
    ]
    result = summarise(
        {"metric": "return", "p_loss": p_loss, "strategies": ["world-model"], "rows": rows}
    )
    result["swarm"] = [
        {
            "strategy": "world-model",
            "p_loss": p,
            "per_seed": [returns[s][i] for s in sorted(returns)],
            "mean": sum(returns[s][i] for s in returns) / len(returns),
        }
        for i, p in enumerate(p_loss)
    ]
    inproc = result["summary"]["world-model"]
    swarm = swarm_auc(result)["world-model"]
    assert swarm["auc_per_seed"] == pytest.approx(inproc["auc_per_seed"])
    assert swarm["auc_mean"] == pytest.approx(inproc["auc_mean"])
    assert swarm["auc_std"] == pytest.approx(inproc["auc_std"]) and swarm["auc_std"] > 1.0
    # the AUC of the mean curve, what the swarm used to report, differs on these returns
    mean_curve = [sum(returns[s][i] for s in returns) / 3 for i in range(3)]
    mean_random = sum(random.values()) / 3
    norm = [(v - mean_random) / (mean_curve[0] - mean_random) for v in mean_curve]
    of_mean = 100 * 0.5 * (0.5 * (norm[0] + norm[1]) + 0.5 * (norm[1] + norm[2]))
    assert abs(of_mean - inproc["auc_mean"]) > 1.0


@pytest.mark.slow
def test_verbose_reaches_every_swarm_process(tmp_path) -> None:
    res = rmio(
        "-v",
        "swarm",
        "launch",
        "halfcheetah_6x1",
        *("--episodes", "1", "--steps", "5", "--no-baselines", "--out", str(tmp_path)),
        cwd=tmp_path,
        timeout=240,
    )
    assert res.returncode == 0, res.stderr
    (logs,) = tmp_path.glob("swarm-*/logs")
    names = sorted(p.stem for p in logs.glob("*.log"))
    assert names == ["a0", "a1", "a2", "a3", "a4", "a5", "env"]
    for name in names:
        assert f" {name} INFO " in (logs / f"{name}.log").read_text(), name


def test_plot_refuses_a_metric_it_has_no_data_for(tmp_path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    rows = [{"step": 1000 * k, "return_mean": float(k), "return_std": 0.5} for k in range(1, 4)]
    (run / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    png = tmp_path / "curves.png"
    res = rmio("plot", str(run), "--metric", "win_rate", "--out", str(png), cwd=tmp_path)
    assert res.returncode == 2 and not png.exists(), res.stderr
    assert "win_rate" in res.stderr and "return_mean" in res.stderr
    res = rmio("plot", str(run), "--out", str(png), cwd=tmp_path)
    assert res.returncode == 0 and png.stat().st_size > 1000, res.stderr


def test_demo_rejects_a_bad_p_loss_before_its_banner(tmp_path) -> None:
    res = rmio("demo", "--p-loss", "0,1.5", "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert res.returncode == 2 and res.stdout == "", res.stdout
    assert "1.5" in res.stderr and not (tmp_path / "out").exists()
