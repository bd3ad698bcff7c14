"""Click parameter types shared by the CLI's command modules."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click


class BundleParam(click.ParamType):
    """A bundle directory, or the name of a bundle shipped with rmio (``halfcheetah_6x1`` or
    ``models/halfcheetah_6x1``), from any working directory. With ``runs=True`` a training run
    directory is accepted too (the caller exports it)."""

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


def config_options(default: str | None = None) -> Callable:
    """CONFIG argument plus --debug and --set, shared by every command that reads a scenario
    config."""

    def decorate(fn: Callable) -> Callable:
        @click.argument("config", required=default is None, default=default)
        @click.option(
            "--debug", is_flag=True, help="Apply the config's tiny `debug` preset (what CI runs)."
        )
        @click.option(
            "--set",
            "overrides",
            multiple=True,
            metavar="KEY=VALUE",
            help="Override one key, e.g. --set loss.p_loss=0.3 (repeatable).",
        )
        @click.option("--seed", type=int, default=None, help="Shortcut for --set run.seed=N.")
        @click.option(
            "--algo",
            default=None,
            metavar="NAME",
            help="Method variant: rmiov2, gawm, rmiov2-no-obs-fusion, rmiov2-no-action-fusion, "
            "rmiov2-no-fusion.",
        )
        @functools.wraps(fn)
        def wrapper(
            config: str,
            debug: bool,
            overrides: tuple[str, ...],
            seed: int | None,
            algo: str | None,
            **kwargs: Any,
        ) -> Any:
            from rmio.config import load_config

            if seed is not None:
                overrides = (*overrides, f"run.seed={seed}")
            cfg = load_config(
                config, preset="debug" if debug else None, overrides=overrides, algo=algo
            )
            if "algo" in inspect.signature(fn).parameters:
                kwargs["algo"] = algo
            return fn(cfg=cfg, **kwargs)

        return wrapper

    return decorate
