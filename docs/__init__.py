"""rmio's documentation, shipped in the package so that an installed wheel carries what the README
links: ``ARCHITECTURE.md`` and ``PERFORMANCE.md`` here, ``PROTOCOL.md`` in ``rmio.runtime``."""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent


def doc_path(name: str) -> Path:
    """The shipped copy of ``ARCHITECTURE.md``, ``PERFORMANCE.md`` or ``PROTOCOL.md``."""
    if name == "PROTOCOL.md":
        return HERE.parent / "runtime" / name
    return HERE / name
