"""``python -m rmio``: the same command line as ``rmio``, for environments whose scripts directory
is not on PATH (a venv not activated, ``pipx run``, CI images)."""

from __future__ import annotations

from rmio.cli import main

if __name__ == "__main__":
    main()
