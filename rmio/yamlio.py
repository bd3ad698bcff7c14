"""Reading user-written YAML files (configs, loss schedules, rosters) with one kind of clear
error."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from rmio.errors import ConfigError


def load_yaml(path: str | Path, what: str) -> Any:
    """Parsed content of ``path``; a missing file or bad YAML is a ConfigError naming ``what`` and
    where."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} '{path}' does not exist")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{what} '{path}': malformed YAML{where}: {problem}") from None
