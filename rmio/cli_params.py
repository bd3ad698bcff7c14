"""Click parameter types shared by the CLI's command modules."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click


class BundleParam(click.ParamType):
    """A bundle directory, or the name of a bundle shipped with rmio (``halfcheetah_6x1`` or
    ``models/halfcheetah_6x1``), from any working directory. With ``runs=True`` a training run directory
    is accepted too (the caller exports it)."""

    name = "bundle"

    def __init__(self, runs: bool = False) -> None:
        self.runs = runs

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Path:
        from rmio.models import find_bundle

        if isinstance(value, Path) and value.is_dir():
            return value
        if self.runs and Path(value).is_dir():
            return Path(value)
        return find_bundle(value)  # an unknown one is an RmioError: one line on stderr, exit code 2


BUNDLE = BundleParam()
BUNDLE_OR_RUN = BundleParam(runs=True)
