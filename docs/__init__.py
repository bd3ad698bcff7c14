"""rmio's documentation, shipped in the package so that an installed wheel carries what the README
links: ``ARCHITECTURE.md``, ``PERFORMANCE.md``, ``BUNDLE.md`` and ``BENCHMARKS.md`` here (in a
checkout ``docs/BENCHMARKS.md`` is a link to the repository's ``BENCHMARKS.md``, which the wheel
carries as a file), ``PROTOCOL.md`` in ``rmio.runtime``."""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent


def doc_path(name: str) -> Path:
    """The shipped copy of a document the README links (``ARCHITECTURE.md``, ``BENCHMARKS.md``,
    ``PROTOCOL.md``...)."""
    if name == "PROTOCOL.md":
        return HERE.parent / "runtime" / name
    return HERE / name
