"""The deployed halves (runtime, agents, coordinator, envs) must never need torch."""

from __future__ import annotations

import subprocess
import sys

TORCH_FREE = ("rmio.runtime", "rmio.agents", "rmio.coordinator", "rmio.envs")

PROBE = """
import importlib, pkgutil, sys
roots = {roots!r}
imported = []
for root in roots:
    pkg = importlib.import_module(root)
    imported.append(root)
    for info in pkgutil.walk_packages(pkg.__path__, root + "."):
        importlib.import_module(info.name)
        imported.append(info.name)
import rmio.cli, rmio.config, rmio.demo
loaded = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
print(len(imported), "modules;", "torch loaded by:" if loaded else "no torch", loaded[:3])
sys.exit(1 if loaded else 0)
"""


def test_runtime_packages_never_import_torch() -> None:
    """Every module of the torch-free packages (and the CLI) is imported in a fresh interpreter."""
    proc = subprocess.run(
        [sys.executable, "-c", PROBE.format(roots=TORCH_FREE)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "no torch" in proc.stdout
    assert int(proc.stdout.split()[0]) >= 10  # the walk really found the modules
