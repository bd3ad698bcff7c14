"""Click parameter types shared by the CLI's command modules."""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from rmio.errors import MissingExtraError


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


class DeviceParam(click.ParamType):
    """A torch device string, checked when the command line is read, before anything starts: cpu,
    cuda, cuda:N or mps. A bad one is an RmioError: one line on stderr, exit code 2."""

    name = "device"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        from rmio.errors import RmioError

        text = str(value).strip()
        if re.fullmatch(r"cpu|mps|cuda(:[0-9]+)?", text):
            return text
        raise RmioError(
            f"--device '{value}' is not a device: give cpu, cuda, cuda:N (N: a GPU's index) or mps"
        )


DEVICE = DeviceParam()


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


LOSS_OPTION_NAMES = ("loss_model", "mean_burst_length", "blackout_length", "blackout_rate")


def loss_options(fn: Callable) -> Callable:
    """--loss-model and its parameters, with one meaning in every command that takes them (eval
    robustness, swarm launch and roster, demo): a model's name with --p-loss as its long-run lost
    fraction, or a YAML file (rmio.envs.loss.resolve_loss)."""
    options = [
        click.option(
            "--loss-model",
            default=None,
            metavar="MODEL|FILE",
            help="bernoulli (default), burst or blackout, at the lost fraction --p-loss, with the "
            "options below; or a YAML file: a mapping of loss settings (model, mean_burst_length, "
            "...) or a list of schedule entries ({steps, agents}).",
        ),
        click.option(
            "--mean-burst-length",
            type=click.FloatRange(min=1.0),
            default=None,
            help="burst: mean number of consecutive lost steps [4].",
        ),
        click.option(
            "--blackout-length",
            type=click.IntRange(min=1),
            default=None,
            help="blackout: steps every agent is blind once a blackout starts [5].",
        ),
        click.option(
            "--blackout-rate",
            type=click.FloatRange(0.0, 1.0),
            default=None,
            help="blackout: chance that one starts at a step, instead of the rate that gives the "
            "lost fraction --p-loss.",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


json_option = click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print one JSON summary on stdout (results and the files written); everything else goes "
    "to stderr.",
)
"""--json, the same in every command that has it (eval robustness, swarm launch, demo)."""


def require_torch() -> None:
    """The training commands need the `train` extra: one line saying so, not a traceback."""
    try:
        import torch  # noqa: F401
    except ImportError:
        raise MissingExtraError("training", "train") from None


device_option = click.option(
    "--device", type=DEVICE, default="cpu", show_default=True, help="cpu, cuda or cuda:N."
)
