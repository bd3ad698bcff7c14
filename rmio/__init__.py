"""rmio: robust multi-agent world models and a swarm runtime that keeps acting under observation
loss.

The Python API (``rmio.load_bundle``, ``rmio.evaluate``, ``rmio.robustness_sweep``,
``rmio.launch_swarm``, ``rmio.parallel_env``, ...) lives in :mod:`rmio.api` and is re-exported here
lazily, so that importing a runtime module (``rmio.runtime.wire`` in an agent process) does not load
the evaluation code."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("rmio")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

_API = (
    "Bundle",
    "EnvConfig",
    "LossConfig",
    "check_bundle",
    "evaluate",
    "launch_swarm",
    "load_bundle",
    "make_env",
    "parallel_env",
    "robustness_sweep",
)

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    """PEP 562: the API names are imported on first use."""
    if name in _API:
        from rmio import api

        return getattr(api, name)
    raise AttributeError(f"module 'rmio' has no attribute {name!r}")
