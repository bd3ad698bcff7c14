"""The `rmio` command as a user runs it: real subprocesses, real exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import click
import pytest

from rmio.cli import cli
from rmio.envs.trajectory import TrajectoryBuffer


def rmio(*args: str, cwd: Path | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rmio.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
    )


def _all_commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = [prefix]
    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            out += _all_commands(cmd, (*prefix, name))
        else:
            out.append((*prefix, name))
    return out


@pytest.mark.parametrize("command", _all_commands(cli), ids=lambda c: " ".join(c) or "rmio")
def test_every_command_has_help(command: tuple[str, ...]) -> None:
    from click.testing import CliRunner

    result = CliRunner().invoke(cli, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


def test_version() -> None:
    proc = rmio("--version")
    assert proc.returncode == 0
    assert proc.stdout.startswith("rmio, version ")


def test_demo_runs_the_swarm_on_the_committed_bundle(tmp_path: Path) -> None:
    """README's first command, shortened: real agent processes on the shipped HalfCheetah 6x1
    bundle."""
    proc = rmio("demo", "--steps", "25", "--p-loss", "0,0.5", "--out", str(tmp_path), timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "through the swarm" in proc.stdout and "AUC" in proc.stdout
    (run,) = tmp_path.iterdir()
    result = json.loads((run / "robustness.json").read_text())
    assert result["scenario"] == "mamujoco/HalfCheetah-6x1" and result["episode_limit"] == 25
    swarm = {(r["strategy"], r["p_loss"]): r for r in result["swarm"]}
    assert set(swarm) == {(s, p) for s in ("world-model", "zero-fill") for p in (0.0, 0.5)}
    assert (
        swarm[("world-model", 0.5)]["bytes_per_step"]
        > 0
        == swarm[("world-model", 0.0)]["bytes_per_step"]
    )
    assert (run / "robustness.png").stat().st_size > 1000
    assert len(list((run / "swarm").glob("*/report.json"))) == 4


def test_collect_writes_a_loadable_buffer(tmp_path: Path) -> None:
    out = tmp_path / "traj.npz"
    proc = rmio(
        "collect",
        "hopper_3x1",
        "--debug",
        "--steps",
        "60",
        "--out",
        str(out),
        "--set",
        "loss.p_loss=0.3",
    )
    assert proc.returncode == 0, proc.stderr
    buf = TrajectoryBuffer.load(out)
    assert buf.spec.name == "mamujoco/Hopper-3x1" and len(buf) >= 60
    assert "p_loss: 0.3" in (tmp_path / "config.yaml").read_text()


def test_printed_paths_and_errors_are_never_folded(tmp_path: Path) -> None:
    """Off a terminal (here a pipe) rich would fold text at 80 columns; a path or a message must
    stay on its line."""
    deep = (
        tmp_path
        / ("a-directory-name-long-enough-to-pass-eighty-columns-" * 2)
        / "and-one-more-level"
    )
    out = deep / "trajectories.npz"
    proc = rmio("collect", "hopper_3x1", "--debug", "--steps", "1", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert len(f"wrote {out}") > 160
    assert f"wrote {out}" in proc.stdout.splitlines()
    assert any(
        line.endswith("observations lost") and "env steps" in line
        for line in proc.stdout.splitlines()
    )
    missing = deep / "no-such-config.yaml"
    proc = rmio("config", "show", str(missing))
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [f"rmio: error: config file '{missing}' does not exist"]


def test_config_show_applies_preset_and_overrides() -> None:
    proc = rmio("config", "show", "ant_4x2", "--debug", "--set", "loss.p_loss=0.7")
    assert proc.returncode == 0, proc.stderr
    assert "episode_limit: 50" in proc.stdout and "p_loss: 0.7" in proc.stdout


BAD_INPUTS = {
    "unknown scenario": (["collect", "starcraft_9000"], "unknown scenario config 'starcraft_9000'"),
    "impossible agent_conf": (
        ["collect", "--steps", "5", "halfcheetah_6x1", "--set", "env.scenario=HalfCheetah-7x9"],
        "7x9",
    ),
    "p_loss above 1": (
        ["collect", "halfcheetah_6x1", "--set", "loss.p_loss=1.5"],
        "p_loss must be in [0, 1]",
    ),
    "unknown key": (
        ["collect", "halfcheetah_6x1", "--set", "loss.ploss=0.1"],
        "unknown key 'loss.ploss'",
    ),
    "smac not installed": (["collect", "smac_8m", "--steps", "5"], "oxwhirl"),
    "demo of a missing bundle": (
        ["demo", "/nonexistent/bundle"],
        "no bundle '/nonexistent/bundle'",
    ),
    "demo with bad p_loss": (["demo", "--p-loss", "0,lots"], "comma-separated"),
}


@pytest.mark.parametrize("case", BAD_INPUTS, ids=list(BAD_INPUTS))
def test_bad_input_is_one_clear_line(case: str, tmp_path: Path) -> None:
    args, needle = BAD_INPUTS[case]
    proc = rmio(*args, *(["--out", str(tmp_path / "x.npz")] if args[0] == "collect" else []))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert needle in lines[0]


def test_malformed_yaml_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("env:\n  family: mamujoco\n    scenario: Ant-4x2\n")
    proc = rmio("config", "show", str(path))
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "malformed YAML at line 3" in proc.stderr


def test_missing_optional_extra_is_named() -> None:
    """With jaxmarl unimportable, SMAX asks for the `smax` extra (the import is really blocked)."""
    code = (
        "import sys; sys.modules['jaxmarl'] = None\nfrom rmio.cli import main; main(['collect', "
        "'smax_3m', '--steps', '5', '--out', 'unused.npz'])"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "pip install" in proc.stderr and "[smax]" in proc.stderr


def test_shipped_bundles_are_found_by_name_from_any_directory(tmp_path: Path) -> None:
    """`rmio models` lists the shipped bundles, and a name (or models/NAME) works as a BUNDLE
    outside a checkout directory; an unknown one is one usage error naming what is shipped."""
    listing = rmio("models", cwd=tmp_path)
    assert (
        listing.returncode == 0
        and "halfcheetah_6x1" in listing.stdout
        and "smax_2s3z" in listing.stdout
    )
    for name in ("halfcheetah_6x1", "models/smax_2s3z"):
        proc = rmio("export", "--check", name, cwd=tmp_path)
        assert proc.returncode == 0 and "is valid" in proc.stdout, proc.stderr
    bad = rmio("export", "--check", "nope", cwd=tmp_path)
    assert (
        bad.returncode == 2 and "no bundle 'nope'" in bad.stderr and "halfcheetah_6x1" in bad.stderr
    )
