"""`rmio swarm compose` (issue 19, the deployment kit): a compose file generated from a roster has
one service per role, mounts what each role needs and nothing more (its own CURVE secret key,
never another's), and holds no path of the machine that wrote it.

No container engine runs here (the docker client is installed, no daemon and no compose plugin),
so the check is structural, and then functional without docker: every volume is "mounted" by
copying its host path to its container path under a scratch root, and each service's role loads
its roster, bundle, swarm key and CURVE keys from there exactly as it would in its container.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rmio.runtime.auth import load_key
from rmio.runtime.bundle import load_manifest
from rmio.runtime.curve import CurveKeys, swarm_names
from rmio.runtime.settings import Roster


def _rmio(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rmio.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
    )


@pytest.fixture()
def roster(tmp_path: Path) -> Path:
    """A CURVE roster with a world-model node, its key, keys and bundle in one folder."""
    folder = tmp_path / "swarm"
    folder.mkdir()
    shutil.copytree(Path(__file__).parents[1] / "models" / "halfcheetah_6x1", folder / "bundle")
    made = _rmio(
        *("swarm", "roster", "bundle", "--world-model", "node", "--curve", "-o", "roster.yaml"),
        cwd=folder,
    )
    assert made.returncode == 0, made.stderr
    return folder / "roster.yaml"


def _mount(volume: str, base: Path, root: Path) -> tuple[Path, str]:
    """Copy one ``HOST:CONTAINER[:ro]`` volume into a scratch container root."""
    host, target, *mode = volume.split(":")
    source = (base / host).resolve()
    dest = root / target.lstrip("/")
    dest.parent.mkdir(parents=True, exist_ok=True)
    if source.is_dir():
        shutil.copytree(source, dest, dirs_exist_ok=True)
    elif source.is_file():
        shutil.copy2(source, dest)
    else:  # only the env host's output folder may not exist yet
        dest.mkdir(parents=True)
    return dest, ":".join(mode)


def test_a_compose_file_has_one_service_per_role_and_only_its_own_secret(
    roster: Path, tmp_path: Path
) -> None:
    out = tmp_path / "deploy" / "docker-compose.yml"
    out.parent.mkdir()
    made = _rmio("swarm", "compose", str(roster), "--out", str(out), cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    text = out.read_text()
    for machine_path in (str(tmp_path), *(f"/{d}/" for d in ("tmp", "work", "root", "home"))):
        assert machine_path not in text
    doc = yaml.safe_load(text)
    spec = Roster.load(roster)
    names = swarm_names(6, wm=True, launcher=False)
    assert list(doc["services"]) == list(spec.endpoints) == names
    for name, service in doc["services"].items():
        role = {"env": "env-host", "wm": "wm-node"}.get(name, "agent")
        assert service["command"] == [role, "--name", name, "--roster", "/swarm/roster.yaml"]
        assert service["image"] == ("rmio-full" if name == "env" else "rmio-runtime")
        assert service["network_mode"] == "host"
        assert service["user"] == "${RMIO_USER:-10001}"  # the owner of the 0600 key files
        secrets = [v for v in service["volumes"] if "/secret/" in v]
        assert secrets == [
            f"../swarm/roster.curve/secret/{name}.key_secret:"
            f"/swarm/roster.curve/secret/{name}.key_secret:ro"
        ]
        root = tmp_path / "containers" / name
        for volume in service["volumes"]:
            host, target = volume.split(":")[:2]
            assert not host.startswith("/") and target.startswith("/")
            _, mode = _mount(volume, out.parent, root)
            assert mode == ("" if target.startswith("/run/rmio/") else "ro"), volume
        # inside the container: the role finds everything it loads, and no other role's secret
        inside = Roster.load(root / "swarm" / "roster.yaml")
        assert load_manifest(inside.settings.bundle).spec.n_agents == 6
        assert len(load_key(inside.settings.key_file or "")) == 32
        keys = CurveKeys.load(inside.settings.curve_dir or "", name, names)
        assert keys.public == spec_public(roster, name)
        assert sorted(p.name for p in (root / "swarm/roster.curve/secret").iterdir()) == [
            f"{name}.key_secret"
        ]
    assert any(v.endswith(":/run/rmio/results") for v in doc["services"]["env"]["volumes"])


def spec_public(roster: Path, name: str) -> bytes:
    return (roster.parent / "roster.curve" / "public" / f"{name}.key").read_text().strip().encode()


def test_a_roster_whose_bundle_lies_elsewhere_is_refused(tmp_path: Path) -> None:
    """The compose file mounts the roster's folder: a bundle outside it (an absolute path in the
    roster) would be a path of this machine inside the file."""
    folder = tmp_path / "swarm"
    folder.mkdir()
    bundle = Path(__file__).parents[1] / "models" / "halfcheetah_6x1"
    made = _rmio("swarm", "roster", str(bundle), "-o", "roster.yaml", cwd=folder)
    assert made.returncode == 0, made.stderr
    refused = _rmio("swarm", "compose", "roster.yaml", cwd=folder)
    assert refused.returncode == 2
    assert "not under the roster's folder" in refused.stderr
    assert not (folder / "docker-compose.yml").exists()


def test_doctor_names_the_providers_extras_and_keys_it_finds(roster: Path, tmp_path: Path) -> None:
    """`rmio swarm doctor`: what a deployer checks on each machine before starting a role."""
    import importlib.util

    import onnxruntime as ort

    (roster.parent / "roster.curve" / "secret" / "a3.key_secret").unlink()  # not this machine's
    done = _rmio("swarm", "doctor", "--roster", str(roster), "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert found["providers"] == ort.get_available_providers()
    assert "CPUExecutionProvider" in found["providers"]
    for modules in found["extras"].values():
        for module, version in modules.items():
            assert (version is not None) == (importlib.util.find_spec(module) is not None), module
    keys = found["roster"]
    assert keys["key_file"] == {"bytes": 32, "ok": True} and not keys["insecure"]
    names = swarm_names(6, wm=True, launcher=False)
    assert keys["curve"]["public"] == names
    assert keys["curve"]["secret"] == [n for n in names if n != "a3"]
