"""rmio as a user installs it (issue 17, part 2): a wheel built from this tree, installed in a fresh
virtual environment and used from another directory, with the shipped bundles by name, the docs the
README links, the license, and extra hints that make sense outside a checkout."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from rmio.errors import MissingExtraError

REPO = Path(__file__).resolve().parents[1]
SKIP_TOP = {".git", "runs", "results", "build", "dist", "wandb", ".venv"}
SKIP_ANY = ("__pycache__", "*.egg-info", ".pytest_cache", ".ruff_cache", ".hypothesis", "*.pyc")


def _source_copy(dst: Path) -> Path:
    """The source tree without run outputs and caches, so that building never writes into the
    checkout (setuptools puts build/ and *.egg-info next to pyproject.toml)."""
    skip_any = shutil.ignore_patterns(*SKIP_ANY)

    def ignore(folder: str, names: list[str]) -> set[str]:
        skipped = set(skip_any(folder, names))
        if Path(folder) == REPO:
            skipped |= SKIP_TOP & set(names)
        return skipped

    shutil.copytree(REPO, dst, ignore=ignore)
    return dst


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float) -> str:
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"{' '.join(cmd)} -> {res.returncode}\n{res.stdout}\n{res.stderr}"
    return res.stdout


@pytest.mark.slow
def test_wheel_in_a_fresh_venv_from_another_directory(tmp_path: Path) -> None:
    src = _source_copy(tmp_path / "src")
    wheels = tmp_path / "wheels"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(wheels),
            str(src),
        ],
        tmp_path,
        env,
        300,
    )
    (wheel,) = wheels.glob("rmio-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for shipped in (
        "rmio/__main__.py",
        "rmio/runtime/PROTOCOL.md",
        "rmio/docs/ARCHITECTURE.md",
        "rmio/docs/PERFORMANCE.md",
        "rmio/docs/BENCHMARKS.md",  # the README links it (issue 17, part 4)
        "rmio/models/halfcheetah_6x1/manifest.json",
        "rmio/models/halfcheetah_6x1/MODEL_CARD.md",
    ):
        assert shipped in names, shipped
    shipped_benchmarks = zipfile.ZipFile(wheel).read("rmio/docs/BENCHMARKS.md").decode()
    assert shipped_benchmarks == (REPO / "BENCHMARKS.md").read_text()  # the file, not a link
    info = next(n for n in names if n.endswith(".dist-info/METADATA"))
    metadata = zipfile.ZipFile(wheel).read(info).decode()
    assert "License-Expression: MIT" in metadata and "License-File: LICENSE" in metadata
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], tmp_path, env, 120)
    py, exe = venv / "bin" / "python", venv / "bin" / "rmio"
    _run([str(py), "-m", "pip", "install", "-q", "--no-deps", str(wheel)], tmp_path, env, 300)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    where = _run(
        [str(py), "-c", "import rmio, rmio.runtime; print(rmio.__file__, rmio.runtime.__file__)"],
        elsewhere,
        env,
        60,
    )
    assert all(Path(p).is_relative_to(venv) for p in where.split()), where
    assert _run([str(py), "-m", "rmio", "--version"], elsewhere, env, 60).strip() == (
        "rmio, version 0.1.0"
    )
    listing = _run([str(exe), "models"], elsewhere, env, 60)
    assert "halfcheetah_6x1" in listing and "smax_2s3z" in listing
    _run(
        [
            str(exe),
            "eval",
            "robustness",
            "halfcheetah_6x1",
            *("--episodes", "1", "--seeds", "1"),
            "--steps",
            "50",
        ],
        elsewhere,
        env,
        600,
    )
    result = json.loads(
        (elsewhere / "results/robustness-halfcheetah_6x1/robustness.json").read_text()
    )
    assert result["scenario"] == "mamujoco/HalfCheetah-6x1" and result["episode_limit"] == 50
    _run(
        [str(exe), "swarm", "launch", "halfcheetah_6x1", "--episodes", "1", "--steps", "50"],
        elsewhere,
        env,
        600,
    )
    (report,) = (elsewhere / "results").glob("swarm-*/report.json")
    data = json.loads(report.read_text())
    assert data["env_steps"] == 50 and len(data["episodes"]) == 1


def test_missing_extra_hint_works_outside_a_checkout() -> None:
    text = str(MissingExtraError("SMAX", "smax"))
    assert "pip install 'rmio[smax]'" in text
