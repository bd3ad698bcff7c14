"""User-facing errors: the CLI prints them as one line and exits with code 2, no traceback."""

from __future__ import annotations


class RmioError(Exception):
    """A problem the user can fix (bad input, missing extra); the message says what and how."""


class ConfigError(RmioError):
    """A configuration file or override is invalid."""


class MissingExtraError(RmioError):
    """An optional dependency is not installed."""

    def __init__(self, what: str, extra: str, hint: str | None = None) -> None:
        msg = (
            f"{what} needs the optional extra '{extra}': pip install 'rmio[{extra}]' (in a "
            f"checkout: pip install -c constraints.txt -e '.[{extra}]')"
        )
        if hint:
            msg += f" ({hint})"
        super().__init__(msg)
        self.extra = extra
