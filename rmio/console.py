"""The one console every command prints through, in a leaf module so that the CLI's command modules
(cli, cli_eval, cli_train, cli_swarm, cli_swarm_group, demo) share it without importing each
other."""

from __future__ import annotations

from rich.console import Console


def make_console(stderr: bool = False) -> Console:
    """The console every command prints through. Rich word-wraps text at the terminal's width, and
    at 80 columns when stdout is not a terminal; off a terminal (a pipe, a log file, a test) nothing
    is folded (soft wrap), so a path or a one-line message stays whole on its line for whoever
    searches it. Tables, rules and progress bars still lay out within the width. ``stderr``: for
    commands whose stdout carries only a ``--json`` summary."""
    out = Console(stderr=stderr)
    out.soft_wrap = not out.is_terminal
    return out


console = make_console()
