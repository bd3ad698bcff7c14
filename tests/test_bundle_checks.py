"""Bundles are checked before anything runs (issue 17, part 1): checksums, graph signatures against
the manifest, corrupt files, and the command-line errors a user meets (a bad bundle, a port in use,
a malformed roster) as one line with exit code 2, before any process starts."""

from __future__ import annotations

import json
import logging
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rmio.errors import RmioError
from rmio.models import find_bundle
from rmio.runtime.bundle import load_manifest
from rmio.runtime.launcher import Launcher, build_settings
from rmio.runtime.validate import bundle_checksums, check_bundle, verify_bundle

REPO = Path(__file__).resolve().parents[1]
HC, SMAX = find_bundle("halfcheetah_6x1"), find_bundle("smax_2s3z")


def rmio(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rmio.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def copy_bundle(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.md", "*.png"))
    return dst


def rewrite_manifest(bundle: Path, **changes: object) -> None:
    path = bundle / "manifest.json"
    data = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    path.write_text(json.dumps(data, indent=2))


def reseal(bundle: Path) -> None:
    """Record the checksums of the files as they are now (what an exporter would write)."""
    rewrite_manifest(bundle, sha256=bundle_checksums(bundle, load_manifest(bundle)))


@pytest.mark.parametrize("bundle", [HC, SMAX], ids=["halfcheetah", "smax"])
def test_shipped_bundles_carry_matching_checksums(bundle: Path, caplog) -> None:
    manifest = load_manifest(bundle)
    assert set(manifest.sha256) == set(manifest.files.values())
    with caplog.at_level(logging.WARNING):
        verify_bundle(bundle)
    assert "checksums" not in caplog.text
    assert "sha256 checked" in check_bundle(bundle)


@pytest.mark.parametrize(
    ("host", "donor", "wants"),
    [(HC, SMAX, "avail_actions"), (SMAX, HC, "avail_actions")],
    ids=["smax-actor-in-halfcheetah", "halfcheetah-actor-in-smax"],
)
def test_swapped_actor_fails_the_signature_check(tmp_path, host, donor, wants) -> None:
    bundle = copy_bundle(host, tmp_path / "b")
    shutil.copy2(donor / "actor.onnx", bundle / "actor.onnx")
    reseal(bundle)  # checksums alone would not catch a swap made before sealing
    with pytest.raises(RmioError) as err:
        verify_bundle(bundle)
    text = str(err.value)
    assert str(bundle / "actor.onnx") in text and wants in text and "\n" not in text


def test_swapped_actor_is_refused_by_every_command_before_any_process(tmp_path) -> None:
    bundle = copy_bundle(HC, tmp_path / "b")
    shutil.copy2(SMAX / "actor.onnx", bundle / "actor.onnx")
    reseal(bundle)
    out = tmp_path / "out"
    for args in (
        ["export", "--check", str(bundle)],
        ["eval", "robustness", str(bundle), "--episodes", "1", "--seeds", "1", "--steps", "5"],
        ["swarm", "launch", str(bundle), "--episodes", "1", "--steps", "5", "--out", str(out)],
        ["demo", str(bundle), "--steps", "5", "--out", str(out)],
        ["swarm", "roster", str(bundle), "-o", str(tmp_path / "roster.yaml")],
    ):
        res = rmio(*args, cwd=tmp_path)
        assert res.returncode == 2, (args, res.stdout, res.stderr)
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and "actor.onnx" in lines[0] and "Traceback" not in res.stderr, args
    assert not out.exists() and not (tmp_path / "results").exists()
    assert not (tmp_path / "roster.yaml").exists()


def test_replaced_file_fails_the_checksum(tmp_path) -> None:
    bundle = copy_bundle(HC, tmp_path / "b")
    shutil.copy2(HC / "wm_step_pretrain.onnx", bundle / "wm_step.onnx")  # same signature
    with pytest.raises(RmioError, match=re.escape(str(bundle / "wm_step.onnx")) + ".*sha256"):
        verify_bundle(bundle)


def test_corrupt_onnx_is_one_line_exit_2(tmp_path) -> None:
    bundle = copy_bundle(HC, tmp_path / "b")
    data = (bundle / "actor.onnx").read_bytes()
    (bundle / "actor.onnx").write_bytes(data[: len(data) // 3])
    res = rmio("export", "--check", str(bundle), cwd=tmp_path)
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
    assert "actor.onnx" in res.stderr and "sha256" in res.stderr
    # without checksums (an old bundle), onnxruntime's refusal is the one line
    rewrite_manifest(bundle, sha256=None)
    res = rmio("eval", "robustness", str(bundle), "--episodes", "1", "--steps", "5", cwd=tmp_path)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert "actor.onnx" in last and "not a loadable ONNX graph" in last


def test_old_bundle_without_checksums_loads_with_a_warning(tmp_path, caplog) -> None:
    bundle = copy_bundle(HC, tmp_path / "b")
    rewrite_manifest(bundle, sha256=None)
    with caplog.at_level(logging.WARNING, logger="rmio.runtime.validate"):
        manifest = verify_bundle(bundle)
    assert manifest.sha256 == {} and "no sha256 checksums" in caplog.text


def test_latent_sizes_are_checked_against_the_manifest(tmp_path) -> None:
    bundle = copy_bundle(HC, tmp_path / "b")
    rewrite_manifest(bundle, deter=64)
    with pytest.raises(RmioError, match=r"input 'h' is float32 \(B, 6, 128\).*\(B, 6, 64\)"):
        verify_bundle(bundle)


def test_agent_that_dies_before_greeting_stops_the_launch(tmp_path) -> None:
    """The bundle breaks after the launcher checked it: the first agent's own error ends the launch
    at once, instead of restarts and a silent env host."""
    bundle = copy_bundle(HC, tmp_path / "b")
    settings = build_settings(bundle, steps=20, episodes=1, baselines=False)
    (bundle / "actor.onnx").write_bytes(b"not an onnx graph")
    launcher = Launcher(settings, tmp_path / "run")
    with pytest.raises(RmioError) as err:
        launcher.run()
    text = str(err.value)
    when = "(at startup|before greeting the env host)"
    assert re.match(rf"a\d exited with code 2 {when}: ", text), text
    assert "actor.onnx: not a loadable ONNX graph" in text and "\n" not in text
    assert all(c.restarts == 0 for c in launcher.children.values())
    assert all(c.proc.poll() is not None for c in launcher.children.values())


def _free_tcp_port() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    return sock


def test_port_in_use_is_one_line_naming_the_endpoint(tmp_path) -> None:
    holder = _free_tcp_port()
    try:
        port = holder.getsockname()[1]
        settings = build_settings(HC, steps=5, episodes=1, transport="tcp", baselines=False)
        endpoints = {"env": f"tcp://127.0.0.1:{port}"}
        endpoints.update({f"a{i}": f"tcp://127.0.0.1:{port}" for i in range(6)})
        roster = tmp_path / "roster.yaml"
        roster.write_text(
            yaml.safe_dump(
                {
                    "version": 1,
                    "endpoints": endpoints,
                    "settings": {**settings.to_dict(), "insecure": True},  # no key: not the point
                }
            )
        )
        res = rmio("swarm", "env-host", "--roster", str(roster), cwd=tmp_path, timeout=60)
    finally:
        holder.close()
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and f"tcp://127.0.0.1:{port}" in lines[0], res.stderr


@pytest.mark.parametrize(
    ("edit", "wants"),
    [
        (lambda d: [d["settings"].pop(k) for k in ("bundle", "n_agents")], "bundle, n_agents"),
        (lambda d: d["endpoints"].update(a1="tcp//127.0.0.1:5551"), "endpoint 'a1'"),
        (lambda d: d.update(settings=["not", "a", "mapping"]), "'settings' must be a mapping"),
        (lambda d: d["settings"].update(transport="carrier-pigeon"), "transport"),
    ],
    ids=["missing-keys", "bad-endpoint", "settings-not-mapping", "bad-transport"],
)
def test_malformed_roster_is_one_line_naming_the_key(tmp_path, edit, wants) -> None:
    roster = tmp_path / "roster.yaml"
    made = rmio("swarm", "roster", "halfcheetah_6x1", "-o", str(roster), cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    data = yaml.safe_load(roster.read_text())
    edit(data)
    roster.write_text(yaml.safe_dump(data))
    res = rmio("swarm", "agent", "--id", "0", "--roster", str(roster), cwd=tmp_path, timeout=60)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and str(roster) in lines[0] and wants in lines[0], res.stderr
    assert "__init__" not in res.stderr


MACHINE_PATH = re.compile(rb"/(work|tmp|root|home)/")


def test_no_tracked_file_names_a_path_of_this_machine() -> None:
    """Manifests, ONNX graphs, results and docs must not hold absolute paths of the machine that
    wrote them (the exporter strips them); only this test spells the pattern."""
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    files = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True, timeout=60
    ).stdout.split(b"\0")
    me = Path(__file__).resolve().relative_to(REPO).as_posix()
    scanned, found = 0, []
    for name in filter(None, (f.decode() for f in files)):
        path = REPO / name
        if name == me or not path.is_file():
            continue
        scanned += 1
        hits = MACHINE_PATH.findall(path.read_bytes())
        if hits:
            found.append(f"{name} ({len(hits)})")
    assert scanned > 100 and "models/halfcheetah_6x1/manifest.json" in {n.decode() for n in files}
    assert not found, f"absolute machine paths in: {', '.join(found)}"
